/**
 * The WebAssembly kernels of assembly/ (selective scan, causal conv + SiLU, residual add + RMSNorm, and the vector
 * exp they use) against their plain TypeScript twins in src/backend/cpu/, in both builds: relaxed SIMD (fused
 * multiply-add) and plain SIMD. Random shapes include edge sizes (channel counts that are not multiples of the four
 * lanes, N = 1 / 5 / 16, L = 1 / 7 / 33, batches of 1 to 3), optional inputs present and absent, column windows of
 * wider matrices, and work split into channel or row ranges (whole, halves, uneven thirds), whose results must be
 * bitwise identical to the whole range's.
 *
 * The modules are compiled here from the sources with AssemblyScript's API, so the test always checks the current
 * sources, whatever state the generated module is in. Node 20 needs V8's --experimental-wasm-relaxed-simd for the
 * relaxed build; the test sets it when the runtime does not accept that build as it is.
 */
import { describe, test, before } from "node:test";
import assert from "node:assert/strict";
import { setFlagsFromString } from "node:v8";
import { compileAssembly } from "../helpers/compile-assembly.ts";
import { selectiveScanF32, softplus } from "../../src/backend/cpu/scan.ts";
import { causalConv1dSiluF32, silu } from "../../src/backend/cpu/conv.ts";
import { addRmsNormF32 } from "../../src/backend/cpu/norm.ts";
import type { Strided } from "../../src/backend/cpu/tensor.ts";
import { TestRng } from "../helpers/random.ts";

const ENTRY = "assembly/wasm-kernels-test-entry.ts";
const ENTRY_SOURCE =
  'export * from "./scan";\nexport * from "./conv";\nexport * from "./norm";\nexport { expF32, softplusF32, siluF32 } from "./math";\n';

/** Compiles assembly/'s scan, conv, norm and math with the flags of scripts/build-wasm.mjs. */
const compileKernels = (features: string) => compileAssembly(ENTRY, ENTRY_SOURCE, features);

type Fn = (...args: number[]) => void;
interface Exports {
  selectiveScan: Fn; negExpF32: Fn; causalConv1dSilu: Fn; addRmsNorm: Fn; expF32: Fn; softplusF32: Fn; siluF32: Fn;
}

/** One instance over a shared memory, with a bump allocator of f32 arrays (byte offsets, 16-aligned, never 0). */
class Kernels {
  readonly memory = new WebAssembly.Memory({ initial: 512, maximum: 65536, shared: true });
  readonly ex: Exports;
  private top = 65536;
  constructor(readonly name: string, mod: WebAssembly.Module) {
    const env: Record<string, unknown> = { memory: this.memory, abort: () => { throw new Error("abort"); } };
    this.ex = new WebAssembly.Instance(mod, { env: env as WebAssembly.ModuleImports }).exports as unknown as Exports;
  }
  reset(): void {
    this.top = 65536;
  }
  alloc(floats: number): number {
    const p = this.top;
    this.top += Math.ceil(Math.max(floats, 1) / 4) * 16;
    if (this.top > this.memory.buffer.byteLength) this.memory.grow(Math.ceil((this.top - this.memory.buffer.byteLength) / 65536));
    return p;
  }
  put(a: Float32Array): number {
    const p = this.alloc(a.length);
    this.view(p, a.length).set(a);
    return p;
  }
  view(p: number, n: number): Float32Array {
    return new Float32Array(this.memory.buffer, p, n);
  }
  get(p: number, n: number): Float32Array {
    return this.view(p, n).slice();
  }
}

let kernels: Kernels[] = [];
let relaxedNeededFlag = false;

before(async () => {
  const plain = await compileKernels("simd,threads");
  const relaxed = await compileKernels("simd,threads,relaxed-simd");
  if (!WebAssembly.validate(relaxed)) {
    setFlagsFromString("--experimental-wasm-relaxed-simd");
    relaxedNeededFlag = true;
  }
  assert.ok(WebAssembly.validate(relaxed), "this runtime does not run relaxed SIMD, even with --experimental-wasm-relaxed-simd");
  kernels = [
    new Kernels("relaxed", new WebAssembly.Module(relaxed)),
    new Kernels("plain", new WebAssembly.Module(plain)),
  ];
}, { timeout: 120_000 });

/** Channel or row ranges covering [0, n): whole, halves, uneven thirds (some not at multiples of 4, some empty). */
function splits(n: number): [number, number][][] {
  const h = Math.floor(n / 2);
  const a = Math.min(n, Math.floor(n / 3) + 1), b = Math.min(n, a + Math.floor(n / 3) + 2);
  return [[[0, n]], [[0, h], [h, n]], [[0, a], [a, b], [b, n]]];
}

function bits(a: Float32Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length);
}

/** max over i of |got - want| / (|want| + scale): a relative error that does not blow up where want crosses zero. */
function mixedError(got: Float32Array, want: Float32Array, scale: number): number {
  let worst = 0;
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i]! - want[i]!) / (Math.abs(want[i]!) + scale);
    if (!(e <= worst)) worst = e; // NaN wins
  }
  return worst;
}

function rms(a: Float32Array): number {
  let s = 0;
  for (const v of a) s += v * v;
  return Math.sqrt(s / Math.max(1, a.length)) || 1;
}

/** A [rows, width] matrix as a column window of a wider one (col0 >= 1, random values outside), or alone. */
function windowOf(r: TestRng, data: Float32Array, rows: number, width: number, windowed: boolean): Strided {
  if (!windowed) return { data, ld: width, off: 0, width, rows };
  const off = r.int(1, 5), ld = off + width + r.int(0, 4);
  const big = r.f32(rows * ld, 100); // read by mistake, these would wreck the result
  for (let i = 0; i < rows; i++) big.set(data.subarray(i * width, (i + 1) * width), i * ld + off);
  return { data: big, ld, off, width, rows };
}

describe("expV, softplusV and siluV (assembly/math.ts)", { timeout: 120_000 }, () => {
  /** The largest relative error of fn (a kernel over f32 arrays) against ref over n inputs from fill. */
  function worstRelative(k: Kernels, n: number, fill: (i: number) => number, fn: Fn, ref: (v: number) => number): [number, number] {
    const src = k.alloc(n), dst = k.alloc(n);
    const x = k.view(src, n), y = k.view(dst, n);
    for (let i = 0; i < n; i++) x[i] = fill(i);
    fn(src, dst, n);
    let worst = 0, at = 0;
    for (let i = 0; i < n; i++) {
      const want = ref(x[i]!);
      const e = Math.abs(y[i]! - want) / Math.abs(want);
      if (!(e <= worst)) [worst, at] = [e, x[i]!];
    }
    k.reset();
    return [worst, at];
  }
  test("exp: relative error below 1.5e-7 on [-87.33, 88.37]; subnormal or 0 below, NaN kept", () => {
    for (const k of kernels) {
      const r = new TestRng(7);
      const n = 1 << 20;
      // the scan's arguments dt·A are <= 0 (with many near 0); A_log is a few units
      for (const [lo, hi] of [[-87.33, 88.37], [-20, 0], [-1, 0], [-1e-3, 0], [0, 4]] as const) {
        const [worst, at] = worstRelative(k, n, (i) => (i % 2 ? lo + ((hi - lo) * i) / n : r.uniform(lo, hi)), k.ex.expF32, Math.exp);
        assert.ok(worst < 1.5e-7, `${k.name}: exp on [${lo}, ${hi}] relative error ${worst} at ${at}`);
      }
      // below -87.33 the true result is below 2^-126: what comes back is within that of it
      const src = k.alloc(n), dst = k.alloc(n);
      const x = k.view(src, n), y = k.view(dst, n);
      for (let i = 0; i < n; i++) x[i] = r.uniform(-200, -87.33);
      k.ex.expF32(src, dst, n);
      for (let i = 0; i < n; i++) assert.ok(Math.abs(y[i]! - Math.exp(x[i]!)) < 1.2e-38 && y[i]! >= 0, `${k.name}: exp(${x[i]})`);
      const special = [-88, -100, -1e4, -Infinity, NaN, 0, -0];
      x.set(special);
      k.ex.expF32(src, dst, special.length);
      assert.deepEqual([...y.subarray(0, special.length)], [0, 0, 0, 0, NaN, 1, 1]);
      k.reset();
    }
  });
  test("softplus: the reference's threshold at 20, relative error below 5e-7 above -87", () => {
    for (const k of kernels) {
      const r = new TestRng(8);
      const edges = [20, Math.fround(20.000002), 19.999998, 0, -0, 1e-30, -1e-30, -87, 1e-4, -1e-4];
      const [worst, at] = worstRelative(k, 1 << 18, (i) => edges[i] ?? r.uniform(-87, 40), k.ex.softplusF32, softplus);
      assert.ok(worst < 5e-7, `${k.name}: softplus relative error ${worst} at ${at}`);
      const src = k.put(new Float32Array([Math.fround(20.000002), 100]));
      k.ex.softplusF32(src, src, 2);
      assert.deepEqual([...k.get(src, 2)], [Math.fround(20.000002), 100]); // above 20: v itself
      k.reset();
    }
  });
  test("silu: relative error below 5e-7 above -87, no overflow far out, the reference's NaN at -inf", () => {
    for (const k of kernels) {
      const r = new TestRng(9);
      const edges = [-1e-30, 1e-30, -80, 80, -87, 100, 1e-4, -1e-4];
      const [worst, at] = worstRelative(k, 1 << 18, (i) => edges[i] ?? r.uniform(-30, 30), k.ex.siluF32, silu);
      assert.ok(worst < 5e-7, `${k.name}: silu relative error ${worst} at ${at}`);
      const src = k.put(new Float32Array([0, -1000, 1000, -Infinity, Infinity]));
      k.ex.siluF32(src, src, 5);
      assert.deepEqual([...k.get(src, 5)], [0, -0, 1000, NaN, Infinity]); // the reference's silu(-inf) is NaN too
      k.reset();
    }
  });
});

describe("selectiveScan (assembly/scan.ts) against selectiveScanF32", { timeout: 300_000 }, () => {
  // [batch, L, E, N]
  const shapes: [number, number, number, number][] = [
    [1, 1, 1, 1], [1, 7, 5, 5], [2, 33, 13, 16], [3, 1, 6, 16], [1, 33, 9, 1], [2, 7, 16, 5], [1, 7, 4, 16], [3, 7, 11, 16],
    [1, 5, 8, 3], [2, 4, 7, 32], [2, 0, 6, 16],
  ];
  let seed = 100;
  for (const [B, L, E, N] of shapes) {
    for (const variant of [0, 1, 2, 3]) {
      const withZ = variant !== 1, withState = variant >= 2, windowed = variant !== 2, aIsLog = variant === 3 ? 0 : 1;
      const name = `B${B} L${L} E${E} N${N}${withZ ? " z" : ""}${withState ? " state" : ""}${windowed ? " windows" : ""}${aIsLog ? "" : " A given"}`;
      const s = seed++;
      test(name, () => {
        const r = new TestRng(s);
        const T = B * L;
        const u = r.f32(T * E);
        const delta = r.f32(T * E, 1.5);
        if (T * E > 3) { delta[0] = 40; delta[1] = -120; delta[2] = 19.5; } // above the threshold; dt flushed to ~0
        const deltaBias = new Float32Array(E).map(() => r.uniform(-4, 0));
        const A_log = new Float32Array(E * N).map((_, i) => Math.log((i % N) + 1) + r.uniform(-0.5, 0.5));
        const Bm = r.f32(T * N), Cm = r.f32(T * N), D = r.f32(E), z = r.f32(T * E, 2);
        const state0 = withState ? r.f32(B * E * N) : null;
        const dW = windowOf(r, delta, T, E, windowed), bW = windowOf(r, Bm, T, N, windowed);
        const cW = windowOf(r, Cm, T, N, windowed), zW = windowOf(r, z, T, E, windowed);
        const want = new Float32Array(T * E);
        const wantState = state0 ? state0.slice() : null;
        selectiveScanF32({ u, delta: dW, deltaBias, A_log, Bm: bW, Cm: cW, D, z: withZ ? zW : null, state: wantState }, B, L, E, N, want);

        for (const k of kernels) {
          k.reset();
          const pU = k.put(u), pD = k.put(dW.data), pBias = k.put(deltaBias), pB = k.put(bW.data), pC = k.put(cW.data);
          const pZ = k.put(zW.data), pDD = k.put(D), pY = k.alloc(T * E), pS = k.alloc(B * E * N);
          const pA = k.put(A_log);
          if (!aIsLog) k.ex.negExpF32(pA, pA, E * N);
          const works = [k.alloc(8 * N), k.alloc(8 * N), k.alloc(8 * N)];
          let first: { y: Float32Array; st: Float32Array } | null = null;
          for (const ranges of splits(E)) {
            k.view(pY, T * E).fill(NaN);
            if (state0) k.view(pS, B * E * N).set(state0);
            ranges.forEach(([e0, e1], i) => k.ex.selectiveScan(
              pU, pD + 4 * dW.off, dW.ld, pBias, pA, aIsLog, pB + 4 * bW.off, bW.ld, pC + 4 * cW.off, cW.ld, pDD,
              withZ ? pZ + 4 * zW.off : 0, zW.ld, state0 ? pS : 0, pY, works[i]!, B, L, E, N, e0, e1,
            ));
            const y = k.get(pY, T * E), st = k.get(pS, B * E * N);
            if (!first) {
              first = { y, st };
              const err = mixedError(y, want, rms(want));
              assert.ok(err < 1e-5, `${k.name}: y differs from the reference by ${err} (relative to |y| + rms(y))`);
              if (wantState) {
                const errS = mixedError(st, wantState, rms(wantState));
                assert.ok(errS < 1e-5, `${k.name}: the state differs from the reference by ${errS}`);
              }
            } else {
              assert.deepEqual(bits(y), bits(first.y), `${k.name}: y of split ${JSON.stringify(ranges)} is not bitwise the whole range's`);
              if (state0) assert.deepEqual(bits(st), bits(first.st), `${k.name}: state of split ${JSON.stringify(ranges)}`);
            }
          }
        }
      });
    }
  }
});

describe("causalConv1dSilu (assembly/conv.ts) against causalConv1dSiluF32", { timeout: 120_000 }, () => {
  // [batch, L, E, K]
  const shapes: [number, number, number, number][] = [
    [1, 1, 1, 4], [1, 7, 5, 4], [2, 33, 13, 4], [3, 1, 6, 4], [2, 2, 9, 4], [1, 7, 7, 3], [2, 1, 5, 2], [1, 5, 4, 1], [3, 33, 17, 5],
    [2, 0, 6, 4], [2, 0, 6, 3],
  ];
  let seed = 200;
  for (const [B, L, E, K] of shapes) {
    for (const variant of [0, 1, 2, 3]) {
      const withBias = variant % 2 === 0, withState = variant >= 2, windowed = variant !== 3;
      const name = `B${B} L${L} E${E} K${K}${withBias ? " bias" : ""}${withState ? " state" : ""}${windowed ? " window" : ""}`;
      const s = seed++;
      test(name, () => {
        const r = new TestRng(s);
        const T = B * L, H = K - 1;
        const x = r.f32(T * E), weight = r.f32(E * K, 0.5), bias = withBias ? r.f32(E) : null;
        const state0 = withState ? r.f32(B * H * E) : null;
        const xW = windowOf(r, x, T, E, windowed);
        const want = new Float32Array(T * E);
        const wantState = state0 ? state0.slice() : null;
        causalConv1dSiluF32(xW, weight, bias, wantState, B, L, K, want);
        for (const k of kernels) {
          k.reset();
          const pX = k.put(xW.data), pW = k.put(weight), pBias = bias ? k.put(bias) : 0;
          const pOut = k.alloc(T * E), pS = k.alloc(B * H * E);
          let first: { y: Float32Array; st: Float32Array } | null = null;
          for (const ranges of splits(E)) {
            k.view(pOut, T * E).fill(NaN);
            if (state0) k.view(pS, B * H * E).set(state0);
            for (const [e0, e1] of ranges) {
              k.ex.causalConv1dSilu(pX + 4 * xW.off, xW.ld, pW, pBias, state0 ? pS : 0, pOut, B, L, E, K, e0, e1);
            }
            const y = k.get(pOut, T * E), st = k.get(pS, B * H * E);
            if (!first) {
              first = { y, st };
              const err = mixedError(y, want, 1);
              assert.ok(err < 1e-6, `${k.name}: out differs from the reference by ${err} (relative to |out| + 1)`);
              if (wantState) assert.deepEqual(bits(st), bits(wantState), `${k.name}: the state is not the last K-1 inputs`);
            } else {
              assert.deepEqual(bits(y), bits(first.y), `${k.name}: out of split ${JSON.stringify(ranges)} is not bitwise the whole range's`);
              if (state0) assert.deepEqual(bits(st), bits(first.st), `${k.name}: state of split ${JSON.stringify(ranges)}`);
            }
          }
        }
      });
    }
  }
});

describe("addRmsNorm (assembly/norm.ts) against addRmsNormF32", { timeout: 120_000 }, () => {
  // [T, D]
  const shapes: [number, number][] = [[1, 1], [3, 3], [5, 4], [7, 7], [2, 64], [9, 33], [4, 768], [1, 1536]];
  let seed = 300;
  for (const [T, D] of shapes) {
    for (const withResidual of [true, false]) {
      const s = seed++;
      test(`T${T} D${D}${withResidual ? " + residual" : ""}`, () => {
        const r = new TestRng(s);
        const x = r.f32(T * D, 3), residual = withResidual ? r.f32(T * D, 10) : null, weight = r.f32(D);
        const eps = 1e-5;
        const wantRes = new Float32Array(T * D), want = new Float32Array(T * D);
        addRmsNormF32(x, residual, weight, eps, D, wantRes, want);
        for (const k of kernels) {
          k.reset();
          const pX = k.put(x), pR = residual ? k.put(residual) : 0, pW = k.put(weight);
          const pRes = k.alloc(T * D), pOut = k.alloc(T * D);
          let first: { y: Float32Array; res: Float32Array } | null = null;
          for (const ranges of splits(T)) {
            k.view(pOut, T * D).fill(NaN);
            k.view(pRes, T * D).fill(NaN);
            for (const [r0, r1] of ranges) k.ex.addRmsNorm(pX, pR, pW, eps, D, pRes, pOut, r0, r1);
            const y = k.get(pOut, T * D), res = k.get(pRes, T * D);
            if (!first) {
              first = { y, res };
              assert.deepEqual(bits(res), bits(wantRes), `${k.name}: residualOut is not the f32 sum x + residual`);
              const err = mixedError(y, want, 1e-30);
              assert.ok(err < 1e-6, `${k.name}: out differs from the reference by ${err} relative`);
            } else {
              assert.deepEqual(bits(y), bits(first.y), `${k.name}: out of split ${JSON.stringify(ranges)}`);
              assert.deepEqual(bits(res), bits(first.res), `${k.name}: residualOut of split ${JSON.stringify(ranges)}`);
            }
          }
        }
      });
    }
  }
  test("out and residualOut may be x's and residual's memory (in place)", () => {
    const r = new TestRng(399);
    const T = 3, D = 10;
    const x = r.f32(T * D), residual = r.f32(T * D), weight = r.f32(D);
    const wantRes = new Float32Array(T * D), want = new Float32Array(T * D);
    addRmsNormF32(x, residual, weight, 1e-5, D, wantRes, want);
    for (const k of kernels) {
      k.reset();
      const pX = k.put(x), pR = k.put(residual), pW = k.put(weight);
      k.ex.addRmsNorm(pX, pR, pW, 1e-5, D, pR, pX, 0, T);
      assert.deepEqual(bits(k.get(pR, T * D)), bits(wantRes));
      assert.ok(mixedError(k.get(pX, T * D), want, 1e-30) < 1e-6);
    }
  });
});

test("the relaxed build ran (with V8's flag where this Node needs it)", () => {
  assert.equal(kernels.length, 2);
  assert.equal(kernels[0]!.name, "relaxed");
  if (relaxedNeededFlag) assert.ok(process.versions.node.startsWith("20") || process.versions.node.startsWith("21"));
});
