/**
 * Training Mamba-2 and Falcon-Mamba on the CPU: model.lossAndGrads against PyTorch (grads.safetensors of
 * hf-mamba2/tiny and hf-falcon-mamba/tiny: the loss and every parameter's gradient for next-token cross-entropy),
 * and against finite differences of model.forward on tiny random configs that the fixtures do not cover (groups > 1,
 * biases, an untied head, the norm before the gate, no gated norm, a clamped dt), from zero and from given states.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { modelFromTensors } from "../../src/index.ts";
import { checkFixtureGrads, fixture } from "../helpers/fixtures.ts";
import { ceLoss, checkFiniteDifferences } from "../helpers/gradcheck.ts";
import { TestRng, perturbedParameters } from "../helpers/random.ts";
import { makeConfig } from "../../src/model/init.ts";
import { parameterShapes, ssmStateShape, type MambaConfig } from "../../src/config.ts";
import { CpuBackend } from "../../src/backend/cpu/index.ts";
import { MambaLM, uploadWeights } from "../../src/model/mamba.ts";
import { MambaCache } from "../../src/model/cache.ts";
import { forwardBackward, shiftedTargets } from "../../src/train/backprop.ts";
import { namedTensors, zerosLike } from "../../src/train/params.ts";
import type { HostTensor } from "../../src/io/tensor.ts";

for (const name of ["hf-mamba2/tiny", "hf-falcon-mamba/tiny"]) {
  test(`${name}: loss and every gradient match PyTorch`, { timeout: 120_000 }, async () => {
    await checkFixtureGrads(fixture(...name.split("/")), "cpu", { tol: 1e-4 });
  });
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
    await checkFiniteDifferences(params, (pname) => grads.get(pname)!, lossOf, new TestRng(17), 3);
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
  await checkFiniteDifferences(params, (name) => b.readF32(named.get(name)!), lossOf, r, 2);
});
