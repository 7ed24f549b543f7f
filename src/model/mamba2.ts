/**
 * The Mamba-2 mixer (state space duality, SSD), in the names and order of mamba_ssm and Hugging Face. The LM
 * around it (embedding, pre-norm residual blocks, norm_f, head) is MambaLM's (./mamba.ts); only the mixer differs:
 *   zxbcdt = in_proj(u)                          z | x | B | C | dt   (E, E, G·N, G·N, H columns)
 *   xBC = silu(conv1d(x | B | C))                one depthwise causal conv over E + 2·G·N channels
 *   y = ssd(x, dt + dt_bias, A_log, B, C, D)     per head h: a scalar decay exp(dt·A[h]); B, C of h's group
 *   y = rmsnorm_per_group(y · silu(z)) · norm.weight   (groups of E / G channels, as mamba_ssm; or y · silu(z)
 *                                                 inside the scan when the model has no gated norm)
 *   out = out_proj(y)
 * With a cache, conv state [B, K-1, E + 2·G·N] and SSM state [B, H, P, N] carry the sequence on: step mode
 * (L = 1) and chunked prefill are the same code.
 */
import type { Backend, SeqShape, Tensor } from "../backend/backend.ts";
import { cols } from "../backend/backend.ts";
import type { MambaConfig } from "../config.ts";
import { MambaError } from "../errors.ts";
import type { MixerWeights } from "./mamba.ts";
import type { MixerObserver } from "./observer.ts";

/** What a training forward keeps of one Mamba-2 mixer (T = B·L rows). */
export interface Mamba2Activations {
  kind: "mamba2";
  u: Tensor; // [T, D] the normalized input
  zxbcdt: Tensor; // [T, 2E + 2GN + H] in_proj output
  xBC: Tensor; // [T, E + 2GN] after conv and SiLU
  y: Tensor; // [T, E] the scan's output (before the gated norm; gated already when there is no norm)
  normed: Tensor | null; // [T, E] the gated norm's output (out_proj's input), null without the norm
}

/** Throws unless the backend has the ops of this family. */
export function checkFamilyOps(b: Backend, config: MambaConfig): void {
  const need = config.family === "mamba2" ? ["ssdScan", "gatedRmsNorm"] as const
    : config.family === "falcon-mamba" ? ["segmentRmsNorm"] as const : [];
  const missing = need.filter((op) => typeof b[op] !== "function");
  if (missing.length > 0) {
    throw new MambaError(`the ${b.name} backend cannot run ${config.family} models yet (it lacks ${missing.join(", ")}); use the cpu backend`);
  }
}

/** The in_proj column layout: where z, x | B | C, x, B, C and dt start. */
export function mamba2Columns(config: MambaConfig) {
  const m = config.mamba2!;
  const E = config.intermediateSize, GN = m.nGroups * config.stateSize;
  return { E, GN, H: m.numHeads, z: 0, xBC: E, convWidth: E + 2 * GN, x: 0, B: E, C: E + GN, dt: 2 * E + 2 * GN };
}

/** One Mamba-2 mixer. u: [B·L, D] (normalized) -> [B·L, D]. With state tensors, they carry the sequence on. */
export function mamba2Mixer(
  b: Backend, config: MambaConfig, w: MixerWeights, u: Tensor, shape: SeqShape, convState: Tensor | null, ssmState: Tensor | null,
  keep: ((a: Mamba2Activations) => void) | null, observer: MixerObserver | null = null,
): Tensor {
  const m = config.mamba2!;
  const k = mamba2Columns(config);
  const zxbcdt = b.matmul(u, w.inProj, w.inProjBias); // [T, 2E + 2GN + H]
  const xBC = b.causalConv1dSilu(cols(zxbcdt, k.xBC, k.convWidth), w.conv, w.convBias, convState, shape); // [T, E + 2GN]
  const z = cols(zxbcdt, k.z, k.E); // [T, E]
  if (observer) observer.onMixer(w, cols(zxbcdt, k.dt, k.H), shape); // Δ per head, [T, H]
  const y = b.ssdScan!({
    ...shape, x: cols(xBC, k.x, k.E), dt: cols(zxbcdt, k.dt, k.H), dtBias: w.dtBias, A_log: w.A_log,
    B: cols(xBC, k.B, k.GN), C: cols(xBC, k.C, k.GN), D: w.D, z: m.gatedNorm ? null : z,
    headDim: m.headDim, nGroups: m.nGroups, dtLimit: m.timeStepLimit, chunkSize: m.chunkSize, state: ssmState,
  }); // [T, E]
  const normed = m.gatedNorm
    ? b.gatedRmsNorm!(y, z, w.gateNorm!, config.layerNormEpsilon, k.E / m.nGroups, m.normBeforeGate) // [T, E]
    : null;
  const out = b.matmul(normed ?? y, w.outProj, w.outProjBias); // [T, D]
  if (keep) keep({ kind: "mamba2", u, zxbcdt, xBC, y, normed });
  else b.dispose(zxbcdt, xBC, y, normed);
  return out;
}
