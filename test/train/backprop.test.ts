/**
 * model.lossAndGrads against PyTorch (fixtures/hf-mamba/tiny/grads.safetensors: loss and the gradient of every
 * parameter for next-token cross-entropy), and the model-level backward of both mixers against finite
 * differences of model.forward on a tiny random config.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { loadModel, modelFromTensors, makeConfig } from "../../src/index.ts";
import { checkFixtureGrads, fixture } from "../helpers/fixtures.ts";
import { ceLoss, checkFiniteDifferences } from "../helpers/gradcheck.ts";
import { TestRng, perturbedParameters } from "../helpers/random.ts";
import { initParameters } from "../../src/model/init.ts";
import { parameterShapes } from "../../src/config.ts";

test("hf-mamba/tiny: loss and every gradient match PyTorch", async () => {
  await checkFixtureGrads(fixture("hf-mamba", "tiny"), "cpu", { tol: 2e-5 });
});

test("lossAndGrads rejects bad input with MambaError", async () => {
  const model = await loadModel(fixture("hf-mamba", "tiny"), { backend: "cpu" });
  await assert.rejects(model.lossAndGrads(Int32Array.of(1, 2, 3), { batch: 1, seqLen: 2 }), /MambaError|ids has 3 values/);
  await assert.rejects(model.lossAndGrads(Int32Array.of(1, 999), { batch: 1, seqLen: 2 }), /outside the vocabulary/);
  await assert.rejects(model.lossAndGrads(Int32Array.of(1), { batch: 1, seqLen: 1 }), /seqLen/);
  await model.dispose();
});

for (const mixer of ["s6", "lti"] as const) {
  test(`${mixer}: model gradients against finite differences of forward (untied head, biases)`, async () => {
    const cfg = makeConfig({ vocabSize: 7, hiddenSize: 6, numLayers: 2, stateSize: 3, intermediateSize: 8, timeStepRank: 2,
      convKernel: 3, useBias: true, tieEmbeddings: false, mixer });
    const params = mixer === "s6" ? perturbedParameters(cfg, 5) : initParameters(cfg, { seed: 5 });
    if (mixer === "lti") {
      const r = new TestRng(99);
      for (const [name, t] of params) if (!name.endsWith("A_log")) (t.data as Float32Array).forEach((v, i, a) => { a[i] = v + 0.3 * r.normal(); });
    }
    const model = await modelFromTensors(cfg, params, { backend: "cpu" });
    const shape = { batch: 2, seqLen: 5 };
    const ids = new TestRng(3).ids(10, 7);
    const { loss, grads } = await model.lossAndGrads(ids, shape);
    assert.deepEqual([...grads.keys()].sort(), [...parameterShapes(cfg).keys()].sort());
    // loss from forward, in float64 from the logits
    const lossOf = async (m: typeof model) => ceLoss((await m.forward(ids, shape)).logits, ids, 2, 5, 7);
    assert.ok(Math.abs((await lossOf(model)) - loss) < 1e-5);
    // a few random elements of every tensor
    await checkFiniteDifferences(params, (name) => grads.get(name)!, async (p) => lossOf(await modelFromTensors(cfg, p, { backend: "cpu" })), new TestRng(17), 3);
  });
}

test("s6 from given initial SSM states: loss from a forward through a cache holding them, gradients against finite differences", async () => {
  const { CpuBackend } = await import("../../src/backend/cpu/index.ts");
  const { MambaLM, uploadWeights } = await import("../../src/model/mamba.ts");
  const { MambaCache } = await import("../../src/model/cache.ts");
  const { forwardBackward, shiftedTargets } = await import("../../src/train/backprop.ts");
  const { namedTensors, zerosLike } = await import("../../src/train/params.ts");
  const cfg = makeConfig({ vocabSize: 7, hiddenSize: 6, numLayers: 2, stateSize: 3, intermediateSize: 8, timeStepRank: 2,
    convKernel: 3, useBias: true, tieEmbeddings: false, mixer: "s6" });
  const params = perturbedParameters(cfg, 6);
  const b = new CpuBackend();
  const shape = { batch: 2, seqLen: 5 };
  const ids = new TestRng(4).ids(10, 7);
  const r = new TestRng(21);
  const h0 = Array.from({ length: cfg.numLayers }, () => r.f32(2 * 8 * 3, 1));
  const states = () => h0.map((d) => b.fromF32(d, [2, 8, 3]));
  const lossOf = async (p: typeof params) => {
    const lm = new MambaLM(cfg, b, uploadWeights(b, cfg, p));
    const logits = await b.readF32(lm.logits(lm.hidden(b.fromI32(ids, [10]), shape, MambaCache.withSsm(b, cfg, 2, states()))));
    return ceLoss(logits, ids, 2, 5, 7);
  };
  const lm = new MambaLM(cfg, b, uploadWeights(b, cfg, params));
  const grads = zerosLike(b, lm.weights);
  const init = states();
  const res = forwardBackward(lm, b, b.fromI32(ids, [10]), b.fromI32(shiftedTargets(ids, shape), [10]), shape, grads, 1, init, true);
  const loss = (await b.readF32(res.loss))[0]!;
  {
    // keepFinal: the states after the last position, as a forward with a cache from the same states leaves them
    const cache = MambaCache.withSsm(b, cfg, 2, states());
    lm.hidden(b.fromI32(ids, [10]), shape, cache);
    assert.equal(res.finalSsm?.length, cfg.numLayers);
    for (let i = 0; i < cfg.numLayers; i++) assert.deepEqual(await b.readF32(res.finalSsm![i]!), await b.readF32(cache.ssm[i]!), `final state ${i}`);
  }
  for (let i = 0; i < init.length; i++) assert.deepEqual(await b.readF32(init[i]!), h0[i], "the initial states are read only");
  assert.ok(Math.abs((await lossOf(params)) - loss) < 1e-5, "loss");
  let zeroLoss: number;
  {
    const g0 = zerosLike(b, lm.weights);
    zeroLoss = (await b.readF32(forwardBackward(lm, b, b.fromI32(ids, [10]), b.fromI32(shiftedTargets(ids, shape), [10]), shape, g0, 1).loss))[0]!;
  }
  assert.ok(Math.abs(zeroLoss - loss) > 1e-4, "the initial states change the loss");
  const named = namedTensors(cfg, grads);
  await checkFiniteDifferences(params, (name) => b.readF32(named.get(name)!), lossOf, r, 3);
});
