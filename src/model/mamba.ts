/**
 * The Mamba language model, written once against the Backend interface (docs: ../../docs of the shared notes):
 *   h = embeddings[ids]; for each layer: h = h + mixer(rmsnorm(h) * norm.weight); logits = head(rmsnorm(h) * norm_f)
 * The residual add and the next norm are one fused op. The mixer:
 *   xz = in_proj(u); x = silu(conv1d(x)); dt|B|C = x_proj(x); delta = dt_proj(dt);
 *   y = selective_scan(x, delta + dt_bias, A, B, C, D) * silu(z); out = out_proj(y)
 * With a cache the same code is step mode (L = 1) or a prefill chunk that carries the state.
 */
import type { Backend, SeqShape, Tensor } from "../backend/backend.ts";
import { cols } from "../backend/backend.ts";
import type { MambaConfig } from "../config.ts";
import type { HostTensor } from "../io/tensor.ts";
import type { MambaCache } from "./cache.ts";

export interface MixerWeights {
  inProj: Tensor; // [2E, D]
  inProjBias: Tensor | null; // [2E]
  conv: Tensor; // [E, 1, K]
  convBias: Tensor | null; // [E]
  xProj: Tensor; // [R + 2N, E]
  dtProj: Tensor; // [E, R]
  dtBias: Tensor; // [E]
  A_log: Tensor; // [E, N]
  D: Tensor; // [E]
  outProj: Tensor; // [D, E]
  outProjBias: Tensor | null; // [D]
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
  for (let i = 0; i < config.numLayers; i++) {
    const p = `backbone.layers.${i}.`;
    layers.push({
      norm: get(p + "norm.weight"),
      mixer: {
        inProj: get(p + "mixer.in_proj.weight"),
        inProjBias: config.useBias ? get(p + "mixer.in_proj.bias") : null,
        conv: get(p + "mixer.conv1d.weight"),
        convBias: config.useConvBias ? get(p + "mixer.conv1d.bias") : null,
        xProj: get(p + "mixer.x_proj.weight"),
        dtProj: get(p + "mixer.dt_proj.weight"),
        dtBias: get(p + "mixer.dt_proj.bias"),
        A_log: get(p + "mixer.A_log"),
        D: get(p + "mixer.D"),
        outProj: get(p + "mixer.out_proj.weight"),
        outProjBias: config.useBias ? opt(p + "mixer.out_proj.bias") : null,
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

export class MambaLM {
  constructor(
    readonly config: MambaConfig,
    readonly backend: Backend,
    readonly weights: LMWeights,
  ) {}

  /** One mixer. u: [B·L, D] (normalized) -> [B·L, D]. With state tensors, they carry the sequence on. */
  mixer(w: MixerWeights, u: Tensor, shape: SeqShape, convState: Tensor | null, ssmState: Tensor | null): Tensor {
    const b = this.backend;
    const { intermediateSize: E, stateSize: N, timeStepRank: R } = this.config;
    const xz = b.matmul(u, w.inProj, w.inProjBias); // [T, 2E]
    const x = b.causalConv1dSilu(cols(xz, 0, E), w.conv, w.convBias, convState, shape); // [T, E]
    const xdbl = b.matmul(x, w.xProj, null); // [T, R + 2N]
    const delta = b.matmul(cols(xdbl, 0, R), w.dtProj, null); // [T, E]
    const y = b.selectiveScan({
      ...shape, u: x, delta, deltaBias: w.dtBias, A_log: w.A_log,
      B: cols(xdbl, R, N), C: cols(xdbl, R + N, N), D: w.D, z: cols(xz, E, E), state: ssmState,
    }); // [T, E]
    const out = b.matmul(y, w.outProj, w.outProjBias); // [T, D]
    b.dispose(xz, x, xdbl, delta, y);
    return out;
  }

  /** ids: i32 [B·L] -> hidden state after norm_f: [B·L, D]. A cache is read and advanced. */
  hidden(ids: Tensor, shape: SeqShape, cache: MambaCache | null): Tensor {
    const b = this.backend;
    let h = b.embedding(this.weights.embeddings, ids);
    let residual: Tensor | null = null;
    for (let i = 0; i < this.weights.layers.length; i++) {
      const layer = this.weights.layers[i]!;
      const n = b.addRmsNorm(h, residual, layer.norm, this.config.layerNormEpsilon);
      b.dispose(h, residual);
      residual = n.residual;
      h = this.mixer(layer.mixer, n.out, shape, cache?.conv[i] ?? null, cache?.ssm[i] ?? null);
      b.dispose(n.out);
    }
    const f = b.addRmsNorm(h, residual, this.weights.normF, this.config.layerNormEpsilon);
    b.dispose(h, residual, f.residual);
    return f.out;
  }

  /** hidden: [T, D] -> logits: [T, V] */
  logits(hidden: Tensor): Tensor {
    return this.backend.matmul(hidden, this.weights.head, null);
  }
}
