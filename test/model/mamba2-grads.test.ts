/**
 * Training Mamba-2 and Falcon-Mamba on the CPU: model.lossAndGrads against PyTorch (grads.safetensors of
 * hf-mamba2/tiny and hf-falcon-mamba/tiny: the loss and every parameter's gradient for next-token cross-entropy),
 * and against finite differences of model.forward on tiny random configs that the fixtures do not cover (groups > 1,
 * biases, an untied head, the norm before the gate, no gated norm, a clamped dt), from zero and from given states.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { loadModel, modelFromTensors } from "../../src/index.ts";
import { fixture, expected, readSafetensorsAny } from "../helpers/fixtures.ts";
import { TestRng, perturbedParameters } from "../helpers/random.ts";
import { makeConfig } from "../../src/model/init.ts";
import { parameterShapes, ssmStateShape, type MambaConfig } from "../../src/config.ts";
import { CpuBackend } from "../../src/backend/cpu/index.ts";
import { MambaLM, uploadWeights } from "../../src/model/mamba.ts";
import { MambaCache } from "../../src/model/cache.ts";
import { forwardBackward, shiftedTargets } from "../../src/train/backprop.ts";
import { namedTensors, zerosLike } from "../../src/train/params.ts";
import type { HostTensor } from "../../src/io/tensor.ts";

function relErr(got: Float32Array, want: Float32Array): number {
  let d = 0, m = 0;
  for (let i = 0; i < want.length; i++) { d = Math.max(d, Math.abs(got[i]! - want[i]!)); m = Math.max(m, Math.abs(want[i]!)); }
  return d / m;
}

for (const name of ["hf-mamba2/tiny", "hf-falcon-mamba/tiny"]) {
  test(`${name}: loss and every gradient match PyTorch`, { timeout: 120_000 }, async () => {
    const folder = fixture(...name.split("/"));
    const ids = (await expected(folder)).get("input_ids")!;
    const want = await readSafetensorsAny(`${folder}/grads.safetensors`);
    const model = await loadModel(folder, { backend: "cpu" });
    const [batch, seqLen] = ids.shape as [number, number];
    const { loss, grads } = await model.lossAndGrads(ids.i32, { batch, seqLen });
    const wantLoss = want.get("loss")!.f32[0]!;
    assert.ok(Math.abs(loss - wantLoss) <= 1e-5 * Math.abs(wantLoss), `loss ${loss} vs ${wantLoss}`);
    const names = [...want.keys()].filter((k) => k !== "loss").sort();
    assert.deepEqual([...grads.keys()].sort(), names, "gradient names");
    for (const n of names) {
      const e = relErr(grads.get(n)!, want.get(n)!.f32);
      assert.ok(e < 1e-4, `${n}: max abs error / max abs value ${e.toExponential(2)}`);
    }
    await model.dispose();
  });
}

/** Mean next-token cross-entropy (positions 0..L-2) in float64 from logits [B·L, V]. */
function ceLoss(logits: Float32Array, ids: Int32Array, B: number, L: number, V: number): number {
  let s = 0;
  for (let b = 0; b < B; b++) for (let t = 0; t + 1 < L; t++) {
    const row = Array.from(logits.subarray((b * L + t) * V, (b * L + t + 1) * V));
    const mx = Math.max(...row);
    s += Math.log(row.reduce((a, v) => a + Math.exp(v - mx), 0)) + mx - row[ids[b * L + t + 1]!]!;
  }
  return s / (B * (L - 1));
}

const fdConfigs: [string, MambaConfig][] = [
  ["mamba2, 2 groups, biases, untied head", makeConfig({ family: "mamba2", vocabSize: 7, hiddenSize: 6, numLayers: 2, stateSize: 3,
    convKernel: 3, useBias: true, tieEmbeddings: false, mamba2: { headDim: 3, nGroups: 2, chunkSize: 2 } })],
  ["mamba2, norm before the gate, 4 groups", makeConfig({ family: "mamba2", vocabSize: 7, hiddenSize: 4, numLayers: 2, stateSize: 3,
    mamba2: { headDim: 2, nGroups: 4, chunkSize: 3, normBeforeGate: true } })],
  ["mamba2 without the gated norm", makeConfig({ family: "mamba2", vocabSize: 7, hiddenSize: 4, numLayers: 1, stateSize: 3,
    mamba2: { headDim: 4, chunkSize: 4, gatedNorm: false } })],
  ["falcon-mamba, biases, untied head", makeConfig({ family: "falcon-mamba", vocabSize: 7, hiddenSize: 6, numLayers: 2, stateSize: 3,
    intermediateSize: 8, timeStepRank: 2, convKernel: 3, useBias: true, tieEmbeddings: false })],
];

for (const [name, cfg] of fdConfigs) {
  test(`${name}: gradients against finite differences of forward`, { timeout: 300_000 }, async () => {
    const params = perturbedParameters(cfg, 5);
    const shape = { batch: 2, seqLen: 5 };
    const ids = new TestRng(3).ids(10, cfg.vocabSize);
    const model = await modelFromTensors(cfg, params, { backend: "cpu" });
    const { loss, grads } = await model.lossAndGrads(ids, shape);
    assert.deepEqual([...grads.keys()].sort(), [...parameterShapes(cfg).keys()].sort());
    const lossOf = async (p: Map<string, HostTensor>) => {
      const m = await modelFromTensors(cfg, p, { backend: "cpu" });
      return ceLoss((await m.forward(ids, shape)).logits, ids, 2, 5, cfg.paddedVocabSize);
    };
    assert.ok(Math.abs((await lossOf(params)) - loss) < 1e-5, "loss");
    const r = new TestRng(17);
    const h = 1e-2;
    for (const [pname, t] of params) {
      const g = grads.get(pname)!;
      for (let k = 0; k < 3; k++) {
        const i = Math.floor(r.next() * g.length);
        const d = t.data as Float32Array;
        const v = d[i]!;
        d[i] = v + h;
        const lp = await lossOf(params);
        d[i] = v - h;
        const lm = await lossOf(params);
        d[i] = v;
        const num = (lp - lm) / (2 * h);
        assert.ok(Math.abs(num - g[i]!) <= 2e-3 + 2e-2 * Math.abs(num), `${pname}[${i}]: analytic ${g[i]} vs numerical ${num}`);
      }
    }
  });
}

test("mamba2 from given initial SSM states [B, H, P, N]: loss and final states as a forward through a cache, gradients against finite differences", { timeout: 300_000 }, async () => {
  const cfg = makeConfig({ family: "mamba2", vocabSize: 7, hiddenSize: 4, numLayers: 2, stateSize: 3, convKernel: 3,
    mamba2: { headDim: 2, nGroups: 2, chunkSize: 2 } });
  const params = perturbedParameters(cfg, 6);
  const b = new CpuBackend();
  const shape = { batch: 2, seqLen: 5 };
  const ids = new TestRng(4).ids(10, 7);
  const r = new TestRng(21);
  const sh = ssmStateShape(cfg, 2);
  const h0 = Array.from({ length: cfg.numLayers }, () => r.f32(sh.reduce((a, v) => a * v, 1), 1));
  const states = () => h0.map((d) => b.fromF32(d, sh));
  const lossOf = async (p: Map<string, HostTensor>) => {
    const lm = new MambaLM(cfg, b, uploadWeights(b, cfg, p));
    const logits = await b.readF32(lm.logits(lm.hidden(b.fromI32(ids, [10]), shape, MambaCache.withSsm(b, cfg, 2, states()))));
    return ceLoss(logits, ids, 2, 5, 7);
  };
  const lm = new MambaLM(cfg, b, uploadWeights(b, cfg, params));
  const grads = zerosLike(b, lm.weights);
  const res = forwardBackward(lm, b, b.fromI32(ids, [10]), b.fromI32(shiftedTargets(ids, shape), [10]), shape, grads, 1, states(), true);
  const loss = (await b.readF32(res.loss))[0]!;
  const cache = MambaCache.withSsm(b, cfg, 2, states());
  lm.hidden(b.fromI32(ids, [10]), shape, cache);
  for (let i = 0; i < cfg.numLayers; i++) assert.deepEqual(await b.readF32(res.finalSsm![i]!), await b.readF32(cache.ssm[i]!), `final state ${i}`);
  assert.ok(Math.abs((await lossOf(params)) - loss) < 1e-5, "loss");
  const named = namedTensors(cfg, grads);
  const h = 1e-2;
  for (const [name, t] of params) {
    const g = await b.readF32(named.get(name)!);
    for (let k = 0; k < 2; k++) {
      const i = Math.floor(r.next() * g.length);
      const d = t.data as Float32Array;
      const v = d[i]!;
      d[i] = v + h;
      const lp = await lossOf(params);
      d[i] = v - h;
      const lmn = await lossOf(params);
      d[i] = v;
      const num = (lp - lmn) / (2 * h);
      assert.ok(Math.abs(num - g[i]!) <= 2e-3 + 2e-2 * Math.abs(num), `${name}[${i}]: analytic ${g[i]} vs numerical ${num}`);
    }
  }
});
