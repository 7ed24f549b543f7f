/**
 * The model's backward pass, written once against TrainingBackend. The forward is the model's own
 * (MambaLM.hidden with a recorder keeping each layer's activations); the backward walks the layers in reverse:
 *
 *   logits = f · headᵀ                      -> df, dHead (the embeddings' gradient when tied)
 *   f = rmsnorm(res_L) · norm_f             -> dRes (= the gradient of the last mixer's output and of res_{L-1})
 *   per layer i, from the last:
 *     mixer backward with dOut = dRes       -> dn (gradient of the layer's normalized input), weight gradients
 *     n = rmsnorm(res_i) · norm.weight      -> dRes += through the norm  (now the gradient of res_i)
 *   res_0 = embeddings[ids]                 -> dEmbeddings scatter-add
 *
 * Mixer (T = B·L rows), in reverse of MambaLM.mixer:
 *   out = out_proj(y)  -> dy;  y = scan(x, delta, B, C, z)  -> dx, ddelta, dB, dC, dz, dA_log, dD, ddt_bias
 *   s6: delta = dt_proj(xdbl[:, :R]), B|C = xdbl[:, R:]  -> dxdbl;  xdbl = x_proj(x)  -> dx +=
 *   lti: delta|B|C = ones · (dt_lti | B_lti | C_lti)ᵀ     -> their gradients (column sums)
 *   Falcon-Mamba: dt | B | C = rmsnorm per part of x_proj(x) (no weights) -> through the norms before x_proj's
 *   x = silu(conv(xz[:, :E]))  -> dxz[:, :E];  xz = in_proj(u)  -> du
 * Mamba-2's mixer has its own backward (mamba2MixerBackward).
 * Gradients are added into `grads` (zero it first), so micro-batches accumulate.
 */
import type { SeqShape, Tensor, TensorOrCols } from "../backend/backend.ts";
import { cols } from "../backend/backend.ts";
import type { TrainingBackend } from "../backend/training.ts";
import type { LMActivations, LMWeights, MambaLM, MixerActivations, MixerWeights } from "../model/mamba.ts";
import { type Mamba2Activations, mamba2Columns } from "../model/mamba2.ts";
import { MambaCache } from "../model/cache.ts";
import { namedTensors, zerosLike } from "./params.ts";
import { check } from "../errors.ts";

export interface StepResult {
  loss: Tensor; // [1] mean over the counted targets
  correct: Tensor; // [1] counted targets predicted right (argmax)
  finalSsm: Tensor[] | null; // per layer the SSM state [B, E, N] after the last position, when asked for (the caller owns it)
}

/** Targets for next-token training: targets[b, t] = ids[b, t+1], -1 (not counted) at t = L-1. */
export function shiftedTargets(ids: Int32Array, shape: SeqShape): Int32Array {
  const { batch: B, seqLen: L } = shape;
  const t = new Int32Array(B * L).fill(-1);
  for (let b = 0; b < B; b++) for (let i = 0; i + 1 < L; i++) t[b * L + i] = ids[b * L + i + 1]!;
  return t;
}

/**
 * One forward + backward: loss = mean cross-entropy over the counted targets (i32 [B·L], -1 = not counted);
 * grads += scale · ∂loss/∂params. initialSsm: per layer the SSM state [B, E, N] each row starts from (null =
 * zeros; conv histories start at zero either way); an input, read only, with no gradient. keepFinal: also return
 * the states after the last position (no gradient flows through them).
 */
export function forwardBackward(
  lm: MambaLM, b: TrainingBackend, ids: Tensor, targets: Tensor, shape: SeqShape, grads: LMWeights, scale: number,
  initialSsm: Tensor[] | null = null, keepFinal = false,
): StepResult {
  const { config, weights: w } = lm;
  const eps = config.layerNormEpsilon;
  const T = shape.batch * shape.seqLen;
  const D = config.hiddenSize;
  const keep: LMActivations = { layers: [], residualF: null as unknown as Tensor };
  // the forward overwrites a cache's states with the final ones; the backward needs the initial ones
  const cache = initialSsm ? MambaCache.withSsm(b, config, shape.batch, initialSsm.map((h) => {
    const c = b.zeros(h.shape);
    b.copyInto(c, h);
    return c;
  })) : keepFinal ? MambaCache.zeros(b, config, shape.batch) : null;
  const f = lm.hidden(ids, shape, cache, keep); // [T, D]
  const finalSsm = keepFinal ? cache!.ssm : null;
  if (cache) b.dispose(...cache.conv, ...(keepFinal ? [] : cache.ssm));
  const logits = lm.logits(f); // [T, V]
  const ce = b.crossEntropy(logits, targets, scale);
  b.dispose(logits);

  const df = b.zeros([T, D]);
  b.matmulBackward(f, w.head, ce.dLogits, { dx: df, dw: grads.head, dBias: null });
  b.dispose(ce.dLogits, f);
  const dRes = b.zeros([T, D]);
  b.addRmsNormBackward(keep.residualF, w.normF, eps, df, dRes, grads.normF);
  b.dispose(df, keep.residualF);
  for (let i = w.layers.length - 1; i >= 0; i--) {
    const act = keep.layers[i]!;
    const dn = "kind" in act.mixer ? mamba2MixerBackward(lm, b, w.layers[i]!.mixer, act.mixer, dRes, shape, grads.layers[i]!.mixer, initialSsm?.[i] ?? null) : mixerBackward(lm, b, w.layers[i]!.mixer, act.mixer, dRes, shape, grads.layers[i]!.mixer, initialSsm?.[i] ?? null);
    b.addRmsNormBackward(act.residual, w.layers[i]!.norm, eps, dn, dRes, grads.layers[i]!.norm);
    b.dispose(dn, act.residual, act.normed);
  }
  b.embeddingBackward(ids, dRes, grads.embeddings);
  b.dispose(dRes);
  return { loss: ce.loss, correct: ce.correct, finalSsm };
}

/**
 * dOut: [T, D] -> du: [T, D] (allocated); weight gradients added into g. Frees the layer's activations.
 * h0: the SSM state [B, E, N] the layer's forward started from (null = zeros).
 */
function mixerBackward(
  lm: MambaLM, b: TrainingBackend, w: MixerWeights, a: MixerActivations, dOut: Tensor, shape: SeqShape, g: MixerWeights,
  h0: Tensor | null,
): Tensor {
  const { intermediateSize: E, stateSize: N, timeStepRank: R, hiddenSize: D } = lm.config;
  const T = shape.batch * shape.seqLen;
  const dy = b.zeros([T, E]);
  b.matmulBackward(a.y, w.outProj, dOut, { dx: dy, dw: g.outProj, dBias: g.outProjBias });
  const dxz = b.zeros([T, 2 * E]);
  const dx = b.zeros([T, E]);
  const ddelta = b.zeros([T, E]);
  const dxdbl = a.xdbl ? b.zeros([T, R + 2 * N]) : null;
  const dB: TensorOrCols = dxdbl ? cols(dxdbl, R, N) : b.zeros([T, N]);
  const dC: TensorOrCols = dxdbl ? cols(dxdbl, R + N, N) : b.zeros([T, N]);
  b.selectiveScanBackward({
    ...shape, u: a.x, delta: a.delta, deltaBias: w.dtBias, A_log: w.A_log, B: a.B, C: a.C, D: w.D,
    z: cols(a.xz, E, E), state: h0,
  }, dy, { du: dx, dDelta: ddelta, dDeltaBias: g.dtBias, dA_log: g.A_log, dB, dC, dD: g.D, dz: cols(dxz, E, E), zeroed: true });
  if (dxdbl) {
    // Falcon-Mamba: dt_proj and the scan read dt | B | C after their norms; dxdbl is their gradient until undone
    const dbc = a.xdblNormed ?? a.xdbl!;
    b.matmulBackward(cols(dbc, 0, R), w.dtProj!, ddelta, { dx: cols(dxdbl, 0, R), dw: g.dtProj, dBias: null });
    let dRaw = dxdbl;
    if (a.xdblNormed) {
      check(b.segmentRmsNormBackward, `the ${b.name} backend cannot train Falcon-Mamba models yet (no segmentRmsNormBackward)`);
      dRaw = b.zeros([T, R + 2 * N]);
      b.segmentRmsNormBackward(a.xdbl!, [R, N, N], lm.config.mixerRmsEps!, dxdbl, dRaw);
      b.dispose(a.xdblNormed);
    }
    b.matmulBackward(a.x, w.xProj!, dRaw, { dx, dw: g.xProj, dBias: null });
    if (dRaw !== dxdbl) b.dispose(dRaw);
  } else {
    const ones = a.ones!;
    b.matmulBackward(ones, w.lti!.dt, ddelta, { dx: null, dw: g.lti!.dt, dBias: null });
    b.matmulBackward(ones, w.lti!.B, dB, { dx: null, dw: g.lti!.B, dBias: null });
    b.matmulBackward(ones, w.lti!.C, dC, { dx: null, dw: g.lti!.C, dBias: null });
    b.dispose(dB as Tensor, dC as Tensor, a.B as Tensor, a.C as Tensor, ones);
  }
  b.causalConv1dSiluBackward(cols(a.xz, 0, E), w.conv, w.convBias, dx, shape, { dx: cols(dxz, 0, E), dWeight: g.conv, dBias: g.convBias });
  const du = b.zeros([T, D]);
  b.matmulBackward(a.u, w.inProj, dxz, { dx: du, dw: g.inProj, dBias: g.inProjBias });
  b.dispose(dy, dxz, dx, ddelta, dxdbl, a.xz, a.x, a.xdbl, a.delta, a.y);
  return du;
}

/** The loss of next-token prediction on ids [B, L] and the gradient of every parameter, by checkpoint name. */
export async function lossAndGrads(
  lm: MambaLM, b: TrainingBackend, ids: Int32Array, shape: SeqShape,
): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
  const grads = zerosLike(b, lm.weights);
  const idt = b.fromI32(ids, [ids.length]);
  const tgt = b.fromI32(shiftedTargets(ids, shape), [ids.length]);
  const r = forwardBackward(lm, b, idt, tgt, shape, grads, 1);
  const loss = (await b.readF32(r.loss))[0]!;
  const out = new Map<string, Float32Array>();
  for (const [name, t] of namedTensors(lm.config, grads)) {
    out.set(name, await b.readF32(t));
    b.dispose(t);
  }
  b.dispose(idt, tgt, r.loss, r.correct);
  return { loss, grads: out };
}

/**
 * The Mamba-2 mixer's backward, in reverse of mamba2Mixer (src/model/mamba2.ts):
 *   out = out_proj(n) -> dn;  n = gatedRmsNorm(y, z) -> dy, dz, dnorm.weight  (no norm: y is gated in the scan)
 *   y = ssd(x, dt, B, C[, z]) -> dx, dB, dC (columns of dxBC), ddt, dz (columns of dzxbcdt), dA_log, dD, ddt_bias
 *   xBC = silu(conv(zxbcdt[:, E : 2E + 2GN])) -> those columns of dzxbcdt;  zxbcdt = in_proj(u) -> du
 * dOut: [T, D] -> du: [T, D] (allocated); weight gradients added into g. Frees the layer's activations.
 * h0: the SSM state [B, H, P, N] the layer's forward started from (null = zeros).
 */
function mamba2MixerBackward(
  lm: MambaLM, b: TrainingBackend, w: MixerWeights, a: Mamba2Activations, dOut: Tensor, shape: SeqShape, g: MixerWeights,
  h0: Tensor | null,
): Tensor {
  const cfg = lm.config, m = cfg.mamba2!, k = mamba2Columns(cfg);
  const T = shape.batch * shape.seqLen;
  check(b.ssdScanBackward && (!m.gatedNorm || b.gatedRmsNormBackward),
    `the ${b.name} backend cannot train Mamba-2 models yet (no ssdScanBackward / gatedRmsNormBackward)`);
  const dzxbcdt = b.zeros([T, k.dt + k.H]);
  const dn = b.zeros([T, k.E]);
  b.matmulBackward(a.normed ?? a.y, w.outProj, dOut, { dx: dn, dw: g.outProj, dBias: g.outProjBias });
  let dy = dn;
  if (m.gatedNorm) {
    dy = b.zeros([T, k.E]);
    b.gatedRmsNormBackward!(a.y, cols(a.zxbcdt, k.z, k.E), w.gateNorm!, cfg.layerNormEpsilon, k.E / m.nGroups, m.normBeforeGate, dn,
      { dy, dz: cols(dzxbcdt, k.z, k.E), dWeight: g.gateNorm! });
  }
  const dxBC = b.zeros([T, k.convWidth]);
  b.ssdScanBackward({
    ...shape, x: cols(a.xBC, k.x, k.E), dt: cols(a.zxbcdt, k.dt, k.H), dtBias: w.dtBias, A_log: w.A_log,
    B: cols(a.xBC, k.B, k.GN), C: cols(a.xBC, k.C, k.GN), D: w.D, z: m.gatedNorm ? null : cols(a.zxbcdt, k.z, k.E),
    headDim: m.headDim, nGroups: m.nGroups, dtLimit: m.timeStepLimit, chunkSize: m.chunkSize, state: h0,
  }, dy, {
    dx: cols(dxBC, k.x, k.E), dDt: cols(dzxbcdt, k.dt, k.H), dDtBias: g.dtBias, dA_log: g.A_log,
    dB: cols(dxBC, k.B, k.GN), dC: cols(dxBC, k.C, k.GN), dD: g.D, dz: m.gatedNorm ? null : cols(dzxbcdt, k.z, k.E),
  });
  b.causalConv1dSiluBackward(cols(a.zxbcdt, k.xBC, k.convWidth), w.conv, w.convBias, dxBC, shape,
    { dx: cols(dzxbcdt, k.xBC, k.convWidth), dWeight: g.conv, dBias: g.convBias });
  const du = b.zeros([T, cfg.hiddenSize]);
  b.matmulBackward(a.u, w.inProj, dzxbcdt, { dx: du, dw: g.inProj, dBias: g.inProjBias });
  b.dispose(dzxbcdt, dn, dy === dn ? null : dy, dxBC, a.zxbcdt, a.xBC, a.y, a.normed);
  return du;
}
