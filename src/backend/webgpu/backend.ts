/**
 * The WebGPU backend: every op of the Backend interface as WGSL kernels (./kernels, one per file). Ops only
 * append dispatches to one pending command encoder; work is submitted when the host needs data (a read) or every
 * few hundred dispatches, so a decode step is one submit with no readback but the sampled ids.
 * State tensors are rewritten by ops into a fresh buffer that then replaces the tensor's own, since a kernel
 * cannot read history in one thread that another thread is already overwriting.
 * The model ops are in ./ops.ts, the fused decode step's recording in ./decode-plans.ts, the options in ./tuning.ts.
 */
import type { Backend, Captured, Precision, SampleRequest, SelectiveScanArgs, SeqShape, StepModel, Tensor, TensorOrCols } from "../backend.ts";
import { MambaError, check, checkChoice } from "../../errors.ts";
import { type HostTensor, isQuantized, numel, toFloat32 } from "../../io/tensor.ts";
import { QK, dequantize, quantBytes } from "../../io/quant.ts";
import { type Buf, Gpu, type Prepared } from "./gpu.ts";
import { GpuTensor, type Storage, type Window, gpuTensor, windowOf } from "./tensor.ts";
import { copyWords, fillWords } from "./kernels/copy.ts";
import { widen } from "./kernels/widen.ts";
import { narrowToF16 } from "./kernels/matmul-f16.ts";
import type { WeightStorage } from "./kernels/weights.ts";
import { LAYER_FLAG_BYTE } from "./kernels/decode/layer.ts";
import { type ForwardSettings, type WebGpuInternalTuning, forwardSettings } from "./tuning.ts";
import { addRmsNormOp, causalConv1dSiluOp, embeddingOp, matmulOp, sampleOp, selectiveScanOp } from "./ops.ts";
import { DecodePlans } from "./decode-plans.ts";

export class WebGpuBackend implements Backend {
  readonly name = "webgpu" as const;
  readonly queued = true;
  private sinceFlush = 0;
  // The members below are internal: for the ops (./ops.ts), the decode plans (./decode-plans.ts) and the training
  // backend (./training.ts), not for users of the backend.
  /** while capture() records */
  capturing = false;
  /** The tuning's values, every default filled in (./tuning.ts). */
  readonly settings: ForwardSettings;
  /** The greedy choices the fused step's head made beside its logits (by logits tensor), until sampled or freed. */
  readonly greedyIds = new WeakMap<GpuTensor, { ids: GpuTensor; V: number }>();
  /** The counters of the latest fused step, where it ran a layer in one dispatch: their flag is read with the ids. */
  barrierWatch: Buf | null = null;
  /** The scan's packed per-channel constants of each layer, keyed by its A_log tensor. */
  readonly scanPacks = new WeakMap<GpuTensor, { bias: GpuTensor; D: GpuTensor; versions: string; packed: GpuTensor }>();
  /** The recorded decode steps. */
  private readonly decodePlans = new DecodePlans(this);
  /** The matrix products' precision (usePrecision): "f16" rounds their inputs to f16 and sums in f32. */
  precision: Precision = "f32";
  /** f16 copies of weight matrices stored otherwise (a training run's f32 master weights), with the version of
   *  the tensor they were made from: made by the first f16 product that reads one, again after it changes. */
  readonly halfCopies = new WeakMap<GpuTensor, { buf: Buf; version: number }>();

  constructor(readonly gpu: Gpu, tuning: WebGpuInternalTuning = {}) {
    this.settings = forwardSettings(gpu, tuning);
    if (tuning.precision !== undefined) this.usePrecision(tuning.precision);
  }

  /**
   * Sets the matrix products' precision (Backend.usePrecision). "f16" needs the device feature shader-f16; the
   * given matrices (f32 or bf16) are then converted to f16 in place, once: the products and the fused decode read
   * half the bytes. Quantized and f16 matrices stay as they are. A training run passes none: its f32 master
   * weights stay, and each f16 product reads an f16 copy of its weights (halfWeight).
   */
  usePrecision(p: Precision, matrices: readonly Tensor[] = []): void {
    checkChoice("precision", p, ["f32", "f16"]);
    if (p === "f16" && !this.gpu.half.f16) {
      throw new MambaError(`precision f16 needs the WebGPU feature shader-f16, which this adapter (${this.device}) does not offer; ` +
        "use precision f32 (or auto)");
    }
    this.precision = p;
    if (p !== "f16") return;
    for (const m of new Set(matrices)) {
      const t = this.t(m, "usePrecision");
      if (t.storage !== "f32" && t.storage !== "bf16") continue;
      const half = this.gpu.alloc(Math.ceil(t.numel / 2) * 4, "an f16 weight matrix");
      narrowToF16(this.gpu, t.buf, t.storage, t.numel, half);
      this.gpu.release(t.buf); // later dispatches in the same encoder may take it: the narrowing runs first
      if (t.widened) this.dispose(t.widened);
      t.widened = null;
      t.buf = half;
      t.storage = "f16";
      t.version++;
      this.tick();
    }
  }

  /** The precisions usePrecision accepts here: "f16" where the device has shader-f16. */
  get precisions(): Precision[] {
    return this.gpu.half.f16 ? ["f32", "f16"] : ["f32"];
  }

  /** An f16 buffer of a weight matrix stored as f32 or bf16, made once for each version of it (halfCopies). */
  halfWeight(t: GpuTensor): Buf {
    if (t.storage === "f16") return t.buf;
    check(t.storage === "f32" || t.storage === "bf16", `an f16 copy of ${t.storage} weights was asked for`);
    const hit = this.halfCopies.get(t);
    if (hit && hit.version === t.version) return hit.buf;
    const buf = hit?.buf ?? this.gpu.alloc(Math.ceil(t.numel / 2) * 4, "an f16 copy of a weight matrix");
    narrowToF16(this.gpu, t.buf, t.storage, t.numel, buf);
    this.halfCopies.set(t, { buf, version: t.version });
    return buf;
  }

  /** The adapter this backend runs on, in words. */
  get device(): string {
    return this.gpu.description;
  }

  t(x: Tensor, what: string): GpuTensor {
    return gpuTensor(x, this, what);
  }
  w(x: TensorOrCols, what: string): Window {
    return windowOf(x, this, what);
  }
  make(shape: readonly number[], dtype: "f32" | "i32", what = "a tensor"): GpuTensor {
    return new GpuTensor([...shape], dtype, this.gpu.alloc(Math.max(4, numel(shape) * 4), what), dtype, this);
  }
  /** A float32 buffer of a tensor (half-precision and quantized parameters are widened once, on first use). */
  f32(t: GpuTensor): Buf {
    if (t.storage === "f32" || t.storage === "i32") return t.buf;
    if (!t.widened) {
      const out = this.make(t.shape, "f32");
      widen(this.gpu, t.buf, t.storage, t.numel, out.buf);
      t.widened = out;
    }
    return t.widened.buf;
  }
  weightStorage(t: GpuTensor): WeightStorage {
    if (t.storage === "i32") throw new MambaError("an i32 tensor was passed where weights were expected");
    return t.storage;
  }
  /**
   * Submits pending work every flushEvery ops encoded since the last submit, so that the GPU starts on a long run
   * (a prefill: some 340 dispatches for 130m) while the host is still encoding the rest. Replays of recorded steps
   * do not count: they cost the host microseconds, and a decode step's read submits it anyway, so counting them
   * would only split each step into two submits.
   */
  tick(): void {
    if (++this.sinceFlush >= this.settings.flushEvery) {
      this.sinceFlush = 0;
      this.gpu.submitEarly();
    }
  }

  /**
   * GPU time in ms of the work `fn` encodes, by timestamp queries around one compute pass (null when the device
   * has no 'timestamp-query'): the GPU's clock, without host submits and waits. Nothing is submitted part way
   * through, so keep fn's work to what one command buffer may reasonably hold. fn must not read back.
   */
  timeGpu(fn: () => void): Promise<number | null> {
    return this.gpu.timePass(fn);
  }

  /**
   * GPU time in ms per kernel of the work `fn` encodes, each dispatch timed in a pass of its own (null without
   * 'timestamp-query'): where the time goes, not how long the work takes together. fn must not read back.
   */
  profileKernels(fn: () => void, maxDispatches?: number): Promise<Map<string, { ms: number; count: number }> | null> {
    return this.gpu.profileKernels(fn, maxDispatches);
  }

  // ---- data movement ----

  upload(t: HostTensor): Tensor {
    const n = numel(t.shape);
    if (isQuantized(t.dtype)) {
      // Q8_0 / Q4_0 matrices keep their GGUF blocks: every kernel that reads weights (matmul, matvec, embedding,
      // the fused decode step) dequantizes as it reads. Other shapes (not 2-D, or rows that are not whole blocks:
      // a kernel's flat index would still work, but no model has them) are widened to f32 here, exactly, once.
      const cols = t.shape[t.shape.length - 1] ?? 0;
      if (t.shape.length === 2 && cols > 0 && cols % QK === 0) {
        check(t.data.byteLength === quantBytes(t.dtype, n), `upload: ${t.dtype} data has ${t.data.byteLength} bytes, shape [${t.shape}] needs ${quantBytes(t.dtype, n)}`);
        const storage: Storage = t.dtype === "Q8_0" ? "q8_0" : "q4_0";
        return new GpuTensor([...t.shape], "f32", this.gpu.upload(t.data, "a parameter"), storage, this);
      }
      t = { dtype: "F32", shape: t.shape, data: toFloat32(t) };
    }
    check(t.data.length === n, `upload: data has ${t.data.length} values, shape [${t.shape}] needs ${n}`);
    if (t.dtype === "F32") {
      return new GpuTensor([...t.shape], "f32", this.gpu.upload(t.data as Float32Array, "a parameter"), "f32", this);
    }
    // half precision stays packed: element i is half i & 1 of u32 word i >> 1 (little-endian, as the kernels read)
    const storage: Storage = t.dtype === "F16" ? "f16" : "bf16";
    return new GpuTensor([...t.shape], "f32", this.gpu.upload(t.data as Uint16Array, "a parameter"), storage, this);
  }
  fromF32(data: Float32Array, shape: readonly number[]): Tensor {
    check(data.length === numel(shape), `data has ${data.length} values, shape [${shape}] needs ${numel(shape)}`);
    return new GpuTensor([...shape], "f32", this.gpu.upload(data), "f32", this);
  }
  fromI32(data: Int32Array, shape: readonly number[]): Tensor {
    check(data.length === numel(shape), `data has ${data.length} values, shape [${shape}] needs ${numel(shape)}`);
    return new GpuTensor([...shape], "i32", this.gpu.upload(data), "i32", this);
  }
  zeros(shape: readonly number[]): Tensor {
    const out = this.make(shape, "f32");
    fillWords(this.gpu, out.buf, 0, numel(shape));
    this.tick();
    return out;
  }
  async readF32(x: Tensor): Promise<Float32Array> {
    const t = this.t(x, "readF32");
    check(t.dtype === "f32", "readF32: the tensor holds i32 values");
    this.sinceFlush = 0;
    if (t.storage === "q8_0" || t.storage === "q4_0") {
      const type = t.storage === "q8_0" ? "Q8_0" : "Q4_0";
      const bytes = quantBytes(type, t.numel);
      const raw = await this.gpu.read(t.buf, Math.ceil(bytes / 4) * 4); // reads are whole words
      return dequantize(type, new Uint8Array(raw, 0, bytes), t.numel);
    }
    if (t.storage === "f16" || t.storage === "bf16") {
      const raw = await this.gpu.read(t.buf, t.numel * 2);
      return toFloat32({ dtype: t.storage === "f16" ? "F16" : "BF16", shape: [...t.shape], data: new Uint16Array(raw) });
    }
    return new Float32Array(await this.gpu.read(t.buf, t.numel * 4));
  }
  async readI32(x: Tensor): Promise<Int32Array> {
    const t = this.t(x, "readI32");
    check(t.dtype === "i32", "readI32: the tensor holds f32 values");
    this.sinceFlush = 0;
    const watch = this.barrierWatch;
    if (!watch) return new Int32Array(await this.gpu.read(t.buf, t.numel * 4));
    // the one-dispatch layers' flag comes back with the ids (one read): a wait that gave up means that the GPU
    // stopped running a workgroup that others waited for, and the step's results are wrong
    const { data, word } = await this.gpu.readWith(t.buf, t.numel * 4, watch, LAYER_FLAG_BYTE);
    if (word !== 0) {
      throw new MambaError("WebGPU decode: a workgroup of decodePersistent's one-dispatch layer waited in vain for " +
        "another (this GPU does not keep started workgroups running), so the step's results are wrong; create the " +
        "backend with decodePersistent: false (the CLI: --no-persistent-decode)");
    }
    return new Int32Array(data);
  }
  dispose(...ts: (Tensor | null | undefined)[]): void {
    for (const x of ts) {
      if (!(x instanceof GpuTensor) || x.owner !== this || x.disposed) continue;
      x.disposed = true;
      this.gpu.release(x.buf);
      if (x.partner) this.gpu.release(x.partner);
      if (x.widened) this.dispose(x.widened);
      const half = this.halfCopies.get(x);
      if (half) {
        this.halfCopies.delete(x);
        this.gpu.release(half.buf);
      }
      const pack = this.scanPacks.get(x);
      if (pack) {
        this.scanPacks.delete(x);
        this.dispose(pack.packed);
      }
      const made = this.greedyIds.get(x); // logits whose greedy choices no one took
      if (made) {
        this.greedyIds.delete(x);
        this.dispose(made.ids);
      }
    }
  }
  concat0(ts: Tensor[]): Tensor {
    check(ts.length > 0, "concat0: no tensors");
    const parts = ts.map((x) => this.t(x, "concat0"));
    const rest = parts[0]!.shape.slice(1);
    for (const p of parts) {
      check(p.shape.length === parts[0]!.shape.length && p.shape.slice(1).every((d, i) => d === rest[i]) && p.dtype === parts[0]!.dtype,
        `concat0: shapes [${p.shape}] and [${parts[0]!.shape}] differ past the first dimension`);
    }
    const n = parts.reduce((a, p) => a + p.shape[0]!, 0);
    const out = this.make([n, ...rest], parts[0]!.dtype);
    let o = 0;
    for (const p of parts) {
      copyWords(this.gpu, this.f32(p), 0, out.buf, o, p.numel);
      o += p.numel;
    }
    this.tick();
    return out;
  }
  takeRows(x: Tensor, rows: readonly number[]): Tensor {
    const t = this.t(x, "takeRows");
    const w = t.cols;
    const nRows = t.numel / w;
    const out = this.make([rows.length, w], t.dtype);
    const src = this.f32(t);
    // runs of consecutive rows are one copy each
    for (let i = 0; i < rows.length;) {
      let j = i + 1;
      while (j < rows.length && rows[j] === rows[j - 1]! + 1) j++;
      const r = rows[i]!;
      check(Number.isInteger(r) && r >= 0 && rows[j - 1]! < nRows, `takeRows: row ${rows[j - 1]} outside ${nRows} rows`);
      copyWords(this.gpu, src, r * w, out.buf, i * w, (j - i) * w);
      i = j;
    }
    this.tick();
    return out;
  }
  copyInto(dst: Tensor, src: Tensor): void {
    const d = this.t(dst, "copyInto");
    const s = this.t(src, "copyInto");
    check(d.numel === s.numel, `copyInto: shapes [${d.shape}] and [${s.shape}] differ`);
    check(d.storage !== "q8_0" && d.storage !== "q4_0", "copyInto: cannot overwrite a quantized (q8_0/q4_0) parameter");
    check(d.storage === "f32" || d.storage === "i32", "copyInto: cannot overwrite a half-precision parameter");
    copyWords(this.gpu, this.f32(s), 0, d.buf, 0, d.numel);
    d.version++;
    this.tick();
  }
  async destroy(): Promise<void> {
    await this.gpu.destroy();
  }

  /** Submits pending work and waits for the GPU to finish it. */
  async sync(): Promise<void> {
    this.sinceFlush = 0;
    await this.gpu.sync();
  }

  // ---- model ops ----

  // ---- model ops (./ops.ts) ----

  embedding(table: Tensor, ids: Tensor): Tensor {
    return embeddingOp(this, table, ids);
  }
  addRmsNorm(x: Tensor, residual: Tensor | null, weight: Tensor, eps: number): { out: Tensor; residual: Tensor } {
    return addRmsNormOp(this, x, residual, weight, eps);
  }
  matmul(x: TensorOrCols, w: Tensor, bias: Tensor | null): Tensor {
    return matmulOp(this, x, w, bias);
  }
  causalConv1dSilu(x: TensorOrCols, weight: Tensor, bias: Tensor | null, state: Tensor | null, s: SeqShape): Tensor {
    return causalConv1dSiluOp(this, x, weight, bias, state, s);
  }
  selectiveScan(a: SelectiveScanArgs): Tensor {
    return selectiveScanOp(this, a);
  }
  sample(logits: Tensor, req: SampleRequest): Tensor {
    return sampleOp(this, logits, req);
  }

  /**
   * One token per row through the whole LM in recorded kernels (./decode-plans.ts), the head included; null where
   * the kernels do not take the model (generate then records the model's ops).
   */
  decodeStep(model: StepModel, ids: Tensor, conv: readonly Tensor[], ssm: readonly Tensor[]): Tensor | null {
    return this.decodePlans.step(model, ids, conv, ssm);
  }

  /**
   * Records fn's dispatches once (Backend.capture). State tensors that ops rewrite into a new buffer (the conv and
   * SSM states of step mode) keep the buffer they left as a partner: a recording reads the state from buffer S0 and
   * writes it to S1, and a second recording of the same step then reads S1 and writes S0. So a caller that
   * replays a step records it twice and alternates the two, as generate's Stepper does.
   */
  capture(fn: () => Tensor): Captured {
    const gpu = this.gpu;
    let out: Tensor | null = null;
    this.capturing = true;
    let recorded: { plan: Prepared[]; held: Buf[] };
    try {
      recorded = gpu.capture(() => {
        out = fn();
      });
    } finally {
      this.capturing = false;
    }
    const { plan, held } = recorded;
    const output = this.t(out!, "capture");
    let live = true;
    return {
      output,
      run: () => {
        check(live, "this captured step was disposed");
        gpu.replay(plan); // not counted towards flushEvery (see tick)
      },
      dispose: () => {
        if (!live) return;
        live = false;
        this.dispose(output);
        gpu.releaseHeld(held);
      },
    };
  }

  /** Bytes of weights a decode thread loads at once for rows of `width` weights (WebGpuInternalTuning.decodeLoadBytes):
   *  128 from 2048 a row (1.4b's decode step took 4089 against 4430 us with 64), else 64. */
  loadBytes(width: number): number {
    return this.settings.decodeLoadBytes || (width >= 2048 ? 128 : 64);
  }
}
