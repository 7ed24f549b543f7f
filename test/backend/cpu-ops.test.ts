/**
 * Every CPU backend op against a naive float64 implementation written here, on random shapes including L = 1,
 * widths that are not multiples of the matmul's 4×4 blocks, column windows of wider matrices, and states carried
 * across chunks.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { CpuBackend } from "../../src/backend/cpu/index.ts";
import { cols, type Tensor, type TensorOrCols } from "../../src/backend/backend.ts";
import { MambaError } from "../../src/errors.ts";
import { toBF16Bits, toF16Bits } from "../../src/io/tensor.ts";
import { assertClose } from "../helpers/fixtures.ts";
import { TestRng } from "../helpers/random.ts";

const be = new CpuBackend();
const read = (t: Tensor) => be.readF32(t);
const silu = (v: number) => v / (1 + Math.exp(-v));
const softplus = (v: number) => (v > 20 ? v : Math.log(1 + Math.exp(v)));

/** A [rows, width] matrix, optionally embedded at column col0 of a wider [rows, ld] matrix (garbage elsewhere). */
function maybeWindow(r: TestRng, data: Float32Array, rows: number, width: number, windowed: boolean): { arg: TensorOrCols; } {
  if (!windowed) return { arg: be.fromF32(data, [rows, width]) };
  const col0 = r.int(1, 3), ld = col0 + width + r.int(0, 3);
  const big = r.f32(rows * ld, 100); // values outside the window would wreck the result if read
  for (let i = 0; i < rows; i++) big.set(data.subarray(i * width, (i + 1) * width), i * ld + col0);
  return { arg: cols(be.fromF32(big, [rows, ld]), col0, width) };
}

describe("matmul", () => {
  const r = new TestRng(1);
  const shapes: [number, number, number][] = [
    [1, 1, 1], [1, 7, 5], [3, 4, 4], [4, 8, 3], [5, 9, 7], [8, 16, 12], [9, 3, 13], [13, 10, 6], [1, 64, 33],
  ];
  for (const [T, K, Nout] of shapes) {
    for (const windowed of [false, true]) {
      for (const withBias of [false, true]) {
        test(`[${T}, ${K}] x [${Nout}, ${K}]ᵀ${withBias ? " + bias" : ""}${windowed ? ", column window" : ""}`, async () => {
          const x = r.f32(T * K), w = r.f32(Nout * K), bias = withBias ? r.f32(Nout) : null;
          const want = new Float64Array(T * Nout);
          for (let t = 0; t < T; t++) {
            for (let n = 0; n < Nout; n++) {
              let s = bias ? bias[n]! : 0;
              for (let k = 0; k < K; k++) s += x[t * K + k]! * w[n * K + k]!;
              want[t * Nout + n] = s;
            }
          }
          const { arg } = maybeWindow(r, x, T, K, windowed);
          const y = be.matmul(arg, be.fromF32(w, [Nout, K]), bias ? be.fromF32(bias, [Nout]) : null);
          assert.deepEqual([...y.shape], [T, Nout]);
          assertClose(await read(y), want, 1e-5 * Math.sqrt(K) * 4, "matmul");
        });
      }
    }
  }
  test("a weight that does not take the input width is a MambaError; so is a window outside the matrix", () => {
    assert.throws(() => be.matmul(be.zeros([2, 3]), be.zeros([4, 5]), null), MambaError);
    assert.throws(() => be.matmul(cols(be.zeros([2, 6]), 4, 3), be.zeros([4, 3]), null), MambaError);
  });
});

/** Naive causal depthwise conv + SiLU with zero left padding. x: [B, L, E], w: [E, K] -> [B, L, E] */
function naiveConv(x: Float32Array, w: Float32Array, bias: Float32Array | null, hist: Float32Array | null, B: number, L: number, E: number, K: number) {
  const y = new Float64Array(B * L * E);
  // input of (b, position p, e), where p < 0 reaches into the history [B, K-1, E] (history index K-1+p)
  const at = (b: number, p: number, e: number) =>
    p >= 0 ? x[(b * L + p) * E + e]! : p >= -(K - 1) && hist ? hist[(b * (K - 1) + (K - 1 + p)) * E + e]! : 0;
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < L; t++) {
      for (let e = 0; e < E; e++) {
        let s = bias ? bias[e]! : 0;
        for (let k = 0; k < K; k++) s += w[e * K + k]! * at(b, t - (K - 1) + k, e);
        y[(b * L + t) * E + e] = silu(s);
      }
    }
  }
  // the history after the last position: inputs L-K+1 .. L-1 (reaching back into the old history if L < K-1)
  const state = new Float64Array(B * (K - 1) * E);
  for (let b = 0; b < B; b++) for (let j = 0; j < K - 1; j++) for (let e = 0; e < E; e++) {
    state[(b * (K - 1) + j) * E + e] = at(b, L - (K - 1) + j, e);
  }
  return { y, state };
}

describe("causalConv1dSilu", () => {
  const r = new TestRng(2);
  const shapes: [number, number, number, number][] = [[1, 1, 3, 4], [2, 5, 7, 4], [3, 2, 5, 3], [1, 9, 6, 2], [2, 6, 1, 1], [1, 3, 10, 5]];
  for (const [B, L, E, K] of shapes) {
    for (const withBias of [false, true]) {
      test(`B${B} L${L} E${E} K${K}${withBias ? " + bias" : ""}: one shot, with a history, and in chunks with the state carried`, async () => {
        const x = r.f32(B * L * E), w = r.f32(E * K, 0.7), bias = withBias ? r.f32(E) : null;
        const wt = be.fromF32(w, [E, 1, K]), bt = bias ? be.fromF32(bias, [E]) : null;
        // no state: zero padding
        const plain = naiveConv(x, w, bias, null, B, L, E, K);
        const { arg } = maybeWindow(r, x, B * L, E, true);
        assertClose(await read(be.causalConv1dSilu(arg, wt, bt, null, { batch: B, seqLen: L })), plain.y, 1e-5, "conv, no state");
        // a random history: used as the inputs before position 0, then replaced by the last K-1 inputs
        const hist = r.f32(B * (K - 1) * E);
        const withHist = naiveConv(x, w, bias, hist, B, L, E, K);
        const st = be.fromF32(hist, [B, K - 1, E]);
        assertClose(await read(be.causalConv1dSilu(be.fromF32(x, [B * L, E]), wt, bt, st, { batch: B, seqLen: L })), withHist.y, 1e-5, "conv with history");
        assertClose(await read(st), withHist.state, 0, "history after the call");
        // chunks of 1, 2 and 3 positions carrying the state == one shot from zeros
        for (const chunk of [1, 2, 3]) {
          const state = be.zeros([B, K - 1, E]);
          const got = new Float32Array(B * L * E);
          for (let s = 0; s < L; s += chunk) {
            const l = Math.min(chunk, L - s);
            const part = new Float32Array(B * l * E);
            for (let b = 0; b < B; b++) part.set(x.subarray((b * L + s) * E, (b * L + s + l) * E), b * l * E);
            const y = await read(be.causalConv1dSilu(be.fromF32(part, [B * l, E]), wt, bt, state, { batch: B, seqLen: l }));
            for (let b = 0; b < B; b++) got.set(y.subarray(b * l * E, (b + 1) * l * E), (b * L + s) * E);
          }
          assertClose(got, plain.y, 1e-5, `conv in chunks of ${chunk}`);
          assertClose(await read(state), plain.state, 0, `state after chunks of ${chunk}`);
        }
      });
    }
  }
});

interface ScanInputs {
  u: Float32Array; delta: Float32Array; dBias: Float32Array; A_log: Float32Array;
  Bm: Float32Array; Cm: Float32Array; D: Float32Array; z: Float32Array | null;
}

/** The recurrence of docs/mamba.md for every (b, e, n), sequentially over t. h0: [B, E, N] or zeros. */
function naiveScan(s: ScanInputs, h0: Float32Array | null, B: number, L: number, E: number, N: number) {
  const y = new Float64Array(B * L * E);
  const hOut = new Float64Array(B * E * N);
  for (let b = 0; b < B; b++) {
    for (let e = 0; e < E; e++) {
      const dts = Array.from({ length: L }, (_, t) => softplus(s.delta[(b * L + t) * E + e]! + s.dBias[e]!));
      const acc = new Float64Array(L);
      for (let n = 0; n < N; n++) {
        const A = -Math.exp(s.A_log[e * N + n]!);
        let h = h0 ? h0[(b * E + e) * N + n]! : 0;
        for (let t = 0; t < L; t++) {
          const row = b * L + t;
          h = Math.exp(dts[t]! * A) * h + dts[t]! * s.Bm[row * N + n]! * s.u[row * E + e]!;
          acc[t] += h * s.Cm[row * N + n]!;
        }
        hOut[(b * E + e) * N + n] = h;
      }
      for (let t = 0; t < L; t++) {
        const row = b * L + t;
        let out = acc[t]! + s.D[e]! * s.u[row * E + e]!;
        if (s.z) out *= silu(s.z[row * E + e]!);
        y[row * E + e] = out;
      }
    }
  }
  return { y, h: hOut };
}

/** rows [s, s+l) of every batch row of a [B, L, W] array */
function slab(a: Float32Array, B: number, L: number, W: number, s: number, l: number): Float32Array {
  const out = new Float32Array(B * l * W);
  for (let b = 0; b < B; b++) out.set(a.subarray((b * L + s) * W, (b * L + s + l) * W), b * l * W);
  return out;
}

describe("selectiveScan", () => {
  const r = new TestRng(3);
  const shapes: [number, number, number, number][] = [[1, 1, 1, 1], [1, 1, 5, 16], [2, 7, 6, 3], [3, 4, 9, 5], [1, 12, 4, 2], [2, 3, 11, 16]];
  for (const [B, L, E, N] of shapes) {
    for (const gate of [false, true]) {
      test(`B${B} L${L} E${E} N${N}${gate ? " with z gate" : ""}: windows of x_proj/in_proj outputs, initial state, chunks`, async () => {
        const inp: ScanInputs = {
          u: r.f32(B * L * E), delta: r.f32(B * L * E), dBias: r.f32(E, 0.5),
          A_log: Float32Array.from({ length: E * N }, (_, i) => Math.log((i % N) + 1) + r.uniform(-0.5, 0.5)),
          Bm: r.f32(B * L * N), Cm: r.f32(B * L * N), D: r.f32(E), z: gate ? r.f32(B * L * E, 2) : null,
        };
        // B and C as column windows of one [T, R + 2N] matrix (R = 2), as x_proj's output is read
        const R = 2, W = R + 2 * N;
        const pack = (Bm: Float32Array, Cm: Float32Array, rows: number) => {
          const xd = r.f32(rows * W, 50);
          for (let i = 0; i < rows; i++) {
            xd.set(Bm.subarray(i * N, (i + 1) * N), i * W + R);
            xd.set(Cm.subarray(i * N, (i + 1) * N), i * W + R + N);
          }
          return be.fromF32(xd, [rows, W]);
        };
        // z as the second half of an [T, 2E] matrix, as in_proj's output is read
        const packZ = (z: Float32Array, rows: number) => {
          const xz = r.f32(rows * 2 * E, 50);
          for (let i = 0; i < rows; i++) xz.set(z.subarray(i * E, (i + 1) * E), i * 2 * E + E);
          return cols(be.fromF32(xz, [rows, 2 * E]), E, E);
        };
        const fixed = { deltaBias: be.fromF32(inp.dBias, [E]), A_log: be.fromF32(inp.A_log, [E, N]), D: be.fromF32(inp.D, [E]) };
        const run = (s: number, l: number, state: Tensor | null) => {
          const xd = pack(slab(inp.Bm, B, L, N, s, l), slab(inp.Cm, B, L, N, s, l), B * l);
          return be.selectiveScan({
            batch: B, seqLen: l, ...fixed,
            u: be.fromF32(slab(inp.u, B, L, E, s, l), [B, l, E]),
            delta: be.fromF32(slab(inp.delta, B, L, E, s, l), [B * l, E]),
            B: cols(xd, R, N), C: cols(xd, R + N, N),
            z: inp.z ? packZ(slab(inp.z, B, L, E, s, l), B * l) : null,
            state,
          });
        };
        const plain = naiveScan(inp, null, B, L, E, N);
        const y0 = run(0, L, null);
        assert.deepEqual([...y0.shape], [B, L, E]);
        assertClose(await read(y0), plain.y, 1e-4, "scan from zeros");

        const h0 = r.f32(B * E * N);
        const withState = naiveScan(inp, h0, B, L, E, N);
        const st = be.fromF32(h0, [B, E, N]);
        assertClose(await read(run(0, L, st)), withState.y, 1e-4, "scan from a state");
        assertClose(await read(st), withState.h, 1e-4, "state after the scan");

        for (const chunk of [1, 3]) {
          const state = be.zeros([B, E, N]);
          const got = new Float32Array(B * L * E);
          for (let s = 0; s < L; s += chunk) {
            const l = Math.min(chunk, L - s);
            const y = await read(run(s, l, state));
            for (let b = 0; b < B; b++) got.set(y.subarray(b * l * E, (b + 1) * l * E), (b * L + s) * E);
          }
          assertClose(got, plain.y, 1e-4, `scan in chunks of ${chunk}`);
          assertClose(await read(state), plain.h, 1e-4, `state after chunks of ${chunk}`);
        }
      });
    }
  }
  test("large delta (softplus linear branch) and strongly negative A stay finite and match", async () => {
    const B = 1, L = 4, E = 3, N = 2;
    const inp: ScanInputs = {
      u: Float32Array.from([1, -2, 0.5, 3, 0, -1, 2, 2, 2, -0.5, 0.25, 1]), delta: Float32Array.from([25, -30, 0, 40, 5, -5, 21, 19, 0.1, 100, -100, 3]),
      dBias: Float32Array.from([0, 1, -1]), A_log: Float32Array.from([3, -3, 0, 1, 2, -1]),
      Bm: Float32Array.from([1, 2, -1, 0.5, 0, 1, 2, -2]), Cm: Float32Array.from([0.5, -1, 1, 1, 2, 0, -1, 3]),
      D: Float32Array.from([1, -0.5, 2]), z: null,
    };
    const want = naiveScan(inp, null, B, L, E, N).y;
    const xd = new Float32Array(L * 2 * N);
    for (let t = 0; t < L; t++) { xd.set(inp.Bm.subarray(t * N, (t + 1) * N), t * 2 * N); xd.set(inp.Cm.subarray(t * N, (t + 1) * N), t * 2 * N + N); }
    const x = be.fromF32(xd, [L, 2 * N]);
    const y = await read(be.selectiveScan({
      batch: B, seqLen: L, u: be.fromF32(inp.u, [1, L, E]), delta: be.fromF32(inp.delta, [L, E]),
      deltaBias: be.fromF32(inp.dBias, [E]), A_log: be.fromF32(inp.A_log, [E, N]), B: cols(x, 0, N), C: cols(x, N, N),
      D: be.fromF32(inp.D, [E]), z: null, state: null,
    }));
    assert.ok(y.every(Number.isFinite));
    assertClose(y, want, 1e-3, "scan with extreme deltas");
  });
});

describe("addRmsNorm, embedding, concat0, takeRows, copyInto, upload", () => {
  const r = new TestRng(4);
  for (const [T, D] of [[1, 1], [1, 7], [5, 3], [4, 32]] as const) {
    for (const withRes of [false, true]) {
      test(`addRmsNorm T${T} D${D}${withRes ? " with residual" : ""}`, async () => {
        const x = r.f32(T * D, 3), res = withRes ? r.f32(T * D) : null, w = r.f32(D), eps = 1e-5;
        const sum = new Float64Array(T * D), want = new Float64Array(T * D);
        for (let t = 0; t < T; t++) {
          let ss = 0;
          for (let d = 0; d < D; d++) { sum[t * D + d] = x[t * D + d]! + (res ? res[t * D + d]! : 0); ss += sum[t * D + d]! ** 2; }
          const rms = Math.sqrt(ss / D + eps);
          for (let d = 0; d < D; d++) want[t * D + d] = (sum[t * D + d]! / rms) * w[d]!;
        }
        const o = be.addRmsNorm(be.fromF32(x, [T, D]), res ? be.fromF32(res, [T, D]) : null, be.fromF32(w, [D]), eps);
        assertClose(await read(o.residual), sum, 1e-6, "residual out");
        assertClose(await read(o.out), want, 1e-5, "normalized out");
      });
    }
  }
  test("addRmsNorm of an all-zero row is zero (eps keeps it finite)", async () => {
    const o = be.addRmsNorm(be.zeros([2, 4]), null, be.fromF32(Float32Array.from([1, 2, 3, 4]), [4]), 1e-5);
    assert.deepEqual(Array.from(await read(o.out)), new Array(8).fill(0));
  });

  test("embedding gathers rows, first and last included, repeated ids, T = 1", async () => {
    const V = 11, D = 5;
    const table = r.f32(V * D);
    for (const ids of [[0], [10], [3, 3, 0, 10, 7]]) {
      const got = await read(be.embedding(be.fromF32(table, [V, D]), be.fromI32(Int32Array.from(ids), [ids.length])));
      const want = ids.flatMap((id) => Array.from(table.subarray(id * D, (id + 1) * D)));
      assert.deepEqual(Array.from(got), want);
    }
  });

  test("concat0 stacks f32 and i32 tensors along the first dimension; takeRows picks rows", async () => {
    const a = r.f32(2 * 3 * 4), b = r.f32(1 * 3 * 4), c = r.f32(3 * 3 * 4);
    const cat = be.concat0([be.fromF32(a, [2, 3, 4]), be.fromF32(b, [1, 3, 4]), be.fromF32(c, [3, 3, 4])]);
    assert.deepEqual([...cat.shape], [6, 3, 4]);
    assert.deepEqual(Array.from(await read(cat)), [...a, ...b, ...c]);
    const single = be.concat0([be.fromF32(b, [1, 3, 4])]);
    assert.deepEqual(Array.from(await read(single)), Array.from(b));
    const ci = be.concat0([be.fromI32(Int32Array.from([1, 2]), [2]), be.fromI32(Int32Array.from([-3]), [1])]);
    assert.equal(ci.dtype, "i32");
    assert.deepEqual(Array.from(await be.readI32(ci)), [1, 2, -3]);

    const m = r.f32(5 * 3);
    const rows = [4, 0, 4, 2];
    const taken = be.takeRows(be.fromF32(m, [5, 3]), rows);
    assert.deepEqual([...taken.shape], [4, 3]);
    assert.deepEqual(Array.from(await read(taken)), rows.flatMap((i) => Array.from(m.subarray(i * 3, i * 3 + 3))));
    // a [B, L, W] tensor is seen as a matrix [B·L, W]
    const t3 = r.f32(2 * 3 * 2);
    assert.deepEqual(Array.from(await read(be.takeRows(be.fromF32(t3, [2, 3, 2]), [5]))), Array.from(t3.subarray(10, 12)));
  });

  test("fromF32 copies its input; copyInto overwrites; shape mismatches are MambaErrors", async () => {
    const src = Float32Array.from([1, 2, 3, 4]);
    const t = be.fromF32(src, [2, 2]);
    src[0] = 99;
    assert.deepEqual(Array.from(await read(t)), [1, 2, 3, 4]);
    const out = await read(t);
    out[1] = 42; // readF32 hands out a copy too
    assert.deepEqual(Array.from(await read(t)), [1, 2, 3, 4]);
    be.copyInto(t, be.fromF32(Float32Array.from([5, 6, 7, 8]), [2, 2]));
    assert.deepEqual(Array.from(await read(t)), [5, 6, 7, 8]);
    assert.throws(() => be.fromF32(new Float32Array(3), [2, 2]), MambaError);
    assert.throws(() => be.fromI32(new Int32Array(5), [2, 2]), MambaError);
    assert.deepEqual(Array.from(await read(be.zeros([2, 3]))), [0, 0, 0, 0, 0, 0]);
  });

  test("upload widens F16 and BF16 parameters to their float32 values", async () => {
    const vals = Float32Array.from([1, -2, 0.5, 65504, -0.25, 3.75]); // exact in both half formats' ranges
    const f16 = be.upload({ dtype: "F16", shape: [2, 3], data: toF16Bits(vals) });
    assert.deepEqual(Array.from(await read(f16)), Array.from(vals));
    const bvals = Float32Array.from([1, -2, 0.5, 65536, -0.25, 3.75]);
    const bf16 = be.upload({ dtype: "BF16", shape: [3, 2], data: toBF16Bits(bvals) });
    assert.deepEqual([...bf16.shape], [3, 2]);
    assert.deepEqual(Array.from(await read(bf16)), Array.from(bvals));
    const data = Float32Array.from([1, 2]);
    const f32 = be.upload({ dtype: "F32", shape: [2], data });
    data[0] = 7; // the backend keeps its own copy
    assert.deepEqual(Array.from(await read(f32)), [1, 2]);
  });
});

describe("sample", () => {
  test("one id per row; greedy is the row's argmax over the real vocabulary; padded columns are never drawn", async () => {
    const V = 6, Vpad = 9;
    const logits = Float32Array.from([
      0, 1, 5, 2, -1, 0, 100, 100, 100, // padded columns are the largest
      3, 3.5, -2, 0, 1, 7, 0, 0, 0,
      -1, -2, -3, -4, -5, -0.5, 50, 50, 50,
    ]);
    const lt = be.fromF32(logits, [3, Vpad]);
    const base = { vocabSize: V, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, history: null };
    const greedy = await be.readI32(be.sample(lt, { ...base, temperature: 0, uniforms: new Float32Array(3) }));
    assert.deepEqual(Array.from(greedy), [2, 5, 5]);
    for (const u of [0, 0.3, 0.6, 0.999999]) {
      const ids = await be.readI32(be.sample(lt, { ...base, temperature: 100, uniforms: new Float32Array(3).fill(u) }));
      for (const id of ids) assert.ok(id >= 0 && id < V, `drew padded id ${id}`);
    }
  });
});
