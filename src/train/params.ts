/**
 * The model's parameters as named tensors: the same Hugging Face names as the checkpoint (config.ts
 * parameterShapes), over the LMWeights structure that the model code uses. Used for gradients (a zeroed LMWeights of
 * the same shapes), the optimizer state and saving.
 */
import type { Backend, Tensor } from "../backend/backend.ts";
import type { MambaConfig } from "../config.ts";
import type { LMWeights, MixerWeights } from "../model/mamba.ts";

/** name -> tensor, in parameterShapes order; a tied head appears once, as the embeddings. */
export function namedTensors(config: MambaConfig, w: LMWeights): Map<string, Tensor> {
  const m = new Map<string, Tensor>();
  const put = (name: string, t: Tensor | null) => { if (t) m.set(name, t); };
  put("backbone.embeddings.weight", w.embeddings);
  w.layers.forEach((layer, i) => {
    const p = `backbone.layers.${i}.`;
    const x: MixerWeights = layer.mixer;
    put(p + "norm.weight", layer.norm);
    put(p + "mixer.in_proj.weight", x.inProj);
    put(p + "mixer.in_proj.bias", x.inProjBias);
    put(p + "mixer.conv1d.weight", x.conv);
    put(p + "mixer.conv1d.bias", x.convBias);
    if (config.mamba2) {
      put(p + "mixer.dt_bias", x.dtBias);
      put(p + "mixer.A_log", x.A_log);
      put(p + "mixer.D", x.D);
      put(p + "mixer.norm.weight", x.gateNorm ?? null);
      put(p + "mixer.out_proj.weight", x.outProj);
      put(p + "mixer.out_proj.bias", x.outProjBias);
      return;
    }
    if (x.lti) {
      put(p + "mixer.dt_lti", x.lti.dt);
      put(p + "mixer.dt_proj.bias", x.dtBias);
      put(p + "mixer.B_lti", x.lti.B);
      put(p + "mixer.C_lti", x.lti.C);
    } else {
      put(p + "mixer.x_proj.weight", x.xProj);
      put(p + "mixer.dt_proj.weight", x.dtProj);
      put(p + "mixer.dt_proj.bias", x.dtBias);
    }
    put(p + "mixer.A_log", x.A_log);
    put(p + "mixer.D", x.D);
    put(p + "mixer.out_proj.weight", x.outProj);
    put(p + "mixer.out_proj.bias", x.outProjBias);
  });
  put("backbone.norm_f.weight", w.normF);
  if (!config.tieEmbeddings) put("lm_head.weight", w.head);
  return m;
}

/** Zeros of the shapes of w, in the same structure (a tied head shares the embeddings' tensor here too). */
export function zerosLike(b: Backend, w: LMWeights): LMWeights {
  const z = (t: Tensor) => b.zeros(t.shape);
  const zn = (t: Tensor | null) => (t ? z(t) : null);
  const embeddings = z(w.embeddings);
  return {
    embeddings,
    head: w.head === w.embeddings ? embeddings : z(w.head),
    normF: z(w.normF),
    layers: w.layers.map((l) => ({
      norm: z(l.norm),
      mixer: {
        inProj: z(l.mixer.inProj), inProjBias: zn(l.mixer.inProjBias), conv: z(l.mixer.conv), convBias: zn(l.mixer.convBias),
        xProj: zn(l.mixer.xProj), dtProj: zn(l.mixer.dtProj),
        lti: l.mixer.lti ? { dt: z(l.mixer.lti.dt), B: z(l.mixer.lti.B), C: z(l.mixer.lti.C) } : null,
        dtBias: z(l.mixer.dtBias), A_log: z(l.mixer.A_log), D: z(l.mixer.D),
        outProj: z(l.mixer.outProj), outProjBias: zn(l.mixer.outProjBias), gateNorm: zn(l.mixer.gateNorm ?? null),
      },
    })),
  };
}
