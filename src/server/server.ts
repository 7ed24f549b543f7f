/**
 * The OpenAI-compatible HTTP server (node:http) in front of the scheduler:
 *   GET  /health, /v1/models, /v1/models/{id}, /metrics (Prometheus text)
 *   POST /v1/completions, /v1/chat/completions (when the tokenizer ships a chat template)
 * Every bad request gets a 4xx and an OpenAI error object; none of them stops the server. Streams are server-sent
 * events ending in `data: [DONE]`. A client that goes away cancels its request, which frees its batch row at the
 * next step boundary. close() stops accepting requests, lets running ones end (bounded), then cancels the rest.
 */
import { randomInt, randomUUID } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import type { MambaModel } from "../model/model.ts";
import type { Tokenizer } from "../tokenizer.ts";
import type { ChatTemplate } from "./chat.ts";
import { checkKeys, optionKeys } from "../errors.ts";
import { ApiError, type Limits, checkCompletionExtras, checkModel, parseJsonBody, parseMessages, parsePrompt, parseSampling } from "./requests.ts";
import { type EndReason, Scheduler } from "./scheduler.ts";
import { StopText } from "./text.ts";

export interface ServerOptions {
  model: MambaModel;
  tokenizer: Tokenizer;
  /** the id clients name in `model` */
  modelName: string;
  /** the tokenizer's chat template; null: chat completions answer 400 */
  chat: ChatTemplate | null;
  host?: string;
  /** 0 = any free port */
  port?: number;
  maxBatch?: number;
  maxPromptTokens?: number;
  maxTokensCap?: number;
  prefixCacheMb?: number;
  /** prompt tokens per chunk and the spacing of cached states (default 256) */
  prefixInterval?: number;
  /** the largest request body, in bytes (default: room for a prompt of maxPromptTokens ids, at least 1 MiB) */
  maxBodyBytes?: number;
}
const SERVER_OPTION_KEYS = optionKeys<ServerOptions>({
  model: true, tokenizer: true, modelName: true, chat: true, host: true, port: true, maxBatch: true, maxPromptTokens: true,
  maxTokensCap: true, prefixCacheMb: true, prefixInterval: true, maxBodyBytes: true,
});

export interface MambaServer {
  url: string;
  port: number;
  scheduler: Scheduler;
  /** Stops accepting, waits up to graceMs for running requests, cancels the rest, closes every connection. */
  close(graceMs?: number): Promise<void>;
}

export const DEFAULTS = { host: "127.0.0.1", port: 8080, maxBatch: 64, maxPromptTokens: 8192, maxTokensCap: 4096, prefixCacheMb: 512 };

const JSON_TYPE = { "content-type": "application/json; charset=utf-8" };

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) { res.end(); return; }
  const text = JSON.stringify(body);
  res.writeHead(status, { ...JSON_TYPE, "content-length": Buffer.byteLength(text) });
  res.end(text);
}

/** Reads a body of at most `limit` bytes (413 past it). */
function readBody(req: http.IncomingMessage, limit: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers["content-length"]);
    const tooLarge = () => new ApiError(413, `the request body exceeds ${limit} bytes`, null, "request_too_large");
    if (Number.isFinite(declared) && declared > limit) { req.resume(); reject(tooLarge()); return; }
    const parts: Buffer[] = [];
    let size = 0;
    let failed = false;
    req.on("data", (chunk: Buffer) => {
      if (failed) return;
      size += chunk.length;
      if (size > limit) { failed = true; parts.length = 0; reject(tooLarge()); return; }
      parts.push(chunk);
    });
    req.on("end", () => { if (!failed) resolve(Buffer.concat(parts).toString("utf8")); });
    req.on("error", (err) => { if (!failed) { failed = true; reject(err); } });
  });
}

export async function startServer(o: ServerOptions): Promise<MambaServer> {
  checkKeys("startServer", o, SERVER_OPTION_KEYS); // the options of the program; requests' unknown fields are the API's matter
  const { model, tokenizer } = o;
  const config = model.config;
  const limits: Limits = {
    vocabSize: config.vocabSize,
    maxPromptTokens: o.maxPromptTokens ?? DEFAULTS.maxPromptTokens,
    maxTokensCap: o.maxTokensCap ?? DEFAULTS.maxTokensCap,
  };
  const maxBody = o.maxBodyBytes ?? Math.max(1 << 20, limits.maxPromptTokens * 16 + 65536);
  const scheduler = new Scheduler(model, {
    maxBatch: o.maxBatch ?? DEFAULTS.maxBatch,
    prefixCacheBytes: Math.round((o.prefixCacheMb ?? DEFAULTS.prefixCacheMb) * 1024 * 1024),
    chunk: o.prefixInterval ?? 256,
  });
  const created = Math.floor(Date.now() / 1000);
  const requests = new Map<string, number>(); // "endpoint|status" -> count
  let draining = false;
  let inFlight = 0;

  const count = (endpoint: string, status: number) => {
    const key = `${endpoint}|${status}`;
    requests.set(key, (requests.get(key) ?? 0) + 1);
  };

  const promptIds = (ids: Int32Array): Int32Array => {
    if (ids.length > 0) return ids;
    if (config.bosTokenId === null) throw new ApiError(400, "the prompt is empty and the model has no bos token to start from", "prompt", "invalid_value");
    return Int32Array.of(config.bosTokenId);
  };

  /** Runs one generation request to its end: streamed as server-sent events, or answered whole. */
  const generate = (
    req: http.IncomingMessage, res: http.ServerResponse, prompt: Int32Array, f: ReturnType<typeof parseSampling>, chat: boolean,
  ): Promise<number> => new Promise((resolve) => {
    const id = `${chat ? "chatcmpl" : "cmpl"}-${randomUUID()}`;
    const object = chat ? (f.stream ? "chat.completion.chunk" : "chat.completion") : "text_completion";
    const text = new StopText(tokenizer, f.stop);
    let completionTokens = 0;
    let closed = false;
    const usage = () => ({ prompt_tokens: prompt.length, completion_tokens: completionTokens, total_tokens: prompt.length + completionTokens });
    const choice = (piece: string, finish: EndReason | null) => chat
      ? { index: 0, ...(f.stream ? { delta: piece === "" && finish ? {} : { content: piece } } : { message: { role: "assistant", content: piece } }), logprobs: null, finish_reason: finish }
      : { text: piece, index: 0, logprobs: null, finish_reason: finish };
    const event = (body: unknown) => { if (!closed) res.write(`data: ${JSON.stringify(body)}\n\n`); };
    const chunk = (piece: string, finish: EndReason | null) => event({ id, object, created: Math.floor(Date.now() / 1000), model: o.modelName, choices: [choice(piece, finish)] });
    if (f.stream) {
      res.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", connection: "keep-alive" });
      if (chat) event({ id, object, created: Math.floor(Date.now() / 1000), model: o.modelName, choices: [{ index: 0, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }] });
    }
    let ended = false;
    const finish = (reason: EndReason) => {
      if (ended) return;
      ended = true;
      const rest = text.flush();
      if (f.stream) {
        if (rest) chunk(rest, null);
        chunk("", reason);
        if (f.includeUsage) event({ id, object, created: Math.floor(Date.now() / 1000), model: o.modelName, choices: [], usage: usage() });
        if (!closed) res.end("data: [DONE]\n\n");
      } else {
        sendJson(res, 200, { id, object, created: Math.floor(Date.now() / 1000), model: o.modelName, choices: [choice(text.text, reason)], usage: usage() });
      }
      resolve(200);
    };
    const fail = (err: Error) => {
      if (ended) return;
      ended = true;
      const e = new ApiError(draining ? 503 : 500, err.message, null, draining ? "server_shutting_down" : "internal_error");
      if (f.stream) { event(e.toJSON()); if (!closed) res.end("data: [DONE]\n\n"); } else sendJson(res, e.status, e.toJSON());
      resolve(e.status);
    };
    const job = scheduler.submit({
      prompt, maxTokens: f.maxTokens, temperature: f.temperature, topK: f.topK, topP: f.topP, minP: f.minP,
      repetitionPenalty: f.repetitionPenalty, seed: f.seed ?? randomInt(0, 2 ** 31),
      stopIds: new Set(config.eosTokenId === null || f.ignoreEos ? [] : [config.eosTokenId]),
    }, {
      token: (tok) => {
        completionTokens++;
        const piece = text.push(tok);
        if (f.stream && piece) chunk(piece, null);
        if (text.stopped) { job.cancel(); finish("stop"); }
      },
      end: (reason, err) => (reason === "error" ? fail(err ?? new Error("generation failed")) : finish(reason)),
    });
    // a client that goes away frees its row
    res.on("close", () => {
      closed = true;
      if (!ended) { ended = true; job.cancel(); resolve(499); }
    });
    void req;
  });

  const completions = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<number> => {
    const body = parseJsonBody(await readBody(req, maxBody));
    checkModel(body, o.modelName);
    checkCompletionExtras(body);
    const f = parseSampling(body, limits, "max_tokens", Math.min(16, limits.maxTokensCap));
    const prompt = promptIds(parsePrompt(body, limits, (t) => tokenizer.encode(t)));
    return generate(req, res, prompt, f, false);
  };

  const chatCompletions = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<number> => {
    const body = parseJsonBody(await readBody(req, maxBody));
    checkModel(body, o.modelName);
    if (!o.chat) throw new ApiError(400, `this model has no chat template (its tokenizer_config.json has no chat_template); use /v1/completions`, null, "no_chat_template");
    const messages = parseMessages(body);
    const f = parseSampling(body, limits, "max_completion_tokens", limits.maxTokensCap);
    let rendered: string;
    try {
      rendered = o.chat.render(messages);
    } catch (err) {
      throw new ApiError(400, `the chat template cannot render these messages: ${(err as Error).message}`, "messages", "invalid_value");
    }
    const prompt = promptIds(tokenizer.encode(rendered));
    if (prompt.length > limits.maxPromptTokens) {
      throw new ApiError(400, `the conversation has ${prompt.length} tokens; this server takes at most ${limits.maxPromptTokens}`, "messages", "context_length_exceeded");
    }
    return generate(req, res, prompt, f, true);
  };

  const metrics = (): string => {
    const s = scheduler.stats();
    const lines: string[] = [];
    const metric = (name: string, type: string, help: string, samples: [string, number][]) => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const [labels, v] of samples) lines.push(`${name}${labels} ${v}`);
    };
    metric("mamba_ts_requests_total", "counter", "HTTP requests by endpoint and status", [...requests].map(([k, v]) => {
      const [endpoint, status] = k.split("|");
      return [`{endpoint="${endpoint}",status="${status}"}`, v];
    }));
    metric("mamba_ts_prompt_tokens_total", "counter", "prompt tokens of accepted generation requests", [["", s.promptTokens]]);
    metric("mamba_ts_generated_tokens_total", "counter", "tokens generated", [["", s.generatedTokens]]);
    metric("mamba_ts_batch_rows", "gauge", "requests in the decode batch", [["", s.rows]]);
    metric("mamba_ts_batch_capacity", "gauge", "the most rows the batch takes (--max-batch)", [["", s.maxBatch]]);
    metric("mamba_ts_batch_occupancy", "gauge", "rows in the batch over its capacity", [["", s.rows / s.maxBatch]]);
    metric("mamba_ts_decode_steps_total", "counter", "decode steps run", [["", s.steps]]);
    metric("mamba_ts_decode_row_steps_total", "counter", "rows summed over decode steps (over steps: the mean batch)", [["", s.rowSteps]]);
    metric("mamba_ts_prefilling_requests", "gauge", "admitted requests whose prompt is being read", [["", s.prefilling]]);
    metric("mamba_ts_queue_length", "gauge", "requests waiting for a batch row", [["", s.queued]]);
    metric("mamba_ts_prefix_cache_hits_total", "counter", "requests that started from a cached prefix", [["", s.prefix.hits]]);
    metric("mamba_ts_prefix_cache_misses_total", "counter", "requests that found no cached prefix", [["", s.prefix.misses]]);
    metric("mamba_ts_prefix_cache_reused_tokens_total", "counter", "prompt tokens not read again thanks to the cache", [["", s.prefix.tokensReused]]);
    metric("mamba_ts_prefix_cache_bytes", "gauge", "bytes of states in the prefix cache", [["", s.prefix.bytes]]);
    metric("mamba_ts_prefix_cache_entries", "gauge", "states in the prefix cache", [["", s.prefix.entries]]);
    return lines.join("\n") + "\n";
  };

  const modelObject = { id: o.modelName, object: "model", created, owned_by: "mamba-ts" };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<[string, number]> => {
    const url = new URL(req.url ?? "/", "http://localhost");
    const route = url.pathname.replace(/\/+$/, "") || "/";
    const method = req.method ?? "GET";
    const only = (m: string) => {
      if (method !== m) { req.resume(); throw new ApiError(405, `${route} takes ${m} requests, not ${method}`, null, "method_not_allowed"); }
    };
    if (route === "/health") {
      only("GET");
      const s = scheduler.stats();
      sendJson(res, draining ? 503 : 200, { status: draining ? "shutting down" : "ok", rows: s.rows, queued: s.queued, prefilling: s.prefilling });
      return [route, draining ? 503 : 200];
    }
    if (route === "/metrics") {
      only("GET");
      const text = metrics();
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8", "content-length": Buffer.byteLength(text) });
      res.end(text);
      return [route, 200];
    }
    if (route === "/v1/models") {
      only("GET");
      sendJson(res, 200, { object: "list", data: [modelObject] });
      return [route, 200];
    }
    if (route.startsWith("/v1/models/")) {
      only("GET");
      const name = decodeURIComponent(route.slice("/v1/models/".length));
      if (name !== o.modelName) throw new ApiError(404, `the model '${name}' does not exist`, "model", "model_not_found");
      sendJson(res, 200, modelObject);
      return ["/v1/models/{id}", 200];
    }
    if (route === "/v1/completions" || route === "/v1/chat/completions") {
      only("POST");
      if (draining) { req.resume(); throw new ApiError(503, "the server is shutting down", null, "server_shutting_down"); }
      inFlight++;
      try {
        return [route, await (route === "/v1/completions" ? completions(req, res) : chatCompletions(req, res))];
      } finally {
        inFlight--;
      }
    }
    req.resume();
    throw new ApiError(404, `no route ${method} ${url.pathname}`, null, "not_found");
  };

  const server = http.createServer((req, res) => {
    handle(req, res).then(([endpoint, status]) => count(endpoint, status), (err: unknown) => {
      const e = err instanceof ApiError ? err : new ApiError(500, (err as Error)?.message ?? String(err), null, "internal_error");
      const endpoint = new URL(req.url ?? "/", "http://localhost").pathname;
      count(["/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"].includes(endpoint) ? endpoint : "other", e.status);
      if (e.status === 413) res.setHeader("connection", "close");
      sendJson(res, e.status, e.toJSON());
    });
  });
  server.on("clientError", (_err, socket) => {
    if (socket.writable) socket.end("HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n");
    else socket.destroy();
  });
  const host = o.host ?? DEFAULTS.host;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(o.port ?? DEFAULTS.port, host, () => { server.off("error", reject); resolve(); });
  });
  const port = (server.address() as AddressInfo).port;
  const shown = host.includes(":") ? `[${host}]` : host;
  let closing: Promise<void> | null = null;
  return {
    url: `http://${shown}:${port}`,
    port,
    scheduler,
    close(graceMs = 10_000) {
      closing ??= (async () => {
        draining = true;
        const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeIdleConnections();
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          (async () => { while (inFlight > 0) { await scheduler.idle(); await new Promise((r) => setTimeout(r, 5)); } })(),
          new Promise<void>((resolve) => { timer = setTimeout(resolve, graceMs); }),
        ]);
        clearTimeout(timer);
        await scheduler.close();
        server.closeAllConnections();
        await stopped;
      })();
      return closing;
    },
  };
}
