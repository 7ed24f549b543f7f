/**
 * Continuous batching and the prefix cache, through the openai client: concurrent requests (greedy and seeded,
 * mixed lengths) answer exactly what each answers alone; requests past --max-batch wait in the queue and still
 * answer right; a client that goes away mid-stream frees its row; a long shared prefix is read once and the
 * answers equal those of a server without a cache; and a bounded loopback load test (64 clients, several requests
 * each) where every response is complete and equal to its single-request answer, with no batch row left after.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { MODEL_NAME, type Served, alone, raw, serveDefault, until } from "./helpers.ts";

interface Health { rows: number; queued: number; prefilling: number }
const health = async (s: Served): Promise<Health> => (await raw(s.server.url, "GET", "/health", undefined, {}, 10_000)).json() as Health;
const metric = async (s: Served, name: string): Promise<number> => {
  const text = (await raw(s.server.url, "GET", "/metrics", undefined, {}, 10_000)).text;
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  assert.ok(line, `no metric ${name}`);
  return Number(line.split(" ")[1]);
};

async function complete(client: OpenAI, prompt: string, maxTokens: number, extra: Partial<OpenAI.CompletionCreateParamsNonStreaming> = {}): Promise<string> {
  const r = await client.completions.create({ model: MODEL_NAME, prompt, max_tokens: maxTokens, temperature: 0, ...extra });
  return r.choices[0]!.text;
}

const PROMPTS = [
  "A", "The cat", "Once upon a time there was", "In a hole in the ground there lived a", "Why?",
  "It was the best of times, it was the worst of times, it was the age of wisdom", "42", "Dear diary, today I",
];

describe("continuous batching", { timeout: 180_000 }, () => {
  let s: Served;
  before(async () => { s = await serveDefault({ maxBatch: 64 }); });
  after(async () => { await s?.close(); });

  test("concurrent requests (greedy and seeded, mixed lengths) == the same requests alone", async () => {
    const reqs = PROMPTS.map((p, i) => ({ p, n: 4 + 3 * (i % 4), extra: i % 3 === 2 ? { temperature: 0.8, seed: 100 + i } : {} }));
    const single: string[] = [];
    for (const r of reqs) single.push(await complete(s.client, r.p, r.n, r.extra));
    const stepsBefore = await metric(s, "mamba_ts_decode_steps_total");
    const rowStepsBefore = await metric(s, "mamba_ts_decode_row_steps_total");
    const together = await Promise.all(reqs.map((r) => complete(s.client, r.p, r.n, r.extra)));
    assert.deepEqual(together, single);
    // and they really ran together: more than one row per decode step on average
    const steps = (await metric(s, "mamba_ts_decode_steps_total")) - stepsBefore;
    const rowSteps = (await metric(s, "mamba_ts_decode_row_steps_total")) - rowStepsBefore;
    assert.ok(rowSteps / steps > 1.5, `mean batch ${rowSteps / steps}`);
    // greedy ones also equal model.generate alone
    for (const [i, r] of reqs.entries()) if (!("seed" in r.extra)) assert.equal(together[i], (await alone(s, r.p, r.n)).text, `request ${i}`);
  });

  test("a client that disconnects mid-stream frees its row at once; the server goes on", async () => {
    const ctrl = new AbortController();
    const stream = await s.client.completions.create({ model: MODEL_NAME, prompt: "Long story:", max_tokens: 4000, temperature: 0, stream: true }, { signal: ctrl.signal });
    let chunks = 0;
    try {
      for await (const _ of stream) if (++chunks === 3) ctrl.abort();
    } catch (err) {
      assert.equal((err as Error).name, "APIUserAbortError"); // the client ends its read (or just stops)
    }
    assert.equal(chunks, 3);
    assert.equal(await metric(s, "mamba_ts_batch_rows") <= 1, true);
    await until(async () => (await health(s)).rows === 0, 10_000, "the row to be freed");
    assert.equal(await complete(s.client, "The cat", 6), (await alone(s, "The cat", 6)).text);
  });
});

describe("the queue past --max-batch", { timeout: 180_000 }, () => {
  let s: Served;
  before(async () => { s = await serveDefault({ maxBatch: 3 }); });
  after(async () => { await s?.close(); });

  test("12 concurrent requests on 3 rows: they wait, then each answers what it answers alone", async () => {
    const want = await Promise.all(PROMPTS.slice(0, 4).map((p) => alone(s, p, 10)));
    let maxQueued = 0;
    let polling = true;
    const poll = (async () => { while (polling) { maxQueued = Math.max(maxQueued, (await health(s)).queued); await new Promise((r) => setTimeout(r, 5)); } })();
    const got = await Promise.all(Array.from({ length: 12 }, (_, i) => complete(s.client, PROMPTS[i % 4]!, 10)));
    polling = false;
    await poll;
    got.forEach((text, i) => assert.equal(text, want[i % 4]!.text, `request ${i}`));
    assert.ok(maxQueued > 0, "no request ever waited");
    assert.deepEqual(await health(s), { status: "ok", rows: 0, queued: 0, prefilling: 0 } as unknown as Health);
  });
});

describe("the prefix cache", { timeout: 180_000 }, () => {
  let cached: Served;
  let cold: Served;
  before(async () => {
    cached = await serveDefault({ prefixInterval: 64 });
    cold = await serveDefault({ prefixCacheMb: 0, prefixInterval: 64 });
  });
  after(async () => { await cached?.close(); await cold?.close(); });

  test("a shared prefix is read once; every answer equals a server's without a cache", async () => {
    const shared = "You are a helpful storyteller. ".repeat(8); // 248 bytes: states at 64, 128, 192
    const suffixes = ["Tell me about a dog.", "Tell me about a cat!", "And then?", shared.slice(0, 10)];
    for (const [i, suffix] of suffixes.entries()) {
      const prompt = shared + suffix;
      const hitsBefore = await metric(cached, "mamba_ts_prefix_cache_hits_total");
      const reusedBefore = await metric(cached, "mamba_ts_prefix_cache_reused_tokens_total");
      const got = await complete(cached.client, prompt, 8);
      assert.equal(got, await complete(cold.client, prompt, 8), `suffix ${i}`);
      if (i > 0) {
        assert.equal(await metric(cached, "mamba_ts_prefix_cache_hits_total"), hitsBefore + 1, `suffix ${i} hit`);
        assert.ok(await metric(cached, "mamba_ts_prefix_cache_reused_tokens_total") - reusedBefore >= 192, `suffix ${i} reused`);
      }
    }
    // the same prompt again starts from its own end state
    const again = shared + suffixes[0];
    const reusedBefore = await metric(cached, "mamba_ts_prefix_cache_reused_tokens_total");
    assert.equal(await complete(cached.client, again, 8), await complete(cold.client, again, 8));
    assert.equal(await metric(cached, "mamba_ts_prefix_cache_reused_tokens_total") - reusedBefore, cached.tokenizer.encode(again).length);
    assert.ok(await metric(cached, "mamba_ts_prefix_cache_bytes") > 0);
    assert.equal(await metric(cold, "mamba_ts_prefix_cache_bytes"), 0);
  });

  test("the cache stays within its byte budget (least recently used states go)", async () => {
    const small = await serveDefault({ prefixCacheMb: 0.5, prefixInterval: 64 }); // ~3 states of the default model
    try {
      for (let i = 0; i < 6; i++) await complete(small.client, `${i} `.repeat(40), 2);
      const bytes = await metric(small, "mamba_ts_prefix_cache_bytes");
      assert.ok(bytes > 0 && bytes <= 0.5 * 1024 * 1024, `${bytes} bytes`);
    } finally {
      await small.close();
    }
  });
});

describe("load test (loopback, bounded)", { timeout: 120_000 }, () => {
  let s: Served;
  before(async () => { s = await serveDefault({ maxBatch: 64 }); });
  after(async () => { await s?.close(); });

  test("64 clients x 3 requests, mixed lengths, greedy: every response complete and equal to its single answer, no rows left", async () => {
    const lengths = [3, 8, 16, 24];
    const refs = new Map<string, string>();
    for (const p of PROMPTS) for (const n of lengths) refs.set(`${p}|${n}`, (await alone(s, p, n)).text);
    const started = Date.now();
    const clients = Array.from({ length: 64 }, (_, c) => (async () => {
      const out: [string, string][] = [];
      for (let k = 0; k < 3; k++) {
        const p = PROMPTS[(c + 3 * k) % PROMPTS.length]!;
        const n = lengths[(c * 7 + k) % lengths.length]!;
        const streamed = (c + k) % 2 === 0;
        let text = "";
        let finish: string | null = null;
        if (streamed) {
          for await (const chunk of await s.client.completions.create({ model: MODEL_NAME, prompt: p, max_tokens: n, temperature: 0, stream: true })) {
            for (const ch of chunk.choices) { text += ch.text; finish = ch.finish_reason ?? finish; }
          }
        } else {
          const r = await s.client.completions.create({ model: MODEL_NAME, prompt: p, max_tokens: n, temperature: 0 });
          text = r.choices[0]!.text;
          finish = r.choices[0]!.finish_reason;
        }
        assert.ok(finish === "length" || finish === "stop", `client ${c} request ${k}: finish ${finish}`);
        out.push([`${p}|${n}`, text]);
      }
      return out;
    })());
    const results = (await Promise.all(clients)).flat();
    const seconds = (Date.now() - started) / 1000;
    assert.equal(results.length, 192);
    for (const [key, text] of results) assert.equal(text, refs.get(key), key);
    assert.deepEqual(await health(s), { status: "ok", rows: 0, queued: 0, prefilling: 0 } as unknown as Health);
    assert.equal(await metric(s, "mamba_ts_batch_rows"), 0);
    const text = (await raw(s.server.url, "GET", "/metrics")).text;
    assert.match(text, /mamba_ts_requests_total\{endpoint="\/v1\/completions",status="200"\} \d{3}/);
    process.stderr.write(`# load test: 192 requests from 64 clients in ${seconds.toFixed(1)} s (shared CPU)\n`);
  });
});
