/**
 * Step mode against the full forward, on random odd-sized configs whose parameters are all off their defaults:
 *  - the full forward against an independent float64 per-token reference (test/helpers/naive.ts);
 *  - prefill of j tokens then one-token steps (batch > 1 too) == the full forward, position by position;
 *  - chunked prefill (chunks 1, 3, L) == one shot, and the cache equals the reference's final states;
 *  - batched generate of prompts of different lengths == each prompt alone (greedy and seeded sampling);
 *  - generation never emits a padded id (>= vocabSize) even when the padded head rows dominate the logits.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { modelFromTensors, makeConfig, type MambaConfig, type MambaModel } from "../../src/index.ts";
import { MambaCache } from "../../src/model/cache.ts";
import { prefill } from "../../src/generate/generate.ts";
import type { HostTensor } from "../../src/io/tensor.ts";
import { assertClose } from "../helpers/fixtures.ts";
import { TestRng, perturbedParameters } from "../helpers/random.ts";
import { naiveForward, naiveGreedy } from "../helpers/naive.ts";

interface Case {
  name: string;
  cfg: MambaConfig;
  batch: number;
  seed: number;
}

const cases: Case[] = [
  {
    name: "D10 E22 N3 R1 K2, in/out bias, no conv bias, untied, padded vocab",
    cfg: makeConfig({ vocabSize: 37, paddedVocabSize: 40, hiddenSize: 10, intermediateSize: 22, stateSize: 3, timeStepRank: 1,
      convKernel: 2, numLayers: 2, useBias: true, useConvBias: false, tieEmbeddings: false }),
    batch: 3, seed: 1,
  },
  {
    name: "D12 E20 N5 R3 K3, no linear bias, conv bias, tied, padded vocab",
    cfg: makeConfig({ vocabSize: 50, paddedVocabSize: 56, hiddenSize: 12, intermediateSize: 20, stateSize: 5, timeStepRank: 3,
      convKernel: 3, numLayers: 2, useBias: false, useConvBias: true, tieEmbeddings: true }),
    batch: 2, seed: 2,
  },
  {
    name: "D16 E32 N16 R2 K4, all biases, tied",
    cfg: makeConfig({ vocabSize: 29, hiddenSize: 16, intermediateSize: 32, stateSize: 16, timeStepRank: 2,
      convKernel: 4, numLayers: 1, useBias: true, useConvBias: true, tieEmbeddings: true }),
    batch: 1, seed: 3,
  },
  {
    name: "D9 E14 N4 R2 K4, no biases at all, untied, 3 layers",
    cfg: makeConfig({ vocabSize: 31, paddedVocabSize: 32, hiddenSize: 9, intermediateSize: 14, stateSize: 4, timeStepRank: 2,
      convKernel: 4, numLayers: 3, useBias: false, useConvBias: false, tieEmbeddings: false }),
    batch: 2, seed: 4,
  },
];

const TOL = 1e-4;

async function cpuModel(cfg: MambaConfig, params: Map<string, HostTensor>): Promise<MambaModel> {
  // modelFromTensors validates and uploads copies; the parameter map stays usable by the reference
  return modelFromTensors(cfg, params, { backend: "cpu" });
}

/** logits of lm.hidden over ids [B, L] with a cache (advanced in place): [B·L, Vpad] */
async function runWithCache(model: MambaModel, cache: MambaCache, ids: Int32Array, batch: number, seqLen: number): Promise<Float32Array> {
  const b = model.backend;
  const t = b.fromI32(ids, [ids.length]);
  const h = model.lm.hidden(t, { batch, seqLen }, cache);
  const logits = model.lm.logits(h);
  const out = await b.readF32(logits);
  b.dispose(t, h, logits);
  return out;
}

/** ids[b, from..to) of a [B, L] matrix, row-major */
function columns(ids: Int32Array, B: number, L: number, from: number, to: number): Int32Array {
  const out = new Int32Array(B * (to - from));
  for (let b = 0; b < B; b++) out.set(ids.subarray(b * L + from, b * L + to), b * (to - from));
  return out;
}

for (const c of cases) {
  describe(c.name, { timeout: 600_000 }, () => {
    const { cfg, batch: B } = c;
    const V = cfg.paddedVocabSize;
    const L = 9;
    const params = perturbedParameters(cfg, c.seed);
    const rng = new TestRng(100 + c.seed);
    const ids = rng.ids(B * L, cfg.vocabSize);
    const ref = naiveForward(cfg, params, ids, B, L);

    test("forward == independent per-token float64 reference (logits and hidden state)", async () => {
      const model = await cpuModel(cfg, params);
      const out = await model.forward(ids, { batch: B, seqLen: L }, { hiddenStates: true });
      assert.equal(out.logits.length, B * L * V);
      assertClose(out.logits, ref.logits, TOL, "logits");
      assertClose(out.lastHiddenState!, ref.hidden, TOL, "last hidden state");
      // the reference is not degenerate: logits vary across positions and rows
      let spread = 0;
      for (let i = 0; i < ref.logits.length; i++) spread = Math.max(spread, Math.abs(ref.logits[i]! - ref.logits[i % V]!));
      assert.ok(spread > 0.1, `logits barely depend on the input (spread ${spread})`);
      await model.dispose();
    });

    for (const j of [1, 4, L - 1]) {
      test(`prefill ${j} tokens, then step one token at a time (batch ${B}) == full forward`, async () => {
        const model = await cpuModel(cfg, params);
        const full = (await model.forward(ids, { batch: B, seqLen: L })).logits;
        const cache = MambaCache.zeros(model.backend, cfg, B);
        const got = new Float32Array(B * L * V);
        const pre = await runWithCache(model, cache, columns(ids, B, L, 0, j), B, j);
        for (let b = 0; b < B; b++) got.set(pre.subarray(b * j * V, (b + 1) * j * V), b * L * V);
        for (let t = j; t < L; t++) {
          const step = await runWithCache(model, cache, columns(ids, B, L, t, t + 1), B, 1);
          for (let b = 0; b < B; b++) got.set(step.subarray(b * V, (b + 1) * V), (b * L + t) * V);
        }
        assertClose(got, full, TOL, "logits of prefill + steps vs forward");
        assertClose(got, ref.logits, TOL, "logits of prefill + steps vs reference");
        cache.dispose();
        await model.dispose();
      });
    }

    test("chunked prefill (chunks 1, 3, L) == one shot; the cache holds the reference's final states", async () => {
      const model = await cpuModel(cfg, params);
      const b = model.backend;
      const prompt = ids.subarray(0, L); // row 0
      const row0 = naiveForward(cfg, params, prompt, 1, L);
      const lastRef = row0.logits.subarray((L - 1) * V, L * V);
      const { intermediateSize: E, stateSize: N, convKernel: K } = cfg;
      for (const chunk of [1, 3, L, L + 5]) {
        const { cache, logits } = await prefill(model.lm, prompt, chunk);
        assertClose(await b.readF32(logits), lastRef, TOL, `last logits, chunk ${chunk}`);
        for (let i = 0; i < cfg.numLayers; i++) {
          assert.deepEqual([...cache.conv[i]!.shape], [1, K - 1, E]);
          assert.deepEqual([...cache.ssm[i]!.shape], [1, E, N]);
          assertClose(await b.readF32(cache.conv[i]!), row0.conv[i]!, TOL, `conv state of layer ${i}, chunk ${chunk}`);
          assertClose(await b.readF32(cache.ssm[i]!), row0.ssm[i]!, TOL, `ssm state of layer ${i}, chunk ${chunk}`);
        }
        cache.dispose();
        b.dispose(logits);
      }
      await model.dispose();
    });

    test("batched generate of prompts of different lengths == each alone (greedy and seeded sampling)", async () => {
      const model = await cpuModel(cfg, params);
      const prompts = [rng.ids(1, cfg.vocabSize), rng.ids(6, cfg.vocabSize), rng.ids(3, cfg.vocabSize)];
      const n = 7;
      const greedy = await model.generate(prompts, { maxNewTokens: n, stopTokens: [] });
      for (let r = 0; r < prompts.length; r++) {
        const alone = await model.generate(prompts[r]!, { maxNewTokens: n, stopTokens: [] });
        assert.deepEqual(Array.from(greedy[r]!), Array.from(alone), `greedy row ${r}`);
        assert.deepEqual(Array.from(alone), naiveGreedy(cfg, params, prompts[r]!, n), `greedy row ${r} vs reference`);
      }
      const opts = { maxNewTokens: n, stopTokens: [], temperature: 1.3, topK: 20, topP: 0.95, seed: 11 };
      const sampled = await model.generate(prompts, opts);
      for (let r = 0; r < prompts.length; r++) {
        // each row draws from its own generator, stream r of the seed; alone, a prompt is row 0
        const alone = await model.generate([...prompts.slice(0, r).map(() => prompts[r]!), prompts[r]!], opts);
        assert.deepEqual(Array.from(sampled[r]!), Array.from(alone[r]!), `sampled row ${r}`);
        for (const id of sampled[r]!) assert.ok(id >= 0 && id < cfg.vocabSize);
      }
      // a stop token ends its own row only
      const stop = greedy[1]![prompts[1]!.length + 2]!;
      const stopped = await model.generate(prompts, { maxNewTokens: n, stopTokens: [stop] });
      for (let r = 0; r < prompts.length; r++) {
        const full = Array.from(greedy[r]!);
        const first = full.indexOf(stop, prompts[r]!.length);
        const want = first < 0 ? full : full.slice(0, first + 1);
        assert.deepEqual(Array.from(stopped[r]!), want, `row ${r} with stop token ${stop}`);
      }
      await model.dispose();
    });
  });
}

describe("padded vocabulary", () => {
  for (const tie of [true, false]) {
    test(`generation never emits an id >= vocabSize when padded head rows dominate (${tie ? "tied" : "untied"})`, async () => {
      const D = 8;
      const cfg = makeConfig({ vocabSize: 21, paddedVocabSize: 40, hiddenSize: D, intermediateSize: 18, stateSize: 3,
        timeStepRank: 2, convKernel: 3, numLayers: 2, tieEmbeddings: tie, useBias: !tie });
      const params = perturbedParameters(cfg, tie ? 21 : 22);
      // padded rows ±1000·e_d: the normalized hidden state has mean square 1, so some |h_d| >= 1 and one padded
      // logit is >= 1000·min(norm_f weight) >= 600, far above every real logit
      const head = params.get(tie ? "backbone.embeddings.weight" : "lm_head.weight")!.data as Float32Array;
      for (let d = 0; d < D; d++) {
        head.fill(0, (cfg.vocabSize + 2 * d) * D, (cfg.vocabSize + 2 * d + 2) * D);
        head[(cfg.vocabSize + 2 * d) * D + d] = 1000;
        head[(cfg.vocabSize + 2 * d + 1) * D + d] = -1000;
      }
      const model = await cpuModel(cfg, params);
      const rng = new TestRng(5);
      const prompts = [rng.ids(4, cfg.vocabSize), rng.ids(1, cfg.vocabSize)];
      const n = 12;
      const runs = [
        await model.generate(prompts, { maxNewTokens: n, stopTokens: [] }),
        await model.generate(prompts, { maxNewTokens: n, stopTokens: [], temperature: 1, seed: 3 }),
        await model.generate(prompts, { maxNewTokens: n, stopTokens: [], temperature: 50, seed: 4 }),
        await model.generate(prompts, { maxNewTokens: n, stopTokens: [], temperature: 2, topK: 5, topP: 0.9, minP: 0.01, repetitionPenalty: 1.5, seed: 5 }),
      ];
      for (const run of runs) {
        for (const row of run) for (const id of row) assert.ok(id >= 0 && id < cfg.vocabSize, `emitted padded id ${id}`);
      }
      // greedy is the argmax over the real vocabulary, and the padded logits really were the largest
      for (let r = 0; r < prompts.length; r++) {
        assert.deepEqual(Array.from(runs[0]![r]!), naiveGreedy(cfg, params, prompts[r]!, n));
        const seq = runs[0]![r]!;
        const out = await model.forward(seq, { batch: 1, seqLen: seq.length });
        for (let t = 0; t < seq.length; t++) {
          const row = out.logits.subarray(t * cfg.paddedVocabSize, (t + 1) * cfg.paddedVocabSize);
          const real = Math.max(...row.subarray(0, cfg.vocabSize));
          const padded = Math.max(...row.subarray(cfg.vocabSize));
          assert.ok(padded > real + 100, `position ${t}: padded max ${padded} vs real max ${real}`);
        }
      }
      await model.dispose();
    });
  }
});
