/**
 * Mamba-2 (SSD) and Falcon-Mamba against their PyTorch fixtures (test/fixtures/README.md): logits, the last
 * hidden state and greedy output on the CPU backend, for every checkpoint format.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { loadModel } from "../../src/index.ts";
import { checkFixtureForward, expected, fixture } from "../helpers/fixtures.ts";

const folders = [
  ["hf-mamba2/tiny", "mamba2"],
  ["mamba-ssm/mamba2-tiny", "mamba2"],
  ["hf-falcon-mamba/tiny", "falcon-mamba"],
] as const;

for (const [name, family] of folders) {
  test(`${name}: logits, hidden states and greedy output match PyTorch (cpu)`, { timeout: 120_000 }, async () => {
    await checkFixtureForward(fixture(...name.split("/")), "cpu", { tol: 1e-4, family });
  });
}

test("hf-mamba2/tiny: the selection recorder sees Δ per head (softplus(dt + dt_bias)) and exp(Δ·A) of every layer", { timeout: 120_000 }, async () => {
  const { SelectionRecorder } = await import("../../src/model/observer.ts");
  const { mamba2Columns } = await import("../../src/model/mamba2.ts");
  const folder = fixture("hf-mamba2", "tiny");
  const ids = (await expected(folder)).get("input_ids")!;
  const model = await loadModel(folder, { backend: "cpu" });
  const lm = model.lm, b = lm.backend;
  const H = model.config.mamba2!.numHeads;
  const rec = await SelectionRecorder.attach(lm);
  const T = 24;
  const one = ids.i32.subarray(0, T);
  b.dispose(lm.hidden(b.fromI32(one, [T]), { batch: 1, seqLen: T }, null));
  rec.detach();
  const trace = await rec.trace();
  assert.equal(trace.channels, H);
  assert.equal(trace.tokens, T);
  // the same forward, keeping in_proj's output: dt is its last H columns
  const keep = { layers: [], residualF: null as never } as import("../../src/model/mamba.ts").LMActivations;
  b.dispose(lm.hidden(b.fromI32(one, [T]), { batch: 1, seqLen: T }, null, keep));
  const k = mamba2Columns(model.config);
  for (let l = 0; l < model.config.numLayers; l++) {
    const act = keep.layers[l]!.mixer as import("../../src/model/mamba2.ts").Mamba2Activations;
    const zx = await b.readF32(act.zxbcdt);
    const bias = await b.readF32(lm.weights.layers[l]!.mixer.dtBias);
    const A = (await b.readF32(lm.weights.layers[l]!.mixer.A_log)).map((v) => -Math.exp(v));
    const width = zx.length / T;
    for (let t = 0; t < T; t++) for (let h = 0; h < H; h++) {
      const v = zx[t * width + k.dt + h]! + bias[h]!;
      const d = v > 20 ? v : Math.log1p(Math.exp(v));
      assert.ok(Math.abs(trace.delta[l]![t * H + h]! - d) < 1e-6, `layer ${l} Δ[${t}, ${h}]`);
      assert.ok(Math.abs(trace.keepChannel[l]![t * H + h]! - Math.exp(d * A[h]!)) < 1e-6, `layer ${l} keep[${t}, ${h}]`);
    }
  }
  await model.dispose();
});
