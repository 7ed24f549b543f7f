/**
 * The tiled matmuls against the CPU: the backend's tiles (128 × 128, 64 × 64, 64 × 128 for few rows and a wide
 * output, the batch step's 64 × 64 with K tiles of 16), each loading 4 values at once or one, through the backend
 * (128 × 128 and 64 × 64 tiles, split K, K not a multiple of the K tile, column windows, f16 weights) and each tile
 * alone; the training backward (dx, dw, dBias, a split reduction); and the tile configs the kernel refuses.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { cols, type Backend } from "../../src/backend/backend.ts";
import { CpuBackend } from "../../src/backend/cpu/index.ts";
import type { TrainingBackend } from "../../src/backend/training.ts";
import {
  matmulTiled, splitPlan, tileBytes, tileProblem, TILE_BATCH, TILE_LARGE, TILE_SMALL, TILE_WIDE, vec4Fits,
} from "../../src/backend/webgpu/kernels/matmul.ts";
import { matvecRowLanes } from "../../src/backend/webgpu/kernels/matvec.ts";
import { bwdVec4Fits, pickTile } from "../../src/backend/webgpu/kernels/backward/matmul-backward.ts";
import { toF16Bits } from "../../src/io/tensor.ts";
import { assertClose } from "../helpers/fixtures.ts";
import { gpuTest, withOwnWebgpu } from "../helpers/backends.ts";
import { TestRng } from "../helpers/random.ts";

const ref = new CpuBackend();
const rand = (rng: TestRng, n: number) => Float32Array.from({ length: n }, () => 2 * rng.next() - 1);

const cases = [
  { T: 260, K: 44, N: 16500, off: 0, ld: 44 }, // 128 x 128 tiles, K of 2.75 tiles of 16
  { T: 131, K: 52, N: 16390, off: 5, ld: 57 }, // 128 x 128 tiles, a window not 4-aligned
  { T: 70, K: 300, N: 130, off: 3, ld: 310 }, // 64 x 64 tiles, split along K
  { T: 33, K: 7, N: 65, off: 0, ld: 7 }, // K shorter than a tile
  // K, N and the window multiples of 4: loads of 4 K columns (vec4Fits), where the cases above load one
  { T: 70, K: 296, N: 132, off: 4, ld: 304 }, // 64 x 64 tiles, split along K
  { T: 33, K: 12, N: 68, off: 0, ld: 12 }, // K shorter than a tile
  { T: 10, K: 20, N: 33800, off: 0, ld: 20 }, // few rows, wide enough for 64 x 128 tiles (TILE_WIDE)
];

/** dx, dw and dBias of y = x · wᵀ + bias against the CPU; T = 1100 rows make the dw product split its reduction. */
async function checkBackward(b: TrainingBackend, label: string): Promise<void> {
  for (const s of [{ T: 1100, K: 40, N: 70 }, { T: 300, K: 260, N: 140 }]) {
    const rng = new TestRng(s.T + s.K);
    const x = rand(rng, s.T * s.K), w = rand(rng, s.N * s.K), dy = rand(rng, s.T * s.N);
    const run = async (k: TrainingBackend) => {
      const [xt, wt, dyt] = [k.fromF32(x, [s.T, s.K]), k.fromF32(w, [s.N, s.K]), k.fromF32(dy, [s.T, s.N])];
      const g = { dx: k.zeros([s.T, s.K]), dw: k.zeros([s.N, s.K]), dBias: k.zeros([s.N]) };
      k.matmulBackward(xt, wt, dyt, g);
      const out = [await k.readF32(g.dx), await k.readF32(g.dw), await k.readF32(g.dBias)];
      k.dispose(xt, wt, dyt, g.dx, g.dw, g.dBias);
      return out;
    };
    const [got, want] = [await run(b), await run(ref as unknown as TrainingBackend)];
    for (const [i, name] of ["dx", "dw", "dBias"].entries()) assertClose(got[i]!, want[i]!, 1e-4, `${label} backward ${name} ${JSON.stringify(s)}`);
  }
}

async function check(b: Backend, label: string): Promise<void> {
  let seed = 11;
  for (const s of cases) {
    for (const f16 of [false, true]) {
      const rng = new TestRng(seed++);
      const wide = rand(rng, s.T * s.ld);
      const w = rand(rng, s.N * s.K);
      const bias = rand(rng, s.N);
      const run = async (k: Backend) => {
        const xw = k.fromF32(wide, [s.T, s.ld]);
        const wt = k.upload(f16 ? { dtype: "F16", shape: [s.N, s.K], data: toF16Bits(w) } : { dtype: "F32", shape: [s.N, s.K], data: w });
        const bt = k.fromF32(bias, [s.N]);
        const y = k.matmul(s.ld === s.K ? xw : cols(xw, s.off, s.K), wt, bt);
        const out = await k.readF32(y);
        k.dispose(xw, wt, bt, y);
        return out;
      };
      assertClose(await run(b), await run(ref), 1e-4, `${label} ${JSON.stringify(s)}${f16 ? " f16" : ""}`);
    }
  }
}

test("WebGPU matmul: the backend's tiles, with 4 values a load where shapes allow and with one (matmulVec4 false), match the CPU; so does the training backward", async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  for (const matmulVec4 of [true, false]) {
    const b = await createWebGpuBackend({ matmulVec4 });
    try {
      await check(b, `matmulVec4 ${matmulVec4}`);
      await checkBackward(b as unknown as TrainingBackend, `matmulVec4 ${matmulVec4}`);
    } finally {
      await b.destroy();
    }
  }
});

test("WebGPU matmul: each tile config alone (the batch step's too), scalar and vec4, whole and split along K, matches the CPU", async (t) => {
  await withOwnWebgpu(t, async (b) => {
    const gpu = b.gpu;
    let seed = 40;
    for (const s of cases) {
      const rng = new TestRng(seed++);
      const wide = rand(rng, s.T * s.ld), w = rand(rng, s.N * s.K), bias = rand(rng, s.N);
      const xw = ref.fromF32(wide, [s.T, s.ld]), wt = ref.fromF32(w, [s.N, s.K]), bt = ref.fromF32(bias, [s.N]);
      const want = await ref.readF32(ref.matmul(s.ld === s.K ? xw : cols(xw, s.off, s.K), wt, bt));
      const x = gpu.upload(wide), wb = gpu.upload(w), bb = gpu.upload(bias);
      const y = gpu.alloc(3 * s.T * s.N * 4), out = gpu.alloc(s.T * s.N * 4);
      for (const tile of [TILE_LARGE, TILE_SMALL, TILE_WIDE, TILE_BATCH]) {
        for (const vec4 of [true, false]) {
          const cfg = { ...tile, vec4 };
          const args = { x, ldx: s.ld, offx: s.off, rows: s.T, K: s.K, w: wb, ws: "f32" as const, N: s.N, bias: bb, y };
          const what = `${JSON.stringify(s)} tile ${tile.BM} x ${tile.BN}, K tiles of ${tile.BK}${vec4Fits(cfg, args) ? ", vec4" : ""}`;
          matmulTiled(gpu, args, cfg);
          assertClose(new Float32Array(await gpu.read(y, s.T * s.N * 4)), want, 1e-4, what);
          if (s.K >= 64) { // three K parts, summed with the bias by matmul-reduce
            const { matmulReduce } = await import("../../src/backend/webgpu/kernels/matmul-reduce.ts");
            const plan = splitPlan(s.K, 3);
            matmulTiled(gpu, args, cfg, plan);
            matmulReduce(gpu, y, plan.count, bb, s.T, s.N, out);
            assertClose(new Float32Array(await gpu.read(out, s.T * s.N * 4)), want, 1e-4, `${what}, ${plan.count} K parts`);
          }
        }
      }
      for (const buf of [x, wb, bb, y, out]) gpu.release(buf);
    }
  });
});

test("matmul tile configs: the backend's can run and fit WebGPU's least workgroup memory, one the kernel cannot is named with the reason, and the vec4 path is taken where shapes allow", () => {
  for (const tile of [TILE_LARGE, TILE_SMALL, TILE_WIDE, TILE_BATCH]) {
    assert.equal(tileProblem(tile), null);
    assert.ok(tileBytes(tile) <= 16384, `${tile.BM} x ${tile.BN} tiles with K tiles of ${tile.BK}: ${tileBytes(tile)} bytes`);
  }
  // the cases above: the first and the last two take the vec4 path with the default tiles, the others cannot
  const fits = cases.map((c) => vec4Fits(c.T > 64 && c.N > 1000 ? TILE_LARGE : TILE_SMALL, { K: c.K, N: c.N, ldx: c.ld, offx: c.off }));
  assert.deepEqual(fits, [true, false, false, false, true, true, true]);
  assert.equal(vec4Fits({ ...TILE_SMALL, vec4: false }, { K: 12, N: 68, ldx: 12, offx: 0 }), false);
  assert.match(tileProblem({ ...TILE_SMALL, TM: 4 }) ?? "", /TM must be 8 and TN 4 or 8, got 4 and 4/);
  assert.match(tileProblem({ ...TILE_SMALL, BM: 256 }) ?? "", /BM must be 8 or 16 times TM, got 256 with TM 8/);
  assert.match(tileProblem({ ...TILE_SMALL, BN: 96 }) ?? "", /BN must be 16 times TN, got 96 with TN 4/);
  assert.match(tileProblem({ ...TILE_SMALL, BK: 32 }) ?? "", /BK must be 8 or 16, got 32/);
});

test("WebGPU tunings: scan backward variants that are not offered are refused by name", async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  await assert.rejects(createWebGpuBackend({ scanBackwardBlocks: 3 }), /scanBackwardBlocks must be one of 1, 2, 4, 8, got 3/);
  await assert.rejects(createWebGpuBackend({ scanBackwardLanes: 3 }), /scanBackwardLanes must be one of 2, 4, 8, got 3/);
});

test("matrix-vector lanes a row: 32 up to 2048 weights, then as many (up to 256) as keep a lane's share whole", () => {
  assert.deepEqual([768, 2048, 2052, 4096, 4100, 8192, 16384, 16400].map((K) => matvecRowLanes(K)), [32, 32, 64, 64, 128, 128, 256, 256]);
});

test("WebGPU matmul: matrix-vector rows past 2048 and past 16384 weights (whose lanes load in batches) match the CPU", async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  const b = await createWebGpuBackend({});
  try {
    const rng = new TestRng(5);
    for (const s of [{ T: 1, K: 4100, N: 19 }, { T: 3, K: 4096, N: 9 }, { T: 2, K: 16400, N: 5 }]) {
      const x = rand(rng, s.T * s.K), w = rand(rng, s.N * s.K);
      const run = async (k: Backend) => {
        const [xt, wt] = [k.fromF32(x, [s.T, s.K]), k.fromF32(w, [s.N, s.K])];
        const y = k.matmul(xt, wt, null);
        const out = await k.readF32(y);
        k.dispose(xt, wt, y);
        return out;
      };
      assertClose(await run(b), await run(ref), 1e-4, `matvec ${JSON.stringify(s)}`);
    }
  } finally {
    await b.destroy();
  }
});

test("training backward products: the vec4 path where every stride, offset and extent is a multiple of 4", () => {
  const buf = {} as never;
  // dx = dy · w and dw = dyᵀ · x of a Linear layer, as the training backend builds them (T rows, K inputs, N outputs)
  const products = (s: { T: number; K: number; N: number; ldx: number; offx: number; ldy: number; offy: number; lddx: number; offdx: number }) => [
    { M: s.T, N: s.K, K: s.N, a: { buf, ld: s.ldy, off: s.offy }, aKMajor: true, b: { buf, ld: s.K, off: 0 }, c: { buf, ld: s.lddx, off: s.offdx } },
    { M: s.N, N: s.K, K: s.T, a: { buf, ld: s.ldy, off: s.offy }, aKMajor: false, b: { buf, ld: s.ldx, off: s.offx }, c: { buf, ld: s.K, off: 0 } },
  ];
  const fits = (s: Parameters<typeof products>[0]) => products(s).map((m) => bwdVec4Fits(pickTile(m.M, m.N), m));
  // the aligned cases of the WebGPU training-ops test
  assert.deepEqual(fits({ T: 300, K: 260, N: 272, ldx: 260, offx: 0, ldy: 272, offy: 0, lddx: 264, offdx: 4 }), [true, true]);
  assert.deepEqual(fits({ T: 1100, K: 20, N: 36, ldx: 24, offx: 4, ldy: 40, offy: 4, lddx: 20, offdx: 0 }), [true, true]);
  assert.deepEqual(fits({ T: 1024, K: 2048, N: 8, ldx: 2048, offx: 0, ldy: 8, offy: 0, lddx: 2048, offdx: 0 }), [true, true]);
  assert.equal(pickTile(1024, 2048).BM, 128);
  // an odd output count, a window offset by 2: one value a load
  assert.deepEqual(fits({ T: 300, K: 260, N: 270, ldx: 260, offx: 0, ldy: 270, offy: 0, lddx: 260, offdx: 0 }), [false, false]);
  assert.deepEqual(fits({ T: 300, K: 260, N: 272, ldx: 262, offx: 2, ldy: 272, offy: 0, lddx: 260, offdx: 0 }), [true, false]);
  // K tiles of 8 on 64 x 64 tiles are 128 vec4s, not a whole number a thread
  const m = products({ T: 300, K: 260, N: 272, ldx: 260, offx: 0, ldy: 272, offy: 0, lddx: 264, offdx: 4 })[0]!;
  assert.equal(bwdVec4Fits({ ...pickTile(m.M, m.N), BK: 8 }, m), false);
});

test("WebGPU matvec with norm and argmax (the fused step's head): RMSNorm(x + res) · g times w, and each row's greedy id over the first V columns, ties to the smaller id, as on the CPU", async (t) => {
  const { matvec, matvecArgmaxWords } = await import("../../src/backend/webgpu/kernels/matvec.ts");
  await withOwnWebgpu(t, async (b) => {
    const gpu = b.gpu;
    const rng = new TestRng(91);
    // 2100 rows of w: 263 workgroups of 8 rows, the last one short; V stops short of N (a padded vocabulary)
    for (const [T, K, N, V] of [[1, 768, 2100, 2090], [3, 20, 2100, 2100], [5, 64, 37, 30]] as const) {
      const x = rng.f32(T * K), res = rng.f32(2 * T * K), g = rng.f32(K), w = rng.f32(N * K);
      const eps = 1e-5;
      // row 3 of w along the first normalized input (its best by far), repeated at rows N - 5 and V - 1: equal
      // logits, of which the smaller id must win
      const v0 = Array.from({ length: K }, (_, k) => x[k]! + res[T * K + k]!);
      const inv0 = 1 / Math.sqrt(v0.reduce((s, a) => s + a * a, 0) / K + eps);
      for (let k = 0; k < K; k++) w[3 * K + k] = (8 / Math.sqrt(K)) * v0[k]! * inv0 * g[k]!;
      for (let k = 0; k < K; k++) { w[(N - 5) * K + k] = w[3 * K + k]!; w[(V - 1) * K + k] = w[3 * K + k]!; }
      const want = new Float32Array(T * N);
      const wantIds: number[] = [];
      for (let r = 0; r < T; r++) {
        const v = Array.from({ length: K }, (_, k) => x[r * K + k]! + res[T * K + r * K + k]!);
        const inv = 1 / Math.sqrt(v.reduce((s, a) => s + a * a, 0) / K + eps);
        let best = 0;
        for (let n = 0; n < N; n++) {
          let s = 0;
          for (let k = 0; k < K; k++) s += v[k]! * inv * g[k]! * w[n * K + k]!;
          want[r * N + n] = s;
          if (n < V && s > want[r * N + best]!) best = n;
        }
        wantIds.push(best);
      }
      const up = (a: Float32Array) => gpu.upload(a, "a test input");
      const bufs = { x: up(x), res: up(res), g: up(g), w: up(w), y: gpu.alloc(T * N * 4), ids: gpu.alloc(T * 4) };
      const words = matvecArgmaxWords(T, N, K);
      const part = gpu.upload(new Uint32Array(words), "a test input");
      for (let round = 0; round < 2; round++) { // the second reuses part, which the first must leave zeroed
        matvec(gpu, { x: bufs.x, ldx: K, offx: 0, rows: T, K, w: bufs.w, ws: "f32", N, bias: null, y: bufs.y,
          norm: { res: bufs.res, offRes: T * K, g: bufs.g, eps }, argmax: { V, part, ids: bufs.ids } });
        const what = `T ${T} K ${K} N ${N} V ${V} round ${round}`;
        const y = new Float32Array(await gpu.read(bufs.y, T * N * 4));
        // relative to the logit's size: row 3's are in the hundreds
        const worst = y.reduce((m, v, i) => Math.max(m, Math.abs(v - want[i]!) / (1 + Math.abs(want[i]!))), 0);
        assert.ok(worst < 1e-5, `${what} y: relative difference ${worst}`);
        const got = Array.from(new Int32Array(await gpu.read(bufs.ids, T * 4)));
        // the GPU's own logits decide near-ties that f32 rounding may order differently from the reference
        const fromY = Array.from({ length: T }, (_, r) => {
          let best = 0;
          for (let n = 0; n < V; n++) if (y[r * N + n]! > y[r * N + best]!) best = n;
          return best;
        });
        assert.deepEqual(got, fromY, `${what} ids (from its logits)`);
        assert.ok(got.every((id, r) => Math.abs(want[r * N + id]! - want[r * N + wantIds[r]!]!) < 1e-3), `${what} ids (the reference's best)`);
        assert.equal(got[0], 3, `${what}: of equal best logits, the smallest id`);
        assert.equal(new Uint32Array(await gpu.read(part, words * 4))[words - 1], 0, `${what}: the count is back at zero`);
      }
      for (const buf of [...Object.values(bufs), part]) gpu.release(buf);
    }
  });
});
