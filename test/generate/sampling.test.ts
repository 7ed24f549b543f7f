/**
 * Sampling semantics against a reference written here from the Hugging Face processors' definitions
 * (repetition penalty, temperature, top-k, top-p, min-p, in that order): sampleRow's inverse-CDF draw over a fine
 * grid of uniforms must reproduce the reference distribution; greedy is the argmax; seeded generation is
 * reproducible; the seeded generator matches an independent BigInt implementation of SplitMix32 + xoshiro128**.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { sampleRow, type SamplingParams } from "../../src/generate/sampling.ts";
import { Rng } from "../../src/generate/rng.ts";
import { makeConfig, modelFromTensors } from "../../src/index.ts";
import { TestRng, perturbedParameters } from "../helpers/random.ts";

const base: SamplingParams = { vocabSize: 0, temperature: 1, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1 };

/** The distribution the processors leave over ids [0, vocabSize), in float64. */
function reference(logits: Float32Array, p: SamplingParams, history: number[] | null): Float64Array {
  const V = p.vocabSize;
  const x = Array.from(logits.subarray(0, V), Number);
  if (history && p.repetitionPenalty !== 1) {
    for (const id of new Set(history)) x[id] = x[id]! < 0 ? x[id]! * p.repetitionPenalty : x[id]! / p.repetitionPenalty;
  }
  const probs = new Float64Array(V);
  if (p.temperature === 0) {
    probs[x.indexOf(Math.max(...x))] = 1;
    return probs;
  }
  const scaled = x.map((v) => v / p.temperature);
  let alive = scaled.map(() => true);
  if (p.topK > 0) {
    // TopK: remove tokens below the k-th largest score
    const kth = [...scaled].sort((a, b) => b - a)[Math.min(p.topK, V) - 1]!;
    alive = scaled.map((v) => v >= kth);
  }
  const softmax = () => {
    const m = Math.max(...scaled.filter((_, i) => alive[i]));
    const e = scaled.map((v, i) => (alive[i] ? Math.exp(v - m) : 0));
    const s = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / s);
  };
  if (p.topP < 1) {
    // TopP: sorted ascending, remove tokens whose cumulative mass is <= 1 - top_p; equivalently, sorted
    // descending, keep a token when the mass before it is below top_p
    const pr = softmax();
    const order = pr.map((_, i) => i).filter((i) => alive[i]).sort((a, b) => pr[b]! - pr[a]!);
    let before = 0;
    for (const i of order) {
      if (before >= p.topP) alive[i] = false;
      before += pr[i]!;
    }
  }
  if (p.minP > 0) {
    const pr = softmax();
    const top = Math.max(...pr);
    alive = alive.map((a, i) => a && pr[i]! >= p.minP * top);
  }
  const pr = softmax();
  for (let i = 0; i < V; i++) probs[i] = alive[i] ? pr[i]! : 0;
  return probs;
}

/** Frequencies of sampleRow over the uniform grid u = (i + 1/2) / M. */
function gridFrequencies(logits: Float32Array, p: SamplingParams, history: number[] | null, M: number): Float64Array {
  const f = new Float64Array(p.vocabSize);
  const h = history ? Int32Array.from(history) : null;
  for (let i = 0; i < M; i++) {
    const id = sampleRow(logits, p, h, (i + 0.5) / M);
    assert.ok(Number.isInteger(id) && id >= 0 && id < p.vocabSize, `drew ${id}`);
    f[id]! += 1 / M;
  }
  return f;
}

function assertSameDistribution(f: Float64Array, ref: Float64Array, tol: number, what: string): void {
  for (let i = 0; i < ref.length; i++) {
    if (ref[i] === 0) assert.equal(f[i], 0, `${what}: id ${i} is drawn but the processors remove it`);
    else assert.ok(Math.abs(f[i]! - ref[i]!) <= tol, `${what}: id ${i} drawn with frequency ${f[i]} vs probability ${ref[i]}`);
  }
}

describe("sampleRow", () => {
  test("greedy is the argmax over the real vocabulary (first of equal maxima); padded columns are ignored", () => {
    const l = Float32Array.from([0.5, 3, -1, 3, 2, 99, 99]);
    const p = { ...base, vocabSize: 5, temperature: 0 };
    for (const u of [0, 0.5, 0.99]) assert.equal(sampleRow(l, p, null, u), 1);
    const r = new TestRng(1);
    for (let trial = 0; trial < 50; trial++) {
      const V = r.int(1, 40);
      const x = r.f32(V + r.int(0, 5), 2);
      const argmax = Array.from(x.subarray(0, V)).indexOf(Math.max(...x.subarray(0, V)));
      assert.equal(sampleRow(x, { ...base, vocabSize: V, temperature: 0 }, null, r.next()), argmax);
    }
  });

  test("repetition penalty (HF rule: positive logits divided, negative multiplied) changes the greedy choice", () => {
    const l = Float32Array.from([2, -1, 0.5, 1.9, -0.2]);
    const p = { ...base, vocabSize: 5, temperature: 0, repetitionPenalty: 2 };
    assert.equal(sampleRow(l, { ...p, repetitionPenalty: 1 }, Int32Array.of(0), 0), 0);
    assert.equal(sampleRow(l, p, Int32Array.of(0, 1, 1), 0), 3); // 2 -> 1 < 1.9
    assert.equal(sampleRow(l, p, Int32Array.of(0, 3), 0), 0); // 2 -> 1 and 1.9 -> 0.95: 0 still wins
    assert.equal(sampleRow(l, { ...p, repetitionPenalty: 5 }, Int32Array.of(0, 3, 3), 0), 2); // 0.4 and 0.38 < 0.5
    assert.equal(sampleRow(l, p, Int32Array.of(4, 4), 0), 0); // unseen ids are untouched
  });

  test("repetition penalty on negative logits pushes them further down", () => {
    // all negative: the least negative wins, unless it was seen (then multiplied by the penalty)
    const l = Float32Array.from([-1, -1.5, -3]);
    const p = { ...base, vocabSize: 3, temperature: 0, repetitionPenalty: 1.6 };
    assert.equal(sampleRow(l, p, Int32Array.of(0), 0), 1); // -1.6 < -1.5
    assert.equal(sampleRow(l, p, Int32Array.of(0, 1), 0), 0); // -1.6 vs -2.4
    assert.equal(sampleRow(l, { ...p, repetitionPenalty: 1.4 }, Int32Array.of(0), 0), 0); // -1.4 > -1.5
  });

  test("top-p keeps the smallest prefix whose mass reaches p", () => {
    const l = Float32Array.from([Math.log(0.5), Math.log(0.3), Math.log(0.15), Math.log(0.05)]);
    const kept = (topP: number) => {
      const f = gridFrequencies(l, { ...base, vocabSize: 4, topP }, null, 2000);
      return Array.from(f).map((v, i) => (v > 0 ? i : -1)).filter((i) => i >= 0);
    };
    assert.deepEqual(kept(0.3), [0]);
    assert.deepEqual(kept(0.49), [0]);
    assert.deepEqual(kept(0.51), [0, 1]);
    assert.deepEqual(kept(0.79), [0, 1]);
    assert.deepEqual(kept(0.81), [0, 1, 2]);
    assert.deepEqual(kept(0.96), [0, 1, 2, 3]);
    assert.deepEqual(kept(1), [0, 1, 2, 3]);
  });

  test("top-k keeps the k best; min-p drops tokens below minP times the best", () => {
    const l = Float32Array.from([1, 4, 2, 3, 0, -1]);
    const ids = (p: Partial<SamplingParams>) => {
      const f = gridFrequencies(l, { ...base, vocabSize: 6, ...p }, null, 3000);
      return Array.from(f).map((v, i) => (v > 0 ? i : -1)).filter((i) => i >= 0);
    };
    assert.deepEqual(ids({ topK: 1 }), [1]);
    assert.deepEqual(ids({ topK: 3 }), [1, 2, 3]);
    assert.deepEqual(ids({ topK: 100 }), [0, 1, 2, 3, 4, 5]);
    // p_i / p_best = e^(l_i - 4): 3 -> 0.37, 2 -> 0.135, 1 -> 0.05
    assert.deepEqual(ids({ minP: 0.3 }), [1, 3]);
    assert.deepEqual(ids({ minP: 0.1 }), [1, 2, 3]);
    assert.deepEqual(ids({ minP: 0.1, temperature: 0.5 }), [1, 3]); // 0.135 -> 0.018 at T = 0.5
  });

  test("the distribution of draws equals the processors' distribution, over many settings", () => {
    const r = new TestRng(2);
    const M = 4000;
    const settings: Partial<SamplingParams>[] = [];
    for (const temperature of [0.4, 1, 2.5]) {
      for (const [topK, topP, minP] of [[0, 1, 0], [5, 1, 0], [0, 0.7, 0], [0, 1, 0.1], [8, 0.9, 0.02], [1, 1, 0], [0, 0.05, 0], [3, 0.6, 0.4]]) {
        for (const repetitionPenalty of [1, 1.5]) settings.push({ temperature, topK, topP, minP, repetitionPenalty });
      }
    }
    for (const s of settings) {
      const V = r.int(5, 30);
      const logits = r.f32(V + r.int(0, 4), 1.5); // a few padded columns past vocabSize
      for (let i = V; i < logits.length; i++) logits[i] = 50;
      const history = Array.from({ length: r.int(0, 6) }, () => r.int(0, V - 1));
      const p = { ...base, ...s, vocabSize: V };
      assertSameDistribution(gridFrequencies(logits, p, history, M), reference(logits, p, history), 2 / M, JSON.stringify(s));
    }
  });

  test("seeded draws pass a chi-square test against the processors' distribution", () => {
    const logits = Float32Array.from([0.3, 1.2, -0.5, 0.9, 0, -1.1]);
    for (const p of [{ ...base, vocabSize: 6 }, { ...base, vocabSize: 6, topK: 3, temperature: 0.8 }]) {
      const ref = reference(logits, p, null);
      const rng = new Rng(123, 0);
      const n = 20000;
      const counts = new Float64Array(6);
      for (let i = 0; i < n; i++) counts[sampleRow(logits, p, null, rng.next())]! += 1;
      let chi2 = 0, df = -1;
      for (let i = 0; i < 6; i++) {
        if (ref[i] === 0) { assert.equal(counts[i], 0); continue; }
        chi2 += (counts[i]! - n * ref[i]!) ** 2 / (n * ref[i]!);
        df++;
      }
      // the 99.99th percentile of chi-square is 25.7 at 5 degrees of freedom, 18.4 at 2
      assert.ok(chi2 < (df === 5 ? 25.7 : 18.4), `chi-square ${chi2.toFixed(2)} with ${df} degrees of freedom`);
    }
  });
});

describe("seeded generation", () => {
  test("the same seed gives the same ids; different seeds give different ids", async () => {
    const cfg = makeConfig({ vocabSize: 60, hiddenSize: 8, numLayers: 1, stateSize: 4, tieEmbeddings: false });
    const model = await modelFromTensors(cfg, perturbedParameters(cfg, 3), { backend: "cpu" });
    const prompt = Int32Array.of(5, 6, 7);
    const opts = { maxNewTokens: 20, stopTokens: [], temperature: 1.5 };
    const a = Array.from(await model.generate(prompt, { ...opts, seed: 1 }));
    const b = Array.from(await model.generate(prompt, { ...opts, seed: 1 }));
    assert.deepEqual(a, b);
    const others = await Promise.all([2, 3, 4].map(async (seed) => Array.from(await model.generate(prompt, { ...opts, seed }))));
    for (const o of others) assert.notDeepEqual(o, a);
    // the default seed is 0
    assert.deepEqual(Array.from(await model.generate(prompt, opts)), Array.from(await model.generate(prompt, { ...opts, seed: 0 })));
    await model.dispose();
  });
});

// ---------------------------------------------------------------------------------------------------------------
// An independent Rng: SplitMix32 (murmur3's finalizer) seeding xoshiro128**, in BigInt arithmetic mod 2^32.

const M32 = 0xffffffffn;
const mul = (a: bigint, b: bigint) => (a * b) & M32;
const rotl = (x: bigint, k: bigint) => ((x << k) | (x >> (32n - k))) & M32;

class RefRng {
  s: bigint[] = [];
  constructor(seed: number, stream = 0) {
    let x = (BigInt(seed) & M32) ^ mul(BigInt(stream + 1), 0x9e3779b9n);
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9n) & M32;
      let z = x;
      z = mul(z ^ (z >> 16n), 0x85ebca6bn);
      z = mul(z ^ (z >> 13n), 0xc2b2ae35n);
      this.s.push(z ^ (z >> 16n));
    }
    if (this.s.every((v): boolean => v === 0n)) this.s[0] = 1n;
  }
  nextU32(): number {
    const s = this.s;
    const result = mul(rotl(mul(s[1]!, 5n), 7n), 9n);
    const t = (s[1]! << 9n) & M32;
    s[2] = s[2]! ^ s[0]!;
    s[3] = s[3]! ^ s[1]!;
    s[1] = s[1]! ^ s[2]!;
    s[0] = s[0]! ^ s[3]!;
    s[2] = s[2]! ^ t;
    s[3] = rotl(s[3]!, 11n);
    return Number(result);
  }
}

describe("Rng", () => {
  test("matches the reference SplitMix32 + xoshiro128** for several seeds and streams", () => {
    for (const [seed, stream] of [[0, 0], [0, 1], [1, 0], [42, 7], [2 ** 31, 3], [-1, 0], [123456789, 1000]] as const) {
      const a = new Rng(seed, stream), b = new RefRng(seed, stream);
      for (let i = 0; i < 200; i++) assert.equal(a.nextU32(), b.nextU32(), `seed ${seed} stream ${stream} draw ${i}`);
    }
  });

  test("xoshiro128** from the state {1, 2, 3, 4} gives the published first outputs", () => {
    const rng = new Rng(0);
    (rng as unknown as { s: Uint32Array }).s.set([1, 2, 3, 4]);
    const ref = new RefRng(0);
    ref.s = [1n, 2n, 3n, 4n];
    assert.equal(rng.nextU32(), 11520); // rotl(2·5, 7)·9
    assert.equal(rng.nextU32(), 0);
    ref.nextU32(); ref.nextU32();
    for (let i = 0; i < 50; i++) assert.equal(rng.nextU32(), ref.nextU32());
  });

  test("same seed and stream, same draws; other seeds or streams differ", () => {
    const draws = (seed: number, stream: number) => { const r = new Rng(seed, stream); return Array.from({ length: 16 }, () => r.next()); };
    assert.deepEqual(draws(5, 0), draws(5, 0));
    assert.notDeepEqual(draws(5, 0), draws(6, 0));
    assert.notDeepEqual(draws(5, 0), draws(5, 1));
  });

  test("next() is a multiple of 2^-24 in [0, 1); int(n) is in [0, n); uniform and normal moments", () => {
    const r = new Rng(99);
    const n = 40000;
    let sum = 0, sumN = 0, sumN2 = 0;
    const bins = new Float64Array(7);
    for (let i = 0; i < n; i++) {
      const u = r.next();
      assert.ok(u >= 0 && u < 1 && Number.isInteger(u * 2 ** 24));
      assert.equal(Math.fround(u), u);
      sum += u;
      const k = r.int(7);
      assert.ok(Number.isInteger(k) && k >= 0 && k < 7);
      bins[k]! += 1;
      const z = r.normal();
      assert.ok(Number.isFinite(z));
      sumN += z; sumN2 += z * z;
    }
    assert.ok(Math.abs(sum / n - 0.5) < 0.01, `mean of next() ${sum / n}`);
    for (const b of bins) assert.ok(Math.abs(b / n - 1 / 7) < 0.01, `int(7) bin frequency ${b / n}`);
    assert.ok(Math.abs(sumN / n) < 0.03, `normal mean ${sumN / n}`);
    assert.ok(Math.abs(sumN2 / n - 1) < 0.05, `normal variance ${sumN2 / n}`);
  });
});
