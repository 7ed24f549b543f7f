/**
 * The WebGPU backend's training ops (TrainingOps of ../training.ts): the backward of every model op, the
 * cross-entropy loss and the optimizer's elementwise work as WGSL kernels (./kernels/backward, one per file),
 * appended to the same lazily submitted command encoder as the forward ops. WebGpuTrainingBackend is the WebGPU
 * backend plus these ops; createWebGpuBackend returns one.
 *
 * Every reduction is deterministic: partial sums in fixed groups, then added in group order (reduce-groups.ts);
 * there are no float atomics, so the same inputs give the same bits. Gradients follow the TrainingOps rule: they
 * are added into (column windows included). An op whose gradient tensor shares a buffer with one of its inputs
 * writes into a zeroed scratch first and adds it afterwards (WebGPU forbids binding one buffer for reading and
 * writing in one dispatch).
 *
 * Shapes: B batch, L sequence length, T = B·L rows, D hidden, E inner, N state, K conv kernel, V vocabulary rows.
 */
import type { SelectiveScanArgs, SeqShape, Tensor, TensorOrCols } from "../backend.ts";
import type { AdamWParams, ConvGrads, CrossEntropyResult, MatmulGrads, ScanGrads, TrainingBackend } from "../training.ts";
import { MambaError, check, checkChoice } from "../../errors.ts";
import type { Buf, Gpu } from "./gpu.ts";
import { WebGpuBackend } from "./backend.ts";
import type { WebGpuInternalTuning } from "./tuning.ts";
import { GpuTensor, type Window, gpuTensor, windowOf } from "./tensor.ts";
import { copyWindow, copyWords, fillWords } from "./kernels/copy.ts";
import { widen } from "./kernels/widen.ts";
import { axpy } from "./kernels/backward/axpy.ts";
import { adamw } from "./kernels/backward/adamw.ts";
import { blockSum, blocks } from "./kernels/backward/block-sum.ts";
import { reduceGroups, stacked } from "./kernels/backward/reduce-groups.ts";
import { colsum, colsumChunks } from "./kernels/backward/colsum.ts";
import { countTargets, crossEntropyRows } from "./kernels/backward/cross-entropy.ts";
import { matmulBackwardTiled, pickTile, splitK, type Operand } from "./kernels/backward/matmul-backward.ts";
import { rmsNormBackward } from "./kernels/backward/rmsnorm-backward.ts";
import { embeddingBackward, positionsById } from "./kernels/backward/embedding-backward.ts";
import { embeddingBackwardSerial } from "./kernels/backward/embedding-backward-serial.ts";
import { convPre } from "./kernels/backward/conv-pre.ts";
import { convDx } from "./kernels/backward/conv-dx.ts";
import { convChunks, convDw } from "./kernels/backward/conv-dw.ts";
import {
  BLOCKS_CHOICES, LANES_CHOICES, LANES_NB, LANES_QT, lanesMinBytes, lanesPossible, maxSubTile, scanBwdGeometry, scanBwdLanesGeometry, scanBwdReduceWidth, selectiveScanBackward,
  type ScanBwdGeometry,
} from "./kernels/backward/scan/index.ts";

/** Where an op writes a gradient window: the tensor itself, or a zeroed scratch added into it by finish(). */
interface Target extends Operand {
  finish(): void;
}

/** Storage buffers the scan backward's chunk kernel binds. */
const SCAN_BWD_BUFFERS = 10;
/** Dispatches after which pending training work is submitted. */
const FLUSH_EVERY = 512;

export class WebGpuTrainingBackend extends WebGpuBackend implements TrainingBackend {
  /** Host copies of i32 tensors made by fromI32 (ids and targets), so that the embedding backward can list the
   *  positions of each id on the host; valid while the tensor's version is unchanged. */
  private readonly hostInts = new WeakMap<GpuTensor, { data: Int32Array; version: number }>();
  private readonly scanChunk: number;
  private readonly scanSubTile: number;
  private readonly scanReduceWidth: number;
  private readonly scanKernel: "lanes" | "channel";
  private readonly scanLanes: number;
  private readonly scanBlocks: number;

  constructor(gpu: Gpu, tuning: WebGpuInternalTuning = {}) {
    super(gpu, tuning);
    this.scanChunk = tuning.scanBackwardChunk ?? 0;
    this.scanSubTile = tuning.scanBackwardSubTile ?? 0;
    this.scanReduceWidth = scanBwdReduceWidth(gpu, tuning.scanBackwardReduceWidth);
    const kernel = tuning.scanBackwardKernel;
    check(kernel === undefined || kernel === "lanes" || kernel === "channel", `scanBackwardKernel must be "lanes" or "channel", got ${String(kernel)}`);
    this.scanLanes = tuning.scanBackwardLanes ?? LANES_QT;
    this.scanBlocks = tuning.scanBackwardBlocks ?? LANES_NB;
    checkChoice("scanBackwardBlocks", tuning.scanBackwardBlocks, BLOCKS_CHOICES);
    checkChoice("scanBackwardLanes", tuning.scanBackwardLanes, LANES_CHOICES);
    check(kernel !== "lanes" || lanesPossible(this.scanReduceWidth, this.scanLanes),
      `scanBackwardKernel "lanes" with ${this.scanLanes} lanes a channel needs subgroups of at least that many lanes ` +
      `(this device's reduction width is ${this.scanReduceWidth})`);
    this.scanKernel = kernel ?? (lanesPossible(this.scanReduceWidth, this.scanLanes) ? "lanes" : "channel");
  }

  override fromI32(data: Int32Array, shape: readonly number[]): Tensor {
    const t = super.fromI32(data, shape) as GpuTensor;
    this.hostInts.set(t, { data: data.slice(), version: t.version });
    return t;
  }

  // ---- helpers ----

  private gt(x: Tensor, what: string): GpuTensor {
    return gpuTensor(x, this, what);
  }
  private gw(x: TensorOrCols, what: string): Window {
    return windowOf(x, this, what);
  }
  /** A float32 buffer of a tensor (half-precision parameters are widened once and the copy kept, as the forward does). */
  private f32buf(t: GpuTensor): Buf {
    if (t.storage === "f32" || t.storage === "i32") return t.buf;
    if (!t.widened) {
      const out = new GpuTensor(t.shape, "f32", this.gpu.alloc(Math.max(4, t.numel * 4)), "f32", this);
      widen(this.gpu, t.buf, t.storage, t.numel, out.buf);
      t.widened = out;
    }
    return t.widened.buf;
  }
  /** A float32 tensor that an op writes into. */
  private writable(x: Tensor, what: string): GpuTensor {
    const t = this.gt(x, what);
    check(t.storage !== "q8_0" && t.storage !== "q4_0",
      `${what}: the tensor written into holds quantized (${t.storage}) weights; training quantized models is not supported`);
    check(t.storage === "f32", `${what}: the tensor written into must be float32 (a gradient or optimizer state)`);
    t.version++;
    return t;
  }
  /** A gradient window to add into, through a zeroed scratch when its buffer is also read by the op. */
  private target(w: Window, reads: Buf[]): Target {
    check(w.t.storage === "f32", "a gradient must be a float32 tensor");
    w.t.version++;
    if (!reads.includes(w.t.buf)) return { buf: w.t.buf, ld: w.ld, off: w.off, finish: () => {} };
    const n = w.rows * w.width;
    const tmp = this.gpu.alloc(Math.max(4, n * 4), "a gradient scratch");
    fillWords(this.gpu, tmp, 0, n);
    return {
      buf: tmp, ld: w.width, off: 0,
      finish: () => {
        reduceGroups(this.gpu, tmp, { G: 1, off: 0, sR: w.width, sG: 0, cw: 1, sC1: 1, sC2: 0 }, w.t.buf, w.rows, w.width, w.ld, w.off);
        this.gpu.release(tmp);
      },
    };
  }
  private dense(t: GpuTensor): Window {
    const ld = t.cols;
    return { t, ld, off: 0, width: ld, rows: t.numel / ld };
  }
  /** Submits pending work now and then, so the GPU starts while the host is still encoding. Counted from the last
   *  submit of any kind (a step's reads submit too), so that every training step submits at the same ops: which
   *  pooled buffers are clean for an upload then repeats from step to step, and so do the bind groups. */
  private done(): void {
    if (this.gpu.pendingDispatches >= FLUSH_EVERY) this.gpu.submitEarly();
  }
  /** Σ of n values of src (from word off), squared or not, as a [1] tensor: block sums until one is left. */
  private total(src: Buf, off: number, n: number, square: boolean): GpuTensor {
    if (n === 0) return this.zeros([1]) as GpuTensor;
    let cur = src, curOff = off, count = n, sq = square, owned = false;
    do {
      const next = this.gpu.alloc(Math.max(4, blocks(count) * 4), "a reduction");
      blockSum(this.gpu, cur, curOff, count, sq, next, 0);
      if (owned) this.gpu.release(cur);
      [cur, curOff, count, sq, owned] = [next, 0, blocks(count), false, true];
    } while (count > 1);
    return new GpuTensor([1], "f32", cur, "f32", this);
  }
  private sameSize(a: GpuTensor, b: GpuTensor, what: string): void {
    check(a.numel === b.numel, `${what}: shapes [${a.shape}] and [${b.shape}] differ`);
  }

  // ---- helpers of the optimizer ----

  zeroFill(t: Tensor): void {
    const x = this.gt(t, "zeroFill");
    check(x.storage !== "q8_0" && x.storage !== "q4_0", "zeroFill: cannot overwrite a quantized (q8_0/q4_0) parameter");
    check(x.storage === "f32" || x.storage === "i32", "zeroFill: cannot overwrite a half-precision parameter");
    x.version++;
    fillWords(this.gpu, x.buf, 0, x.numel);
    this.done();
  }

  addScaled(dst: Tensor, src: Tensor, alpha: number): void {
    const s = this.gt(src, "addScaled");
    const d = this.writable(dst, "addScaled");
    this.sameSize(d, s, "addScaled");
    let sb = this.f32buf(s);
    let tmp: Buf | null = null;
    if (sb === d.buf) { // dst += alpha · dst: read a copy
      tmp = this.gpu.alloc(d.numel * 4);
      copyWords(this.gpu, sb, 0, tmp, 0, d.numel);
      sb = tmp;
    }
    axpy(this.gpu, sb, d.buf, alpha, d.numel);
    if (tmp) this.gpu.release(tmp);
    this.done();
  }

  sumSquares(ts: Tensor[]): Tensor {
    const parts = ts.map((x) => this.gt(x, "sumSquares"));
    const nPart = parts.reduce((a, t) => a + blocks(t.numel), 0);
    if (nPart === 0) return this.zeros([1]);
    const part = this.gpu.alloc(nPart * 4, "the gradient norm's partial sums");
    let o = 0;
    for (const t of parts) {
      blockSum(this.gpu, this.f32buf(t), 0, t.numel, true, part, o);
      o += blocks(t.numel);
    }
    const out = this.total(part, 0, nPart, false);
    this.gpu.release(part);
    this.done();
    return out;
  }

  adamwStep(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, o: AdamWParams): void {
    const g = this.gt(grad, "adamwStep");
    const [p, mt, vt] = [this.writable(param, "adamwStep"), this.writable(m, "adamwStep"), this.writable(v, "adamwStep")];
    for (const t of [g, mt, vt]) this.sameSize(p, t, "adamwStep");
    const gb = this.f32buf(g);
    check(new Set([gb, p.buf, mt.buf, vt.buf]).size === 4, "adamwStep: param, grad, m and v must be four distinct tensors");
    adamw(this.gpu, gb, p.buf, mt.buf, vt.buf, p.numel, {
      lr: o.lr, beta1: o.beta1, beta2: o.beta2, eps: o.eps, weightDecay: o.weightDecay,
      bc1: 1 - o.beta1 ** o.step, bc2: 1 - o.beta2 ** o.step, gradScale: o.gradScale,
    });
    this.done();
  }

  // ---- loss ----

  crossEntropy(logits: Tensor, targets: Tensor, scale: number): CrossEntropyResult {
    const lt = this.gt(logits, "crossEntropy");
    const tg = this.gt(targets, "crossEntropy");
    check(tg.dtype === "i32", "crossEntropy: targets must be i32");
    const V = lt.cols;
    const T = lt.numel / V;
    check(tg.numel === T, `crossEntropy: ${tg.numel} targets for ${T} rows of logits`);
    const host = this.hostInts.get(tg);
    if (host && host.version === tg.version) {
      for (let r = 0; r < T; r++) {
        const y = host.data[r]!;
        if (y < -1 || y >= V) throw new MambaError(`crossEntropy: target ${y} at row ${r} is outside [0, ${V}) (or -1 to skip)`);
      }
    }
    const meta = this.gpu.alloc(4, "the loss's count");
    countTargets(this.gpu, tg.buf, T, meta);
    const dLogits = new GpuTensor([...lt.shape], "f32", this.gpu.alloc(Math.max(4, lt.numel * 4), "the logits' gradient"), "f32", this);
    const rowOut = this.gpu.alloc(Math.max(4, 2 * T * 4), "the loss's rows");
    crossEntropyRows(this.gpu, this.f32buf(lt), tg.buf, meta, T, V, scale, dLogits.buf, rowOut);
    const loss = this.total(rowOut, 0, T, false);
    const correct = this.total(rowOut, T, T, false);
    this.gpu.release(meta);
    this.gpu.release(rowOut);
    this.done();
    return { loss, correct, dLogits };
  }

  // ---- backward ops ----

  matmulBackward(x: TensorOrCols, w: Tensor, dy: TensorOrCols, g: MatmulGrads): void {
    const xs = this.gw(x, "matmulBackward");
    const wt = this.gt(w, "matmulBackward");
    const nOut = wt.shape[0]!;
    const K = xs.width;
    check(wt.numel === nOut * K, `matmulBackward: weight [${wt.shape}] does not take ${K} inputs`);
    const dys = this.gw(dy, "matmulBackward");
    check(dys.width === nOut && dys.rows === xs.rows,
      `matmulBackward: dy [${dys.rows}, ${dys.width}] does not match x rows ${xs.rows} and ${nOut} outputs`);
    const T = xs.rows;
    const xb = this.f32buf(xs.t), wb = this.f32buf(wt), dyb = this.f32buf(dys.t);
    const reads = [xb, wb, dyb];
    const dyOp = { buf: dyb, ld: dys.ld, off: dys.off };
    if (g.dx) {
      const dxw = this.gw(g.dx, "matmulBackward");
      check(dxw.width === K && dxw.rows === T, "matmulBackward: dx does not have the shape of x");
      const c = this.target(dxw, reads);
      this.product(T, K, nOut, dyOp, true, { buf: wb, ld: K, off: 0 }, c);
      c.finish();
    }
    if (g.dw) {
      const dwt = this.gt(g.dw, "matmulBackward");
      check(dwt.numel === nOut * K, `matmulBackward: dw [${dwt.shape}] is not [${nOut}, ${K}]`);
      const c = this.target({ t: dwt, ld: K, off: 0, width: K, rows: nOut }, reads);
      this.product(nOut, K, T, dyOp, false, { buf: xb, ld: xs.ld, off: xs.off }, c);
      c.finish();
    }
    if (g.dBias) {
      const db = this.writable(g.dBias, "matmulBackward");
      check(db.numel === nOut, `matmulBackward: dBias has ${db.numel} values, the weight ${nOut} rows`);
      this.columnSum(dyb, dys.ld, dys.off, T, nOut, null, db.buf);
    }
    this.done();
  }

  /** C [M, N] window += A · B (A k-major [M, K] or m-major [K, M]; B [K, N]), split along K when that fills the GPU. */
  private product(M: number, N: number, K: number, a: Operand, aKMajor: boolean, b: Operand, c: Operand): void {
    const maxDim = this.gpu.limits.maxComputeWorkgroupsPerDimension;
    const tile = pickTile(M, N);
    check(Math.ceil(M / tile.BM) <= maxDim && Math.ceil(N / tile.BN) <= maxDim, `matmulBackward: a [${M}, ${N}] product is too large for one dispatch`);
    const split = splitK(M, N, K, tile);
    const part = split.splits > 1 ? this.gpu.alloc(split.splits * M * N * 4, "a matmul's split partials") : null;
    matmulBackwardTiled(this.gpu, { M, N, K, a, aKMajor, b, c }, tile, split, part, this.settings.matmulVec4);
    if (part) {
      reduceGroups(this.gpu, part, { G: split.splits, off: 0, sR: N, sG: M * N, cw: 1, sC1: 1, sC2: 0 }, c.buf, M, N, c.ld, c.off);
      this.gpu.release(part);
    }
  }

  /** out [W] += Σ over rows of a [rows, W] window (times b · s per row when given). */
  private columnSum(a: Buf, lda: number, offa: number, rows: number, W: number, bs: { b: Buf; s: Buf } | null, out: Buf): void {
    const { chunkRows, nChunks } = colsumChunks(rows);
    const part = this.gpu.alloc(nChunks * W * 4, "column partial sums");
    colsum(this.gpu, a, lda, offa, rows, W, bs, part, chunkRows, nChunks);
    reduceGroups(this.gpu, part, stacked(nChunks, W), out, 1, W, W, 0);
    this.gpu.release(part);
  }

  addRmsNormBackward(residualOut: Tensor, weight: Tensor, eps: number, dOut: Tensor, dResidual: Tensor, dWeight: Tensor): void {
    const r = this.gt(residualOut, "addRmsNormBackward");
    const D = r.cols;
    const T = r.numel / D;
    const wt = this.gt(weight, "addRmsNormBackward");
    check(wt.numel === D, `addRmsNormBackward: weight has ${wt.numel} values, rows have ${D}`);
    const dO = this.gt(dOut, "addRmsNormBackward");
    check(dO.numel === r.numel, `addRmsNormBackward: dOut [${dO.shape}] does not match [${r.shape}]`);
    const dR = this.gt(dResidual, "addRmsNormBackward");
    check(dR.numel === r.numel, `addRmsNormBackward: dResidual [${dR.shape}] does not match [${r.shape}]`);
    const dW = this.writable(dWeight, "addRmsNormBackward");
    check(dW.numel === D, `addRmsNormBackward: dWeight has ${dW.numel} values, rows have ${D}`);
    const rb = this.f32buf(r), wb = this.f32buf(wt), dOb = this.f32buf(dO);
    const inv = this.gpu.alloc(Math.max(4, T * 4), "the norm's inverse scales");
    const c = this.target(this.dense(dR), [rb, wb, dOb]);
    rmsNormBackward(this.gpu, rb, wb, eps, dOb, T, D, c.buf, inv);
    c.finish();
    this.columnSum(dOb, D, 0, T, D, { b: rb, s: inv }, dW.buf);
    this.gpu.release(inv);
    this.done();
  }

  embeddingBackward(ids: Tensor, dOut: Tensor, dTable: Tensor): void {
    const idt = this.gt(ids, "embeddingBackward");
    check(idt.dtype === "i32", "embeddingBackward: ids must be i32");
    const tab = this.writable(dTable, "embeddingBackward");
    check(tab.shape.length === 2, `embeddingBackward: dTable must be [V, D], got [${tab.shape}]`);
    const [V, D] = tab.shape as [number, number];
    const T = idt.numel;
    const dO = this.gt(dOut, "embeddingBackward");
    check(dO.numel === T * D, `embeddingBackward: dOut [${dO.shape}] is not [${T}, ${D}]`);
    const host = this.hostInts.get(idt);
    if (host && host.version === idt.version) {
      for (let t = 0; t < T; t++) {
        const id = host.data[t]!;
        if (id < 0 || id >= V) throw new MambaError(`embeddingBackward: id ${id} at position ${t} is outside the ${V} rows of the table`);
      }
      const { csr, nU } = positionsById(host.data);
      const cb = this.gpu.upload(csr, "the embedding's positions");
      embeddingBackward(this.gpu, cb, nU, this.f32buf(dO), D, tab.buf);
      this.gpu.release(cb);
    } else {
      embeddingBackwardSerial(this.gpu, idt.buf, T, this.f32buf(dO), V, D, tab.buf);
    }
    this.done();
  }

  causalConv1dSiluBackward(x: TensorOrCols, weight: Tensor, bias: Tensor | null, dy: Tensor, s: SeqShape, g: ConvGrads): void {
    const xs = this.gw(x, "causalConv1dSiluBackward");
    const wt = this.gt(weight, "causalConv1dSiluBackward");
    const E = xs.width;
    const K = wt.cols;
    check(wt.numel === E * K, `causalConv1dSiluBackward: weight [${wt.shape}] does not fit ${E} channels`);
    const B = s.batch, L = s.seqLen;
    check(xs.rows === B * L, `causalConv1dSiluBackward: x has ${xs.rows} rows, batch ${B} x seqLen ${L} needs ${B * L}`);
    const dyt = this.gt(dy, "causalConv1dSiluBackward");
    check(dyt.numel === B * L * E, `causalConv1dSiluBackward: dy [${dyt.shape}] is not [${B}, ${L}, ${E}]`);
    const bt = bias ? this.gt(bias, "causalConv1dSiluBackward") : null;
    if (bt) check(bt.numel === E, `causalConv1dSiluBackward: bias has ${bt.numel} values, expected ${E}`);
    const shape = { B, L, E, K };
    const xb = this.f32buf(xs.t), wb = this.f32buf(wt), dyb = this.f32buf(dyt);
    const dpre = this.gpu.alloc(Math.max(4, B * L * E * 4), "the conv's pre-activation gradient");
    convPre(this.gpu, shape, xb, xs.ld, xs.off, wb, bt ? this.f32buf(bt) : null, dyb, dpre);
    if (g.dx) {
      const dxw = this.gw(g.dx, "causalConv1dSiluBackward");
      check(dxw.width === E && dxw.rows === B * L, "causalConv1dSiluBackward: dx does not have the shape of x");
      const c = this.target(dxw, [xb, wb, dyb]);
      convDx(this.gpu, shape, dpre, wb, c.buf, c.ld, c.off);
      c.finish();
    }
    if (g.dWeight || g.dBias) {
      const { chunkLen, nT } = convChunks(B, L, E);
      const part = this.gpu.alloc(B * nT * E * (K + 1) * 4, "the conv's partial sums");
      convDw(this.gpu, shape, xb, xs.ld, xs.off, dpre, chunkLen, nT, part);
      const G = B * nT, sG = E * (K + 1);
      if (g.dWeight) {
        const dw = this.writable(g.dWeight, "causalConv1dSiluBackward");
        check(dw.numel === E * K, `causalConv1dSiluBackward: dWeight [${dw.shape}] does not fit ${E} channels`);
        reduceGroups(this.gpu, part, { G, off: 0, sR: 0, sG, cw: K, sC1: K + 1, sC2: 1 }, dw.buf, 1, E * K, E * K, 0);
      }
      if (g.dBias) {
        const db = this.writable(g.dBias, "causalConv1dSiluBackward");
        check(db.numel === E, `causalConv1dSiluBackward: dBias has ${db.numel} values, expected ${E}`);
        reduceGroups(this.gpu, part, { G, off: K, sR: 0, sG, cw: 1, sC1: K + 1, sC2: 0 }, db.buf, 1, E, E, 0);
      }
      this.gpu.release(part);
    }
    this.gpu.release(dpre);
    this.done();
  }

  selectiveScanBackward(a: SelectiveScanArgs, dy: Tensor, g: ScanGrads): void {
    check((a.z === null) === (g.dz === null), "selectiveScanBackward: dz must be given exactly when the forward had a gate z");
    const A = this.gt(a.A_log, "selectiveScanBackward");
    check(A.shape.length === 2, `selectiveScanBackward: A_log must be [E, N], got [${A.shape}]`);
    const [E, N] = A.shape as [number, number];
    const B = a.batch, L = a.seqLen, rows = B * L;
    const u = this.gt(a.u, "selectiveScanBackward");
    check(u.numel === rows * E, `selectiveScanBackward: u [${u.shape}] is not [${B}, ${L}, ${E}]`);
    const dyt = this.gt(dy, "selectiveScanBackward");
    check(dyt.numel === rows * E, `selectiveScanBackward: dy [${dyt.shape}] is not [${B}, ${L}, ${E}]`);
    const win = (x: TensorOrCols, width: number, what: string) => {
      const w = this.gw(x, `selectiveScanBackward (${what})`);
      check(w.width === width && w.rows === rows, `selectiveScanBackward: ${what} is ${w.rows} x ${w.width}, expected ${rows} x ${width}`);
      return w;
    };
    const delta = win(a.delta, E, "delta"), Bm = win(a.B, N, "B"), Cm = win(a.C, N, "C");
    const z = a.z ? win(a.z, E, "z") : null;
    const bias = this.gt(a.deltaBias, "selectiveScanBackward"), Dp = this.gt(a.D, "selectiveScanBackward");
    check(bias.numel === E && Dp.numel === E, `selectiveScanBackward: deltaBias and D need ${E} values, got ${bias.numel} and ${Dp.numel}`);
    const dDelta = win(g.dDelta, E, "dDelta"), dB = win(g.dB, N, "dB"), dC = win(g.dC, N, "dC");
    const dz = g.dz ? win(g.dz, E, "dz") : null;
    const du = this.gt(g.du, "selectiveScanBackward");
    check(du.numel === rows * E, `selectiveScanBackward: du [${du.shape}] is not [${B}, ${L}, ${E}]`);
    const dA = this.writable(g.dA_log, "selectiveScanBackward"), dD = this.writable(g.dD, "selectiveScanBackward");
    const dBias = this.writable(g.dDeltaBias, "selectiveScanBackward");
    check(dA.numel === E * N && dD.numel === E && dBias.numel === E, "selectiveScanBackward: dA_log, dD or dDeltaBias has the wrong size");
    for (const w of [dB, dC]) {
      check(w.t.storage === "f32", "selectiveScanBackward: gradients must be float32");
      w.t.version++;
    }
    const maxBufs = this.gpu.limits.maxStorageBuffersPerShaderStage;
    check(maxBufs >= SCAN_BWD_BUFFERS, `selectiveScanBackward: the scan backward binds ${SCAN_BWD_BUFFERS} storage buffers; this adapter allows ${maxBufs}`);
    const W = this.scanReduceWidth;
    const wgBytes = this.gpu.limits.maxComputeWorkgroupStorageSize;
    const state = a.state ? this.gt(a.state, "selectiveScanBackward") : null;
    check(!state || state.numel === B * E * N, `selectiveScanBackward: the initial state needs [${B}, ${E}, ${N}], got [${state?.shape}]`);
    let geo: ScanBwdGeometry;
    const lanesTile = this.scanSubTile > 0 ? Math.min(this.scanSubTile, 32) : 8;
    if (this.scanKernel === "lanes" && lanesMinBytes(N, W, lanesTile, this.scanLanes, this.scanBlocks) <= wgBytes) {
      geo = scanBwdLanesGeometry(B, L, E, N, lanesTile, wgBytes, this.scanChunk, W, state !== null, this.scanLanes, this.scanBlocks);
    } else {
      const fits = maxSubTile(N, wgBytes, W);
      check(fits >= 1, `selectiveScanBackward: state size ${N} is too large for this adapter's workgroup memory`);
      const subTile = this.scanSubTile > 0 ? Math.min(this.scanSubTile, fits) : fits;
      geo = scanBwdGeometry(B, L, E, N, subTile, this.scanChunk, W, state !== null);
    }
    check(geo.nC <= this.gpu.limits.maxComputeWorkgroupsPerDimension, `selectiveScanBackward: seqLen ${L} needs too many chunks`);

    // B and C through one binding: the two windows of x_proj's output, or a copy of both side by side
    let BC: Buf, ldBC: number, offB: number, offC: number, tmp: Buf | null = null;
    if (Bm.t === Cm.t) {
      [BC, ldBC, offB, offC] = [this.f32buf(Bm.t), Bm.ld, Bm.off, Cm.off];
    } else {
      tmp = this.gpu.alloc(rows * 2 * N * 4);
      copyWindow(this.gpu, this.f32buf(Bm.t), Bm.ld, Bm.off, tmp, 2 * N, 0, rows, N);
      copyWindow(this.gpu, this.f32buf(Cm.t), Cm.ld, Cm.off, tmp, 2 * N, N, rows, N);
      [BC, ldBC, offB, offC] = [tmp, 2 * N, 0, N];
    }
    const ub = this.f32buf(u), deltaB = this.f32buf(delta.t), zb = z ? this.f32buf(z.t) : null, dyb = this.f32buf(dyt);
    const reads = [ub, deltaB, BC, dyb, ...(zb ? [zb] : [])];
    const cDu = this.target(this.dense(du), reads);
    const cDelta = this.target(dDelta, [...reads, cDu.buf]);
    const cDz = dz ? this.target(dz, [...reads, cDu.buf, cDelta.buf]) : null;
    selectiveScanBackward(this.gpu, geo, {
      u: ub, delta: deltaB, ldD: delta.ld, offD: delta.off, BC, ldBC, offB, offC, z: zb, ldZ: z?.ld ?? 0, offZ: z?.off ?? 0,
    }, { A_log: this.f32buf(A), deltaBias: this.f32buf(bias), D: this.f32buf(Dp) }, dyb, {
      du: cDu.buf, dDelta: cDelta.buf, ldDD: cDelta.ld, offDD: cDelta.off,
      dz: cDz?.buf ?? null, ldDZ: cDz?.ld ?? 0, offDZ: cDz?.off ?? 0, overwrite: g.zeroed === true,
    }, {
      dB: dB.t.buf, ldB: dB.ld, offB: dB.off, dC: dC.t.buf, ldC: dC.ld, offC: dC.off,
      dA_log: dA.buf, dD: dD.buf, dDeltaBias: dBias.buf,
    }, state ? this.f32buf(state) : null);
    cDu.finish();
    cDelta.finish();
    cDz?.finish();
    if (tmp) this.gpu.release(tmp);
    this.done();
  }
}
