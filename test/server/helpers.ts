/**
 * What the server tests share: the embedded default model (byte-level, small) on the CPU, a server on a free
 * loopback port, the official `openai` client pointed at it, raw HTTP with a bound on every wait, and the answer a
 * request gets from model.generate alone (the reference that the server's answers must equal).
 */
import http from "node:http";
import OpenAI from "openai";
import { type MambaModel, loadModel, loadTokenizer } from "../../src/index.ts";
import { defaultModelFolder } from "../../src/cli/default-model.ts";
import type { Tokenizer } from "../../src/tokenizer.ts";
import { type MambaServer, type ServerOptions, startServer } from "../../src/server/server.ts";

export const MODEL_NAME = "mamba-ts-default";

export interface Served {
  model: MambaModel;
  tokenizer: Tokenizer;
  server: MambaServer;
  client: OpenAI;
  close(): Promise<void>;
}

/** A server on the default model (CPU), on a free port of 127.0.0.1. */
export async function serveDefault(options: Partial<ServerOptions> = {}, folder = defaultModelFolder()): Promise<Served> {
  const model = await loadModel(folder, { backend: "cpu" });
  const tokenizer = await loadTokenizer(folder);
  const server = await startServer({ model, tokenizer, modelName: MODEL_NAME, chat: null, port: 0, ...options });
  const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", timeout: 60_000, maxRetries: 0 });
  return {
    model, tokenizer, server, client,
    async close() {
      await server.close(2000);
      await model.dispose();
    },
  };
}

export interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  json(): any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

/** One HTTP request with a raw body; rejects after timeoutMs. */
export function raw(url: string, method: string, path: string, body?: string | Buffer, headers: Record<string, string> = {}, timeoutMs = 30_000): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${url}${path}`, { method, headers: { "content-type": "application/json", ...headers }, timeout: timeoutMs }, (res) => {
      const parts: Buffer[] = [];
      res.on("data", (c: Buffer) => parts.push(c));
      res.on("end", () => {
        const text = Buffer.concat(parts).toString("utf8");
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json: () => JSON.parse(text) });
      });
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error(`${method} ${path}: no answer in ${timeoutMs} ms`)));
    req.on("error", reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

/** The text model.generate gives for a prompt alone (greedy unless options say otherwise), cut at the eos id. */
export async function alone(s: Served, prompt: string | number[], maxTokens: number, extra: { temperature?: number; seed?: number; topK?: number; topP?: number } = {}): Promise<{ text: string; ids: number[] }> {
  const ids = typeof prompt === "string" ? s.tokenizer.encode(prompt) : Int32Array.from(prompt);
  const out = await s.model.generate(ids, { maxNewTokens: maxTokens, temperature: extra.temperature ?? 0, seed: extra.seed ?? 0, topK: extra.topK ?? 0, topP: extra.topP ?? 1 });
  const fresh = Array.from(out.subarray(ids.length));
  return { text: s.tokenizer.decode(fresh), ids: fresh };
}

/** Waits until cond() holds (polled), failing after timeoutMs. */
export async function until(cond: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
