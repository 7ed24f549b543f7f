/**
 * The server on the WebGPU backend (the embedded model; lavapipe in CI): concurrent greedy requests, which share
 * decode steps and whose rows join and leave the batch's GPU tensors, answer what each answers alone, and what
 * model.generate answers on the same backend; a cached prefix gives the same answer as a cold start.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { loadModel, loadTokenizer } from "../../src/index.ts";
import { defaultModelFolder } from "../../src/cli/default-model.ts";
import { startServer } from "../../src/server/server.ts";
import { gpuTest } from "../helpers/backends.ts";
import { raw } from "./helpers.ts";

describe("the server on WebGPU", { timeout: 300_000 }, () => {
  test("concurrent requests (greedy, seeded) == each alone (greedy: == model.generate on the GPU); a left stream frees its row", async (t) => {
    if (!(await gpuTest(t))) return;
    const folder = defaultModelFolder();
    // three dispatches a layer: the one-dispatch layer's workgroups wait for each other, which a software
    // rasterizer (lavapipe) runs one at a time, taking seconds a step past batch 1
    const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
    const model = await loadModel(folder, { backend: await createWebGpuBackend({ decodePersistent: false }) });
    const tokenizer = await loadTokenizer(folder);
    const server = await startServer({ model, tokenizer, modelName: "m", chat: null, port: 0, prefixInterval: 16 });
    try {
      // two of one length: read together in one batched pass
      const prompts = ["The cat", "Once upon a time there", "A", "In the beginning was the word, and", "The dog"];
      const n = [6, 4, 8, 5, 7];
      const ask = async (p: string, k: number) => {
        const r = await raw(server.url, "POST", "/v1/completions", JSON.stringify({ model: "m", prompt: p, max_tokens: k, temperature: 0 }), {}, 120_000);
        assert.equal(r.status, 200, r.text);
        return r.json().choices[0].text as string;
      };
      const single: string[] = [];
      for (const [i, p] of prompts.entries()) single.push(await ask(p, n[i]!));
      const together = await Promise.all(prompts.map((p, i) => ask(p, n[i]!)));
      assert.deepEqual(together, single);
      for (const [i, p] of prompts.entries()) {
        const ids = tokenizer.encode(p);
        const out = await model.generate(ids, { maxNewTokens: n[i]! });
        assert.equal(single[i], tokenizer.decode(out.subarray(ids.length)), `prompt ${i}`);
      }
      // seeded sampling, all rows of one setting (the steps are pipelined on a GPU): the same as alone
      const sampled = async (p: string, seed: number) => {
        const r = await raw(server.url, "POST", "/v1/completions", JSON.stringify({ model: "m", prompt: p, max_tokens: 9, temperature: 0.9, seed }), {}, 120_000);
        return r.json().choices[0].text as string;
      };
      const soloSampled: string[] = [];
      for (const [i, p] of prompts.entries()) soloSampled.push(await sampled(p, 40 + i));
      assert.deepEqual(await Promise.all(prompts.map((p, i) => sampled(p, 40 + i))), soloSampled);
      // a stream left mid-way frees its row
      const ctrl = new AbortController();
      const res = await fetch(`${server.url}/v1/completions`, { method: "POST", signal: ctrl.signal,
        body: JSON.stringify({ model: "m", prompt: "Long:", max_tokens: 3000, temperature: 0, stream: true, ignore_eos: true }) });
      const reader = res.body!.getReader();
      for (let k = 0; k < 3; k++) await reader.read();
      ctrl.abort();
      const end = Date.now() + 30_000;
      while ((await raw(server.url, "GET", "/health")).json().rows !== 0) {
        assert.ok(Date.now() < end, "the row was not freed");
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(await ask(prompts[0]!, n[0]!), single[0]);
    } finally {
      await server.close(2000);
      await model.dispose(); // and its backend
    }
  });
});
