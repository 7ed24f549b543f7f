/**
 * The Mamba language model, written once against the Backend interface (docs/mamba.md: the math, names and formats):
 *   h = embeddings[ids]; for each layer: h = h + mixer(rmsnorm(h) * norm.weight); logits = head(rmsnorm(h) * norm_f)
 * The residual add and the next norm are one fused op. The mixer:
 *   xz = in_proj(u); x = silu(conv1d(x)); dt|B|C = x_proj(x); delta = dt_proj(dt);
 *   y = selective_scan(x, delta + dt_bias, A, B, C, D) * silu(z); out = out_proj(y)
 * With a cache the same code is step mode (L = 1) or a prefill chunk that carries the state.
 * The LTI mixer (config.mixer "lti", the paper's S4-like ablation) replaces x_proj/dt_proj by learned constants:
 *   delta = ones[T,1] · dt_lti[E,1]ᵀ, B = ones · B_lti[N,1]ᵀ, C = ones · C_lti[N,1]ᵀ  (the same for every position)
 * so that forward and backward reuse the same ops. B and C stay shared across channels as in S6: this is S6
 * with the selection removed.
 * The family (config.family) picks the mixer; the LM around it is the same:
 *  - Falcon-Mamba is the S6 mixer with dt | B | C = rmsnorm(x_proj(x)) per part, without weights (mixerRmsEps);
 *  - Mamba-2 has its own mixer (./mamba2.ts).
 * Training passes a recorder that keeps the activations its backward needs (src/train/backprop.ts).
 */
import type { Backend, SeqShape, Tensor, TensorOrCols } from "../backend/backend.ts";
import { cols } from "../backend/backend.ts";
import type { MambaConfig } from "../config.ts";
import type { HostTensor } from "../io/tensor.ts";
import type { MambaCache } from "./cache.ts";
import type { MixerObserver } from "./observer.ts";
import { type Mamba2Activations, checkFamilyOps, mamba2Mixer } from "./mamba2.ts";

/** One mixer's weights; Mamba-2's shapes in the second column (its mixer has no x_proj, dt_proj or LTI constants). */
export interface MixerWeights {
  inProj: Tensor; // [2E, D]                   Mamba-2: [2E + 2GN + H, D]
  inProjBias: Tensor | null; // [2E]           Mamba-2: [2E + 2GN + H]
  conv: Tensor; // [E, 1, K]                   Mamba-2: [E + 2GN, 1, K]
  convBias: Tensor | null; // [E]              Mamba-2: [E + 2GN]
  xProj: Tensor | null; // [R + 2N, E] (s6)
  dtProj: Tensor | null; // [E, R] (s6)
  lti: { dt: Tensor; B: Tensor; C: Tensor } | null; // [E, 1], [N, 1], [N, 1] (lti)
  dtBias: Tensor; // [E] dt_proj.bias          Mamba-2: [H] dt_bias
  A_log: Tensor; // [E, N]                     Mamba-2: [H]
  D: Tensor; // [E]                            Mamba-2: [H]
  outProj: Tensor; // [D, E]
  outProjBias: Tensor | null; // [D]
  /** Mamba-2's gated norm weight [E] (norm.weight); absent or null otherwise */
  gateNorm?: Tensor | null;
}

export interface LayerWeights {
  norm: Tensor; // [D]
  mixer: MixerWeights;
}

export interface LMWeights {
  embeddings: Tensor; // [V, D]
  layers: LayerWeights[];
  normF: Tensor; // [D]
  head: Tensor; // [V, D] (the embeddings when tied)
}

/** Uploads validated checkpoint tensors (Hugging Face names) to a backend. */
export function uploadWeights(backend: Backend, config: MambaConfig, t: Map<string, HostTensor>): LMWeights {
  const get = (name: string) => backend.upload(t.get(name)!);
  const opt = (name: string) => (t.has(name) ? get(name) : null);
  const layers: LayerWeights[] = [];
  const lti = config.mixer === "lti";
  for (let i = 0; i < config.numLayers; i++) {
    const p = `backbone.layers.${i}.`;
    const m2 = config.mamba2;
    const s6 = !m2 && !lti; // Mamba-1's selective mixer: Δ, B and C from x_proj and dt_proj
    layers.push({
      norm: get(p + "norm.weight"),
      mixer: {
        inProj: get(p + "mixer.in_proj.weight"),
        inProjBias: config.useBias ? get(p + "mixer.in_proj.bias") : null,
        conv: get(p + "mixer.conv1d.weight"),
        convBias: config.useConvBias ? get(p + "mixer.conv1d.bias") : null,
        xProj: s6 ? get(p + "mixer.x_proj.weight") : null,
        dtProj: s6 ? get(p + "mixer.dt_proj.weight") : null,
        lti: lti && !m2 ? { dt: get(p + "mixer.dt_lti"), B: get(p + "mixer.B_lti"), C: get(p + "mixer.C_lti") } : null,
        // Mamba-2's Δ comes out of in_proj with a bias of its own; Mamba-1's bias is dt_proj's
        dtBias: get(p + (m2 ? "mixer.dt_bias" : "mixer.dt_proj.bias")),
        A_log: get(p + "mixer.A_log"),
        D: get(p + "mixer.D"),
        outProj: get(p + "mixer.out_proj.weight"),
        outProjBias: config.useBias ? opt(p + "mixer.out_proj.bias") : null,
        ...(m2 ? { gateNorm: m2.gatedNorm ? get(p + "mixer.norm.weight") : null } : {}),
      },
    });
  }
  const embeddings = get("backbone.embeddings.weight");
  return {
    embeddings,
    layers,
    normF: get("backbone.norm_f.weight"),
    head: config.tieEmbeddings ? embeddings : get("lm_head.weight"),
  };
}

/** What a training forward keeps of one mixer (T = B·L rows). */
export interface MixerActivations {
  u: Tensor; // [T, D] the normalized input
  xz: Tensor; // [T, 2E] in_proj output
  x: Tensor; // [T, E] after conv and SiLU
  xdbl: Tensor | null; // [T, R + 2N] x_proj output (s6)
  /** Falcon-Mamba: [T, R + 2N] dt | B | C after their weightless RMS norms (what dt_proj and the scan read) */
  xdblNormed?: Tensor | null;
  ones: Tensor | null; // [T, 1] (lti)
  delta: Tensor; // [T, E] before bias and softplus
  B: TensorOrCols; // [T, N]
  C: TensorOrCols; // [T, N]
  y: Tensor; // [T, E] gated scan output
}

/** What a training forward keeps of the whole LM: per layer the residual sum its norm read and that norm's output. */
export interface LMActivations {
  layers: { residual: Tensor; normed: Tensor; mixer: MixerActivations | Mamba2Activations }[];
  residualF: Tensor; // [T, D] the input of norm_f
}

export class MambaLM {
  /** Shown every mixer's Δ when set (src/model/observer.ts); null, the default, costs nothing. */
  observer: MixerObserver | null = null;

  constructor(
    readonly config: MambaConfig,
    readonly backend: Backend,
    readonly weights: LMWeights,
  ) {
    checkFamilyOps(backend, config);
  }

  /** One mixer. u: [B·L, D] (normalized) -> [B·L, D]. With state tensors, they carry the sequence on. */
  mixer(
    w: MixerWeights, u: Tensor, shape: SeqShape, convState: Tensor | null, ssmState: Tensor | null,
    keep: ((a: MixerActivations | Mamba2Activations) => void) | null = null,
  ): Tensor {
    const b = this.backend;
    if (this.config.mamba2) return mamba2Mixer(b, this.config, w, u, shape, convState, ssmState, keep, this.observer);
    const { intermediateSize: E, stateSize: N, timeStepRank: R } = this.config;
    const T = shape.batch * shape.seqLen;
    const xz = b.matmul(u, w.inProj, w.inProjBias); // [T, 2E]
    const x = b.causalConv1dSilu(cols(xz, 0, E), w.conv, w.convBias, convState, shape); // [T, E]
    let xdbl: Tensor | null = null, ones: Tensor | null = null, xdblNormed: Tensor | null = null;
    let delta: Tensor, Bm: TensorOrCols, Cm: TensorOrCols;
    if (w.lti) {
      ones = b.fromF32(new Float32Array(T).fill(1), [T, 1]);
      delta = b.matmul(ones, w.lti.dt, null); // [T, E]
      Bm = b.matmul(ones, w.lti.B, null); // [T, N]
      Cm = b.matmul(ones, w.lti.C, null); // [T, N]
    } else {
      xdbl = b.matmul(x, w.xProj!, null); // [T, R + 2N]
      // Falcon-Mamba: dt, B and C each RMS-normalized without weights before use
      const dbc = this.config.mixerRmsEps !== null ? b.segmentRmsNorm!(xdbl, [R, N, N], this.config.mixerRmsEps) : xdbl; // [T, R + 2N]
      if (dbc !== xdbl) xdblNormed = dbc;
      delta = b.matmul(cols(dbc, 0, R), w.dtProj!, null); // [T, E]
      Bm = cols(dbc, R, N);
      Cm = cols(dbc, R + N, N);
    }
    if (this.observer) this.observer.onMixer(w, delta, shape);
    const y = b.selectiveScan({
      ...shape, u: x, delta, deltaBias: w.dtBias, A_log: w.A_log,
      B: Bm, C: Cm, D: w.D, z: cols(xz, E, E), state: ssmState,
    }); // [T, E]
    const out = b.matmul(y, w.outProj, w.outProjBias); // [T, D]
    if (keep) keep({ u, xz, x, xdbl, xdblNormed, ones, delta, B: Bm, C: Cm, y });
    else b.dispose(xz, x, xdbl, xdblNormed, ones, delta, y, ...(w.lti ? [Bm as Tensor, Cm as Tensor] : []));
    return out;
  }

  /** ids: i32 [B·L] -> hidden state after norm_f: [B·L, D]. A cache is read and advanced. */
  hidden(ids: Tensor, shape: SeqShape, cache: MambaCache | null, keep: LMActivations | null = null): Tensor {
    const b = this.backend;
    let h = b.embedding(this.weights.embeddings, ids);
    let residual: Tensor | null = null;
    for (let i = 0; i < this.weights.layers.length; i++) {
      const layer = this.weights.layers[i]!;
      const n = b.addRmsNorm(h, residual, layer.norm, this.config.layerNormEpsilon);
      b.dispose(h, keep ? null : residual);
      residual = n.residual;
      const record = keep ? (m: MixerActivations | Mamba2Activations) => keep.layers.push({ residual: n.residual, normed: n.out, mixer: m }) : null;
      h = this.mixer(layer.mixer, n.out, shape, cache?.conv[i] ?? null, cache?.ssm[i] ?? null, record);
      if (!keep) b.dispose(n.out);
    }
    const f = b.addRmsNorm(h, residual, this.weights.normF, this.config.layerNormEpsilon);
    if (keep) {
      keep.residualF = f.residual;
      b.dispose(h);
    } else b.dispose(h, residual, f.residual);
    return f.out;
  }

  /** hidden: [T, D] -> logits: [T, V] */
  logits(hidden: Tensor): Tensor {
    return this.backend.matmul(hidden, this.weights.head, null);
  }
}
