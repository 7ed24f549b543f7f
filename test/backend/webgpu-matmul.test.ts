/**
 * The tiled matmuls' shared-tile variants (WebGpuTuning matmulBK, matmulBuffers, matmulSmallTM/TN) against the CPU: the forward
 * with 128 × 128 and 64 × 64 tiles, split K, K not a multiple of the K tile, column windows, f16 weights; the
 * training backward (dx, dw, dBias, a split reduction) with each K tile; and the errors for variants that are not
 * offered or do not fit this device's workgroup memory.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { cols, type Backend } from "../../src/backend/backend.ts";
import { CpuBackend } from "../../src/backend/cpu/index.ts";
import type { WebGpuBackend, WebGpuTuning } from "../../src/backend/webgpu/backend.ts";
import type { TrainingBackend } from "../../src/backend/training.ts";
import {
  MATMUL_BK_CHOICES, MATMUL_BUFFER_CHOICES, tileBytes, tileProblem, TILE_LARGE, TILE_SMALL, TILE_THREAD_OUTPUT_CHOICES, vec4Fits,
} from "../../src/backend/webgpu/kernels/matmul.ts";
import { matvecRowLanes } from "../../src/backend/webgpu/kernels/matvec.ts";
import { bwdVec4Fits, pickTile } from "../../src/backend/webgpu/kernels/backward/matmul-backward.ts";
import { toF16Bits } from "../../src/io/tensor.ts";
import { MambaError } from "../../src/errors.ts";
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
  { T: 10, K: 20, N: 33800, off: 0, ld: 20 }, // few rows, wide enough for 64 x 128 tiles (matmulWideTN)
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

test("WebGPU matmul: every shared-tile variant that fits this device matches the CPU", async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  const probe = (await createWebGpuBackend()) as WebGpuBackend;
  const most = probe.gpu.limits.maxComputeWorkgroupStorageSize;
  await probe.destroy();
  let ran = 0;
  for (const BK of [8, 16, 32]) {
    for (const buffers of [1, 2]) {
      const tuning: WebGpuTuning = { matmulBK: BK, matmulBuffers: buffers };
      if (tileBytes({ ...TILE_LARGE, BK, buffers }) > most) {
        await assert.rejects(createWebGpuBackend(tuning), (e: Error) =>
          e instanceof MambaError && /matmul tiles of 128 x 128 with K tiles of \d+ and \d buffers need \d+ bytes of workgroup memory, this device allows/.test(e.message));
        continue;
      }
      const b = await createWebGpuBackend(tuning);
      try {
        await check(b, `BK ${BK}, ${buffers} buffers`);
        if (buffers === 1) await checkBackward(b as unknown as TrainingBackend, `BK ${BK}`);
        ran++;
      } finally {
        await b.destroy();
      }
    }
  }
  assert.ok(ran >= 4, `only ${ran} variants fit ${most} bytes of workgroup memory`);
});

test("WebGPU matmul: the 64-row tiles with 4 rows a thread (workgroups of 256 threads, against 128 by default) or 128 columns, the wide tiles with 64 columns, and one value a load, match the CPU", async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  // the cases of at most 70 rows take these tiles (the last the wide ones of matmulWideTN)
  const tunings: WebGpuTuning[] = [
    { matmulSmallTM: 4 }, { matmulSmallTN: 8 }, { matmulSmallTM: 4, matmulSmallTN: 8, matmulBK: 16, matmulBuffers: 2 }, { matmulVec4: false },
    { matmulWideTN: 4 },
  ];
  for (const tuning of tunings) {
    const b = await createWebGpuBackend(tuning);
    try {
      await check(b, JSON.stringify(tuning));
    } finally {
      await b.destroy();
    }
  }
  await assert.rejects(createWebGpuBackend({ matmulSmallTM: 16 }), /matmulSmallTM must be one of 4, 8, got 16/);
  await assert.rejects(createWebGpuBackend({ matmulSmallTN: 2 }), /matmulSmallTN must be one of 4, 8, got 2/);
  await assert.rejects(createWebGpuBackend({ matmulWideTN: 16 }), /matmulWideTN must be one of 4, 8, got 16/);
});

test("matmul tile configs: every offered one can run, one the kernel cannot is named with the reason, and the vec4 path is taken where shapes allow", () => {
  for (const TM of TILE_THREAD_OUTPUT_CHOICES) {
    for (const TN of TILE_THREAD_OUTPUT_CHOICES) {
      for (const BK of MATMUL_BK_CHOICES) {
        for (const buffers of MATMUL_BUFFER_CHOICES) assert.equal(tileProblem({ ...TILE_SMALL, TM, TN, BN: 16 * TN, BK, buffers }), null);
      }
    }
  }
  assert.equal(tileProblem(TILE_LARGE), null);
  // the cases above: the first and the last two take the vec4 path with the default tiles, the others cannot
  const fits = cases.map((c) => vec4Fits(c.T > 64 && c.N > 1000 ? TILE_LARGE : TILE_SMALL, { K: c.K, N: c.N, ldx: c.ld, offx: c.off }));
  assert.deepEqual(fits, [true, false, false, false, true, true, true]);
  assert.equal(vec4Fits({ ...TILE_SMALL, vec4: false }, { K: 12, N: 68, ldx: 12, offx: 0 }), false);
  assert.equal(vec4Fits({ ...TILE_SMALL, TM: 4 }, { K: 12, N: 68, ldx: 12, offx: 0 }), false); // 256 threads, 128 vec4s a tile
  assert.match(tileProblem({ ...TILE_SMALL, BM: 32, TM: 4, buffers: 2 }) ?? "", /two buffers need tiles of at least 64 x 64, got 32 x 64/);
  assert.match(tileProblem({ ...TILE_SMALL, BM: 128, TM: 4 }) ?? "", /BM must be 8 or 16 times TM, got 128 with TM 4/);
  assert.match(tileProblem({ ...TILE_SMALL, BN: 96 }) ?? "", /BN must be 16 times TN, got 96 with TN 4/);
});

test("WebGPU tunings: matmul and scan backward variants that are not offered are refused by name", async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  await assert.rejects(createWebGpuBackend({ matmulBK: 12 }), /matmulBK must be one of 8, 16, 32, got 12/);
  await assert.rejects(createWebGpuBackend({ matmulBuffers: 3 }), /matmulBuffers must be one of 1, 2, got 3/);
  await assert.rejects(createWebGpuBackend({ scanBackwardBlocks: 3 }), /scanBackwardBlocks must be one of 1, 2, 4, 8, got 3/);
  await assert.rejects(createWebGpuBackend({ scanBackwardLanes: 3 }), /scanBackwardLanes must be one of 2, 4, 8, got 3/);
});

test("matrix-vector lanes a row: 32 up to 2048 weights, then as many (up to 256) as keep a lane's share whole; 32 without wholeRow", () => {
  assert.deepEqual([768, 2048, 2052, 4096, 4100, 8192, 16384, 16400].map((K) => matvecRowLanes(K, true)), [32, 32, 64, 64, 128, 128, 256, 256]);
  assert.equal(matvecRowLanes(4096, false), 32);
});

test("WebGPU matmul: matrix-vector rows past 2048 weights with 32 lanes a row (matvecWholeRow: false) match the CPU", async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  const b = await createWebGpuBackend({ matvecWholeRow: false });
  try {
    const rng = new TestRng(5);
    for (const s of [{ T: 1, K: 4100, N: 19 }, { T: 3, K: 4096, N: 9 }]) {
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
  await assert.rejects(createWebGpuBackend({ matvecWholeRow: 1 as unknown as boolean }), /matvecWholeRow must be true or false, got 1/);
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
  assert.equal(bwdVec4Fits(pickTile(m.M, m.N, 8), m), false);
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
