/**
 * Mamba-2 (SSD) and Falcon-Mamba against their PyTorch fixtures (test/fixtures/README.md): logits, the last
 * hidden state and greedy output on the CPU backend, for every checkpoint format.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { loadModel } from "../../src/index.ts";
import { assertClose, expected, fixture } from "../helpers/fixtures.ts";

const folders = [
  ["hf-mamba2/tiny", "mamba2"],
  ["mamba-ssm/mamba2-tiny", "mamba2"],
  ["hf-falcon-mamba/tiny", "falcon-mamba"],
] as const;

for (const [name, family] of folders) {
  test(`${name}: logits, hidden states and greedy output match PyTorch (cpu)`, { timeout: 120_000 }, async () => {
    const folder = fixture(...name.split("/"));
    const exp = await expected(folder);
    const model = await loadModel(folder, { backend: "cpu" });
    assert.equal(model.config.family, family);
    const ids = exp.get("input_ids")!;
    const [batch, seqLen] = ids.shape as [number, number];
    const out = await model.forward(ids.i32, { batch, seqLen }, { hiddenStates: true });
    assert.deepEqual(exp.get("logits")!.shape, [batch, seqLen, model.config.paddedVocabSize]);
    assertClose(out.logits, exp.get("logits")!.f32, 1e-4, "logits");
    assertClose(out.lastHiddenState!, exp.get("last_hidden_state")!.f32, 1e-4, "last hidden state");
    const prompt = exp.get("greedy_prompt")!.i32;
    const want = exp.get("greedy_output")!.i32;
    const got = await model.generate(prompt, { maxNewTokens: want.length - prompt.length, stopTokens: [] });
    assert.deepEqual(Array.from(got), Array.from(want));
    await model.dispose();
  });
}
