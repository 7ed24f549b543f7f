/**
 * The fused decode step (Backend.decodeStep): one token per row through the whole LM, recorded once per model,
 * batch and set of state buffers (a DecodePlan) and replayed every step. Up to 8 rows: three kernels a layer that
 * each hold the whole batch (kernels/decode/mixer-*.ts), or one (kernels/decode/layer.ts, decodePersistent); past
 * that, the batch step's five a layer (kernels/decode/batch-*.ts). A layer's small constants are packed into one
 * buffer (LayerPack) once. Mamba-2's layers are recorded by ./decode-plans-mamba2.ts, with the same embedding and head.
 */
import type { StepModel, Tensor } from "../backend.ts";
import { check } from "../../errors.ts";
import type { Buf, Prepared } from "./gpu.ts";
import { GpuTensor } from "./tensor.ts";
import type { WebGpuBackend } from "./backend.ts";
import { batchStepMatmul, batchStepSplit, scanPack } from "./ops.ts";
import { matmulTiled } from "./kernels/matmul.ts";
import { MATVEC_MAX_ROWS, MATVEC_NORM_MAX, matvec, matvecArgmaxWords } from "./kernels/matvec.ts";
import { addRmsNorm } from "./kernels/norm.ts";
import { embedding } from "./kernels/embedding.ts";
import { copyWords, fillWords } from "./kernels/copy.ts";
import { DECODE_MAX_B, DECODE_MAX_BD, DECODE_MAX_K, type MixerInArgs, decodeMixerIn, mixerInGroups } from "./kernels/decode/mixer-in.ts";
import { DECODE_MAX_BJ, type MixerScanArgs, decodeMixerScan, mixerScanBytes } from "./kernels/decode/mixer-scan.ts";
import { LAYER_CTL_WORDS, type LayerArgs, decodeLayer, layerNeeds } from "./kernels/decode/layer.ts";
import { FIXED_MAX_TERMS, FIXED_SPREAD, fixedLimit, fixedRegionWords } from "./kernels/decode/fixed.ts";
import { decodeBatchNorm } from "./kernels/decode/batch-norm.ts";
import { BATCH_CONV_CHANNELS, batchConvBytes, decodeBatchConv } from "./kernels/decode/batch-conv.ts";
import { batchScanBytes, decodeBatchScan } from "./kernels/decode/batch-scan.ts";
import { Mamba2Plans, type PreparedStep } from "./decode-plans-mamba2.ts";

type StepLayer = StepModel["weights"]["layers"][number];

/** A recorded fused decode step (all layers and norm_f) over buffers kept for it, replayed while its key holds. */
export interface DecodePlan {
  key: string;
  h: Buf; // [B, D]: the embedding, then each layer's out_proj (the batch step: [S, B, D], out_proj's K-split parts)
  normed: GpuTensor; // [B, D]: norm_f's output, the head's input (never disposed)
  scratch: Buf[];
  plan: Prepared[];
  // the fused step's head applies norm_f itself (matvec's norm) where it takes the batch: over h and this residual
  headNorm?: { res: Buf; offRes: number; g: Buf; eps: number };
  ctl?: Buf; // the one-dispatch layers' counters (their flag is read with the step's ids)
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

/** The recorded decode steps of one backend. */
export class DecodePlans {
  /** The fused decode's packed constants of each layer, keyed by the layer's weights object. */
  private layerPacks = new WeakMap<StepLayer, LayerPack>();
  /** The fused decode's recorded step of each model. */
  private decodePlans = new WeakMap<StepModel["weights"], DecodePlan>();
  /** Mamba-2's layers (./decode-plans-mamba2.ts). */
  private readonly mamba2: Mamba2Plans;

  constructor(private readonly backend: WebGpuBackend) {
    this.mamba2 = new Mamba2Plans(backend);
  }

  /**
   * One token per row through the whole LM (kernels/decode): a layer is norm + in_proj + conv + x_proj; x_proj's
   * totals + dt_proj + scan step + gate; out_proj, in one dispatch (decodePersistent) or three. Plus the embedding,
   * and the head with norm_f, which also makes each row's greedy choice for sample() to take. Declines (null) what
   * the kernels' workgroup memory does not hold, the LTI mixer and Falcon-Mamba. Mamba-2's layer: its own kernels
   * (./decode-plans-mamba2.ts).
   */
  step(model: StepModel, ids: Tensor, conv: readonly Tensor[], ssm: readonly Tensor[]): Tensor | null {
    const idt = this.backend.t(ids, "decodeStep");
    const B = idt.numel;
    const D = model.config.hiddenSize;
    // Mamba-2's layer has kernels of its own (./decode-plans-mamba2.ts); the embedding and the head are shared
    const ready = model.config.family === "mamba2" ? this.mamba2.prepare(model, B, conv, ssm) : this.prepareMamba1(model, B, conv, ssm);
    if (!ready) return null;
    const w = model.weights;
    const gpu = this.backend.gpu;
    const c = model.config;
    let plan = this.decodePlans.get(w);
    if (plan?.key !== ready.key) {
      if (plan) {
        if (this.backend.barrierWatch && plan.scratch.includes(this.backend.barrierWatch)) this.backend.barrierWatch = null;
        for (const b of [plan.h, plan.normed.buf, ...plan.scratch, ...(plan.argmaxPart ? [plan.argmaxPart.buf] : [])]) gpu.release(b);
      }
      plan = ready.record();
      this.decodePlans.set(w, plan);
    }
    const tb = this.backend.t(w.embeddings, "decodeStep");
    embedding(gpu, tb.buf, this.backend.weightStorage(tb), tb.shape[0]!, D, idt.buf, B, plan.h);
    gpu.replay(plan.plan); // not counted towards flushEvery: a replay costs the host next to nothing (see tick)
    this.backend.barrierWatch = plan.ctl ?? null; // the reads that follow check this step's counters
    if (!plan.headNorm) return this.backend.matmul(plan.normed, w.head, null);
    // the head with norm_f in its kernel
    const head = this.backend.t(w.head, "decodeStep");
    const V = head.shape[0]!;
    check(head.numel === V * D, `decodeStep: the head [${head.shape}] does not take ${D} inputs`);
    const logits = this.backend.make([B, V], "f32", "the logits");
    // and each row's greedy choice, which sample() takes for a greedy draw instead of a dispatch of its own
    const chosen = this.backend.make([B], "i32", "the greedy ids");
    const words = matvecArgmaxWords(B, V, D);
    if (plan.argmaxPart?.words !== words) { // once a recording (the count is left zero by every dispatch)
      if (plan.argmaxPart) gpu.release(plan.argmaxPart.buf);
      plan.argmaxPart = { buf: gpu.alloc(words * 4, "the head's partial greedy choices"), words };
      fillWords(gpu, plan.argmaxPart.buf, 0, words);
    }
    matvec(gpu, { x: plan.h, ldx: D, offx: 0, rows: B, K: D, w: head.buf, ws: this.backend.weightStorage(head), N: V, bias: null,
      y: logits.buf, loadBytes: this.backend.loadBytes(D), norm: plan.headNorm,
      argmax: { V: c.vocabSize, part: plan.argmaxPart.buf, ids: chosen.buf } });
    this.backend.greedyIds.set(logits, { ids: chosen, V: c.vocabSize });
    return logits;
  }

  /** Mamba-1's step for B rows over these states, or null where its kernels do not take the model or batch. */
  private prepareMamba1(model: StepModel, B: number, conv: readonly Tensor[], ssm: readonly Tensor[]): PreparedStep | null {
    const c = model.config;
    const [D, E, N, R, K] = [c.hiddenSize, c.intermediateSize, c.stateSize, c.timeStepRank, c.convKernel];
    const J = R + 2 * N;
    // up to 8 rows: three kernels a layer that each hold the whole batch (kernels/decode/mixer-*.ts); past that, or
    // where those do not fit, with decodeBatch, five a layer whose matmuls have rows enough to fill the GPU
    // (kernels/decode/batch-*.ts); else null, and generate records the model's ops
    const scanFits = mixerScanBytes(N) <= this.backend.gpu.limits.maxComputeWorkgroupStorageSize;
    const fused = scanFits && B <= DECODE_MAX_B && B * D <= DECODE_MAX_BD && B * J <= DECODE_MAX_BJ && D % 4 === 0 && K <= DECODE_MAX_K;
    const batched = this.backend.settings.decodeBatch && scanFits && K <= DECODE_MAX_K && DECODE_MAX_B * J <= DECODE_MAX_BJ &&
      batchConvBytes(J) <= this.backend.gpu.limits.maxComputeWorkgroupStorageSize;
    // Mamba-1's layer only: Falcon-Mamba's norms of dt, B, C are not in these kernels
    if (c.mixer !== "s6" || (c.family ?? "mamba") !== "mamba" || !(fused || batched)) return null;
    const w = model.weights;
    const packs = w.layers.map((layer) => this.layerPack(layer, D, E, N, K));
    const states = w.layers.map((_, i) => {
      const cs = this.backend.t(conv[i]!, "decodeStep"), ss = this.backend.t(ssm[i]!, "decodeStep");
      check(cs.numel === B * (K - 1) * E && ss.numel === B * E * N, "decodeStep: the cache does not match the batch");
      cs.version++;
      ss.version++;
      return [cs, ss] as const;
    });
    // the recorded step holds while the batch, the state buffers and the layer constants are the same
    let key = `${B}`;
    for (let i = 0; i < states.length; i++) key += `|${states[i]![0].buf.id},${states[i]![1].buf.id},${packs[i]!.buf.buf.id}`;
    return { key, record: () => fused ? this.recordDecode(model, B, key, packs, states) : this.recordBatchDecode(model, B, key, packs, states) };
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
    const gpu = this.backend.gpu;
    const w = model.weights;
    const L = w.layers.length;
    const h = gpu.alloc(B * D * 4);
    const normed = new GpuTensor([B, D], "f32", gpu.alloc(B * D * 4), "f32", this.backend);
    const res = gpu.alloc(2 * B * D * 4); // [2, B, D]: layer i reads half i % 2, writes the other
    const xz = gpu.alloc(B * 2 * E * 4);
    const y = gpu.alloc(B * E * 4);
    const inGroups = mixerInGroups(E, this.backend.settings.decodeChannels);
    const acc = this.backend.settings.decodeAccumulate && L >= 2 && inGroups <= FIXED_MAX_TERMS;
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
      const wIn = this.backend.t(m.inProj, "decodeStep"), wX = this.backend.t(m.xProj!, "decodeStep"), wDt = this.backend.t(m.dtProj!, "decodeStep");
      const inArgs: MixerInArgs = {
        B, D, E, K, J, eps: c.layerNormEpsilon, h, res, hasRes: i > 0, par: i % 2,
        lp: lp.buf.buf, oNorm: lp.oNorm, oInBias: lp.oInBias, oConvW: lp.oConvW, oConvB: lp.oConvB,
        wIn: wIn.buf, wsIn: this.backend.weightStorage(wIn), wX: wX.buf, wsX: this.backend.weightStorage(wX),
        convState: convState.buf, xz, Q, channels: this.backend.settings.decodeChannels, loadBytes: this.backend.settings.decodeLoadBytes || FUSED_IN_LOAD_BYTES,
        acc: acc ? { oX: i * xWords, oZero: ((i + L - 1) % L) * xWords, nZero: B * J + 1, limit: fixedLimit(inGroups), stride: S } : undefined,
      };
      const scanArgs: MixerScanArgs = {
        B, E, N, R, J, G: inGroups, Q, lp: lp.buf.buf, oPack: lp.oPack, wDt: wDt.buf, wsDt: this.backend.weightStorage(wDt),
        xz, ssm: ssmState.buf, y, acc: acc ? { oX: i * xWords, stride: S } : undefined,
      };
      const wo = this.backend.t(m.outProj, "decodeStep");
      const bias = m.outProjBias ? this.backend.f32(this.backend.t(m.outProjBias, "decodeStep")) : null;
      return { inArgs, scanArgs, wo, bias };
    };
    // one dispatch a layer where asked for and it fits (kernels/decode/layer.ts), with its counters
    let ctl: Buf | null = null;
    const one = (i: number): LayerArgs => {
      const a = layerArgs(i);
      return { inArgs: a.inArgs, scanArgs: a.scanArgs, wOut: a.wo.buf, wsOut: this.backend.weightStorage(a.wo), bias: a.bias,
        ctl: ctl ?? gpu.dummy };
    };
    const needs = this.backend.settings.decodePersistent && acc && E % 4 === 0 ? layerNeeds(one(0)) : null;
    const persistent = needs !== null && needs.storageBuffers <= gpu.limits.maxStorageBuffersPerShaderStage &&
      needs.workgroupBytes <= gpu.limits.maxComputeWorkgroupStorageSize;
    if (persistent) {
      ctl = gpu.alloc(LAYER_CTL_WORDS * 4, "the decode's counters");
      fillWords(gpu, ctl, 0, LAYER_CTL_WORDS); // a dispatch leaves them zero, and the flag clear
    }
    const normF = this.backend.f32(this.backend.t(w.normF, "decodeStep"));
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
        const args = { x: y, ldx: E, offx: 0, rows: B, K: E, w: wo.buf, ws: this.backend.weightStorage(wo), N: D, bias, y: h };
        if (E % 4 === 0) matvec(gpu, { ...args, loadBytes: this.backend.loadBytes(E) });
        else matmulTiled(gpu, args, this.backend.settings.tileSmall);
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
    const gpu = this.backend.gpu;
    const w = model.weights;
    const tile = this.backend.settings.tileBatch;
    const inSplit = batchStepSplit(this.backend, B, 2 * E, D);
    const outSplit = batchStepSplit(this.backend, B, D, E);
    const hp = gpu.alloc(outSplit.count * B * D * 4); // [S, B, D]: the embedding (one part), then out_proj's partials
    const normed = new GpuTensor([B, D], "f32", gpu.alloc(B * D * 4), "f32", this.backend);
    const res = gpu.alloc(2 * B * D * 4); // [2, B, D]: layer i reads half i % 2, writes the other
    const u = gpu.alloc(B * D * 4); // [B, D]: a layer's normalized input
    const xzp = gpu.alloc(inSplit.count * B * 2 * E * 4); // [S, B, 2E]: in_proj's partials
    const xz = gpu.alloc(B * 2 * E * 4);
    const Q = gpu.alloc(Math.ceil(E / BATCH_CONV_CHANNELS) * B * J * 4); // [G, B, J]: x_proj's partials
    const y = gpu.alloc(B * E * 4);
    // the scan kernel with a thread per (row, channel) where chosen and it can: vec4 states, its tiles in workgroup memory
    const scanRows = this.backend.settings.decodeBatchScanRows < 0 ? (E <= 2048 ? 8 : 4) : this.backend.settings.decodeBatchScanRows;
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
        const wIn = this.backend.t(m.inProj, "decodeStep");
        batchStepMatmul(this.backend, { x: u, ldx: D, offx: 0, rows: B, K: D, w: wIn.buf, ws: this.backend.weightStorage(wIn), N: 2 * E, bias: null, y: xzp },
          tile, inSplit);
        const wX = this.backend.t(m.xProj!, "decodeStep"), wDt = this.backend.t(m.dtProj!, "decodeStep");
        const G = decodeBatchConv(gpu, {
          B, E, K, J, xzp, S: inSplit.count, lp: lp.buf.buf, oInBias: lp.oInBias, oConvW: lp.oConvW, oConvB: lp.oConvB,
          wX: wX.buf, wsX: this.backend.weightStorage(wX), convState: convState.buf, xz, Q,
        });
        const scanArgs = {
          B, E, N, R, J, G, Q, lp: lp.buf.buf, oPack: lp.oPack, wDt: wDt.buf, wsDt: this.backend.weightStorage(wDt),
          xz, ssm: ssmState.buf, y,
        };
        if (threadScan) decodeBatchScan(gpu, { ...scanArgs, RW: scanRows });
        else decodeMixerScan(gpu, scanArgs);
        const wo = this.backend.t(m.outProj, "decodeStep");
        batchStepMatmul(this.backend, { x: y, ldx: E, offx: 0, rows: B, K: E, w: wo.buf, ws: this.backend.weightStorage(wo), N: D, bias: null, y: hp },
          tile, outSplit);
        parts = outSplit.count;
        bias = m.outProjBias ? this.backend.f32(this.backend.t(m.outProjBias, "decodeStep")) : null;
      }
      const nl = w.layers.length;
      decodeBatchNorm(gpu, {
        B, D, eps: c.layerNormEpsilon, part: hp, S: parts, bias, res, hasRes: nl > 0, par: nl % 2,
        g: this.backend.f32(this.backend.t(w.normF, "decodeStep")), oG: 0, out: normed.buf,
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
    if (hit) this.backend.dispose(hit.buf);
    const oNorm = 0, oInBias = D, oConvW = D + 2 * E, oConvB = oConvW + E * K, oPack = oConvB + E;
    const buf = this.backend.make([oPack + E * (N + 2)], "f32");
    const put = (t: Tensor | null, off: number, n: number) => {
      if (t) {
        const g = this.backend.t(t, "decodeStep");
        check(g.numel === n, `decodeStep: a layer constant has ${g.numel} values, expected ${n}`);
        copyWords(this.backend.gpu, this.backend.f32(g), 0, buf.buf, off, n);
      } else fillWords(this.backend.gpu, buf.buf, off, n);
    };
    put(layer.norm, oNorm, D);
    put(m.inProjBias, oInBias, 2 * E);
    put(m.conv, oConvW, E * K);
    put(m.convBias, oConvB, E);
    const packed = scanPack(this.backend, this.backend.t(m.A_log, "decodeStep"), this.backend.t(m.dtBias, "decodeStep"), this.backend.t(m.D, "decodeStep"), E, N);
    copyWords(this.backend.gpu, packed, 0, buf.buf, oPack, E * (N + 2));
    const pack = { buf, versions, oNorm, oInBias, oConvW, oConvB, oPack };
    this.layerPacks.set(layer, pack);
    return pack;
  }
}
