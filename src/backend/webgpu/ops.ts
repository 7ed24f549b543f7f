/**
 * The WebGPU backend's model ops (embedding, the fused residual add and RMSNorm, matmul, the causal conv, the
 * selective scan, sampling): each checks its tensors, takes its outputs from the pool and appends its kernels'
 * dispatches (./kernels) to the backend's pending encoder. WebGpuBackend's methods of the same names call these.
 * State tensors are rewritten into a buffer apart from the one the kernel reads (stateTarget, swapState).
 */
import type { SampleRequest, SelectiveScanArgs, SeqShape, Tensor, TensorOrCols } from "../backend.ts";
import { check } from "../../errors.ts";
import type { Buf } from "./gpu.ts";
import type { GpuTensor } from "./tensor.ts";
import type { WebGpuBackend } from "./backend.ts";
import { GROUP_TARGET, type MatmulArgs, type TileConfig, kSplits, matmulTiled, splitPlan } from "./kernels/matmul.ts";
import { HALF_TILE_LARGE, HALF_TILE_SMALL, matmulF16 } from "./kernels/matmul-f16.ts";
import { matmulTensorCore, tensorCoreFits } from "./kernels/matmul-tc.ts";
import { matmulReduce } from "./kernels/matmul-reduce.ts";
import { MATVEC_MAX_ROWS, matvec } from "./kernels/matvec.ts";
import { addRmsNorm } from "./kernels/norm.ts";
import { embedding } from "./kernels/embedding.ts";
import { causalConv1dSilu } from "./kernels/conv.ts";
import { packScanParams, scanGeometry, selectiveScan } from "./kernels/scan/index.ts";
import { sample, sampleWords } from "./kernels/sample.ts";
import { copyWindow } from "./kernels/copy.ts";

export function embeddingOp(b: WebGpuBackend, table: Tensor, ids: Tensor): Tensor {
  const tb = b.t(table, "embedding");
  const id = b.t(ids, "embedding");
  check(tb.shape.length === 2, `embedding: the table must be [V, D], got [${tb.shape}]`);
  check(id.dtype === "i32", "embedding: ids must be i32");
  const [V, D] = tb.shape as [number, number];
  const out = b.make([id.numel, D], "f32", "the embeddings");
  embedding(b.gpu, tb.buf, b.weightStorage(tb), V, D, id.buf, id.numel, out.buf);
  b.tick();
  return out;
}

export function addRmsNormOp(b: WebGpuBackend, x: Tensor, residual: Tensor | null, weight: Tensor, eps: number): { out: Tensor; residual: Tensor } {
  const xt = b.t(x, "addRmsNorm");
  const D = xt.cols;
  const T = xt.numel / D;
  const r = residual ? b.t(residual, "addRmsNorm") : null;
  if (r) check(r.numel === xt.numel, `addRmsNorm: residual [${r.shape}] does not match x [${xt.shape}]`);
  const wt = b.t(weight, "addRmsNorm");
  check(wt.numel === D, `addRmsNorm: weight has ${wt.numel} values, rows have ${D}`);
  const out = b.make(xt.shape, "f32");
  const res = b.make(xt.shape, "f32");
  addRmsNorm(b.gpu, xt.buf, r?.buf ?? null, b.f32(wt), eps, T, D, out.buf, res.buf);
  b.tick();
  return { out, residual: res };
}

export function matmulOp(b: WebGpuBackend, x: TensorOrCols, w: Tensor, bias: Tensor | null): Tensor {
  const xs = b.w(x, "matmul");
  const wt = b.t(w, "matmul");
  const N = wt.shape[0]!;
  const K = xs.width;
  check(wt.numel === N * K, `matmul: weight [${wt.shape}] does not take ${K} inputs`);
  const bt = bias ? b.t(bias, "matmul") : null;
  if (bt) check(bt.numel === N, `matmul: bias has ${bt.numel} values, the weight ${N} rows`);
  const T = xs.rows;
  const y = b.make([T, N], "f32", "a matmul output");
  const ws = b.weightStorage(wt);
  // precision f16: float weights are read as f16 (stored so, or a copy made once); quantized ones keep their path
  const half = b.precision === "f16" && (ws === "f32" || ws === "bf16" || ws === "f16");
  const args: MatmulArgs = {
    x: b.f32(xs.t), ldx: xs.ld, offx: xs.off, rows: T, K,
    w: half ? b.halfWeight(wt) : wt.buf, ws: half ? "f16" : ws, N, bias: bt ? b.f32(bt) : null, y: y.buf,
  };
  // a few rows (decode) read f16 weights with f32 math, their activations as they are: these products are bound
  // by the weights' bytes, which f16 halves, and rounding the few activations would save nothing
  if (T <= MATVEC_MAX_ROWS && K % 4 === 0) matvec(b.gpu, { ...args, loadBytes: b.loadBytes(K) });
  else if (half) matmulHalf(b, args);
  else {
    const largeTiles = Math.ceil(T / b.settings.tileLarge.BM) * Math.ceil(N / b.settings.tileLarge.BN);
    // at most 64 rows (a decode batch's head) fill half of a large tile: the small ones do no padded work, and
    // where their output is wide, 128 columns a tile share each loaded value of x over twice the columns
    const few = T <= b.settings.tileSmall.BM;
    const cfg = !few && largeTiles >= 256 ? b.settings.tileLarge
      : few && Math.ceil(N / 128) >= GROUP_TARGET ? b.settings.tileWide : b.settings.tileSmall;
    const plan = splitPlan(K, kSplits(T, N, K, cfg));
    if (plan.count === 1) matmulTiled(b.gpu, args, cfg);
    else {
      const part = b.gpu.alloc(plan.count * T * N * 4, "matmul partial products");
      matmulTiled(b.gpu, { ...args, y: part }, cfg, plan);
      matmulReduce(b.gpu, part, plan.count, args.bias, T, N, y.buf);
      b.gpu.release(part);
    }
  }
  b.tick();
  return y;
}

/** How the batch decode step cuts K for a product of B rows by N outputs: parts of decodeBatchSplitCols columns
 *  where chosen and K is split at all, else by the workgroups' target; by default short parts (<= 128 columns)
 *  become 96 columns, which measured faster at 130m's widths. */
export function batchStepSplit(b: WebGpuBackend, B: number, N: number, K: number): { kLen: number; count: number } {
  const parts = kSplits(B, N, K, b.settings.tileBatch);
  const byGroups = splitPlan(K, parts);
  const cols = b.settings.decodeBatchSplitCols < 0 ? (byGroups.kLen <= 128 ? 96 : 0) : b.settings.decodeBatchSplitCols;
  return parts > 1 && cols > 0 ? { kLen: cols, count: Math.ceil(K / cols) } : byGroups;
}

/** A product of the batch decode step, whose K split (`plan`) the step's own kernels sum: on the tensor cores where
 *  the model's products are f16 (its weights then f16) and the device has them, else the f32 tiled kernel. */
export function batchStepMatmul(b: WebGpuBackend, a: MatmulArgs, tile: TileConfig, plan: { kLen: number; count: number }): void {
  if (b.precision === "f16" && a.ws === "f16" && hasTensorCores(b) && tensorCoreFits(a)) matmulTensorCore(b.gpu, a, plan, b.settings.tensorCoreTile);
  else matmulTiled(b.gpu, a, tile, plan);
}

/** Whether the device's subgroup matrices include the tensor-core kernel's: f16 × f16 -> f32 at 16 × 16 × 16. */
export function hasTensorCores(b: WebGpuBackend): boolean {
  return b.gpu.half.subgroupMatrix.some((c) => c.componentType === "f16" && c.resultComponentType === "f32" && c.M === 16 && c.N === 16 && c.K === 16);
}

/** A product of precision f16 with more than a few rows: on the tensor cores where the device has them and the
 *  kernel takes the shape, else the shader-f16 tiled kernel (K split over workgroups where few tiles would leave
 *  the GPU idle, as the f32 kernel does). */
function matmulHalf(b: WebGpuBackend, a: MatmulArgs): void {
  if (hasTensorCores(b) && tensorCoreFits(a)) {
    // K split over workgroups where few 128 x 128 tiles would leave the GPU idle (decode batches, out_proj of few rows)
    const tile = b.settings.tensorCoreTile;
    const plan = splitPlan(a.K, kSplits(a.rows, a.N, a.K, { BM: tile.BM, BN: tile.BN, BK: 16, TM: 8, TN: 4, vec4: false }));
    if (plan.count === 1) matmulTensorCore(b.gpu, a, undefined, tile);
    else {
      const part = b.gpu.alloc(plan.count * a.rows * a.N * 4, "matmul partial products");
      matmulTensorCore(b.gpu, { ...a, y: part }, plan, tile);
      matmulReduce(b.gpu, part, plan.count, a.bias, a.rows, a.N, a.y);
      b.gpu.release(part);
    }
    return;
  }
  const cfg = Math.ceil(a.rows / HALF_TILE_LARGE.BM) * Math.ceil(a.N / HALF_TILE_LARGE.BN) >= 256 ? HALF_TILE_LARGE : HALF_TILE_SMALL;
  const plan = splitPlan(a.K, kSplits(a.rows, a.N, a.K, cfg));
  if (plan.count === 1) matmulF16(b.gpu, a, cfg);
  else {
    const part = b.gpu.alloc(plan.count * a.rows * a.N * 4, "matmul partial products");
    matmulF16(b.gpu, { ...a, y: part }, cfg, plan);
    matmulReduce(b.gpu, part, plan.count, a.bias, a.rows, a.N, a.y);
    b.gpu.release(part);
  }
}

export function causalConv1dSiluOp(b: WebGpuBackend, x: TensorOrCols, weight: Tensor, bias: Tensor | null, state: Tensor | null, s: SeqShape): Tensor {
  const xs = b.w(x, "causalConv1dSilu");
  const wt = b.t(weight, "causalConv1dSilu");
  const E = xs.width;
  const K = wt.cols;
  check(wt.numel === E * K, `causalConv1dSilu: weight [${wt.shape}] does not fit ${E} channels`);
  check(xs.rows === s.batch * s.seqLen, `causalConv1dSilu: x has ${xs.rows} rows, batch ${s.batch} x seqLen ${s.seqLen} needs ${s.batch * s.seqLen}`);
  const st = state ? b.t(state, "causalConv1dSilu") : null;
  if (st) check(st.numel === s.batch * (K - 1) * E, `causalConv1dSilu: state [${st.shape}] is not [${s.batch}, ${K - 1}, ${E}]`);
  const out = b.make([s.batch, s.seqLen, E], "f32");
  const stateOut = st ? stateTarget(b, st) : null;
  causalConv1dSilu(b.gpu, {
    x: b.f32(xs.t), ldx: xs.ld, offx: xs.off, weight: b.f32(wt), bias: bias ? b.f32(b.t(bias, "causalConv1dSilu")) : null,
    stateIn: st?.buf ?? null, stateOut, out: out.buf, B: s.batch, L: s.seqLen, E, K,
  });
  if (st) swapState(b, st, stateOut!);
  b.tick();
  return out;
}

/** Where an op writes a state tensor's new value: a buffer apart from the one it reads (the kernels read the old
 *  history while others write), the tensor's partner when it has one. */
export function stateTarget(b: WebGpuBackend, st: GpuTensor): Buf {
  return st.partner ?? b.gpu.alloc(st.numel * 4);
}

/** Gives a state tensor the buffer an op wrote its new value into. The old one is freed, or, while a step is
 *  being recorded (and ever after for that tensor), kept as its partner: a recording reads and writes fixed
 *  buffers, so a recorded step must find the state where the last one left it (capture's note). */
export function swapState(b: WebGpuBackend, st: GpuTensor, next: Buf): void {
  if (b.capturing || st.partner) st.partner = st.buf;
  else b.gpu.release(st.buf);
  st.buf = next;
  st.version++;
}

/** The packed [E, N + 2] constants of a scan (A · log2 e, dt bias, D), made once per layer. */
export function scanPack(b: WebGpuBackend, A: GpuTensor, bias: GpuTensor, D: GpuTensor, E: number, N: number): Buf {
  check(bias.numel === E && D.numel === E, `selectiveScan: deltaBias and D need ${E} values, got ${bias.numel} and ${D.numel}`);
  const versions = `${A.version},${bias.version},${D.version}`;
  const hit = b.scanPacks.get(A);
  if (hit && hit.bias === bias && hit.D === D && hit.versions === versions) return hit.packed.buf;
  if (hit) b.dispose(hit.packed);
  const packed = b.make([E, N + 2], "f32");
  packScanParams(b.gpu, b.f32(A), b.f32(bias), b.f32(D), E, N, packed.buf);
  b.scanPacks.set(A, { bias, D, versions, packed });
  return packed.buf;
}

export function selectiveScanOp(b: WebGpuBackend, a: SelectiveScanArgs): Tensor {
  const A = b.t(a.A_log, "selectiveScan");
  check(A.shape.length === 2, `selectiveScan: A_log must be [E, N], got [${A.shape}]`);
  const [E, N] = A.shape as [number, number];
  const B = a.batch, L = a.seqLen;
  const u = b.t(a.u, "selectiveScan");
  check(u.numel === B * L * E, `selectiveScan: u [${u.shape}] is not [${B}, ${L}, ${E}]`);
  const win = (x: TensorOrCols, width: number, what: string) => {
    const w = b.w(x, `selectiveScan (${what})`);
    check(w.width === width && w.rows === B * L, `selectiveScan: ${what} is ${w.rows} x ${w.width}, expected ${B * L} x ${width}`);
    return w;
  };
  const delta = win(a.delta, E, "delta");
  const Bm = win(a.B, N, "B");
  const Cm = win(a.C, N, "C");
  const z = a.z ? win(a.z, E, "z") : null;
  const st = a.state ? b.t(a.state, "selectiveScan") : null;
  if (st) check(st.numel === B * E * N, `selectiveScan: state [${st.shape}] is not [${B}, ${E}, ${N}]`);
  // B and C are read through one binding: the two windows of x_proj's output, or a copy of both side by side
  let BC: Buf, ldBC: number, offB: number, offC: number, tmp: Buf | null = null;
  if (Bm.t === Cm.t) {
    [BC, ldBC, offB, offC] = [b.f32(Bm.t), Bm.ld, Bm.off, Cm.off];
  } else {
    tmp = b.gpu.alloc(B * L * 2 * N * 4);
    copyWindow(b.gpu, b.f32(Bm.t), Bm.ld, Bm.off, tmp, 2 * N, 0, B * L, N);
    copyWindow(b.gpu, b.f32(Cm.t), Cm.ld, Cm.off, tmp, 2 * N, N, B * L, N);
    [BC, ldBC, offB, offC] = [tmp, 2 * N, 0, N];
  }
  const packed = scanPack(b, A, b.t(a.deltaBias, "selectiveScan"), b.t(a.D, "selectiveScan"), E, N);
  const y = b.make([B, L, E], "f32", "the scan output");
  const stateOut = st ? stateTarget(b, st) : null;
  const g = scanGeometry(B, L, E, N, b.settings.scanThreads);
  selectiveScan(b.gpu, g, {
    u: u.buf, delta: b.f32(delta.t), ldD: delta.ld, offD: delta.off, packed, BC, ldBC, offB, offC,
    z: z ? b.f32(z.t) : null, ldZ: z?.ld ?? 0, offZ: z?.off ?? 0,
  }, st?.buf ?? null, stateOut, y.buf);
  if (tmp) b.gpu.release(tmp);
  if (st) swapState(b, st, stateOut!);
  b.tick();
  return y;
}

export function sampleOp(b: WebGpuBackend, logits: Tensor, req: SampleRequest): Tensor {
  const lt = b.t(logits, "sample");
  const ldV = lt.cols;
  const rows = lt.numel / ldV;
  check(req.vocabSize > 0 && req.vocabSize <= ldV, `sample: vocabSize ${req.vocabSize} outside the ${ldV} logits of a row`);
  check(req.uniforms.length >= rows, `sample: ${req.uniforms.length} uniforms for ${rows} rows`);
  const greedy = req.temperature === 0;
  const penalize = req.repetitionPenalty !== 1 && req.history !== null;
  const made = b.greedyIds.get(lt);
  if (made && greedy && !penalize && made.V === req.vocabSize && !made.ids.disposed) {
    b.greedyIds.delete(lt); // the head chose them already (decodeStep); the caller owns them now
    return made.ids;
  }
  const uniforms = greedy ? null : b.gpu.upload(req.uniforms.subarray(0, rows), "the sampling uniforms");
  let history: { ids: Buf; offsets: Buf } | null = null;
  if (penalize) {
    const offsets = new Uint32Array(rows + 1);
    for (let r = 0; r < rows; r++) offsets[r + 1] = offsets[r]! + (req.history![r]?.length ?? 0);
    const ids = new Int32Array(Math.max(1, offsets[rows]!));
    for (let r = 0; r < rows; r++) if (req.history![r]) ids.set(req.history![r]!, offsets[r]!);
    history = { ids: b.gpu.upload(ids, "the sampling history"), offsets: b.gpu.upload(offsets, "the sampling history") };
  }
  const seen = penalize ? b.gpu.alloc(rows * sampleWords(req.vocabSize) * 4) : null;
  const out = b.make([rows], "i32");
  sample(b.gpu, {
    logits: b.f32(lt), rows, ldV, V: req.vocabSize, temperature: req.temperature, topK: req.topK, topP: req.topP,
    minP: req.minP, penalty: req.repetitionPenalty, uniforms: uniforms ?? b.gpu.dummy, history, seen, out: out.buf,
  });
  for (const buf of [uniforms, seen, history?.ids, history?.offsets]) if (buf) b.gpu.release(buf);
  b.tick();
  return out;
}
