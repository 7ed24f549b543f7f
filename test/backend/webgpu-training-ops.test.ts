/**
 * Every training op of the WebGPU backend against the CPU backend's, on random shapes chosen to hit the edges:
 * sizes that are not multiples of a workgroup or tile, L = 1, batch > 1, odd E and N, column windows of wider
 * gradients (the other columns untouched), gradients that already hold values (the ops add), reductions split
 * into several partials, the scan backward split into many chunks and sub-tiles, and the scratch path taken when
 * a gradient shares a buffer with an input. Runs when a WebGPU adapter exists (skipped otherwise, failed under CI).
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import type { TestContext } from "node:test";
import type { Backend, Tensor, TensorOrCols } from "../../src/backend/backend.ts";
import { cols } from "../../src/backend/backend.ts";
import type { TrainingBackend } from "../../src/backend/training.ts";
import { isTrainingBackend } from "../../src/backend/training.ts";
import { CpuBackend } from "../../src/backend/cpu/index.ts";
import { toF16Bits } from "../../src/io/tensor.ts";
import { MambaError } from "../../src/errors.ts";
import { TestRng } from "../helpers/random.ts";
import { relErr } from "../helpers/fixtures.ts";
import { releaseWebgpu, unavailable, webgpuBackend } from "../helpers/backends.ts";

const ref = new CpuBackend();

function close(got: Float32Array, want: Float32Array, tol: number, what: string): void {
  const e = relErr(got, want, 1e-30);
  assert.ok(e <= tol, `${what}: relative error ${e.toExponential(2)} > ${tol}`);
}

/** The same host data on both backends. */
class Pair {
  constructor(readonly gpu: Backend, readonly rng: TestRng) {}
  f32(n: number, scale = 1): Float32Array {
    return this.rng.f32(n, scale);
  }
  both(data: Float32Array, shape: number[]): [Tensor, Tensor] {
    return [ref.fromF32(data, shape), this.gpu.fromF32(data, shape)];
  }
  /** A [rows, width] matrix as columns [off, off + width) of a [rows, ld] matrix holding other values around it. */
  window(data: Float32Array, rows: number, width: number, ld: number, off: number): [TensorOrCols, TensorOrCols, Float32Array] {
    if (ld === width) {
      const [c, g] = this.both(data, [rows, width]);
      return [c, g, data];
    }
    const wide = this.rng.f32(rows * ld, 3);
    for (let r = 0; r < rows; r++) wide.set(data.subarray(r * width, (r + 1) * width), r * ld + off);
    const [c, g] = this.both(wide, [rows, ld]);
    return [cols(c, off, width), cols(g, off, width), wide];
  }
}

const tensorOf = (x: TensorOrCols): Tensor => ((x as { tensor?: Tensor }).tensor ?? (x as Tensor));

/** Reads a tensor of each backend and compares; checks that the values outside a window did not move. */
async function compare(c: TensorOrCols, g: TensorOrCols, gpu: Backend, tol: number, what: string, before?: Float32Array): Promise<void> {
  const want = await ref.readF32(tensorOf(c));
  const got = await gpu.readF32(tensorOf(g));
  if (before && (c as { col0?: number }).col0 !== undefined) {
    const w = c as { col0: number; width: number; tensor: Tensor };
    const ld = w.tensor.shape[w.tensor.shape.length - 1]!;
    for (let i = 0; i < got.length; i++) {
      const col = i % ld;
      if (col < w.col0 || col >= w.col0 + w.width) assert.equal(got[i], before[i], `${what}: a value outside the window changed`);
    }
  }
  close(got, want, tol, what);
}

describe("training ops on webgpu against the cpu", () => {
  let gpu: TrainingBackend | null = null;
  let chunked: TrainingBackend | null = null; // tiny scan chunks and sub-tiles: many chunks on small shapes
  let channel: TrainingBackend | null = null; // the scan backward's one-lane-per-channel kernel (default without subgroups)
  let channelChunked: TrainingBackend | null = null;
  let longSegments: TrainingBackend | null = null; // the lanes kernel with 5 sub-tiles of 8 steps a segment
  let lanes8: TrainingBackend | null = null; // 8 lanes a channel (2 states a lane)
  let blocks1: TrainingBackend | null = null; // one subgroup-wide block a workgroup of the lanes kernel
  let blocks8: TrainingBackend | null = null; // eight, with segments of 16 steps
  let lanes4: TrainingBackend | null = null; // 4 lanes a channel, segments of 64 steps (the default until 2 lanes measured faster)
  // the scan backward's dB/dC sums in workgroup memory (the path without subgroups), and in subgroup blocks of 4
  let wgMemory: TrainingBackend | null = null;
  let narrow: TrainingBackend | null = null;
  let reason = "";
  before(async () => {
    const b = await webgpuBackend();
    if (!b) return;
    assert.ok(isTrainingBackend(b), "the WebGPU backend has training ops");
    gpu = b;
    const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
    chunked = (await createWebGpuBackend({ scanBackwardChunk: 5, scanBackwardSubTile: 2 })) as TrainingBackend;
    channel = (await createWebGpuBackend({ scanBackwardKernel: "channel" })) as TrainingBackend;
    longSegments = (await createWebGpuBackend({ scanBackwardChunk: 40, scanBackwardSubTile: 8 })) as TrainingBackend;
    lanes8 = (await createWebGpuBackend({ scanBackwardLanes: 8 })) as TrainingBackend;
    lanes4 = (await createWebGpuBackend({ scanBackwardLanes: 4, scanBackwardChunk: 64 })) as TrainingBackend;
    blocks1 = (await createWebGpuBackend({ scanBackwardBlocks: 1 })) as TrainingBackend;
    blocks8 = (await createWebGpuBackend({ scanBackwardBlocks: 8, scanBackwardChunk: 16 })) as TrainingBackend;
    channelChunked = (await createWebGpuBackend({ scanBackwardKernel: "channel", scanBackwardChunk: 5, scanBackwardSubTile: 2 })) as TrainingBackend;
    wgMemory = (await createWebGpuBackend({ scanBackwardChunk: 7, scanBackwardSubTile: 3, scanBackwardReduceWidth: 0 })) as TrainingBackend;
    narrow = (await createWebGpuBackend({ scanBackwardReduceWidth: 4 })) as TrainingBackend;
  });
  after(async () => {
    await chunked?.destroy();
    await channel?.destroy();
    await longSegments?.destroy();
    await lanes8?.destroy();
    await lanes4?.destroy();
    await blocks1?.destroy();
    await blocks8?.destroy();
    await channelChunked?.destroy();
    await wgMemory?.destroy();
    await narrow?.destroy();
    await releaseWebgpu();
  });
  const it = (name: string, fn: (g: TrainingBackend, t: TestContext) => Promise<void>) =>
    test(name, async (t) => {
      if (!gpu) {
        reason = (await import("../helpers/backends.ts")).backendCases[1]!.reason();
        return unavailable(t, reason || "no WebGPU adapter");
      }
      await fn(gpu, t);
    });

  it("zeroFill, addScaled (also dst += alpha · dst), sumSquares over many sizes", async (g) => {
    const p = new Pair(g, new TestRng(1));
    for (const n of [1, 7, 256, 4097, 70001]) {
      const a = p.f32(n), s = p.f32(n);
      const [ca, ga] = p.both(a, [n]);
      const [cs, gs] = p.both(s, [n]);
      ref.addScaled(ca, cs, -0.75);
      g.addScaled(ga, gs, -0.75);
      await compare(ca, ga, g, 1e-6, `addScaled n=${n}`);
      ref.addScaled(ca, ca, 0.5);
      g.addScaled(ga, ga, 0.5);
      await compare(ca, ga, g, 1e-6, `addScaled into itself n=${n}`);
      g.zeroFill(ga);
      assert.ok((await g.readF32(ga)).every((v) => v === 0), "zeroFill");
    }
    const sizes = [1, 3, 4096, 4097, 300000, 17];
    const data = sizes.map((n) => p.f32(n));
    const want = (await ref.readF32(ref.sumSquares(data.map((d, i) => ref.fromF32(d, [sizes[i]!])))))[0]!;
    const got = (await g.readF32(g.sumSquares(data.map((d, i) => g.fromF32(d, [sizes[i]!])))))[0]!;
    assert.ok(Math.abs(got - want) <= 1e-5 * want, `sumSquares ${got} vs ${want}`);
    assert.equal((await g.readF32(g.sumSquares([])))[0], 0);
  });

  it("adamwStep: decay, bias corrections, gradient scale", async (g) => {
    const p = new Pair(g, new TestRng(2));
    for (const [n, step, wd] of [[1, 1, 0], [1000, 3, 0.1], [5003, 40, 0.01]] as const) {
      const init = [p.f32(n), p.f32(n), p.f32(n, 0.1), p.f32(n).map((v) => v * v * 0.01)];
      const [cp, gp] = p.both(init[0]!, [n]);
      const [cg, gg] = p.both(init[1]!, [n]);
      const [cm, gm] = p.both(init[2]!, [n]);
      const [cv, gv] = p.both(init[3]!, [n]);
      const o = { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: wd, step, gradScale: 0.7 };
      for (let i = 0; i < 3; i++) {
        ref.adamwStep(cp, cg, cm, cv, { ...o, step: step + i });
        g.adamwStep(gp, gg, gm, gv, { ...o, step: step + i });
      }
      await compare(cp, gp, g, 1e-6, "param");
      await compare(cm, gm, g, 1e-6, "m");
      await compare(cv, gv, g, 1e-6, "v");
    }
  });

  it("crossEntropy: wide rows, ignored targets, ties in the argmax, no counted row", async (g) => {
    const p = new Pair(g, new TestRng(3));
    const cases: { T: number; V: number; ties?: boolean; none?: boolean }[] = [
      { T: 1, V: 2 }, { T: 7, V: 5 }, { T: 9, V: 300, ties: true }, { T: 4, V: 50280 }, { T: 3, V: 11, none: true },
      { T: 70, V: 1000 },
    ];
    for (const s of cases) {
      const x = s.ties ? p.f32(s.T * s.V).map((v) => Math.round(v)) : p.f32(s.T * s.V, 3);
      const tg = new Int32Array(s.T).map((_, i) => (s.none || i % 3 === 1 ? -1 : p.rng.int(0, s.V - 1)));
      if (s.ties) for (let r = 0; r < s.T; r += 2) if (tg[r]! >= 0) { x.fill(2, r * s.V, (r + 1) * s.V); tg[r] = r % 4 === 0 ? 0 : 1; }
      const [cx, gx] = p.both(x, [s.T, s.V]);
      const c = ref.crossEntropy(cx, ref.fromI32(tg, [s.T]), 0.5);
      const r = g.crossEntropy(gx, g.fromI32(tg, [s.T]), 0.5);
      const [cl, gl] = [(await ref.readF32(c.loss))[0]!, (await g.readF32(r.loss))[0]!];
      assert.ok(Math.abs(cl - gl) <= 1e-5 * Math.max(1, Math.abs(cl)), `T ${s.T} V ${s.V}: loss ${gl} vs ${cl}`);
      assert.equal((await g.readF32(r.correct))[0], (await ref.readF32(c.correct))[0], `T ${s.T} V ${s.V}: correct`);
      const want = await ref.readF32(c.dLogits), got = await g.readF32(r.dLogits);
      if (s.none) assert.ok(got.every((v) => v === 0), "no counted row: zero gradient");
      else close(got, want, 1e-5, `T ${s.T} V ${s.V}: dLogits`);
    }
    assert.throws(() => g.crossEntropy(g.fromF32(new Float32Array(6), [2, 3]), g.fromI32(Int32Array.of(0, 3), [2]), 1), MambaError);
  });

  it("matmulBackward: windows, bias, accumulation, split reductions, f16 weights, a gradient sharing its input's buffer", async (g) => {
    const p = new Pair(g, new TestRng(4));
    const cases = [
      { T: 1, K: 8, N: 5, ldx: 8, offx: 0, ldy: 5, offy: 0, lddx: 8, offdx: 0 },
      { T: 3, K: 12, N: 7, ldx: 20, offx: 4, ldy: 9, offy: 2, lddx: 30, offdx: 17 },
      { T: 70, K: 36, N: 130, ldx: 50, offx: 13, ldy: 130, offy: 0, lddx: 36, offdx: 0 },
      { T: 1100, K: 17, N: 33, ldx: 17, offx: 0, ldy: 40, offy: 5, lddx: 17, offdx: 0 }, // dw split along T
      { T: 9, K: 1, N: 11, ldx: 1, offx: 0, ldy: 11, offy: 0, lddx: 1, offdx: 0 },
      { T: 300, K: 260, N: 270, ldx: 260, offx: 0, ldy: 270, offy: 0, lddx: 260, offdx: 0 }, // 128 x 128 tiles
      // every stride, offset and extent a multiple of 4: the products load 4 values at once (bwdVec4Fits)
      { T: 300, K: 260, N: 272, ldx: 260, offx: 0, ldy: 272, offy: 0, lddx: 264, offdx: 4 },
      { T: 1100, K: 20, N: 36, ldx: 24, offx: 4, ldy: 40, offy: 4, lddx: 20, offdx: 0 }, // dw split along T
      { T: 1024, K: 2048, N: 8, ldx: 2048, offx: 0, ldy: 8, offy: 0, lddx: 2048, offdx: 0 }, // dx on 128 x 128 tiles
    ];
    for (const [i, s] of cases.entries()) {
      for (const half of [false, true]) {
        const xh = p.f32(s.T * s.K), wh = p.f32(s.N * s.K), dyh = p.f32(s.T * s.N);
        const [cx, gx] = p.window(xh, s.T, s.K, s.ldx, s.offx);
        const [cdy, gdy] = p.window(dyh, s.T, s.N, s.ldy, s.offy);
        const wq = half ? Float32Array.from(wh, (v) => Math.fround(v)) : wh;
        const cw = ref.upload({ dtype: "F32", shape: [s.N, s.K], data: wq });
        const gw = half ? g.upload({ dtype: "F16", shape: [s.N, s.K], data: toF16Bits(wq) }) : g.fromF32(wq, [s.N, s.K]);
        const cwRef = half ? ref.fromF32(await g.readF32(gw), [s.N, s.K]) : cw;
        const [cdx, gdx, dxBefore] = p.window(p.f32(s.T * s.K), s.T, s.K, s.lddx, s.offdx);
        const [cdw, gdw] = p.both(p.f32(s.N * s.K), [s.N, s.K]);
        const [cdb, gdb] = p.both(p.f32(s.N), [s.N]);
        ref.matmulBackward(cx, cwRef, cdy, { dx: cdx, dw: cdw, dBias: cdb });
        g.matmulBackward(gx, gw, gdy, { dx: gdx, dw: gdw, dBias: gdb });
        const tag = `case ${i}${half ? " f16" : ""}`;
        await compare(cdx, gdx, g, 2e-5, `${tag} dx`, dxBefore);
        await compare(cdw, gdw, g, 2e-5, `${tag} dw`);
        await compare(cdb, gdb, g, 2e-5, `${tag} dBias`);
      }
    }
    // dx a window of the very tensor x is read from (other columns): through a scratch
    const T = 6, K = 4, N = 3;
    const both = p.f32(T * 2 * K);
    const [cxz, gxz] = p.both(both, [T, 2 * K]);
    const [cw, gw] = p.both(p.f32(N * K), [N, K]);
    const [cdy, gdy] = p.both(p.f32(T * N), [T, N]);
    ref.matmulBackward(cols(cxz, 0, K), cw, cdy, { dx: cols(cxz, K, K), dw: null, dBias: null });
    g.matmulBackward(cols(gxz, 0, K), gw, gdy, { dx: cols(gxz, K, K), dw: null, dBias: null });
    await compare(cxz, gxz, g, 2e-5, "dx sharing x's buffer");
  });

  it("addRmsNormBackward: rows of every width, accumulating gradients", async (g) => {
    const p = new Pair(g, new TestRng(5));
    for (const [T, D] of [[1, 6], [5, 300], [33, 768], [1100, 20]] as const) {
      const eps = 1e-5;
      const [cx, gx] = p.both(p.f32(T * D), [T, D]);
      const [cr, gr] = p.both(p.f32(T * D), [T, D]);
      const wdata = p.f32(D).map((v) => 1 + 0.3 * v);
      const [cw, gw] = p.both(wdata, [D]);
      const cres = ref.addRmsNorm(cx, cr, cw, eps).residual, gres = g.addRmsNorm(gx, gr, gw, eps).residual;
      const [cdo, gdo] = p.both(p.f32(T * D), [T, D]);
      const [cdr, gdr] = p.both(p.f32(T * D), [T, D]);
      const [cdw, gdw] = p.both(p.f32(D), [D]);
      ref.addRmsNormBackward(cres, cw, eps, cdo, cdr, cdw);
      g.addRmsNormBackward(gres, gw, eps, gdo, gdr, gdw);
      await compare(cdr, gdr, g, 2e-5, `T ${T} D ${D}: dResidual`);
      await compare(cdw, gdw, g, 2e-5, `T ${T} D ${D}: dWeight`);
    }
  });

  it("embeddingBackward: repeated ids, ids the host never saw, out-of-range ids", async (g) => {
    const p = new Pair(g, new TestRng(6));
    for (const [T, V, D] of [[1, 3, 4], [9, 5, 3], [300, 7, 70], [200, 50280, 8]] as const) {
      const idv = new Int32Array(T).map(() => p.rng.int(0, V - 1));
      const [cdo, gdo] = p.both(p.f32(T * D), [T, D]);
      const table0 = p.f32(V * D, 0.1);
      const [ct, gt] = p.both(table0, [V, D]);
      ref.embeddingBackward(ref.fromI32(idv, [T]), cdo, ct);
      g.embeddingBackward(g.fromI32(idv, [T]), gdo, gt);
      await compare(ct, gt, g, 1e-6, `T ${T} V ${V}: dTable`);
      // ids that exist only on the GPU (a row copy): the serial kernel
      const gids = g.takeRows(g.fromI32(idv, [T, 1]), Array.from({ length: T }, (_, i) => i));
      const [ct2, gt2] = p.both(table0, [V, D]);
      ref.embeddingBackward(ref.fromI32(idv, [T]), cdo, ct2);
      g.embeddingBackward(gids, gdo, gt2);
      await compare(ct2, gt2, g, 1e-6, `T ${T} V ${V}: dTable (GPU-made ids)`);
    }
    assert.throws(() => g.embeddingBackward(g.fromI32(Int32Array.of(0, 4), [2]), g.zeros([2, 3]), g.zeros([4, 3])), MambaError);
  });

  it("causalConv1dSiluBackward: windows, with and without bias, L = 1, K = 1..6, some gradients absent, 4-channel kernels", async (g) => {
    const p = new Pair(g, new TestRng(7));
    // channels a multiple of 4 (the windows then on 4-float boundaries) take the 4-channel kernels: runs of 8
    // positions cut short, one run, L below K - 1, K 6
    const cases = [
      { B: 1, L: 1, E: 3, K: 4, bias: true },
      { B: 2, L: 6, E: 5, K: 4, bias: true },
      { B: 3, L: 9, E: 70, K: 2, bias: false },
      { B: 2, L: 300, E: 33, K: 4, bias: true },
      { B: 1, L: 5, E: 2, K: 1, bias: true },
      { B: 2, L: 21, E: 12, K: 4, bias: true },
      { B: 3, L: 19, E: 8, K: 3, bias: false },
      { B: 1, L: 40, E: 264, K: 6, bias: true },
      { B: 2, L: 2, E: 16, K: 4, bias: true },
    ];
    for (const [i, s] of cases.entries()) {
      const rows = s.B * s.L, shape = { batch: s.B, seqLen: s.L };
      const [cx, gx] = p.window(p.f32(rows * s.E), rows, s.E, 2 * s.E, 0);
      const [cw, gw] = p.both(p.f32(s.E * s.K, 0.5), [s.E, 1, s.K]);
      const [cb, gb] = s.bias ? p.both(p.f32(s.E, 0.3), [s.E]) : [null, null];
      const [cdy, gdy] = p.both(p.f32(rows * s.E), [s.B, s.L, s.E]);
      const [cdx, gdx, before] = p.window(p.f32(rows * s.E), rows, s.E, 2 * s.E, s.E);
      const [cdw, gdw] = p.both(p.f32(s.E * s.K), [s.E, 1, s.K]);
      const [cdb, gdb] = p.both(p.f32(s.E), [s.E]);
      const some = i % 2 === 1;
      ref.causalConv1dSiluBackward(cx, cw, cb, cdy, shape, { dx: cdx, dWeight: cdw, dBias: some ? null : cdb });
      g.causalConv1dSiluBackward(gx, gw, gb, gdy, shape, { dx: gdx, dWeight: gdw, dBias: some ? null : gdb });
      await compare(cdx, gdx, g, 2e-5, `case ${i}: dx`, before);
      await compare(cdw, gdw, g, 2e-5, `case ${i}: dWeight`);
      await compare(cdb, gdb, g, 2e-5, `case ${i}: dBias`);
    }
  });

  // state: the forward started from a given initial state (one chunk and many)
  const scanCases = [
    { B: 1, L: 1, E: 3, N: 4, gated: true, split: false, state: false },
    { B: 1, L: 1, E: 3, N: 4, gated: true, split: false, state: true },
    { B: 2, L: 5, E: 3, N: 4, gated: false, split: false, state: true },
    { B: 2, L: 13, E: 33, N: 16, gated: true, split: false, state: false },
    { B: 3, L: 40, E: 5, N: 3, gated: true, split: true, state: true },
    { B: 1, L: 70, E: 40, N: 16, gated: true, split: false, state: false },
    { B: 2, L: 17, E: 7, N: 5, gated: false, split: true, state: false },
    { B: 2, L: 150, E: 70, N: 16, gated: true, split: false, state: false }, // many default chunks, E past two workgroups
    { B: 2, L: 150, E: 70, N: 16, gated: true, split: false, state: true },
    // R = 4: B and C start on multiples of 4 floats (the lanes kernel reads them as vec4s where a lane's states
    // allow); zeroed: du, ddelta and dz start as zeros and the backward is told so (it may write, not add).
    // Each is another build of the chunk kernel (tens of seconds on lavapipe), so only the default variant runs them.
    { B: 2, L: 150, E: 70, N: 16, gated: true, split: false, state: false, R: 4, zeroed: true, defaultOnly: true },
    { B: 1, L: 70, E: 40, N: 16, gated: false, split: false, state: true, R: 4, defaultOnly: true },
    { B: 2, L: 13, E: 33, N: 16, gated: true, split: false, state: false, zeroed: true, defaultOnly: true },
    { B: 2, L: 40, E: 9, N: 8, gated: true, split: true, state: false, R: 4, zeroed: true, defaultOnly: true },
  ];
  // kernel: the chunk kernel the variant must run ("lanes" needs subgroups of 2 lanes or more)
  const scanVariants = [
    { name: "", get: (g: TrainingBackend) => g, seed: 8, kernel: "default" },
    { name: " in many chunks (chunk 5, sub-tile 2)", get: () => chunked!, seed: 9, kernel: "default" },
    { name: " in segments of 5 sub-tiles (chunk 40, sub-tile 8)", get: () => longSegments!, seed: 14, kernel: "default" },
    { name: " with 8 lanes a channel", get: () => lanes8!, seed: 15, kernel: "default" },
    { name: " with 4 lanes a channel (chunk 64)", get: () => lanes4!, seed: 16, kernel: "default" },
    { name: " with one block a workgroup", get: () => blocks1!, seed: 17, kernel: "default" },
    { name: " with eight blocks a workgroup (chunk 16)", get: () => blocks8!, seed: 18, kernel: "default" },
    { name: " with one lane a channel", get: () => channel!, seed: 12, kernel: "channel" },
    { name: " with one lane a channel, in many chunks (chunk 5, sub-tile 2)", get: () => channelChunked!, seed: 13, kernel: "channel" },
    { name: " with dB/dC summed in workgroup memory (chunk 7, sub-tile 3)", get: () => wgMemory!, seed: 10, kernel: "channel" },
    { name: " with dB/dC summed in subgroup blocks of 4 lanes", get: () => narrow!, seed: 11, kernel: "default" },
  ];
  for (const variant of scanVariants) {
    it(`selectiveScanBackward${variant.name}: windows, gates, L = 1, odd E and N, B and C apart`, async (g0) => {
      const g = variant.get(g0);
      const gpuOf = (k: TrainingBackend) => (k as unknown as { gpu: { hasSubgroups: boolean; kernelNames: string[] } }).gpu;
      const want = variant.kernel === "default" ? (gpuOf(g).hasSubgroups ? "bwd_scan_lanes_" : "bwd_scan_chunk_") : "bwd_scan_chunk_";

      const p = new Pair(g, new TestRng(variant.seed));
      for (const [i, s] of scanCases.entries()) {
        if (s.defaultOnly && variant.name !== "") continue;
        const rows = s.B * s.L, R = s.R ?? 2, P = R + 2 * s.N, shape = { batch: s.B, seqLen: s.L };
        const [cu, gu] = p.both(p.f32(rows * s.E), [s.B, s.L, s.E]);
        const [cdl, gdl] = p.window(p.f32(rows * s.E, 0.5), rows, s.E, s.E + 3, 1);
        const [cdb, gdb] = p.both(p.f32(s.E, 0.3), [s.E]);
        const alog = p.f32(s.E * s.N).map((v, j) => Math.log((j % s.N) + 1) + 0.2 * v);
        const [ca, ga] = p.both(alog, [s.E, s.N]);
        const xd = p.f32(rows * P);
        const [cxd, gxd] = p.both(xd, [rows, P]);
        const [cBs, gBs] = p.both(xd.filter((_, j) => j % P >= R && j % P < R + s.N), [rows, s.N]); // B as its own tensor
        const [cD, gD] = p.both(p.f32(s.E), [s.E]);
        const [cz, gz] = s.gated ? p.window(p.f32(rows * s.E), rows, s.E, 2 * s.E, s.E) : [null, null];
        const [ch0, gh0] = s.state ? p.both(p.f32(s.B * s.E * s.N), [s.B, s.E, s.N]) : [null, null];
        const args = (t: Record<string, TensorOrCols | null>) => ({
          ...shape, u: t.u as Tensor, delta: t.delta!, deltaBias: t.dbias as Tensor, A_log: t.A as Tensor,
          B: s.split ? t.Bs! : cols(t.xd as Tensor, R, s.N), C: cols(t.xd as Tensor, R + s.N, s.N), D: t.D as Tensor,
          z: t.z ?? null, state: (t.h0 as Tensor | null) ?? null,
        });
        const ca_ = args({ u: cu, delta: cdl, dbias: cdb, A: ca, xd: cxd, Bs: cBs, D: cD, z: cz, h0: ch0 });
        const ga_ = args({ u: gu, delta: gdl, dbias: gdb, A: ga, xd: gxd, Bs: gBs, D: gD, z: gz, h0: gh0 });
        const [cdy, gdy] = p.both(p.f32(rows * s.E), [s.B, s.L, s.E]);
        const grads = () => {
          const fresh = (n: number) => (s.zeroed ? new Float32Array(n) : p.f32(n));
          const du = fresh(rows * s.E), dd = fresh(rows * s.E), dbias = p.f32(s.E), dA = p.f32(s.E * s.N), dx = p.f32(rows * P);
          const dD = p.f32(s.E), dz = fresh(rows * 2 * s.E);
          const mk = (k: Backend) => ({
            du: k.fromF32(du, [s.B, s.L, s.E]), dDelta: k.fromF32(dd, [rows, s.E]), dDeltaBias: k.fromF32(dbias, [s.E]),
            dA_log: k.fromF32(dA, [s.E, s.N]), dxd: k.fromF32(dx, [rows, P]), dD: k.fromF32(dD, [s.E]),
            dz: s.gated ? k.fromF32(dz, [rows, 2 * s.E]) : null,
          });
          return { c: mk(ref), g: mk(g), dx, dz };
        };
        const gr = grads();
        const run = (k: TrainingBackend, a: ReturnType<typeof args>, dy: Tensor, t: typeof gr.c) =>
          k.selectiveScanBackward(a, dy, {
            du: t.du, dDelta: t.dDelta, dDeltaBias: t.dDeltaBias, dA_log: t.dA_log, dB: cols(t.dxd, R, s.N),
            dC: cols(t.dxd, R + s.N, s.N), dD: t.dD, dz: t.dz ? cols(t.dz, 0, s.E) : null, zeroed: s.zeroed === true,
          });
        run(ref, ca_, cdy, gr.c);
        run(g, ga_, gdy, gr.g);
        const tag = `case ${i}${s.state ? " (initial state)" : ""}`;
        if (s.state) await compare(ch0 as Tensor, gh0 as Tensor, g, 0, `${tag}: the initial state is read only`);
        const tol = 1e-4;
        await compare(gr.c.du, gr.g.du, g, tol, `${tag} du`);
        await compare(gr.c.dDelta, gr.g.dDelta, g, tol, `${tag} dDelta`);
        await compare(gr.c.dDeltaBias, gr.g.dDeltaBias, g, tol, `${tag} dDeltaBias`);
        await compare(gr.c.dA_log, gr.g.dA_log, g, tol, `${tag} dA_log`);
        await compare(gr.c.dD, gr.g.dD, g, tol, `${tag} dD`);
        await compare(cols(gr.c.dxd, R, 2 * s.N), cols(gr.g.dxd, R, 2 * s.N), g, tol, `${tag} dB, dC`, gr.dx);
        if (gr.c.dz) await compare(cols(gr.c.dz, 0, s.E), cols(gr.g.dz!, 0, s.E), g, tol, `${tag} dz`, gr.dz);
      }
      assert.ok(gpuOf(g).kernelNames.some((k) => k.startsWith(want)), `ran ${want}: ${gpuOf(g).kernelNames}`);
    });
  }

  it("selectiveScanBackward rejects an initial state of the wrong size and a missing dz", async (g) => {
    const E = 2, N = 3, shape = { batch: 1, seqLen: 2 };
    const t = (n: number[]) => g.zeros(n);
    const a = {
      ...shape, u: t([1, 2, E]), delta: t([2, E]), deltaBias: t([E]), A_log: t([E, N]), B: t([2, N]), C: t([2, N]),
      D: t([E]), z: t([2, E]), state: null,
    };
    const gr = { du: t([2, E]), dDelta: t([2, E]), dDeltaBias: t([E]), dA_log: t([E, N]), dB: t([2, N]), dC: t([2, N]), dD: t([E]), dz: null };
    assert.throws(() => g.selectiveScanBackward(a, t([2, E]), gr), MambaError);
    assert.throws(() => g.selectiveScanBackward({ ...a, state: t([1, E, N + 1]) }, t([2, E]), { ...gr, dz: t([2, E]) }), MambaError);
  });
});
