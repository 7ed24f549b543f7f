/**
 * The CPU engine built for speed: WebAssembly SIMD kernels over one shared memory, run by a pool of threads
 * (./runtime.ts). It is the reference CPU backend (../cpu) with its hot ops replaced: the products (prefill's
 * matrix x matrix, decode's matrix x vector, f32 or half-precision weights), the embedding gather, the fused
 * residual + RMSNorm, the causal conv, the selective scan, Mamba-2's SSD scan and gated RMSNorm, and the greedy choice.
 *
 * Its tensors are CPU tensors whose arrays are views of the wasm memory (WasmTensor), so every op it does not
 * replace (training, sampling with a temperature, small ops) runs the reference code unchanged on the same data.
 * Half-precision weights stay half precision in the memory, and Q8_0 / Q4_0 weights in their blocks (GGUF's
 * layouts); a reference op that reads one as f32 gets a widened (dequantized) copy. dispose() returns a tensor's block to the allocator.
 */
import type { SampleRequest, SelectiveScanArgs, SeqShape, SsdScanArgs, Tensor, TensorOrCols } from "../backend.ts";
import { asCols } from "../backend.ts";
import { CpuBackend } from "../cpu/index.ts";
import { CpuTensor, cpu } from "../cpu/tensor.ts";
import { type HostTensor, isQuantized, numel, toFloat32 } from "../../io/tensor.ts";
import { QK, quantBytes } from "../../io/quant.ts";
import { MambaError, check } from "../../errors.ts";
import type { AdamWParams, SsdGrads } from "../training.ts";
import { type SimdPath, WasmRuntime } from "./runtime.ts";

type Storage = "F32" | "F16" | "BF16" | "Q8_0" | "Q4_0" | "I32";

/** A CPU tensor held in the wasm memory at byte offset `ptr`. Half-precision and quantized ones (`storage`
 *  F16/BF16/Q8_0/Q4_0, their stored bits in `half`) read as a widened (dequantized) f32 copy through `data`, until
 *  an op writes into one: it is then widened in place for good (promote). */
export class WasmTensor extends CpuTensor {
  freed = false;
  constructor(
    shape: readonly number[],
    dtype: "f32" | "i32",
    data: Float32Array | Int32Array,
    public ptr: number,
    public bytes: number,
    public storage: Storage,
    public half: Uint16Array | Uint8Array | null,
  ) {
    super(shape, dtype, data);
    if (half) {
      // the last widened copy is shared while someone holds it: a loop over `data` widens once
      let last: WeakRef<Float32Array> | null = null;
      const widen = (): Float32Array => {
        const held = last?.deref();
        if (held) return held;
        const wide = toFloat32({ dtype: this.storage as "F16" | "BF16" | "Q8_0" | "Q4_0", shape: [...this.shape], data: this.half! });
        last = new WeakRef(wide);
        return wide;
      };
      Object.defineProperty(this, "data", { get: widen, configurable: true, enumerable: true });
    }
  }
}

export interface CpuEngineOptions {
  /** worker threads, the calling one included (default: the available cores) */
  threads?: number;
  /** "plain" forces the plain SIMD build (default: relaxed SIMD where the runtime has it) */
  simd?: SimdPath | "auto";
}

/** Products smaller than this (multiply-adds) run on the calling thread alone: a job's hand-off costs more. */
const PARALLEL_MIN_WORK = 1 << 16;

export class WasmCpuBackend extends CpuBackend {
  /** What runs, for messages: "cpu (wasm simd relaxed, 2 threads)". */
  readonly engine: string;
  /** Ops that run the reference code on this engine's tensors because their kernel is missing from the build. */
  readonly referenceOps: string[];
  /** Products of 1 to 3 rows (decode) with Q8_0 / Q4_0 weights take integer dot products over the rows quantized to
   *  int16 blocks (about half the CPU time; the activations rounded to 2^-16 of each block's largest value). false:
   *  every product multiplies the exact dequantized weights in f32, as prefill does. */
  int16Activations = true;
  /** A = -exp(A_log) per A_log tensor, made once (the scan then skips N exps a channel per call); dropped when an op
   *  writes into A_log. */
  private readonly negExpA = new WeakMap<Tensor, WasmTensor>();

  constructor(readonly rt: WasmRuntime) {
    super();
    this.engine = `cpu (wasm simd ${rt.path}, ${rt.threads} thread${rt.threads === 1 ? "" : "s"})`;
    const ops: [string, string][] = [["addRmsNorm", "addRmsNorm"], ["causalConv1dSilu", "causalConv1dSilu"], ["selectiveScan", "selectiveScan"],
      ["ssdScan", "ssdScan"], ["gatedRmsNorm", "gatedRmsNorm"], ["ssdScanBackward", "ssdBackward"]];
    this.referenceOps = ops.filter(([, k]) => !rt.has(k)).map(([op]) => op);
  }

  // ---- memory ----

  private allocF32(shape: readonly number[]): WasmTensor {
    const n = numel(shape);
    const ptr = this.rt.alloc(n * 4);
    return new WasmTensor([...shape], "f32", new Float32Array(this.rt.memory.buffer, ptr, n), ptr, n * 4, "F32", null);
  }
  private allocI32(shape: readonly number[]): WasmTensor {
    const n = numel(shape);
    const ptr = this.rt.alloc(n * 4);
    return new WasmTensor([...shape], "i32", new Int32Array(this.rt.memory.buffer, ptr, n), ptr, n * 4, "I32", null);
  }

  /** A tensor in the wasm memory: t itself, or a copy made for one op (pushed on `temps`, freed after it). */
  private inWasm(t: Tensor, temps: WasmTensor[]): WasmTensor {
    if (t instanceof WasmTensor) {
      if (t.freed) throw new MambaError("a disposed tensor was passed to the cpu backend");
      return t;
    }
    const c = cpu(t);
    const w = c.dtype === "i32" ? this.allocI32(c.shape) : this.allocF32(c.shape);
    (w.data as Float32Array | Int32Array).set(c.data as never);
    temps.push(w);
    return w;
  }
  /** inWasm for ops that read f32: a half-precision tensor is widened into a temporary copy. */
  private inWasmF32(t: Tensor, temps: WasmTensor[]): WasmTensor {
    const w = this.inWasm(t, temps);
    if (w.half === null) return w;
    const n = numel(w.shape);
    const wide = this.allocF32(w.shape);
    if (w.storage === "Q8_0" || w.storage === "Q4_0") {
      this.rt.run(w.storage === "Q8_0" ? "dequantQ8_0" : "dequantQ4_0", [w.ptr, wide.ptr], n / QK, 1, n >= PARALLEL_MIN_WORK);
    } else this.rt.run(w.storage === "F16" ? "widenF16" : "widenBF16", [w.ptr, wide.ptr], n, 4, n >= PARALLEL_MIN_WORK);
    temps.push(wide);
    return wide;
  }
  private freeTemps(temps: WasmTensor[]): void {
    for (const t of temps) this.dispose(t);
  }

  override upload(t: HostTensor): Tensor {
    const n = numel(t.shape);
    // matrices stay half precision (the products and the gather widen them in registers, other ops read a widened
    // copy); vectors and small matrices are widened once here
    if ((t.dtype === "F16" || t.dtype === "BF16") && t.shape.length === 2 && n >= 1024) {
      const ptr = this.rt.alloc(n * 2);
      const half = new Uint16Array(this.rt.memory.buffer, ptr, n);
      if (t.readInto) t.readInto(new Uint8Array(this.rt.memory.buffer, ptr, n * 2)); // straight from the file
      else half.set(t.data as Uint16Array);
      return new WasmTensor([...t.shape], "f32", new Float32Array(0), ptr, n * 2, t.dtype, half);
    }
    // quantized matrices whose rows are whole blocks stay in their blocks (the products and the gather read them
    // there); anything else is dequantized here
    if (isQuantized(t.dtype) && t.shape.length === 2 && t.shape[1]! % QK === 0) {
      const bytes = quantBytes(t.dtype, n);
      const ptr = this.rt.alloc(bytes);
      const blocks = new Uint8Array(this.rt.memory.buffer, ptr, bytes);
      if (t.readInto) t.readInto(blocks);
      else blocks.set(t.data as Uint8Array);
      return new WasmTensor([...t.shape], "f32", new Float32Array(0), ptr, bytes, t.dtype, blocks);
    }
    const out = this.allocF32(t.shape);
    if (t.dtype === "F32" && t.readInto) t.readInto(new Uint8Array(this.rt.memory.buffer, out.ptr, n * 4));
    else out.f32.set(toFloat32(t as Parameters<typeof toFloat32>[0]));
    return out;
  }
  override fromF32(data: Float32Array, shape: readonly number[]): Tensor {
    check(data.length === numel(shape), `data has ${data.length} values, shape [${shape}] needs ${numel(shape)}`);
    const t = this.allocF32(shape);
    t.f32.set(data);
    return t;
  }
  override fromI32(data: Int32Array, shape: readonly number[]): Tensor {
    check(data.length === numel(shape), `data has ${data.length} values, shape [${shape}] needs ${numel(shape)}`);
    const t = this.allocI32(shape);
    t.i32.set(data);
    return t;
  }
  override zeros(shape: readonly number[]): Tensor {
    const t = this.allocF32(shape);
    t.f32.fill(0);
    return t;
  }
  override dispose(...ts: (Tensor | null | undefined)[]): void {
    for (const t of ts) {
      if (t instanceof WasmTensor && !t.freed) {
        t.freed = true;
        this.rt.release(t.ptr, t.bytes);
        const a = this.negExpA.get(t);
        if (a) { this.negExpA.delete(t); this.dispose(a); }
      }
    }
  }
  override concat0(ts: Tensor[]): Tensor {
    const parts = ts.map(cpu);
    const rest = parts[0]!.shape.slice(1);
    const n = parts.reduce((a, p) => a + p.shape[0]!, 0);
    const out = parts[0]!.dtype === "f32" ? this.allocF32([n, ...rest]) : this.allocI32([n, ...rest]);
    let o = 0;
    for (const p of parts) { (out.data as Float32Array).set(p.data as Float32Array, o); o += p.data.length; }
    return out;
  }
  override takeRows(x: Tensor, rows: readonly number[]): Tensor {
    const t = cpu(x);
    const w = t.shape[t.shape.length - 1]!;
    const out = this.allocF32([rows.length, w]);
    const src = t.f32;
    rows.forEach((r, i) => out.f32.set(src.subarray(r * w, (r + 1) * w), i * w));
    return out;
  }
  /** A half-precision tensor becomes f32 in a block of its own (an op is about to write into it). */
  private promote(t: Tensor): void {
    if (!(t instanceof WasmTensor) || t.half === null) return;
    const wide = t.data as Float32Array;
    const n = wide.length;
    const ptr = this.rt.alloc(n * 4);
    const view = new Float32Array(this.rt.memory.buffer, ptr, n);
    view.set(wide);
    this.rt.release(t.ptr, t.bytes);
    Object.defineProperty(t, "data", { value: view, writable: false, configurable: true, enumerable: true });
    t.ptr = ptr; t.bytes = n * 4; t.storage = "F32"; t.half = null;
  }

  /** Ops that write into an existing tensor (the optimizer's, a state's copy): a half-precision target is widened
   *  first, and a cached -exp(A_log) of it is dropped. */
  private written(t: Tensor): void {
    this.promote(t);
    this.negExpA.delete(t);
  }
  override copyInto(dst: Tensor, src: Tensor): void {
    this.written(dst);
    super.copyInto(dst, src);
  }
  override zeroFill(t: Tensor): void {
    this.written(t);
    super.zeroFill(t);
  }
  override addScaled(dst: Tensor, src: Tensor, alpha: number): void {
    this.written(dst);
    super.addScaled(dst, src, alpha);
  }
  override adamwStep(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, o: AdamWParams): void {
    this.written(param);
    super.adamwStep(param, grad, m, v, o);
  }

  override async destroy(): Promise<void> {
    this.rt.destroy();
  }

  // ---- model ops ----

  override embedding(table: Tensor, ids: Tensor): Tensor {
    const temps: WasmTensor[] = [];
    const tb = this.inWasm(table, temps);
    const idt = this.inWasm(ids, temps);
    const [V, D] = tb.shape as [number, number];
    const idv = idt.i32;
    for (let i = 0; i < idv.length; i++) {
      if (!(idv[i]! >= 0 && idv[i]! < V)) throw new MambaError(`embedding: id ${idv[i]} outside the table's ${V} rows`);
    }
    const out = this.allocF32([idv.length, D]);
    const kernel = tb.storage === "F16" ? "embeddingF16" : tb.storage === "BF16" ? "embeddingBF16"
      : tb.storage === "Q8_0" ? "embeddingQ8_0" : tb.storage === "Q4_0" ? "embeddingQ4_0" : "embeddingF32";
    this.rt.run(kernel, [tb.ptr, D, idt.ptr, out.ptr], idv.length, 1, idv.length * D >= PARALLEL_MIN_WORK);
    this.freeTemps(temps);
    return out;
  }

  override matmul(x: TensorOrCols, w: Tensor, bias: Tensor | null): Tensor {
    const temps: WasmTensor[] = [];
    const { ptr: xPtr, ld, width: K, rows: T } = this.window(x, temps);
    const wt = this.inWasm(w, temps);
    const nOut = wt.shape[0]!;
    check(numel(wt.shape) === nOut * K, `matmul: weight [${wt.shape}] does not take ${K} inputs`);
    const bt = bias ? this.inWasmF32(bias, temps) : null;
    const y = this.allocF32([T, nOut]);
    const parallel = T * nOut * K >= PARALLEL_MIN_WORK;
    const args = [xPtr, ld, T, K, wt.ptr, bt ? bt.ptr : 0, y.ptr, nOut];
    if (wt.half === null) this.rt.run("matmulF32", args, nOut, 8, parallel);
    else {
      // a scratch of 4 widened weight rows per thread (see matmulHalfT and matmulQ)
      const stride = 16 * K;
      const scratch = this.rt.alloc(stride * this.rt.threads);
      // quantized weights: a few rows (decode) take integer dot products with the rows quantized to int16 blocks
      // (assembly/quant.ts: its rounding, at most 2^-16 of a block's largest value, keeps the fixtures within
      // 1e-4); more rows (prefill) multiply the exact dequantized weights in f32
      const quantI16 = T < 4 && this.int16Activations && this.rt.has("matmulQ8_0I16");
      const kernel = { F16: "matmulF16", BF16: "matmulBF16", Q8_0: quantI16 ? "matmulQ8_0I16" : "matmulQ8_0", Q4_0: quantI16 ? "matmulQ4_0I16" : "matmulQ4_0" }[wt.storage as "F16"];
      this.rt.run(kernel, [...args, scratch], nOut, 8, parallel, { arg: args.length, stride });
      this.rt.release(scratch, stride * this.rt.threads);
    }
    this.freeTemps(temps);
    return y;
  }

  /** A column window of a tensor in the wasm memory: byte offset of its first element, row stride, width, rows. */
  private window(x: TensorOrCols, temps: WasmTensor[]): { ptr: number; ld: number; width: number; rows: number } {
    const c = asCols(x);
    const t = this.inWasmF32(c.tensor, temps);
    const ld = t.shape[t.shape.length - 1]!;
    if (c.col0 < 0 || c.col0 + c.width > ld) throw new MambaError(`column window [${c.col0}, ${c.col0 + c.width}) outside ${ld} columns`);
    return { ptr: t.ptr + 4 * c.col0, ld, width: c.width, rows: numel(t.shape) / ld };
  }

  /** A tensor an op reads and overwrites (a state): t itself, or a copy whose result `writeBack` copies back. */
  private inOut(t: Tensor, temps: WasmTensor[], writeBack: (() => void)[]): WasmTensor {
    const w = this.inWasmF32(t, temps);
    if (w !== t) writeBack.push(() => cpu(t).f32.set(w.f32));
    return w;
  }

  override addRmsNorm(x: Tensor, residual: Tensor | null, weight: Tensor, eps: number): { out: Tensor; residual: Tensor } {
    if (!this.rt.has("addRmsNorm")) return super.addRmsNorm(x, residual, weight, eps);
    const temps: WasmTensor[] = [];
    const xt = this.inWasmF32(x, temps);
    const rt = residual ? this.inWasmF32(residual, temps) : null;
    const wt = this.inWasmF32(weight, temps);
    const D = xt.shape[xt.shape.length - 1]!;
    const rows = numel(xt.shape) / D;
    if (rt) check(numel(rt.shape) === rows * D, `addRmsNorm: residual [${rt.shape}] does not match x [${xt.shape}]`);
    check(numel(wt.shape) === D, `addRmsNorm: weight [${wt.shape}] does not match ${D} columns`);
    const res = this.allocF32(xt.shape);
    const out = this.allocF32(xt.shape);
    this.rt.run("addRmsNorm", [xt.ptr, rt ? rt.ptr : 0, wt.ptr, eps, D, res.ptr, out.ptr], rows, 1, rows * D >= PARALLEL_MIN_WORK / 4);
    this.freeTemps(temps);
    return { out, residual: res };
  }

  override causalConv1dSilu(x: TensorOrCols, weight: Tensor, bias: Tensor | null, state: Tensor | null, s: SeqShape): Tensor {
    if (!this.rt.has("causalConv1dSilu")) return super.causalConv1dSilu(x, weight, bias, state, s);
    const temps: WasmTensor[] = [];
    const writeBack: (() => void)[] = [];
    const xw = this.window(x, temps);
    const wt = this.inWasmF32(weight, temps);
    const E = xw.width;
    const K = wt.shape[wt.shape.length - 1]!;
    check(numel(wt.shape) === E * K, `causalConv1dSilu: weight [${wt.shape}] does not match ${E} channels`);
    check(xw.rows === s.batch * s.seqLen, `causalConv1dSilu: x has ${xw.rows} rows, batch ${s.batch} x seqLen ${s.seqLen} needs ${s.batch * s.seqLen}`);
    const bt = bias ? this.inWasmF32(bias, temps) : null;
    const st = state ? this.inOut(state, temps, writeBack) : null;
    if (st) check(numel(st.shape) === s.batch * (K - 1) * E, `causalConv1dSilu: state [${st.shape}] does not match [${s.batch}, ${K - 1}, ${E}]`);
    const y = this.allocF32([s.batch, s.seqLen, E]);
    this.rt.run("causalConv1dSilu", [xw.ptr, xw.ld, wt.ptr, bt ? bt.ptr : 0, st ? st.ptr : 0, y.ptr, s.batch, s.seqLen, E, K],
      E, 4, s.batch * s.seqLen * E * K >= PARALLEL_MIN_WORK);
    for (const f of writeBack) f();
    this.freeTemps(temps);
    return y;
  }

  /** -exp(A_log): cached for a tensor of this engine, made for this call (in temps) for another. */
  private negExp(aLog: Tensor, temps: WasmTensor[]): WasmTensor {
    const cached = this.negExpA.get(aLog);
    if (cached) return cached;
    const src = this.inWasmF32(aLog, temps);
    const out = this.allocF32(src.shape);
    this.rt.call("negExpF32", [src.ptr, out.ptr, numel(src.shape)]);
    if (aLog instanceof WasmTensor) this.negExpA.set(aLog, out);
    else temps.push(out);
    return out;
  }

  override selectiveScan(a: SelectiveScanArgs): Tensor {
    if (!this.rt.has("selectiveScan")) return super.selectiveScan(a);
    const temps: WasmTensor[] = [];
    const writeBack: (() => void)[] = [];
    const At = this.negExp(a.A_log, temps);
    const [E, N] = At.shape as [number, number];
    const T = a.batch * a.seqLen;
    const u = this.inWasmF32(a.u, temps);
    check(numel(u.shape) === T * E, `selectiveScan: u [${u.shape}] does not match [${T}, ${E}]`);
    const delta = this.window(a.delta, temps);
    const Bm = this.window(a.B, temps);
    const Cm = this.window(a.C, temps);
    const z = a.z ? this.window(a.z, temps) : null;
    check(delta.width === E && delta.rows === T && Bm.width === N && Bm.rows === T && Cm.width === N && Cm.rows === T &&
      (!z || (z.width === E && z.rows === T)), "selectiveScan: delta, B, C or z does not match the scan's shape");
    const deltaBias = this.inWasmF32(a.deltaBias, temps);
    const D = this.inWasmF32(a.D, temps);
    const st = a.state ? this.inOut(a.state, temps, writeBack) : null;
    if (st) check(numel(st.shape) === a.batch * E * N, `selectiveScan: state [${st.shape}] does not match [${a.batch}, ${E}, ${N}]`);
    const y = this.allocF32([a.batch, a.seqLen, E]);
    const stride = 32 * N;
    const work = this.rt.alloc(stride * this.rt.threads);
    this.rt.run("selectiveScan", [
      u.ptr, delta.ptr, delta.ld, deltaBias.ptr, At.ptr, 0, Bm.ptr, Bm.ld, Cm.ptr, Cm.ld, D.ptr, z ? z.ptr : 0, z ? z.ld : 0,
      st ? st.ptr : 0, y.ptr, work, a.batch, a.seqLen, E, N,
    ], E, 4, T * E * N >= PARALLEL_MIN_WORK / 8, { arg: 15, stride });
    this.rt.release(work, stride * this.rt.threads);
    for (const f of writeBack) f();
    this.freeTemps(temps);
    return y;
  }

  /** The SSD scan's inputs as windows in the engine's memory, with their sizes checked against each other (the
   *  forward's and the backward's one message). */
  private ssdWindows(a: SsdScanArgs, temps: WasmTensor[]) {
    const x = this.window(a.x, temps), dt = this.window(a.dt, temps), Bm = this.window(a.B, temps), Cm = this.window(a.C, temps);
    const H = dt.width, P = a.headDim, G = a.nGroups, T = a.batch * a.seqLen;
    const N = Bm.width / G;
    const fits = x.width === H * P && Number.isInteger(N) && Cm.width === Bm.width && H % G === 0 && x.rows === T && dt.rows === T &&
      Bm.rows === T && Cm.rows === T;
    if (!fits) this.freeTemps(temps);
    check(fits, `ssdScan: x [${x.rows}, ${x.width}], dt [${dt.rows}, ${dt.width}], B/C [${Bm.rows}, ${Bm.width}] ` +
      `do not fit ${a.batch}×${a.seqLen} rows of ${H} heads × ${P} in ${G} groups`);
    return { x, dt, Bm, Cm, H, P, G, T, N };
  }

  /** Mamba-2's SSM: the step-by-step recurrence in assembly/ssd.ts (why not the chunked algorithm: see there), so
   *  chunkSize changes nothing here. dt and exp(dt·A) a row and head first, then the state rows split between
   *  threads. */
  override ssdScan(a: SsdScanArgs): Tensor {
    if (!this.rt.has("ssdScan")) return super.ssdScan(a);
    const temps: WasmTensor[] = [];
    const writeBack: (() => void)[] = [];
    const { x, dt, Bm, Cm, H, P, G, T, N } = this.ssdWindows(a, temps);
    check(Number.isInteger(a.chunkSize) && a.chunkSize > 0, `ssdScan: chunk size must be a positive integer, got ${a.chunkSize}`);
    const z = a.z ? this.window(a.z, temps) : null;
    check(!z || (z.width === H * P && z.rows === T), "ssdScan: the gate z does not match x");
    const dtBias = this.inWasmF32(a.dtBias, temps), aLog = this.inWasmF32(a.A_log, temps), D = this.inWasmF32(a.D, temps);
    check(numel(dtBias.shape) === H && numel(aLog.shape) === H && numel(D.shape) === H, `ssdScan: dt_bias, A_log and D need ${H} values`);
    let st: WasmTensor;
    if (a.state) {
      st = this.inOut(a.state, temps, writeBack);
      check(numel(st.shape) === a.batch * H * P * N, `ssdScan: the state needs [${a.batch}, ${H}, ${P}, ${N}]`);
    } else {
      st = this.allocF32([a.batch, H, P, N]);
      st.f32.fill(0);
      temps.push(st);
    }
    const dts = this.allocF32([T, H]), decay = this.allocF32([T, H]);
    temps.push(dts, decay);
    this.rt.run("ssdDtDecay", [dt.ptr, dt.ld, dtBias.ptr, aLog.ptr, a.dtLimit[0], a.dtLimit[1], H, dts.ptr, decay.ptr], T, 1, T * H >= 4096);
    const y = this.allocF32([a.batch, a.seqLen, H * P]);
    this.rt.run("ssdScan", [
      x.ptr, x.ld, Bm.ptr, Bm.ld, Cm.ptr, Cm.ld, dts.ptr, decay.ptr, D.ptr, z ? z.ptr : 0, z ? z.ld : 0, st.ptr, y.ptr,
      a.batch, a.seqLen, H, P, G, N,
    ], H * P, 4, T * H * P * N >= PARALLEL_MIN_WORK / 4);
    for (const f of writeBack) f();
    this.freeTemps(temps);
    return y;
  }

  /** Backward of ssdScan (assembly/ssd-backward.ts): per (batch row, head), the forward recomputed, then time walked
   *  back; the pairs split between threads, the heads' shares of dB and dC added in head order by a second pass and
   *  the per-head sums (dA_log, dD, dt_bias) here in batch order, so the bits do not depend on the thread count. */
  override ssdScanBackward(a: SsdScanArgs, dy: Tensor, g: SsdGrads): void {
    if (!this.rt.has("ssdBackward")) return super.ssdScanBackward!(a, dy, g);
    check((a.z === null) === (g.dz === null), "ssdScanBackward: dz must be given exactly when the forward had a gate z");
    const temps: WasmTensor[] = [];
    const writeBack: (() => void)[] = [];
    const { x, dt, Bm, Cm, H, P, G, T, N } = this.ssdWindows(a, temps);
    const fail = (ok: boolean, message: string) => {
      if (!ok) this.freeTemps(temps);
      check(ok, message);
    };
    const st = a.state ? this.inWasmF32(a.state, temps) : null;
    fail(!st || numel(st.shape) === a.batch * H * P * N, `ssdScan: the state needs [${a.batch}, ${H}, ${P}, ${N}]`);
    fail(Number.isInteger(a.chunkSize) && a.chunkSize > 0, `ssdScan: chunk size must be a positive integer, got ${a.chunkSize}`);
    const dyt = this.inWasmF32(dy, temps);
    fail(numel(dyt.shape) === T * H * P, `ssdScanBackward: dy [${dyt.shape}] does not match the scan`);
    const z = a.z ? this.window(a.z, temps) : null;
    fail(!z || (z.width === H * P && z.rows === T), "ssdScan: the gate z does not match x");
    const dtBias = this.inWasmF32(a.dtBias, temps), aLog = this.inWasmF32(a.A_log, temps), D = this.inWasmF32(a.D, temps);
    fail(numel(dtBias.shape) === H && numel(aLog.shape) === H && numel(D.shape) === H, `ssdScan: dt_bias, A_log and D need ${H} values`);
    // the gradients: windows written in place (a tensor of another backend through one copy written back, shared
    // by its windows)
    const copies = new Map<Tensor, WasmTensor>();
    const out = (w: TensorOrCols, width: number, name: string) => {
      const c = asCols(w);
      this.written(c.tensor);
      const t = copies.get(c.tensor) ?? this.inOut(c.tensor, temps, writeBack);
      copies.set(c.tensor, t);
      const ld = t.shape[t.shape.length - 1]!;
      fail(c.col0 >= 0 && c.col0 + c.width <= ld && c.width === width && numel(t.shape) / ld === T,
        `ssdScanBackward: ${name} [${numel(t.shape) / ld}, ${c.width}] does not match [${T}, ${width}]`);
      return { ptr: t.ptr + 4 * c.col0, ld };
    };
    const dx = out(g.dx, H * P, "dx"), dDt = out(g.dDt, H, "dDt"), dB = out(g.dB, G * N, "dB"), dC = out(g.dC, G * N, "dC");
    const dz = g.dz ? out(g.dz, H * P, "dz") : null;
    const perHead = [g.dA_log, g.dD, g.dDtBias].map((t) => { this.written(t); return cpu(t).f32; });
    fail(perHead.every((v) => v.length === H), `ssdScanBackward: dA_log, dD and dDtBias need ${H} values`);
    const dts = this.allocF32([T, H]), decay = this.allocF32([T, H]), gate = this.allocF32([T, H]);
    const dBh = this.allocF32([T, H, N]), dCh = this.allocF32([T, H, N]), sums = this.allocF32([a.batch * H, 6]);
    temps.push(dts, decay, gate, dBh, dCh, sums);
    const parallelRows = T * H >= 4096;
    this.rt.run("ssdDtDecay", [dt.ptr, dt.ld, dtBias.ptr, aLog.ptr, a.dtLimit[0], a.dtLimit[1], H, dts.ptr, decay.ptr], T, 1, parallelRows);
    this.rt.run("ssdDtGate", [dt.ptr, dt.ld, dtBias.ptr, a.dtLimit[0], a.dtLimit[1], H, gate.ptr], T, 1, parallelRows);
    const stride = Math.ceil((this.rt.call("ssdBackwardWork", [a.seqLen, P, N]) as number) / 64) * 64;
    const work = this.rt.alloc(stride * this.rt.threads);
    this.rt.run("ssdBackward", [
      x.ptr, x.ld, Bm.ptr, Bm.ld, Cm.ptr, Cm.ld, dts.ptr, decay.ptr, gate.ptr, aLog.ptr, D.ptr, z ? z.ptr : 0, z ? z.ld : 0,
      st ? st.ptr : 0, dyt.ptr, dx.ptr, dx.ld, dDt.ptr, dDt.ld, dz ? dz.ptr : 0, dz ? dz.ld : 0, dBh.ptr, dCh.ptr, sums.ptr,
      work, a.batch, a.seqLen, H, P, H / G, N,
    ], a.batch * H, 1, T * H * P * N >= PARALLEL_MIN_WORK / 4, { arg: 24, stride });
    this.rt.release(work, stride * this.rt.threads);
    this.rt.run("ssdBackwardGroups", [dBh.ptr, dCh.ptr, dB.ptr, dB.ld, dC.ptr, dC.ld, H, H / G, N], T, 1, T * H * N >= PARALLEL_MIN_WORK);
    // the per-head sums in batch order, as the reference adds them
    const s = new Float64Array(this.rt.memory.buffer, sums.ptr, a.batch * H * 3);
    const [dALog, dD, dDtBias] = perHead as [Float32Array, Float32Array, Float32Array];
    for (let b = 0; b < a.batch; b++) {
      for (let h = 0; h < H; h++) {
        const o = (b * H + h) * 3;
        dALog[h] = dALog[h]! + s[o]!;
        dD[h] = dD[h]! + s[o + 1]!;
        dDtBias[h] = dDtBias[h]! + s[o + 2]!;
      }
    }
    for (const f of writeBack) f();
    this.freeTemps(temps);
  }

  override gatedRmsNorm(y: Tensor, z: TensorOrCols, weight: Tensor, eps: number, groupSize: number, normBeforeGate: boolean): Tensor {
    if (!this.rt.has("gatedRmsNorm")) return super.gatedRmsNorm(y, z, weight, eps, groupSize, normBeforeGate);
    const temps: WasmTensor[] = [];
    const yt = this.inWasmF32(y, temps);
    const zw = this.window(z, temps);
    const E = yt.shape[yt.shape.length - 1]!;
    const rows = numel(yt.shape) / E;
    const wt = this.inWasmF32(weight, temps);
    const fits = zw.width === E && zw.rows === rows && Number.isInteger(groupSize) && groupSize > 0 && E % groupSize === 0 && numel(wt.shape) === E;
    if (!fits) this.freeTemps(temps);
    check(fits, `gatedRmsNorm: y [${yt.shape}], gate of width ${zw.width}, weight [${wt.shape}] and groups of ${groupSize} do not fit`);
    const out = this.allocF32(yt.shape);
    this.rt.run("gatedRmsNorm", [yt.ptr, zw.ptr, zw.ld, wt.ptr, eps, E, groupSize, normBeforeGate ? 1 : 0, out.ptr], rows, 1,
      rows * E >= PARALLEL_MIN_WORK / 4);
    this.freeTemps(temps);
    return out;
  }

  override sample(logits: Tensor, req: SampleRequest): Tensor {
    const penalized = req.history !== null && req.repetitionPenalty !== 1;
    if (req.temperature !== 0 || penalized) return super.sample(logits, req);
    // greedy: each row's argmax in the kernel, rows split between threads
    const temps: WasmTensor[] = [];
    const lt = this.inWasmF32(logits, temps);
    const V = lt.shape[lt.shape.length - 1]!;
    const rows = numel(lt.shape) / V;
    const ids = this.allocI32([rows]);
    this.rt.run("argmaxRows", [lt.ptr, V, Math.min(req.vocabSize, V), ids.ptr], rows, 1, rows > 1);
    this.freeTemps(temps);
    return ids;
  }
}

/** The fast CPU engine, or null with the reason where this runtime cannot run it (no shared memory). */
export async function createWasmCpuBackend(options: CpuEngineOptions = {}): Promise<WasmCpuBackend> {
  const threads = options.threads ?? defaultThreads();
  check(Number.isInteger(threads) && threads >= 1 && threads <= 256, `threads must be an integer in [1, 256], got ${threads}`);
  const rt = await WasmRuntime.create(threads, options.simd ?? "auto");
  return new WasmCpuBackend(rt);
}

/** The available cores: os.availableParallelism in Node, navigator.hardwareConcurrency in browsers. */
export function defaultThreads(): number {
  const proc = (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } }).process;
  const os = proc?.getBuiltinModule?.("node:os") as { availableParallelism?: () => number; cpus?: () => unknown[] } | undefined;
  if (os?.availableParallelism) return Math.max(1, os.availableParallelism());
  if (os?.cpus) return Math.max(1, os.cpus().length);
  const nav = (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator;
  return Math.max(1, nav?.hardwareConcurrency ?? 1);
}
