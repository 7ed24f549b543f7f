/**
 * Micro-benchmark of the WebAssembly kernels of assembly/ other than the matrix products, one thread, both builds
 * (relaxed SIMD and plain SIMD), at the 130m model's shapes (E 1536, N 16, K 4, D 768):
 *  - the selective scan, prefill (B 1, L 256) and decode (L 1; A given as A_log, or as A precomputed);
 *  - the causal conv + SiLU (L 256 and L 1);
 *  - the residual add + RMSNorm (T 256 and T 1).
 * Each figure is the median of 7 loops of at least 100 ms of this process's CPU time (the machine is shared); ns per element is per (t, e) for the scan and the
 * conv and per (t, d) for the norm. GB/s counts the bytes each kernel must read and write once (the scan's u, delta,
 * z, y and its B, C rows; the conv's x and out; the norm's x, residual, residualOut, out), GFLOP/s the scan's
 * arithmetic in its inner loop (7 per state element and step, one exp counted as one). The plain TypeScript twins
 * are timed at the prefill shapes for comparison.
 *
 * The modules are compiled from the sources here (AssemblyScript's API, scripts/build-wasm.mjs's flags).
 * Usage: node --import tsx bench/wasm-kernels.ts   (on Node 20 it sets V8's --experimental-wasm-relaxed-simd itself)
 */
import { setFlagsFromString } from "node:v8";
import { compileAssembly } from "../test/helpers/compile-assembly.ts";
import { selectiveScanF32 } from "../src/backend/cpu/scan.ts";
import { causalConv1dSiluF32 } from "../src/backend/cpu/conv.ts";
import { addRmsNormF32 } from "../src/backend/cpu/norm.ts";

const ENTRY = "assembly/wasm-kernels-bench-entry.ts";
const ENTRY_SOURCE = 'export * from "./scan";\nexport * from "./conv";\nexport * from "./norm";\n';

const compileKernels = (features: string) => compileAssembly(ENTRY, ENTRY_SOURCE, features);

type Fn = (...args: number[]) => void;
interface Exports { selectiveScan: Fn; negExpF32: Fn; causalConv1dSilu: Fn; addRmsNorm: Fn }

/** Milliseconds of this process's CPU time (user + system) per call of fn: the median of `trials` loops, each of at
 *  least minMs. CPU time rather than wall time, because the machine is shared: a loop that waits for a core does
 *  not count its wait (it still pays for caches that others share). */
function msPerCall(fn: () => void, minMs = 100, trials = 7): number {
  const cpuMs = () => {
    const c = process.cpuUsage();
    return (c.user + c.system) / 1000;
  };
  fn();
  let reps = 1;
  for (;;) {
    const t0 = cpuMs();
    for (let i = 0; i < reps; i++) fn();
    if (cpuMs() - t0 >= minMs / 4) break;
    reps *= 2;
  }
  const times: number[] = [];
  for (let k = 0; k < trials; k++) {
    const t0 = cpuMs();
    for (let i = 0; i < reps; i++) fn();
    times.push((cpuMs() - t0) / reps);
  }
  times.sort((a, b) => a - b);
  return times[trials >> 1]!;
}

function random(n: number, lo: number, hi: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = lo + ((hi - lo) * s) / 4294967296;
  }
  return a;
}

const E = 1536, N = 16, K = 4, Dm = 768, R = 48;
const line = (what: string, ms: number, elements: number, bytes: number, flops = 0) =>
  console.log(
    `${what.padEnd(44)} ${(ms * 1000).toFixed(1).padStart(9)} us  ${((ms * 1e6) / elements).toFixed(2).padStart(7)} ns/elem  ` +
    `${(bytes / ms / 1e6).toFixed(2).padStart(6)} GB/s${flops ? `  ${(flops / ms / 1e6).toFixed(2).padStart(6)} GFLOP/s` : ""}`,
  );

async function main(): Promise<void> {
  const plain = await compileKernels("simd,threads");
  const relaxed = await compileKernels("simd,threads,relaxed-simd");
  if (!WebAssembly.validate(relaxed)) setFlagsFromString("--experimental-wasm-relaxed-simd");
  console.log(`wasm kernels, one thread, Node ${process.versions.node}; timings on a shared machine are noisy`);
  for (const [name, bin] of [["relaxed", relaxed], ["plain", plain]] as const) {
    if (!WebAssembly.validate(bin)) {
      console.log(`${name}: this runtime cannot run it`);
      continue;
    }
    const memory = new WebAssembly.Memory({ initial: 2048, maximum: 65536, shared: true });
    const env = { memory, abort: () => { throw new Error("abort"); } };
    const ex = new WebAssembly.Instance(new WebAssembly.Module(bin), { env }).exports as unknown as Exports;
    let top = 65536;
    const put = (a: Float32Array) => {
      const p = top;
      new Float32Array(memory.buffer, p, a.length).set(a);
      top += Math.ceil(a.length / 4) * 16;
      return p;
    };
    const alloc = (n: number) => put(new Float32Array(n));
    console.log(`-- ${name} build`);

    for (const L of [256, 1]) {
      const T = L;
      // delta, B, C as windows of x_proj-like and dt_proj outputs; z as the second half of in_proj's output
      const u = put(random(T * E, -1, 1, 1)), delta = put(random(T * E, -3, 1, 2)), bias = put(random(E, -4, -1, 3));
      const aLog = put(new Float32Array(E * N).map((_, i) => Math.log((i % N) + 1)));
      const aNeg = alloc(E * N);
      ex.negExpF32(aLog, aNeg, E * N);
      const xdbl = put(random(T * (R + 2 * N), -1, 1, 4)), D = put(random(E, -1, 1, 5));
      const xz = put(random(T * 2 * E, -2, 2, 6)), state = put(random(E * N, -1, 1, 7)), y = alloc(T * E), work = alloc(8 * N);
      const scan = (A: number, isLog: number) => () =>
        ex.selectiveScan(u, delta, E, bias, A, isLog, xdbl + 4 * R, R + 2 * N, xdbl + 4 * (R + N), R + 2 * N, D,
          xz + 4 * E, 2 * E, state, y, work, 1, L, E, N, 0, E);
      const bytes = T * E * 16 + T * N * 8;
      const flops = T * E * N * 7;
      line(`scan B1 L${L} E${E} N${N}, A_log`, msPerCall(scan(aLog, 1)), T * E, bytes, flops);
      line(`scan B1 L${L} E${E} N${N}, A precomputed`, msPerCall(scan(aNeg, 0)), T * E, bytes, flops);

      const x = put(random(T * 2 * E, -1, 1, 8)), w = put(random(E * K, -0.5, 0.5, 9)), cb = put(random(E, -0.1, 0.1, 10));
      const cstate = put(random((K - 1) * E, -1, 1, 11)), cout = alloc(T * E);
      line(`conv+silu B1 L${L} E${E} K${K}`, msPerCall(() => ex.causalConv1dSilu(x, 2 * E, w, cb, cstate, cout, 1, L, E, K, 0, E)),
        T * E, T * E * 8);

      const hx = put(random(T * Dm, -1, 1, 12)), hr = put(random(T * Dm, -3, 3, 13)), nw = put(random(Dm, 0.5, 1.5, 14));
      const ro = alloc(T * Dm), no = alloc(T * Dm);
      line(`add+rmsnorm T${T} D${Dm}`, msPerCall(() => ex.addRmsNorm(hx, hr, nw, 1e-5, Dm, ro, no, 0, T)), T * Dm, T * Dm * 16);
    }
  }

  console.log("-- plain TypeScript twins (src/backend/cpu)");
  const L = 256, T = L;
  const win = (data: Float32Array, ld: number, off: number, width: number) => ({ data, ld, off, width, rows: T });
  const xdbl = random(T * (R + 2 * N), -1, 1, 4), xz = random(T * 2 * E, -2, 2, 6);
  const scanData = {
    u: random(T * E, -1, 1, 1), delta: win(random(T * E, -3, 1, 2), E, 0, E), deltaBias: random(E, -4, -1, 3),
    A_log: new Float32Array(E * N).map((_, i) => Math.log((i % N) + 1)), Bm: win(xdbl, R + 2 * N, R, N),
    Cm: win(xdbl, R + 2 * N, R + N, N), D: random(E, -1, 1, 5), z: win(xz, 2 * E, E, E), state: random(E * N, -1, 1, 7),
  };
  const yRef = new Float32Array(T * E);
  line(`scan B1 L${L} E${E} N${N} (TypeScript)`, msPerCall(() => selectiveScanF32(scanData, 1, L, E, N, yRef), 100, 3),
    T * E, T * E * 16 + T * N * 8, T * E * N * 7);
  const out = new Float32Array(T * E);
  const cx = win(random(T * 2 * E, -1, 1, 8), 2 * E, 0, E), cw = random(E * K, -0.5, 0.5, 9), cb = random(E, -0.1, 0.1, 10);
  const cs = random((K - 1) * E, -1, 1, 11);
  line(`conv+silu B1 L${L} E${E} K${K} (TypeScript)`, msPerCall(() => causalConv1dSiluF32(cx, cw, cb, cs, 1, L, K, out), 100, 3),
    T * E, T * E * 8);
  const hx = random(T * Dm, -1, 1, 12), hr = random(T * Dm, -3, 3, 13), nw = random(Dm, 0.5, 1.5, 14);
  const ro = new Float32Array(T * Dm), no = new Float32Array(T * Dm);
  line(`add+rmsnorm T${T} D${Dm} (TypeScript)`, msPerCall(() => addRmsNormF32(hx, hr, nw, 1e-5, Dm, ro, no), 100, 3),
    T * Dm, T * Dm * 16);
}

await main();
