/**
 * The WebGPU backend: every op of the Backend interface as WGSL kernels (./kernels, one per file). Ops only
 * append dispatches to one pending command encoder; work is submitted when the host needs data (a read) or every
 * few hundred dispatches, so a decode step is one submit with no readback but the sampled ids.
 * State tensors are rewritten by ops into a fresh buffer that then replaces the tensor's own, since a kernel
 * cannot read history in one thread that another thread is already overwriting.
 */
import type { Backend, Captured, SampleRequest, SelectiveScanArgs, SeqShape, StepModel, Tensor, TensorOrCols } from "../backend.ts";
import { MambaError, check } from "../../errors.ts";
import { type HostTensor, isQuantized, numel, toFloat32 } from "../../io/tensor.ts";
import { type Buf, Gpu, type Prepared } from "./gpu.ts";
import { GpuTensor, type Storage, type Window, gpuTensor, windowOf } from "./tensor.ts";
import { GROUP_TARGET, kSplits, matmulTiled, splitPlan } from "./kernels/matmul.ts";
import { matmulReduce } from "./kernels/matmul-reduce.ts";
import { MATVEC_MAX_ROWS, MATVEC_NORM_MAX, matvec, matvecArgmaxWords } from "./kernels/matvec.ts";
import { addRmsNorm } from "./kernels/norm.ts";
import { embedding } from "./kernels/embedding.ts";
import { causalConv1dSilu } from "./kernels/conv.ts";
import { packScanParams, scanGeometry, selectiveScan } from "./kernels/scan/index.ts";
import { sample, sampleWords } from "./kernels/sample.ts";
import { copyWindow, copyWords, fillWords } from "./kernels/copy.ts";
import { widen } from "./kernels/widen.ts";
import type { WeightStorage } from "./kernels/weights.ts";
import { DECODE_MAX_B, DECODE_MAX_BD, DECODE_MAX_K, type MixerInArgs, decodeMixerIn, mixerInGroups } from "./kernels/decode/mixer-in.ts";
import { DECODE_MAX_BJ, type MixerScanArgs, decodeMixerScan, mixerScanBytes } from "./kernels/decode/mixer-scan.ts";
import { LAYER_CTL_WORDS, LAYER_FLAG_BYTE, type LayerArgs, decodeLayer, layerNeeds } from "./kernels/decode/layer.ts";
import { FIXED_MAX_TERMS, FIXED_SPREAD, fixedLimit, fixedRegionWords } from "./kernels/decode/fixed.ts";
import { decodeBatchNorm } from "./kernels/decode/batch-norm.ts";
import { BATCH_CONV_CHANNELS, batchConvBytes, decodeBatchConv } from "./kernels/decode/batch-conv.ts";
import { batchScanBytes, decodeBatchScan } from "./kernels/decode/batch-scan.ts";
import { type ForwardSettings, type WebGpuInternalTuning, forwardSettings } from "./tuning.ts";

type StepLayer = StepModel["weights"]["layers"][number];

/** A recorded fused decode step (all layers and norm_f) over buffers kept for it, replayed while its key holds. */
interface DecodePlan {
  key: string;
  h: Buf; // [B, D]: the embedding, then each layer's out_proj (the batch step: [S, B, D], out_proj's K-split parts)
  normed: GpuTensor; // [B, D]: norm_f's output, the head's input (never disposed)
  scratch: Buf[];
  plan: Prepared[];
  // the fused step's head applies norm_f itself (matvec's norm) where it takes the batch: over h and this residual
  headNorm?: { res: Buf; offRes: number; g: Buf; eps: number };
  ctl?: Buf; // decodePersistent's counters
  argmaxPart?: { buf: Buf; words: number }; // the head's partial greedy choices (matvec's argmax)
}

/** Where each constant sits in a layer's packed buffer (offsets in floats). */
interface LayerPack {
  buf: GpuTensor;
  versions: string;
  oNorm: number; oInBias: number; oConvW: number; oConvB: number; oPack: number;
}

/** Bytes of in_proj a thread of the fused step's first kernel loads at once by default (decodeLoadBytes): on the
 *  H100 at batch 1, 130m's one-dispatch step took 671 against 688 us with 64, 1.4b's 2799 against 3199 with 128;
 *  at batch 4 both within 2% (BENCHMARKS.md, run 72). */
const FUSED_IN_LOAD_BYTES = 256;

export class WebGpuBackend implements Backend {
  readonly name = "webgpu" as const;
  readonly queued = true;
  private sinceFlush = 0;
  /** while capture() records */
  private capturing = false;
  /** The tuning's values, every default filled in (./tuning.ts). */
  protected readonly settings: ForwardSettings;
  /** The greedy choices the fused step's head made beside its logits (by logits tensor), until sampled or freed. */
  private greedyIds = new WeakMap<GpuTensor, { ids: GpuTensor; V: number }>();
  /** The counters of the latest fused step, where it ran a layer in one dispatch: their flag is read with the ids. */
  private barrierWatch: Buf | null = null;
  /** The scan's packed per-channel constants of each layer, keyed by its A_log tensor. */
  private scanPacks = new WeakMap<GpuTensor, { bias: GpuTensor; D: GpuTensor; versions: string; packed: GpuTensor }>();
  /** The fused decode's packed constants of each layer, keyed by the layer's weights object. */
  private layerPacks = new WeakMap<StepLayer, LayerPack>();
  /** The fused decode's recorded step of each model. */
  private decodePlans = new WeakMap<StepModel["weights"], DecodePlan>();

  constructor(readonly gpu: Gpu, tuning: WebGpuInternalTuning = {}) {
    this.settings = forwardSettings(gpu, tuning);
  }

  /** The adapter this backend runs on, in words. */
  get device(): string {
    return this.gpu.description;
  }

  private t(x: Tensor, what: string): GpuTensor {
    return gpuTensor(x, this, what);
  }
  private w(x: TensorOrCols, what: string): Window {
    return windowOf(x, this, what);
  }
  private make(shape: readonly number[], dtype: "f32" | "i32", what = "a tensor"): GpuTensor {
    return new GpuTensor([...shape], dtype, this.gpu.alloc(Math.max(4, numel(shape) * 4), what), dtype, this);
  }
  /** A float32 buffer of a tensor (half-precision parameters are widened once, on first use). */
  private f32(t: GpuTensor): Buf {
    if (t.storage === "f32" || t.storage === "i32") return t.buf;
    if (!t.widened) {
      const out = this.make(t.shape, "f32");
      widen(this.gpu, t.buf, t.storage, t.numel, out.buf);
      t.widened = out;
    }
    return t.widened.buf;
  }
  private weightStorage(t: GpuTensor): WeightStorage {
    if (t.storage === "i32") throw new MambaError("an i32 tensor was passed where weights were expected");
    return t.storage;
  }
  /**
   * Submits pending work every flushEvery ops encoded since the last submit, so that the GPU starts on a long run
   * (a prefill: some 340 dispatches for 130m) while the host is still encoding the rest. Replays of recorded steps
   * do not count: they cost the host microseconds, and a decode step's read submits it anyway, so counting them
   * would only split each step into two submits.
   */
  private tick(): void {
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
    // quantized blocks (Q8_0, Q4_0) are dequantized here to f32, exactly; the kernels read f32 or packed halves
    if (isQuantized(t.dtype)) t = { dtype: "F32", shape: t.shape, data: toFloat32(t) };
    const n = numel(t.shape);
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

  embedding(table: Tensor, ids: Tensor): Tensor {
    const tb = this.t(table, "embedding");
    const id = this.t(ids, "embedding");
    check(tb.shape.length === 2, `embedding: the table must be [V, D], got [${tb.shape}]`);
    check(id.dtype === "i32", "embedding: ids must be i32");
    const [V, D] = tb.shape as [number, number];
    const out = this.make([id.numel, D], "f32", "the embeddings");
    embedding(this.gpu, tb.buf, this.weightStorage(tb), V, D, id.buf, id.numel, out.buf);
    this.tick();
    return out;
  }

  addRmsNorm(x: Tensor, residual: Tensor | null, weight: Tensor, eps: number): { out: Tensor; residual: Tensor } {
    const xt = this.t(x, "addRmsNorm");
    const D = xt.cols;
    const T = xt.numel / D;
    const r = residual ? this.t(residual, "addRmsNorm") : null;
    if (r) check(r.numel === xt.numel, `addRmsNorm: residual [${r.shape}] does not match x [${xt.shape}]`);
    const wt = this.t(weight, "addRmsNorm");
    check(wt.numel === D, `addRmsNorm: weight has ${wt.numel} values, rows have ${D}`);
    const out = this.make(xt.shape, "f32");
    const res = this.make(xt.shape, "f32");
    addRmsNorm(this.gpu, xt.buf, r?.buf ?? null, this.f32(wt), eps, T, D, out.buf, res.buf);
    this.tick();
    return { out, residual: res };
  }

  matmul(x: TensorOrCols, w: Tensor, bias: Tensor | null): Tensor {
    const xs = this.w(x, "matmul");
    const wt = this.t(w, "matmul");
    const N = wt.shape[0]!;
    const K = xs.width;
    check(wt.numel === N * K, `matmul: weight [${wt.shape}] does not take ${K} inputs`);
    const bt = bias ? this.t(bias, "matmul") : null;
    if (bt) check(bt.numel === N, `matmul: bias has ${bt.numel} values, the weight ${N} rows`);
    const T = xs.rows;
    const y = this.make([T, N], "f32", "a matmul output");
    const args = {
      x: this.f32(xs.t), ldx: xs.ld, offx: xs.off, rows: T, K,
      w: wt.buf, ws: this.weightStorage(wt), N, bias: bt ? this.f32(bt) : null, y: y.buf,
    };
    if (T <= MATVEC_MAX_ROWS && K % 4 === 0) matvec(this.gpu, { ...args, loadBytes: this.loadBytes(K) });
    else {
      const largeTiles = Math.ceil(T / this.settings.tileLarge.BM) * Math.ceil(N / this.settings.tileLarge.BN);
      // at most 64 rows (a decode batch's head) fill half of a large tile: the small ones do no padded work, and
      // where their output is wide, 128 columns a tile share each loaded value of x over twice the columns
      const few = T <= this.settings.tileSmall.BM;
      const cfg = !few && largeTiles >= 256 ? this.settings.tileLarge
        : few && Math.ceil(N / 128) >= GROUP_TARGET ? this.settings.tileWide : this.settings.tileSmall;
      const plan = splitPlan(K, kSplits(T, N, K, cfg));
      if (plan.count === 1) matmulTiled(this.gpu, args, cfg);
      else {
        const part = this.gpu.alloc(plan.count * T * N * 4, "matmul partial products");
        matmulTiled(this.gpu, { ...args, y: part }, cfg, plan);
        matmulReduce(this.gpu, part, plan.count, args.bias, T, N, y.buf);
        this.gpu.release(part);
      }
    }
    this.tick();
    return y;
  }

  causalConv1dSilu(x: TensorOrCols, weight: Tensor, bias: Tensor | null, state: Tensor | null, s: SeqShape): Tensor {
    const xs = this.w(x, "causalConv1dSilu");
    const wt = this.t(weight, "causalConv1dSilu");
    const E = xs.width;
    const K = wt.cols;
    check(wt.numel === E * K, `causalConv1dSilu: weight [${wt.shape}] does not fit ${E} channels`);
    check(xs.rows === s.batch * s.seqLen, `causalConv1dSilu: x has ${xs.rows} rows, batch ${s.batch} x seqLen ${s.seqLen} needs ${s.batch * s.seqLen}`);
    const st = state ? this.t(state, "causalConv1dSilu") : null;
    if (st) check(st.numel === s.batch * (K - 1) * E, `causalConv1dSilu: state [${st.shape}] is not [${s.batch}, ${K - 1}, ${E}]`);
    const out = this.make([s.batch, s.seqLen, E], "f32");
    const stateOut = st ? this.stateTarget(st) : null;
    causalConv1dSilu(this.gpu, {
      x: this.f32(xs.t), ldx: xs.ld, offx: xs.off, weight: this.f32(wt), bias: bias ? this.f32(this.t(bias, "causalConv1dSilu")) : null,
      stateIn: st?.buf ?? null, stateOut, out: out.buf, B: s.batch, L: s.seqLen, E, K,
    });
    if (st) this.swap(st, stateOut!);
    this.tick();
    return out;
  }

  /** Where an op writes a state tensor's new value: a buffer apart from the one it reads (the kernels read the old
   *  history while others write), the tensor's partner when it has one. */
  private stateTarget(st: GpuTensor): Buf {
    return st.partner ?? this.gpu.alloc(st.numel * 4);
  }

  /** Gives a state tensor the buffer an op wrote its new value into. The old one is freed, or, while a step is
   *  being recorded (and ever after for that tensor), kept as its partner: a recording reads and writes fixed
   *  buffers, so a recorded step must find the state where the last one left it (capture's note). */
  private swap(st: GpuTensor, next: Buf): void {
    if (this.capturing || st.partner) st.partner = st.buf;
    else this.gpu.release(st.buf);
    st.buf = next;
    st.version++;
  }

  /** The packed [E, N + 2] constants of a scan (A · log2 e, dt bias, D), made once per layer. */
  private scanPack(A: GpuTensor, bias: GpuTensor, D: GpuTensor, E: number, N: number): Buf {
    check(bias.numel === E && D.numel === E, `selectiveScan: deltaBias and D need ${E} values, got ${bias.numel} and ${D.numel}`);
    const versions = `${A.version},${bias.version},${D.version}`;
    const hit = this.scanPacks.get(A);
    if (hit && hit.bias === bias && hit.D === D && hit.versions === versions) return hit.packed.buf;
    if (hit) this.dispose(hit.packed);
    const packed = this.make([E, N + 2], "f32");
    packScanParams(this.gpu, this.f32(A), this.f32(bias), this.f32(D), E, N, packed.buf);
    this.scanPacks.set(A, { bias, D, versions, packed });
    return packed.buf;
  }

  selectiveScan(a: SelectiveScanArgs): Tensor {
    const A = this.t(a.A_log, "selectiveScan");
    check(A.shape.length === 2, `selectiveScan: A_log must be [E, N], got [${A.shape}]`);
    const [E, N] = A.shape as [number, number];
    const B = a.batch, L = a.seqLen;
    const u = this.t(a.u, "selectiveScan");
    check(u.numel === B * L * E, `selectiveScan: u [${u.shape}] is not [${B}, ${L}, ${E}]`);
    const win = (x: TensorOrCols, width: number, what: string) => {
      const w = this.w(x, `selectiveScan (${what})`);
      check(w.width === width && w.rows === B * L, `selectiveScan: ${what} is ${w.rows} x ${w.width}, expected ${B * L} x ${width}`);
      return w;
    };
    const delta = win(a.delta, E, "delta");
    const Bm = win(a.B, N, "B");
    const Cm = win(a.C, N, "C");
    const z = a.z ? win(a.z, E, "z") : null;
    const st = a.state ? this.t(a.state, "selectiveScan") : null;
    if (st) check(st.numel === B * E * N, `selectiveScan: state [${st.shape}] is not [${B}, ${E}, ${N}]`);
    // B and C are read through one binding: the two windows of x_proj's output, or a copy of both side by side
    let BC: Buf, ldBC: number, offB: number, offC: number, tmp: Buf | null = null;
    if (Bm.t === Cm.t) {
      [BC, ldBC, offB, offC] = [this.f32(Bm.t), Bm.ld, Bm.off, Cm.off];
    } else {
      tmp = this.gpu.alloc(B * L * 2 * N * 4);
      copyWindow(this.gpu, this.f32(Bm.t), Bm.ld, Bm.off, tmp, 2 * N, 0, B * L, N);
      copyWindow(this.gpu, this.f32(Cm.t), Cm.ld, Cm.off, tmp, 2 * N, N, B * L, N);
      [BC, ldBC, offB, offC] = [tmp, 2 * N, 0, N];
    }
    const packed = this.scanPack(A, this.t(a.deltaBias, "selectiveScan"), this.t(a.D, "selectiveScan"), E, N);
    const y = this.make([B, L, E], "f32", "the scan output");
    const stateOut = st ? this.stateTarget(st) : null;
    const g = scanGeometry(B, L, E, N, this.settings.scanThreads);
    selectiveScan(this.gpu, g, {
      u: u.buf, delta: this.f32(delta.t), ldD: delta.ld, offD: delta.off, packed, BC, ldBC, offB, offC,
      z: z ? this.f32(z.t) : null, ldZ: z?.ld ?? 0, offZ: z?.off ?? 0,
    }, st?.buf ?? null, stateOut, y.buf);
    if (tmp) this.gpu.release(tmp);
    if (st) this.swap(st, stateOut!);
    this.tick();
    return y;
  }

  sample(logits: Tensor, req: SampleRequest): Tensor {
    const lt = this.t(logits, "sample");
    const ldV = lt.cols;
    const rows = lt.numel / ldV;
    check(req.vocabSize > 0 && req.vocabSize <= ldV, `sample: vocabSize ${req.vocabSize} outside the ${ldV} logits of a row`);
    check(req.uniforms.length >= rows, `sample: ${req.uniforms.length} uniforms for ${rows} rows`);
    const greedy = req.temperature === 0;
    const penalize = req.repetitionPenalty !== 1 && req.history !== null;
    const made = this.greedyIds.get(lt);
    if (made && greedy && !penalize && made.V === req.vocabSize && !made.ids.disposed) {
      this.greedyIds.delete(lt); // the head chose them already (decodeStep); the caller owns them now
      return made.ids;
    }
    const uniforms = greedy ? null : this.gpu.upload(req.uniforms.subarray(0, rows), "the sampling uniforms");
    let history: { ids: Buf; offsets: Buf } | null = null;
    if (penalize) {
      const offsets = new Uint32Array(rows + 1);
      for (let r = 0; r < rows; r++) offsets[r + 1] = offsets[r]! + (req.history![r]?.length ?? 0);
      const ids = new Int32Array(Math.max(1, offsets[rows]!));
      for (let r = 0; r < rows; r++) if (req.history![r]) ids.set(req.history![r]!, offsets[r]!);
      history = { ids: this.gpu.upload(ids, "the sampling history"), offsets: this.gpu.upload(offsets, "the sampling history") };
    }
    const seen = penalize ? this.gpu.alloc(rows * sampleWords(req.vocabSize) * 4) : null;
    const out = this.make([rows], "i32");
    sample(this.gpu, {
      logits: this.f32(lt), rows, ldV, V: req.vocabSize, temperature: req.temperature, topK: req.topK, topP: req.topP,
      minP: req.minP, penalty: req.repetitionPenalty, uniforms: uniforms ?? this.gpu.dummy, history, seen, out: out.buf,
    });
    for (const b of [uniforms, seen, history?.ids, history?.offsets]) if (b) this.gpu.release(b);
    this.tick();
    return out;
  }

  // ---- fused decode ----

  /**
   * One token per row through the whole LM (kernels/decode): a layer is norm + in_proj + conv + x_proj; x_proj's
   * totals + dt_proj + scan step + gate; out_proj, in one dispatch (decodePersistent) or three. Plus the embedding,
   * and the head with norm_f, which also makes each row's greedy choice for sample() to take. Declines (null) what
   * the kernels' workgroup memory does not hold, and the LTI mixer.
   */
  decodeStep(model: StepModel, ids: Tensor, conv: readonly Tensor[], ssm: readonly Tensor[]): Tensor | null {
    const c = model.config;
    const [D, E, N, R, K] = [c.hiddenSize, c.intermediateSize, c.stateSize, c.timeStepRank, c.convKernel];
    const idt = this.t(ids, "decodeStep");
    const B = idt.numel;
    const J = R + 2 * N;
    // up to 8 rows: three kernels a layer that each hold the whole batch (kernels/decode/mixer-*.ts); past that, or
    // where those do not fit, with decodeBatch, five a layer whose matmuls have rows enough to fill the GPU
    // (kernels/decode/batch-*.ts); else null, and generate records the model's ops
    const scanFits = mixerScanBytes(N) <= this.gpu.limits.maxComputeWorkgroupStorageSize;
    const fused = scanFits && B <= DECODE_MAX_B && B * D <= DECODE_MAX_BD && B * J <= DECODE_MAX_BJ && D % 4 === 0 && K <= DECODE_MAX_K;
    const batched = this.settings.decodeBatch && scanFits && K <= DECODE_MAX_K && DECODE_MAX_B * J <= DECODE_MAX_BJ &&
      batchConvBytes(J) <= this.gpu.limits.maxComputeWorkgroupStorageSize;
    if (c.mixer !== "s6" || !(fused || batched)) return null;
    const w = model.weights;
    const gpu = this.gpu;
    const packs = w.layers.map((layer) => this.layerPack(layer, D, E, N, K));
    const states = w.layers.map((_, i) => {
      const cs = this.t(conv[i]!, "decodeStep"), ss = this.t(ssm[i]!, "decodeStep");
      check(cs.numel === B * (K - 1) * E && ss.numel === B * E * N, "decodeStep: the cache does not match the batch");
      cs.version++;
      ss.version++;
      return [cs, ss] as const;
    });
    // the recorded step holds while the batch, the state buffers and the layer constants are the same
    let key = `${B}`;
    for (let i = 0; i < states.length; i++) key += `|${states[i]![0].buf.id},${states[i]![1].buf.id},${packs[i]!.buf.buf.id}`;
    let plan = this.decodePlans.get(w);
    if (plan?.key !== key) {
      if (plan) {
        if (this.barrierWatch && plan.scratch.includes(this.barrierWatch)) this.barrierWatch = null;
        for (const b of [plan.h, plan.normed.buf, ...plan.scratch, ...(plan.argmaxPart ? [plan.argmaxPart.buf] : [])]) gpu.release(b);
      }
      plan = fused ? this.recordDecode(model, B, key, packs, states) : this.recordBatchDecode(model, B, key, packs, states);
      this.decodePlans.set(w, plan);
    }
    const tb = this.t(w.embeddings, "decodeStep");
    embedding(gpu, tb.buf, this.weightStorage(tb), tb.shape[0]!, D, idt.buf, B, plan.h);
    gpu.replay(plan.plan); // not counted towards flushEvery: a replay costs the host next to nothing (see tick)
    this.barrierWatch = plan.ctl ?? null; // the reads that follow check this step's counters
    if (!plan.headNorm) return this.matmul(plan.normed, w.head, null);
    // the head with norm_f in its kernel
    const head = this.t(w.head, "decodeStep");
    const V = head.shape[0]!;
    check(head.numel === V * D, `decodeStep: the head [${head.shape}] does not take ${D} inputs`);
    const logits = this.make([B, V], "f32", "the logits");
    // and each row's greedy choice, which sample() takes for a greedy draw instead of a dispatch of its own
    const chosen = this.make([B], "i32", "the greedy ids");
    const words = matvecArgmaxWords(B, V, D);
    if (plan.argmaxPart?.words !== words) { // once a recording (the count is left zero by every dispatch)
      if (plan.argmaxPart) gpu.release(plan.argmaxPart.buf);
      plan.argmaxPart = { buf: gpu.alloc(words * 4, "the head's partial greedy choices"), words };
      fillWords(gpu, plan.argmaxPart.buf, 0, words);
    }
    matvec(gpu, { x: plan.h, ldx: D, offx: 0, rows: B, K: D, w: head.buf, ws: this.weightStorage(head), N: V, bias: null,
      y: logits.buf, loadBytes: this.loadBytes(D), norm: plan.headNorm,
      argmax: { V: c.vocabSize, part: plan.argmaxPart.buf, ids: chosen.buf } });
    this.greedyIds.set(logits, { ids: chosen, V: c.vocabSize });
    return logits;
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
  private loadBytes(width: number): number {
    return this.settings.decodeLoadBytes || (width >= 2048 ? 128 : 64);
  }

  /**
   * Encodes one fused step (the layers and norm_f) over buffers kept for it, recording its dispatches. With
   * decodeAccumulate the first kernel's partials of x_proj go into fixed-point totals (kernels/decode/fixed.ts), a
   * region per layer, each cleared after its reader and before the next step's writer: by the next layer's first
   * kernel, the last layer's by the first layer's (so it needs two layers or more).
   */
  private recordDecode(model: StepModel, B: number, key: string, packs: LayerPack[], states: (readonly [GpuTensor, GpuTensor])[]): DecodePlan {
    const c = model.config;
    const [D, E, N, R, K] = [c.hiddenSize, c.intermediateSize, c.stateSize, c.timeStepRank, c.convKernel];
    const J = R + 2 * N;
    const gpu = this.gpu;
    const w = model.weights;
    const L = w.layers.length;
    const h = gpu.alloc(B * D * 4);
    const normed = new GpuTensor([B, D], "f32", gpu.alloc(B * D * 4), "f32", this);
    const res = gpu.alloc(2 * B * D * 4); // [2, B, D]: layer i reads half i % 2, writes the other
    const xz = gpu.alloc(B * 2 * E * 4);
    const y = gpu.alloc(B * E * 4);
    const inGroups = mixerInGroups(E, this.settings.decodeChannels);
    const acc = this.settings.decodeAccumulate && L >= 2 && inGroups <= FIXED_MAX_TERMS;
    const S = FIXED_SPREAD;
    const xWords = fixedRegionWords(B * J, S);
    // x_proj's totals, a region per layer, zeroed here (a step leaves them zero); else a partial per workgroup
    const Q = acc ? gpu.alloc(L * xWords * 4) : gpu.alloc(inGroups * B * J * 4);
    if (acc) fillWords(gpu, Q, 0, L * xWords);
    const resOut = gpu.alloc(B * D * 4);
    // a layer's arguments for kernels 1 and 2, and out_proj's
    const layerArgs = (i: number) => {
      const m = w.layers[i]!.mixer;
      const lp = packs[i]!;
      const [convState, ssmState] = states[i]!;
      const wIn = this.t(m.inProj, "decodeStep"), wX = this.t(m.xProj!, "decodeStep"), wDt = this.t(m.dtProj!, "decodeStep");
      const inArgs: MixerInArgs = {
        B, D, E, K, J, eps: c.layerNormEpsilon, h, res, hasRes: i > 0, par: i % 2,
        lp: lp.buf.buf, oNorm: lp.oNorm, oInBias: lp.oInBias, oConvW: lp.oConvW, oConvB: lp.oConvB,
        wIn: wIn.buf, wsIn: this.weightStorage(wIn), wX: wX.buf, wsX: this.weightStorage(wX),
        convState: convState.buf, xz, Q, channels: this.settings.decodeChannels, loadBytes: this.settings.decodeLoadBytes || FUSED_IN_LOAD_BYTES,
        acc: acc ? { oX: i * xWords, oZero: ((i + L - 1) % L) * xWords, nZero: B * J + 1, limit: fixedLimit(inGroups), stride: S } : undefined,
      };
      const scanArgs: MixerScanArgs = {
        B, E, N, R, J, G: inGroups, Q, lp: lp.buf.buf, oPack: lp.oPack, wDt: wDt.buf, wsDt: this.weightStorage(wDt),
        xz, ssm: ssmState.buf, y, acc: acc ? { oX: i * xWords, stride: S } : undefined,
      };
      const wo = this.t(m.outProj, "decodeStep");
      const bias = m.outProjBias ? this.f32(this.t(m.outProjBias, "decodeStep")) : null;
      return { inArgs, scanArgs, wo, bias };
    };
    // one dispatch a layer where asked for and it fits (kernels/decode/layer.ts), with its counters
    let ctl: Buf | null = null;
    const one = (i: number): LayerArgs => {
      const a = layerArgs(i);
      return { inArgs: a.inArgs, scanArgs: a.scanArgs, wOut: a.wo.buf, wsOut: this.weightStorage(a.wo), bias: a.bias,
        ctl: ctl ?? gpu.dummy };
    };
    const needs = this.settings.decodePersistent && acc && E % 4 === 0 ? layerNeeds(one(0)) : null;
    const persistent = needs !== null && needs.storageBuffers <= gpu.limits.maxStorageBuffersPerShaderStage &&
      needs.workgroupBytes <= gpu.limits.maxComputeWorkgroupStorageSize;
    if (persistent) {
      ctl = gpu.alloc(LAYER_CTL_WORDS * 4, "the decode's counters");
      fillWords(gpu, ctl, 0, LAYER_CTL_WORDS); // a dispatch leaves them zero, and the flag clear
    }
    const normF = this.f32(this.t(w.normF, "decodeStep"));
    const headNorm = B <= MATVEC_MAX_ROWS && B * D <= MATVEC_NORM_MAX && D % 4 === 0
      ? { res, offRes: (L % 2) * B * D, g: normF, eps: c.layerNormEpsilon } : undefined;
    const plan = gpu.record(() => {
      for (let i = 0; i < L; i++) {
        if (persistent) {
          decodeLayer(gpu, one(i));
          continue;
        }
        const { inArgs, scanArgs, wo, bias } = layerArgs(i);
        const G = decodeMixerIn(gpu, inArgs);
        decodeMixerScan(gpu, { ...scanArgs, G });
        // out_proj into h, which this layer's mixer-in has finished reading
        const args = { x: y, ldx: E, offx: 0, rows: B, K: E, w: wo.buf, ws: this.weightStorage(wo), N: D, bias, y: h };
        if (E % 4 === 0) matvec(gpu, { ...args, loadBytes: this.loadBytes(E) });
        else matmulTiled(gpu, args, this.settings.tileSmall);
      }
      // norm_f over h + the last residual (half numLayers % 2 of res): in the head's kernel where it takes it
      if (!headNorm) addRmsNorm(gpu, h, res, normF, c.layerNormEpsilon, B, D, normed.buf, resOut, (L % 2) * B * D);
    });
    return { key, h, normed, scratch: [res, xz, y, Q, resOut, ...(ctl ? [ctl] : [])], plan, headNorm, ctl: ctl ?? undefined };
  }

  /**
   * Encodes one batch decode step (the layers and norm_f) over buffers kept for it, recording its dispatches: a
   * layer is the norm (summing the last out_proj's K-split partials with its bias and the residual), in_proj, the
   * conv with x_proj's partial sums over channel groups, the scan kernel (x_proj's sum, dt_proj, scan step, gate; a
   * thread per row and channel, kernels/decode/batch-scan.ts), and out_proj. The matmuls split K where their tiles
   * would leave the GPU idle, and leave the partial products for the next kernel to sum.
   */
  private recordBatchDecode(model: StepModel, B: number, key: string, packs: LayerPack[], states: (readonly [GpuTensor, GpuTensor])[]): DecodePlan {
    const c = model.config;
    const [D, E, N, R, K] = [c.hiddenSize, c.intermediateSize, c.stateSize, c.timeStepRank, c.convKernel];
    const J = R + 2 * N;
    const gpu = this.gpu;
    const w = model.weights;
    const tile = this.settings.tileBatch;
    // K parts of decodeBatchSplitCols columns where chosen and K is split at all, else by the workgroups' target;
    // by default short parts (<= 128 columns) become 96 columns, which measured faster at 130m's widths
    const split = (N: number, K: number) => {
      const parts = kSplits(B, N, K, tile);
      const byGroups = splitPlan(K, parts);
      const cols = this.settings.decodeBatchSplitCols < 0 ? (byGroups.kLen <= 128 ? 96 : 0) : this.settings.decodeBatchSplitCols;
      return parts > 1 && cols > 0 ? { kLen: cols, count: Math.ceil(K / cols) } : byGroups;
    };
    const inSplit = split(2 * E, D);
    const outSplit = split(D, E);
    const hp = gpu.alloc(outSplit.count * B * D * 4); // [S, B, D]: the embedding (one part), then out_proj's partials
    const normed = new GpuTensor([B, D], "f32", gpu.alloc(B * D * 4), "f32", this);
    const res = gpu.alloc(2 * B * D * 4); // [2, B, D]: layer i reads half i % 2, writes the other
    const u = gpu.alloc(B * D * 4); // [B, D]: a layer's normalized input
    const xzp = gpu.alloc(inSplit.count * B * 2 * E * 4); // [S, B, 2E]: in_proj's partials
    const xz = gpu.alloc(B * 2 * E * 4);
    const Q = gpu.alloc(Math.ceil(E / BATCH_CONV_CHANNELS) * B * J * 4); // [G, B, J]: x_proj's partials
    const y = gpu.alloc(B * E * 4);
    // the scan kernel with a thread per (row, channel) where chosen and it can: vec4 states, its tiles in workgroup memory
    const scanRows = this.settings.decodeBatchScanRows < 0 ? (E <= 2048 ? 8 : 4) : this.settings.decodeBatchScanRows;
    const threadScan = scanRows > 0 && N % 4 === 0 && batchScanBytes(scanRows, N, R, J) <= gpu.limits.maxComputeWorkgroupStorageSize;
    let parts = 1; // of hp: the embedding is one
    let bias: Buf | null = null; // the last out_proj's, added by the next norm
    const plan = gpu.record(() => {
      for (let i = 0; i < w.layers.length; i++) {
        const m = w.layers[i]!.mixer;
        const lp = packs[i]!;
        const [convState, ssmState] = states[i]!;
        decodeBatchNorm(gpu, {
          B, D, eps: c.layerNormEpsilon, part: hp, S: parts, bias, res, hasRes: i > 0, par: i % 2, g: lp.buf.buf, oG: lp.oNorm, out: u,
        });
        const wIn = this.t(m.inProj, "decodeStep");
        matmulTiled(gpu, { x: u, ldx: D, offx: 0, rows: B, K: D, w: wIn.buf, ws: this.weightStorage(wIn), N: 2 * E, bias: null, y: xzp },
          tile, inSplit);
        const wX = this.t(m.xProj!, "decodeStep"), wDt = this.t(m.dtProj!, "decodeStep");
        const G = decodeBatchConv(gpu, {
          B, E, K, J, xzp, S: inSplit.count, lp: lp.buf.buf, oInBias: lp.oInBias, oConvW: lp.oConvW, oConvB: lp.oConvB,
          wX: wX.buf, wsX: this.weightStorage(wX), convState: convState.buf, xz, Q,
        });
        const scanArgs = {
          B, E, N, R, J, G, Q, lp: lp.buf.buf, oPack: lp.oPack, wDt: wDt.buf, wsDt: this.weightStorage(wDt),
          xz, ssm: ssmState.buf, y,
        };
        if (threadScan) decodeBatchScan(gpu, { ...scanArgs, RW: scanRows });
        else decodeMixerScan(gpu, scanArgs);
        const wo = this.t(m.outProj, "decodeStep");
        matmulTiled(gpu, { x: y, ldx: E, offx: 0, rows: B, K: E, w: wo.buf, ws: this.weightStorage(wo), N: D, bias: null, y: hp },
          tile, outSplit);
        parts = outSplit.count;
        bias = m.outProjBias ? this.f32(this.t(m.outProjBias, "decodeStep")) : null;
      }
      const nl = w.layers.length;
      decodeBatchNorm(gpu, {
        B, D, eps: c.layerNormEpsilon, part: hp, S: parts, bias, res, hasRes: nl > 0, par: nl % 2,
        g: this.f32(this.t(w.normF, "decodeStep")), oG: 0, out: normed.buf,
      });
    });
    return { key, h: hp, normed, scratch: [res, u, xzp, xz, Q, y], plan };
  }

  /** A layer's small constants in one f32 buffer: norm [D] | in_proj bias [2E] | conv [E, K] | conv bias [E] |
   *  the scan's [E, N + 2] (A · log2 e, dt bias, D). Made once per layer; zeros stand for absent biases. */
  private layerPack(layer: StepLayer, D: number, E: number, N: number, K: number): LayerPack {
    const m = layer.mixer;
    const parts = [layer.norm, m.inProjBias, m.conv, m.convBias, m.dtBias, m.A_log, m.D];
    const versions = parts.map((p) => (p ? (p as GpuTensor).version : "-")).join(",");
    const hit = this.layerPacks.get(layer);
    if (hit && hit.versions === versions) return hit;
    if (hit) this.dispose(hit.buf);
    const oNorm = 0, oInBias = D, oConvW = D + 2 * E, oConvB = oConvW + E * K, oPack = oConvB + E;
    const buf = this.make([oPack + E * (N + 2)], "f32");
    const put = (t: Tensor | null, off: number, n: number) => {
      if (t) {
        const g = this.t(t, "decodeStep");
        check(g.numel === n, `decodeStep: a layer constant has ${g.numel} values, expected ${n}`);
        copyWords(this.gpu, this.f32(g), 0, buf.buf, off, n);
      } else fillWords(this.gpu, buf.buf, off, n);
    };
    put(layer.norm, oNorm, D);
    put(m.inProjBias, oInBias, 2 * E);
    put(m.conv, oConvW, E * K);
    put(m.convBias, oConvB, E);
    const packed = this.scanPack(this.t(m.A_log, "decodeStep"), this.t(m.dtBias, "decodeStep"), this.t(m.D, "decodeStep"), E, N);
    copyWords(this.gpu, packed, 0, buf.buf, oPack, E * (N + 2));
    const pack = { buf, versions, oNorm, oInBias, oConvW, oConvB, oPack };
    this.layerPacks.set(layer, pack);
    return pack;
  }
}
