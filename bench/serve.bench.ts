/**
 * The server (`mamba-ts serve`, in process, loopback HTTP, streamed requests read as server-sent events):
 *   - throughput: aggregate decode tokens/s of 64 concurrent streams against 1 stream (continuous batching);
 *   - prefix cache: time to the first token of a request whose prompt shares a 2,048-token prefix with an earlier
 *     one, against the cold first request;
 *   - overhead: the server's time per token for one stream against model.generate alone.
 * The client runs in a worker thread (its own event loop), over loopback HTTP.
 * BENCH_SERVE_MODEL (default: the embedded model), BENCH_SERVE_BACKEND (cpu | webgpu | auto; default cpu),
 * BENCH_SERVE_TOKENS (new tokens per stream, default 128), BENCH_SERVE_STREAMS (default 64).
 */
import { Worker } from "node:worker_threads";
import os from "node:os";
import { loadModel, loadTokenizer } from "../src/index.ts";
import { defaultModelFolder } from "../src/cli/default-model.ts";
import { resolveModelFolder } from "../src/io/hub.ts";
import type { BackendName } from "../src/backend/create.ts";
import { startServer } from "../src/server/server.ts";

interface StreamResult {
  tokens: number;
  /** ms from sending the request to the first token, and to the end */
  firstMs: number;
  totalMs: number;
  /** ms from sending the request to each chunk that carried text (all requests of a batch start together) */
  times: number[];
}

/**
 * The client: streamed completions over raw HTTP, in a worker thread so that reading the streams does not share the
 * server's event loop. Counts the tokens (usage) and when each chunk carrying text came.
 */
const CLIENT = `
const http = require("node:http");
const { parentPort } = require("node:worker_threads");
function streamed(url, body) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let first = -1, buffer = "", tokens = 0;
    const times = [];
    const req = http.request(url + "/v1/completions", { method: "POST", headers: { "content-type": "application/json" } }, (res) => {
      res.setEncoding("utf8");
      res.on("data", (d) => {
        if (first < 0) first = performance.now() - t0;
        buffer += d;
        let i;
        while ((i = buffer.indexOf("\\n\\n")) >= 0) {
          const line = buffer.slice(0, i);
          buffer = buffer.slice(i + 2);
          if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
          const ev = JSON.parse(line.slice(6));
          if (ev.error) reject(new Error(ev.error.message));
          if (ev.usage) tokens = ev.usage.completion_tokens;
          if (ev.choices && ev.choices[0] && ev.choices[0].text) times.push(performance.now() - t0);
        }
      });
      res.on("end", () => resolve({ tokens, firstMs: first, totalMs: performance.now() - t0, times }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }));
  });
}
parentPort.on("message", async ({ url, bodies }) => {
  try {
    const t0 = performance.now();
    const results = await Promise.all(bodies.map((b) => streamed(url, b)));
    parentPort.postMessage({ results, wallMs: performance.now() - t0 });
  } catch (err) {
    parentPort.postMessage({ error: String(err && err.message || err) });
  }
});
`;

interface Batch {
  results: StreamResult[];
  wallMs: number;
}

/** Runs concurrent streamed requests from the client thread. */
function requests(client: Worker, url: string, bodies: Record<string, unknown>[]): Promise<Batch> {
  return new Promise((resolve, reject) => {
    client.once("message", (m: Batch & { error?: string }) => (m.error ? reject(new Error(m.error)) : resolve(m)));
    client.postMessage({ url, bodies });
  });
}

export default async function run(): Promise<void> {
  const source = process.env.BENCH_SERVE_MODEL ?? defaultModelFolder();
  const backend = (process.env.BENCH_SERVE_BACKEND ?? "cpu") as BackendName;
  const T = Number(process.env.BENCH_SERVE_TOKENS ?? 128);
  const S = Number(process.env.BENCH_SERVE_STREAMS ?? 64);
  const folder = await resolveModelFolder(source);
  const model = await loadModel(folder, { backend });
  const tokenizer = await loadTokenizer(folder);
  const cpus = os.cpus();
  console.log(`model: ${source} on ${model.backend.name}; ${cpus.length} x ${cpus[0]?.model ?? "cpu"}, Node ${process.version}`);
  console.log("note: wall-clock figures on a shared machine are noisy; compare runs made side by side");
  const V = model.config.vocabSize;
  const ids = (n: number, salt: number) => Array.from({ length: n }, (_, i) => (i * 7919 + salt * 104729 + 13) % Math.min(V, 256));
  const name = "bench";
  const common = { model: name, temperature: 0, ignore_eos: true };

  // ---- throughput: 1 stream, then S concurrent ----
  const client = new Worker(CLIENT, { eval: true });
  const streamed = async (url: string, body: Record<string, unknown>) => (await requests(client, url, [body])).results[0]!;
  let server = await startServer({ model, tokenizer, modelName: name, chat: null, port: 0, maxBatch: S, prefixCacheMb: 0, maxTokensCap: 1 << 20 });
  await streamed(server.url, { ...common, prompt: ids(8, 0), max_tokens: 4 }); // warm-up
  const one = await streamed(server.url, { ...common, prompt: ids(8, 1), max_tokens: T });
  const oneRate = one.tokens / ((one.totalMs - one.firstMs) / 1000);
  const batch = await requests(client, server.url, Array.from({ length: S }, (_, i) => ({ ...common, prompt: ids(8, 2 + i), max_tokens: T })));
  const many = batch.results;
  const wall = batch.wallMs / 1000;
  const total = many.reduce((a, r) => a + r.tokens, 0);
  const lastFirst = Math.max(...many.map((r) => r.firstMs));
  const manyRate = total / wall;
  // the steady state: from the moment 90% of the streams had their first token to the moment 10% had ended
  const starts = many.map((r) => r.times[0] ?? Infinity).sort((a, b) => a - b);
  const ends = many.map((r) => r.times[r.times.length - 1] ?? -Infinity).sort((a, b) => a - b);
  const from = starts[Math.floor(0.9 * (S - 1))]!;
  const to = ends[Math.ceil(0.1 * (S - 1))]!;
  const inWindow = many.reduce((a, r) => a + r.times.filter((x) => x > from && x <= to).length, 0);
  const steady = to > from ? inWindow / ((to - from) / 1000) : NaN;
  console.log(`throughput  1 stream: ${oneRate.toFixed(1)} tok/s (${one.tokens} tokens after the first)`);
  console.log(`throughput  ${S} streams: ${manyRate.toFixed(1)} tok/s aggregate (${total} tokens in ${wall.toFixed(2)} s, ` +
    `all streams started within ${(lastFirst / 1000).toFixed(2)} s) = ${(manyRate / oneRate).toFixed(2)}x one stream`);
  console.log(Number.isNaN(steady)
    ? "throughput  steady state: n/a (the streams did not overlap; raise BENCH_SERVE_TOKENS)"
    : `throughput  ${S} streams, steady state (90% of them decoding): ${steady.toFixed(1)} tok/s = ${(steady / oneRate).toFixed(2)}x one stream`);

  // ---- overhead: one stream through the server against model.generate ----
  const prompt = Int32Array.from(ids(8, 1));
  await model.generate(prompt, { maxNewTokens: 4, stopTokens: [] });
  const g0 = performance.now();
  await model.generate(prompt, { maxNewTokens: T, stopTokens: [] });
  const genMs = (performance.now() - g0) / T;
  const served = await streamed(server.url, { ...common, prompt: ids(8, 1), max_tokens: T });
  const serveMs = served.totalMs / served.tokens;
  console.log(`overhead    model.generate ${genMs.toFixed(2)} ms/token, server (1 stream, HTTP + SSE) ${serveMs.toFixed(2)} ms/token: ` +
    `${(serveMs - genMs).toFixed(2)} ms/token (${((serveMs / genMs - 1) * 100).toFixed(0)}%)`);
  await server.close();

  // ---- prefix cache: time to first token with a 2,048-token shared prefix ----
  server = await startServer({ model, tokenizer, modelName: name, chat: null, port: 0, maxBatch: S, prefixCacheMb: 512, maxPromptTokens: 8192 });
  const prefix = ids(2048, 999);
  const cold = await streamed(server.url, { ...common, prompt: [...prefix, ...ids(12, 1000)], max_tokens: 1 });
  const warm: number[] = [];
  for (let k = 0; k < 3; k++) warm.push((await streamed(server.url, { ...common, prompt: [...prefix, ...ids(12, 1001 + k)], max_tokens: 1 })).firstMs);
  warm.sort((a, b) => a - b);
  const w = warm[1]!;
  console.log(`prefix      2,048-token shared prefix: first token cold ${cold.firstMs.toFixed(0)} ms, from the cache ${w.toFixed(1)} ms ` +
    `(median of 3) = ${(cold.firstMs / w).toFixed(1)}x faster`);
  await server.close();
  await client.terminate();
  await model.dispose();
}
