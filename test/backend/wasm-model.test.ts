/**
 * The wasm CPU engine on whole models: the PyTorch fixtures (logits, hidden states, greedy output) for every
 * checkpoint format, with 1, 2 and 3 threads and both SIMD builds, and greedy generation equal to the reference
 * engine's on a random model.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createModel, loadModel } from "../../src/index.ts";
import { createCpuBackend, describeBackend } from "../../src/backend/wasm/create.ts";
import { assertClose, checkFixtureForward, fixture } from "../helpers/fixtures.ts";

const folders = ["hf-mamba/tiny", "hf-mamba/tiny-f16", "hf-mamba/tiny-bf16-sharded", "mamba-ssm/tiny"];
const setups = [
  { threads: 1, simd: "auto" as const },
  { threads: 2, simd: "auto" as const },
  { threads: 3, simd: "plain" as const },
];

for (const name of folders) {
  for (const s of setups) {
    test(`${name}: PyTorch's logits, hidden states and greedy output (wasm, ${s.threads} threads, ${s.simd} simd)`, { timeout: 60_000 }, async () => {
      const backend = await createCpuBackend(s);
      assert.match(describeBackend(backend), /^cpu \(wasm simd (relaxed|plain), \d threads?\)$/);
      if (s.simd === "plain") assert.match(describeBackend(backend), /plain/);
      await checkFixtureForward(fixture(...name.split("/")), backend, { tol: 1e-4 });
    });
  }
}

test("loadModel(..., { backend: 'cpu' }) runs the wasm engine", { timeout: 60_000 }, async () => {
  const model = await loadModel(fixture("hf-mamba", "tiny"), { backend: "cpu" });
  assert.match(describeBackend(model.backend), /^cpu \(wasm simd/);
  await model.dispose();
});

test("greedy generation equals the reference engine's, and logits are bitwise the same for 1, 2 and 3 threads", { timeout: 120_000 }, async () => {
  // odd sizes: D and E not multiples of 8, a vocabulary not a multiple of 4
  const sizes = { vocabSize: 203, hiddenSize: 44, numLayers: 3, stateSize: 8 };
  const prompt = Int32Array.from({ length: 37 }, (_, i) => (i * 53 + 7) % 203);
  const ref = await createModel(sizes, { seed: 5, backend: await createCpuBackend({ reference: true }) });
  assert.equal(describeBackend(ref.backend), "cpu (reference)");
  const want = await ref.generate(prompt, { maxNewTokens: 24, stopTokens: [] });
  const refLogits = (await ref.forward(prompt, { batch: 1, seqLen: prompt.length })).logits;
  await ref.dispose();
  let first: Float32Array | null = null;
  for (const threads of [1, 2, 3]) {
    const model = await createModel(sizes, { seed: 5, backend: await createCpuBackend({ threads }) });
    const got = await model.generate(prompt, { maxNewTokens: 24, stopTokens: [] });
    assert.deepEqual(Array.from(got), Array.from(want), `${threads} threads`);
    const logits = (await model.forward(prompt, { batch: 1, seqLen: prompt.length })).logits;
    assertClose(logits, refLogits, 1e-4, `logits (${threads} threads) against the reference`);
    if (first === null) first = logits;
    else assert.deepEqual(new Uint32Array(logits.buffer), new Uint32Array(first.buffer), `logits bitwise, ${threads} threads against 1`);
    await model.dispose();
  }
});
