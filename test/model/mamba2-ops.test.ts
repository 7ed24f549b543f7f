/**
 * Mamba-2's CPU reference against itself and against direct computations:
 *  - the chunked SSD algorithm against its twin, the sequential recurrence, on random shapes (chunk boundaries
 *    crossed, L not a multiple of the chunk, several groups, a carried state, a gate, a clamp of dt);
 *  - the gated RMSNorm per group (mamba_ssm's) and Falcon's weightless norm over windows against float64 sums;
 *  - step mode (L = 1) and chunked prefill through the cache against the full forward, for Mamba-2 (groups > 1)
 *    and Falcon-Mamba.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { CpuBackend } from "../../src/backend/cpu/index.ts";
import { cols } from "../../src/backend/backend.ts";
import { ssdData, ssdSequentialF32 } from "../../src/backend/cpu/ssd.ts";
import { makeConfig } from "../../src/model/init.ts";
import { MambaLM, uploadWeights } from "../../src/model/mamba.ts";
import { MambaCache } from "../../src/model/cache.ts";
import { ssmStateShape, type MambaConfig } from "../../src/config.ts";
import { TestRng, perturbedParameters } from "../helpers/random.ts";
import { maxAbsDiff } from "../helpers/fixtures.ts";

const b = new CpuBackend();

interface Case { B: number; L: number; H: number; P: number; G: number; N: number; Q: number; state: boolean; gate: boolean; limit: [number, number] }
const cases: Case[] = [
  { B: 2, L: 13, H: 4, P: 3, G: 2, N: 5, Q: 4, state: true, gate: false, limit: [0, Infinity] },
  { B: 1, L: 8, H: 2, P: 2, G: 1, N: 3, Q: 8, state: false, gate: true, limit: [0, Infinity] },
  { B: 3, L: 1, H: 4, P: 2, G: 4, N: 4, Q: 4, state: true, gate: true, limit: [0, Infinity] },
  { B: 2, L: 20, H: 6, P: 4, G: 3, N: 6, Q: 7, state: true, gate: true, limit: [0.05, 0.6] },
  { B: 1, L: 17, H: 2, P: 5, G: 1, N: 8, Q: 1, state: false, gate: false, limit: [0, Infinity] },
];

test("ssdScan: the chunked algorithm matches the sequential recurrence (outputs and final states)", () => {
  for (const c of cases) {
    const r = new TestRng(c.B * 1000 + c.L * 10 + c.Q);
    const T = c.B * c.L, E = c.H * c.P, GN = c.G * c.N;
    // x, B, C as column windows of one wider tensor (as the model reads them), dt and z of another
    const xBC = b.fromF32(r.f32(T * (E + 2 * GN + 3)), [T, E + 2 * GN + 3]);
    const zdt = b.fromF32(r.f32(T * (E + c.H)), [T, E + c.H]);
    const dtBias = b.fromF32(r.f32(c.H, 1), [c.H]);
    const A_log = b.fromF32(Float32Array.from({ length: c.H }, () => Math.log(r.uniform(0.5, 8))), [c.H]);
    const D = b.fromF32(r.f32(c.H), [c.H]);
    const h0 = r.f32(c.B * c.H * c.P * c.N);
    const args = (state: Float32Array | null, chunkSize: number) => ({
      batch: c.B, seqLen: c.L, x: cols(xBC, 1, E), B: cols(xBC, 1 + E, GN), C: cols(xBC, 1 + E + GN, GN),
      dt: cols(zdt, E, c.H), dtBias, A_log, D, z: c.gate ? cols(zdt, 0, E) : null, headDim: c.P, nGroups: c.G,
      dtLimit: c.limit, chunkSize, state: state ? b.fromF32(state, [c.B, c.H, c.P, c.N]) : null,
    });
    const seqArgs = args(c.state ? h0 : null, c.Q);
    const { data, dims } = ssdData(seqArgs);
    const want = new Float32Array(T * E);
    ssdSequentialF32(data, dims, want);
    for (const Q of [c.Q, 3, 64]) {
      const a = args(c.state ? h0 : null, Q);
      const got = b.ssdScan(a);
      const scale = Math.max(...Array.from(want, Math.abs));
      const d = maxAbsDiff((got as unknown as { f32: Float32Array }).f32, want);
      assert.ok(d <= 1e-5 * scale, `${JSON.stringify(c)} Q ${Q}: max diff ${d} (scale ${scale})`);
      if (c.state) {
        const s1 = (a.state as unknown as { f32: Float32Array }).f32, s2 = (seqArgs.state as unknown as { f32: Float32Array }).f32;
        assert.ok(maxAbsDiff(s1, s2) <= 1e-5 * Math.max(...Array.from(s2, Math.abs)), `${JSON.stringify(c)} Q ${Q}: final state`);
      }
    }
  }
});

test("ssdScan: a direct float64 evaluation of one head's sum (no recurrence) agrees", () => {
  // y_t = Σ_{s ≤ t} exp(Σ_{s < k ≤ t} dt_k A) dt_s (C_t · B_s) x_s + D x_t, from zero state
  const [L, P, N] = [9, 2, 3];
  const r = new TestRng(5);
  const x = r.f32(L * P), dtRaw = r.f32(L), Bv = r.f32(L * N), Cv = r.f32(L * N);
  const A = -1.7, Dh = 0.4;
  const y = b.ssdScan({
    batch: 1, seqLen: L, x: b.fromF32(x, [L, P]), dt: b.fromF32(dtRaw, [L, 1]), dtBias: b.fromF32(new Float32Array(1), [1]),
    A_log: b.fromF32(Float32Array.of(Math.log(-A)), [1]), B: b.fromF32(Bv, [L, N]), C: b.fromF32(Cv, [L, N]),
    D: b.fromF32(Float32Array.of(Dh), [1]), z: null, headDim: P, nGroups: 1, dtLimit: [0, Infinity], chunkSize: 4, state: null,
  }) as unknown as { f32: Float32Array };
  const dt = Array.from(dtRaw, (v) => Math.log1p(Math.exp(v)));
  for (let t = 0; t < L; t++) for (let p = 0; p < P; p++) {
    let s = Dh * x[t * P + p]!;
    for (let u = 0; u <= t; u++) {
      let decay = 0;
      for (let k = u + 1; k <= t; k++) decay += dt[k]! * A;
      let cb = 0;
      for (let n = 0; n < N; n++) cb += Cv[t * N + n]! * Bv[u * N + n]!;
      s += Math.exp(decay) * dt[u]! * cb * x[u * P + p]!;
    }
    assert.ok(Math.abs(y.f32[t * P + p]! - s) < 1e-5, `y[${t}, ${p}] ${y.f32[t * P + p]} vs ${s}`);
  }
});

test("gatedRmsNorm normalizes per group of E / G channels (mamba_ssm), gate after or before the norm", () => {
  const [T, E, gs] = [3, 12, 4];
  const r = new TestRng(8);
  const y = r.f32(T * E), zw = r.f32(T * (E + 2)), w = r.f32(E, 1);
  for (const before of [false, true]) {
    const out = (b.gatedRmsNorm(b.fromF32(y, [T, E]), cols(b.fromF32(zw, [T, E + 2]), 2, E), b.fromF32(w, [E]), 1e-5, gs, before) as unknown as { f32: Float32Array }).f32;
    for (let t = 0; t < T; t++) for (let g = 0; g < E / gs; g++) {
      const silu = (c: number) => { const z = zw[t * (E + 2) + 2 + c]!; return z / (1 + Math.exp(-z)); };
      const v = Array.from({ length: gs }, (_, i) => y[t * E + g * gs + i]! * (before ? 1 : silu(g * gs + i)));
      const rstd = 1 / Math.sqrt(v.reduce((a, q) => a + q * q, 0) / gs + 1e-5);
      for (let i = 0; i < gs; i++) {
        const c = g * gs + i;
        const want = v[i]! * rstd * w[c]! * (before ? silu(c) : 1);
        assert.ok(Math.abs(out[t * E + c]! - want) < 1e-5, `before ${before} [${t}, ${c}]: ${out[t * E + c]} vs ${want}`);
      }
    }
  }
});

test("segmentRmsNorm normalizes each window on its own, without weights", () => {
  const widths = [2, 3, 3];
  const r = new TestRng(9);
  const x = r.f32(2 * 8, 3);
  const out = (b.segmentRmsNorm(b.fromF32(x, [2, 8]), widths, 1e-6) as unknown as { f32: Float32Array }).f32;
  for (let t = 0; t < 2; t++) {
    let c0 = 0;
    for (const m of widths) {
      const v = Array.from(x.subarray(t * 8 + c0, t * 8 + c0 + m));
      const rstd = 1 / Math.sqrt(v.reduce((a, q) => a + q * q, 0) / m + 1e-6);
      v.forEach((q, i) => assert.ok(Math.abs(out[t * 8 + c0 + i]! - q * rstd) < 1e-6));
      c0 += m;
    }
  }
});

function stepConfigs(): [string, MambaConfig][] {
  return [
    ["mamba2, 2 groups, biases", makeConfig({ family: "mamba2", vocabSize: 11, hiddenSize: 8, numLayers: 2, stateSize: 4, convKernel: 3,
      useBias: true, tieEmbeddings: false, mamba2: { headDim: 4, nGroups: 2, chunkSize: 3 } })],
    ["mamba2, norm before the gate, dt clamped", makeConfig({ family: "mamba2", vocabSize: 11, hiddenSize: 8, numLayers: 2, stateSize: 4,
      mamba2: { headDim: 2, nGroups: 4, chunkSize: 4, normBeforeGate: true, timeStepLimit: [0.01, 0.8] } })],
    ["mamba2 without the gated norm", makeConfig({ family: "mamba2", vocabSize: 11, hiddenSize: 8, numLayers: 1, stateSize: 4,
      mamba2: { headDim: 4, chunkSize: 5, gatedNorm: false } })],
    ["falcon-mamba", makeConfig({ family: "falcon-mamba", vocabSize: 11, hiddenSize: 8, numLayers: 2, stateSize: 4, timeStepRank: 2 })],
  ];
}

for (const [name, cfg] of stepConfigs()) {
  test(`${name}: step mode and chunked prefill through the cache match the full forward`, async () => {
    const lm = new MambaLM(cfg, b, uploadWeights(b, cfg, perturbedParameters(cfg, 3)));
    const [B, L] = [2, 11];
    const ids = new TestRng(4).ids(B * L, cfg.vocabSize);
    const full = await b.readF32(lm.logits(lm.hidden(b.fromI32(ids, [B * L]), { batch: B, seqLen: L }, null))); // [B·L, V]
    const V = cfg.paddedVocabSize;
    for (const split of [[1], [4, 7], [11]]) {
      const cache = MambaCache.zeros(b, cfg, B);
      assert.deepEqual(cache.ssm[0]!.shape, ssmStateShape(cfg, B));
      let t0 = 0;
      const sizes = split.length === 1 && split[0] === 1 ? Array(L).fill(1) : split;
      for (const n of sizes) {
        const part = new Int32Array(B * n);
        for (let r = 0; r < B; r++) part.set(ids.subarray(r * L + t0, r * L + t0 + n), r * n);
        const got = await b.readF32(lm.logits(lm.hidden(b.fromI32(part, [B * n]), { batch: B, seqLen: n }, cache)));
        for (let r = 0; r < B; r++) {
          const want = full.subarray((r * L + t0) * V, (r * L + t0 + n) * V);
          const d = maxAbsDiff(got.subarray(r * n * V, (r + 1) * n * V), want);
          assert.ok(d < 2e-5, `pieces ${sizes}: row ${r} positions ${t0}..${t0 + n}: ${d}`);
        }
        t0 += n;
      }
    }
  });
}
