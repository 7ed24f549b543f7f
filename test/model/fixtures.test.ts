/** The PyTorch reference fixtures: logits, hidden states and greedy output, for every checkpoint format. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { loadModel } from "../../src/index.ts";
import { assertClose, expected, fixture } from "../helpers/fixtures.ts";

const folders = ["hf-mamba/tiny", "hf-mamba/tiny-f16", "hf-mamba/tiny-bf16-sharded", "mamba-ssm/tiny"];

for (const name of folders) {
  test(`${name}: logits, hidden states and greedy output match PyTorch (cpu)`, async () => {
    const folder = fixture(...name.split("/"));
    const exp = await expected(folder);
    const model = await loadModel(folder, { backend: "cpu" });
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
