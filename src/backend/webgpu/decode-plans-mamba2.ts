/**
 * The fused decode step of Mamba-2 (Backend.decodeStep for config.family "mamba2"), recorded by ./decode-plans.ts
 * as Mamba-1's is (the embedding before it and the head after it are shared). A layer, up to 8 rows, three kernels:
 *  1. in_proj with the layer's RMSNorm in front and the conv step + SiLU and dt's softplus behind it, column by
 *     column (kernels/decode/mamba2-in.ts; the norm is a dispatch of its own where rows × D outgrow its workgroup
 *     memory);
 *  2. the SSD step of every head and the gate (kernels/decode/mamba2-ssm.ts), leaving the gated norm's sums of
 *     squares per workgroup;
 *  3. out_proj with the gated norm's scale (kernels/decode/mamba2-out.ts); up to 4 rows (decodeScanOut), where the
 *     heads' shares are few (heads × D up to M2_SCAN_OUT_AUTO_MAX, as in mamba2-130m), out_proj is instead the end of
 *     kernel 2's dispatch: the last workgroup of each head to finish multiplies the head's outputs by its columns of
 *     out_proj, the last head adds the heads' shares up (two dispatches a layer).
 * With decodePersistent (the default on hardware GPUs) and a layer's weights of up to M2_PERSISTENT_AUTO_MAX bytes
 * (decodeM2Persistent overrides the size rule), the three run as phases of one dispatch a layer
 * (kernels/decode/mamba2-layer.ts), where out_proj is not asked into the scan's dispatch (decodeScanOut true), the
 * norm is in in_proj's kernel and the device takes the layer's kernel (storage buffers, workgroup memory); elsewhere
 * the kernels above.
 * Past 8 rows (the batch step), five kernels a layer: the norm (summing the last out_proj's K-split partials, times
 * the last gated norm's scale: kernels/decode/batch-norm.ts), in_proj through matmulTiled with K split, its
 * partials summed with the conv and dt (decode_m2_in_finish), the SSD step, out_proj through matmulTiled (with
 * several groups of the gated norm, its scale is a dispatch of its own before out_proj). The layer's small constants
 * are packed into one buffer.
 */
import type { StepModel, Tensor } from "../backend.ts";
import { check } from "../../errors.ts";
import type { Buf } from "./gpu.ts";
import { GpuTensor } from "./tensor.ts";
import type { WebGpuBackend } from "./backend.ts";
import type { DecodePlan } from "./decode-plans.ts";
import { batchStepMatmul, batchStepSplit } from "./ops.ts";
import { MATVEC_MAX_ROWS, MATVEC_NORM_MAX } from "./kernels/matvec.ts";
import { addRmsNorm } from "./kernels/norm.ts";
import { copyWords, fillWords } from "./kernels/copy.ts";
import { decodeBatchNorm } from "./kernels/decode/batch-norm.ts";
import { type M2InArgs, M2_IN_MAX_ROWS, M2_MAX_K, type M2Offsets, m2InBytes, decodeM2In, decodeM2InFinish } from "./kernels/decode/mamba2-in.ts";
import { type M2GateMode, type M2SsmArgs, decodeM2Ssm, m2SsmGroups, m2SsmOutCtlWords, m2SsmOutFits } from "./kernels/decode/mamba2-ssm.ts";
import { type M2OutArgs, decodeM2Out, decodeM2Scale } from "./kernels/decode/mamba2-out.ts";
import { type M2LayerArgs, decodeM2Layer, m2LayerMisfit } from "./kernels/decode/mamba2-layer.ts";
import { LAYER_CTL_WORDS } from "./kernels/decode/layer.ts";

/** The most heads × hidden size for which out_proj joins the scan's dispatch by default (mamba2-130m: 24 × 768;
 *  mamba2-2.7b's 80 × 2560 is far past it: one workgroup a head's columns, and one adding every share up). */
export const M2_SCAN_OUT_AUTO_MAX = 32768;

/** The most bytes of in_proj's and out_proj's weights a layer for which Mamba-2's fused step takes the one-dispatch
 *  layer by default. On the H100 at batch 1 mamba2-130m's step (15 MB a layer in f32) took 490 against 829 us of GPU
 *  time and decoded at 1663 against 1055 tok/s; mamba2-2.7b's (161 MB) took 6131 against 5441 us, 137 against 158
 *  tok/s (BENCHMARKS.md, run 84): there the phases' workgroups stream the weights more slowly than the kernels of
 *  their own. Sizes in between are not measured. */
export const M2_PERSISTENT_AUTO_MAX = 32 * 2 ** 20;

type StepLayer = StepModel["weights"]["layers"][number];

/** Where each constant sits in a layer's packed buffer (offsets in floats). */
interface Mamba2Pack extends M2Offsets {
  buf: GpuTensor;
  versions: string;
  oA: number; oD: number; oGate: number;
}

/** The model's sizes as the kernels take them. */
interface Dims {
  D: number; E: number; N: number; K: number; H: number; P: number; G: number; C: number; NIN: number; L: number;
  lo: number; hi: number; mode: M2GateMode; eps: number;
}

/** A step ready to record (the key says when a recorded one still holds). */
export interface PreparedStep { key: string; record: () => DecodePlan }

export class Mamba2Plans {
  /** Each layer's packed constants, keyed by the layer's weights object. */
  private packs = new WeakMap<StepLayer, Mamba2Pack>();

  constructor(private readonly backend: WebGpuBackend) {}

  /**
   * The step of a Mamba-2 model for B rows over these states, or null where the kernels do not take it: a state
   * size that is not a multiple of 4 (or past 1024), a conv past M2_MAX_K taps; up to 8 rows the hidden and inner
   * sizes must be multiples of 4, past that (or where they are not) the batch step must be on (decodeBatch).
   */
  prepare(model: StepModel, B: number, conv: readonly Tensor[], ssm: readonly Tensor[]): PreparedStep | null {
    const c = model.config, m = c.mamba2;
    if (!m || c.family !== "mamba2") return null;
    const d: Dims = {
      D: c.hiddenSize, E: c.intermediateSize, N: c.stateSize, K: c.convKernel, H: m.numHeads, P: m.headDim, G: m.nGroups,
      C: c.intermediateSize + 2 * m.nGroups * c.stateSize, NIN: 2 * c.intermediateSize + 2 * m.nGroups * c.stateSize + m.numHeads,
      L: c.numLayers, lo: m.timeStepLimit[0], hi: m.timeStepLimit[1], mode: !m.gatedNorm ? "none" : m.normBeforeGate ? "before" : "after",
      eps: c.layerNormEpsilon,
    };
    if (d.N % 4 !== 0 || d.N > 1024 || d.K > M2_MAX_K || d.H * d.P !== d.E || d.H % d.G !== 0) return null;
    const small = B <= M2_IN_MAX_ROWS && d.D % 4 === 0 && d.E % 4 === 0;
    if (!small && !this.backend.settings.decodeBatch) return null;
    const w = model.weights;
    const packs = w.layers.map((layer) => this.layerPack(layer, d));
    const states = w.layers.map((_, i) => {
      const cs = this.backend.t(conv[i]!, "decodeStep"), ss = this.backend.t(ssm[i]!, "decodeStep");
      check(cs.numel === B * (d.K - 1) * d.C && ss.numel === B * d.H * d.P * d.N, "decodeStep: the cache does not match the batch");
      cs.version++;
      ss.version++;
      return [cs, ss] as const;
    });
    let key = `mamba2|${B}`;
    for (let i = 0; i < states.length; i++) key += `|${states[i]![0].buf.id},${states[i]![1].buf.id},${packs[i]!.buf.buf.id}`;
    return { key, record: () => small ? this.recordSmall(model, B, key, d, packs, states) : this.recordBatch(model, B, key, d, packs, states) };
  }

  /** Up to 8 rows: three kernels a layer (two with out_proj in the scan's dispatch; one more where the norm does not
   *  fit in_proj's workgroup memory), or the three in one dispatch (decodePersistent, at the sizes above). */
  private recordSmall(model: StepModel, B: number, key: string, d: Dims, packs: Mamba2Pack[], states: (readonly [GpuTensor, GpuTensor])[]): DecodePlan {
    const gpu = this.backend.gpu;
    const settings = this.backend.settings;
    const w = model.weights;
    const { D, E, NIN, L } = d;
    const NWG = m2SsmGroups(d.N, d.P, d.H);
    const h = gpu.alloc(B * D * 4); // [B, D]: the embedding, then each layer's out_proj
    const normed = new GpuTensor([B, D], "f32", gpu.alloc(B * D * 4), "f32", this.backend);
    const res = gpu.alloc(2 * B * D * 4); // [2, B, D]: layer i reads half i % 2, writes the other
    const zxbcdt = gpu.alloc(B * NIN * 4);
    const v = gpu.alloc(B * E * 4);
    const ss = gpu.alloc(B * NWG * 4);
    const fuseNorm = m2InBytes(B, D, true) <= gpu.limits.maxComputeWorkgroupStorageSize;
    const u = fuseNorm ? null : gpu.alloc(B * D * 4);
    const resOut = gpu.alloc(B * D * 4);
    // layer i's arguments for its three kernels
    const layerArgs = (i: number) => {
      const mx = w.layers[i]!.mixer;
      const lp = packs[i]!;
      const [convState, ssmState] = states[i]!;
      const wIn = this.backend.t(mx.inProj, "decodeStep");
      const wo = this.backend.t(mx.outProj, "decodeStep");
      const bias = mx.outProjBias ? this.backend.f32(this.backend.t(mx.outProjBias, "decodeStep")) : null;
      const inArgs: M2InArgs = {
        T: B, D, E, C: d.C, H: d.H, K: d.K, x: fuseNorm ? h : u!, norm: fuseNorm ? { res, hasRes: i > 0, par: i % 2, eps: d.eps } : null,
        lp: lp.buf.buf, hasBias: !!mx.inProjBias, oNorm: lp.oNorm, oInBias: lp.oInBias, oConvW: lp.oConvW, oConvB: lp.oConvB,
        oDtBias: lp.oDtBias, w: wIn.buf, ws: this.backend.weightStorage(wIn), loadBytes: this.backend.loadBytes(D),
        lanes: settings.decodeM2InLanes, workgroups: settings.decodeM2Workgroups, convState: convState.buf, out: zxbcdt, lo: d.lo, hi: d.hi,
      };
      const ssmArgs: M2SsmArgs = {
        B, N: d.N, P: d.P, H: d.H, G: d.G, E, C: d.C, mode: d.mode, zxbcdt, lp: lp.buf.buf, oA: lp.oA, oD: lp.oD, oGate: lp.oGate,
        ssm: ssmState.buf, out: v, ss, eps: d.eps,
      };
      const outArgs: M2OutArgs = {
        T: B, K: E, N: D, v, w: wo.buf, ws: this.backend.weightStorage(wo), bias, y: h, loadBytes: this.backend.loadBytes(E), lanes: settings.decodeM2OutLanes,
        workgroups: settings.decodeM2Workgroups,
        norm: d.mode === "none" ? null : { ss, G: d.G, GS: E / d.G, NWG, eps: d.eps },
      };
      return { inArgs, ssmArgs, outArgs };
    };
    // the three kernels in one dispatch a layer (kernels/decode/mamba2-layer.ts) where asked for, out_proj is not
    // asked into the scan's dispatch, the norm is in in_proj's, and the device takes the kernel; its counters start at
    // zero and each dispatch leaves them so (but the flag that a wait which gave up sets: the host reads it)
    let layerCtl: Buf | null = null;
    const one = (i: number): M2LayerArgs => ({ ...layerArgs(i), ctl: layerCtl ?? gpu.dummy });
    const first = one(0);
    const persistent = settings.decodePersistent &&
      (settings.decodeM2Persistent ?? first.inArgs.w.size + first.outArgs.w.size <= M2_PERSISTENT_AUTO_MAX) &&
      settings.decodeScanOut !== true && fuseNorm && m2LayerMisfit(gpu, first) === null;
    if (persistent) {
      layerCtl = gpu.alloc(LAYER_CTL_WORDS * 4, "the decode's counters");
      fillWords(gpu, layerCtl, 0, LAYER_CTL_WORDS);
    }
    // else out_proj in the scan's dispatch where it fits (a few rows): two dispatches a layer; its counters start at
    // zero and each dispatch leaves them so
    const fuseOut = !persistent && (settings.decodeScanOut ?? d.H * D <= M2_SCAN_OUT_AUTO_MAX) && m2SsmOutFits(gpu, B, d.N, d.P, E, d.G);
    const part = fuseOut ? gpu.alloc(d.H * B * D * 4, "the heads' shares of out_proj") : null;
    const ctl = fuseOut ? gpu.alloc(m2SsmOutCtlWords(d.H) * 4, "the decode's counters") : null;
    if (ctl) fillWords(gpu, ctl, 0, m2SsmOutCtlWords(d.H));
    const normF = this.backend.f32(this.backend.t(w.normF, "decodeStep"));
    const headNorm = B <= MATVEC_MAX_ROWS && B * D <= MATVEC_NORM_MAX && D % 4 === 0
      ? { res, offRes: (L % 2) * B * D, g: normF, eps: d.eps } : undefined;
    const plan = gpu.record(() => {
      for (let i = 0; i < L; i++) {
        if (persistent) {
          decodeM2Layer(gpu, one(i));
          continue;
        }
        const { inArgs, ssmArgs, outArgs } = layerArgs(i);
        if (!fuseNorm) {
          decodeBatchNorm(gpu, { B, D, eps: d.eps, part: h, S: 1, bias: null, res, hasRes: i > 0, par: i % 2, g: inArgs.lp, oG: inArgs.oNorm, out: u! });
        }
        decodeM2In(gpu, inArgs);
        decodeM2Ssm(gpu, {
          ...ssmArgs,
          fusedOut: fuseOut ? { D, w: outArgs.w, ws: outArgs.ws, bias: outArgs.bias, part: part!, h, ctl: ctl! } : null,
        });
        if (!fuseOut) decodeM2Out(gpu, outArgs);
      }
      // norm_f over h + the last residual (half L % 2 of res): in the head's kernel where it takes it
      if (!headNorm) addRmsNorm(gpu, h, res, normF, d.eps, B, D, normed.buf, resOut, (L % 2) * B * D);
    });
    return {
      key, h, normed, scratch: [res, zxbcdt, v, ss, resOut, ...(u ? [u] : []), ...(part ? [part, ctl!] : []), ...(layerCtl ? [layerCtl] : [])],
      plan, headNorm, ...(layerCtl ? { ctl: layerCtl } : {}),
    };
  }

  /** Past 8 rows: the norm, in_proj (matmulTiled), its partials' sum with the conv and dt, the SSD step and out_proj
   *  (matmulTiled), whose K-split partials the next norm sums and scales (several groups: scaled before out_proj). */
  private recordBatch(model: StepModel, B: number, key: string, d: Dims, packs: Mamba2Pack[], states: (readonly [GpuTensor, GpuTensor])[]): DecodePlan {
    const gpu = this.backend.gpu;
    const w = model.weights;
    const { D, E, NIN, L } = d;
    const NWG = m2SsmGroups(d.N, d.P, d.H);
    const tile = this.backend.settings.tileBatch;
    // K parts as Mamba-1's batch step takes them
    const inSplit = batchStepSplit(this.backend, B, NIN, D);
    const outSplit = batchStepSplit(this.backend, B, D, E);
    const hp = gpu.alloc(outSplit.count * B * D * 4); // [S, B, D]: the embedding (one part), then out_proj's partials
    const normed = new GpuTensor([B, D], "f32", gpu.alloc(B * D * 4), "f32", this.backend);
    const res = gpu.alloc(2 * B * D * 4);
    const u = gpu.alloc(B * D * 4);
    const zxbcdtParts = gpu.alloc(inSplit.count * B * NIN * 4); // [S, B, NIN]: in_proj's partials
    const zxbcdt = gpu.alloc(B * NIN * 4);
    const v = gpu.alloc(B * E * 4);
    const ss = gpu.alloc(B * NWG * 4);
    let parts = 1; // of hp: the embedding is one
    let bias: Buf | null = null; // the last out_proj's, added by the next norm
    // with one group the gated norm's scale is a factor of out_proj's every part: the next norm applies it
    const folded = d.mode !== "none" && d.G === 1;
    const scale = folded ? { ss, NWG, GS: E, eps: d.eps } : null;
    const plan = gpu.record(() => {
      for (let i = 0; i < L; i++) {
        const mx = w.layers[i]!.mixer;
        const lp = packs[i]!;
        const [convState, ssmState] = states[i]!;
        decodeBatchNorm(gpu, {
          B, D, eps: d.eps, part: hp, S: parts, bias, res, hasRes: i > 0, par: i % 2, g: lp.buf.buf, oG: lp.oNorm, out: u, scale: i > 0 ? scale : null,
        });
        const wIn = this.backend.t(mx.inProj, "decodeStep");
        batchStepMatmul(this.backend, { x: u, ldx: D, offx: 0, rows: B, K: D, w: wIn.buf, ws: this.backend.weightStorage(wIn), N: NIN, bias: null, y: zxbcdtParts },
          tile, inSplit);
        decodeM2InFinish(gpu, {
          B, S: inSplit.count, E, C: d.C, H: d.H, K: d.K, part: zxbcdtParts, lp: lp.buf.buf, hasBias: !!mx.inProjBias,
          oNorm: lp.oNorm, oInBias: lp.oInBias, oConvW: lp.oConvW, oConvB: lp.oConvB, oDtBias: lp.oDtBias,
          convState: convState.buf, out: zxbcdt, lo: d.lo, hi: d.hi,
        });
        decodeM2Ssm(gpu, {
          B, N: d.N, P: d.P, H: d.H, G: d.G, E, C: d.C, mode: d.mode, zxbcdt, lp: lp.buf.buf, oA: lp.oA, oD: lp.oD, oGate: lp.oGate,
          ssm: ssmState.buf, out: v, ss, eps: d.eps,
        });
        if (d.mode !== "none" && !folded) decodeM2Scale(gpu, { B, K: E, v, ss, G: d.G, GS: E / d.G, NWG, eps: d.eps });
        const wo = this.backend.t(mx.outProj, "decodeStep");
        batchStepMatmul(this.backend, { x: v, ldx: E, offx: 0, rows: B, K: E, w: wo.buf, ws: this.backend.weightStorage(wo), N: D, bias: null, y: hp },
          tile, outSplit);
        parts = outSplit.count;
        bias = mx.outProjBias ? this.backend.f32(this.backend.t(mx.outProjBias, "decodeStep")) : null;
      }
      decodeBatchNorm(gpu, {
        B, D, eps: d.eps, part: hp, S: parts, bias, res, hasRes: L > 0, par: L % 2,
        g: this.backend.f32(this.backend.t(w.normF, "decodeStep")), oG: 0, out: normed.buf, scale: L > 0 ? scale : null,
      });
    });
    return { key, h: hp, normed, scratch: [res, u, zxbcdtParts, zxbcdt, v, ss], plan };
  }

  /** A layer's small constants in one f32 buffer: norm [D] | in_proj bias [NIN] | conv [C, K] | conv bias [C] |
   *  dt_bias [H] | A_log [H] | D [H] | the gated norm's weight [E]. Made once per layer; zeros stand for absent
   *  biases (and the gated norm's weight where the model has none: it is not read then). */
  private layerPack(layer: StepLayer, d: Dims): Mamba2Pack {
    const m = layer.mixer;
    const parts = [layer.norm, m.inProjBias, m.conv, m.convBias, m.dtBias, m.A_log, m.D, m.gateNorm ?? null];
    const versions = parts.map((p) => (p ? (p as GpuTensor).version : "-")).join(",");
    const hit = this.packs.get(layer);
    if (hit && hit.versions === versions) return hit;
    if (hit) this.backend.dispose(hit.buf);
    const oNorm = 0, oInBias = d.D, oConvW = oInBias + d.NIN, oConvB = oConvW + d.C * d.K, oDtBias = oConvB + d.C;
    const oA = oDtBias + d.H, oD = oA + d.H, oGate = oD + d.H;
    const buf = this.backend.make([oGate + d.E], "f32");
    const put = (t: Tensor | null, off: number, n: number) => {
      if (t) {
        const g = this.backend.t(t, "decodeStep");
        check(g.numel === n, `decodeStep: a layer constant has ${g.numel} values, expected ${n}`);
        copyWords(this.backend.gpu, this.backend.f32(g), 0, buf.buf, off, n);
      } else fillWords(this.backend.gpu, buf.buf, off, n);
    };
    put(layer.norm, oNorm, d.D);
    put(m.inProjBias, oInBias, d.NIN);
    put(m.conv, oConvW, d.C * d.K);
    put(m.convBias, oConvB, d.C);
    put(m.dtBias, oDtBias, d.H);
    put(m.A_log, oA, d.H);
    put(m.D, oD, d.H);
    put(m.gateNorm ?? null, oGate, d.E);
    const pack = { buf, versions, oNorm, oInBias, oConvW, oConvB, oDtBias, oA, oD, oGate };
    this.packs.set(layer, pack);
    return pack;
  }
}
