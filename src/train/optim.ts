/**
 * AdamW with global-norm gradient clipping and a warmup + cosine learning-rate schedule.
 *
 * Defaults (DEFAULT_OPTIM): lr 1e-3, betas (0.9, 0.95), eps 1e-8, weight decay 0.1, clip norm 1.0, warmup 10% of
 * the steps, cosine decay to 10% of lr — the usual recipe for small Mamba/GPT models. Weight decay applies to the
 * matrices only (embeddings, head, in_proj, conv1d, x_proj, dt_proj, out_proj weights); A_log and D (as in
 * mamba_ssm, which marks them _no_weight_decay), biases, norm weights and the LTI mixer's constants
 * (dt_lti, B_lti, C_lti) are not decayed.
 */
import type { Tensor } from "../backend/backend.ts";
import type { TrainingBackend } from "../backend/training.ts";
import { optionKeys } from "../errors.ts";

export interface OptimConfig {
  lr: number;
  minLrRatio: number; // the cosine ends at lr · minLrRatio
  warmupSteps: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  clipNorm: number; // 0 = no clipping
}
export const OPTIM_KEYS = optionKeys<OptimConfig>({
  lr: true, minLrRatio: true, warmupSteps: true, beta1: true, beta2: true, eps: true, weightDecay: true, clipNorm: true,
});

export const DEFAULT_OPTIM: Omit<OptimConfig, "warmupSteps"> = {
  lr: 1e-3, minLrRatio: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, clipNorm: 1.0,
};

/** Learning rate of 1-based step `step` of `total`: linear warmup from lr/warmup, then cosine down to lr·minLrRatio. */
export function learningRate(o: OptimConfig, step: number, total: number): number {
  if (o.warmupSteps > 0 && step <= o.warmupSteps) return (o.lr * step) / o.warmupSteps;
  const span = Math.max(1, total - o.warmupSteps);
  const progress = Math.min(1, (step - o.warmupSteps) / span);
  const min = o.lr * o.minLrRatio;
  return min + 0.5 * (o.lr - min) * (1 + Math.cos(Math.PI * progress));
}

/** Whether a parameter (by checkpoint name) gets weight decay. */
export function decays(name: string): boolean {
  if (name === "lm_head.weight" || name === "backbone.embeddings.weight") return true;
  if (name.endsWith("norm.weight") || name.endsWith("norm_f.weight") || name.endsWith(".bias")) return false;
  if (/mixer\.(A_log|D|dt_lti|B_lti|C_lti)$/.test(name)) return false;
  return name.endsWith(".weight");
}

export class AdamW {
  /** first and second moments, by parameter name */
  readonly m = new Map<string, Tensor>();
  readonly v = new Map<string, Tensor>();

  constructor(
    readonly backend: TrainingBackend,
    readonly config: OptimConfig,
    readonly params: Map<string, Tensor>,
  ) {
    for (const [name, p] of params) {
      this.m.set(name, backend.zeros(p.shape));
      this.v.set(name, backend.zeros(p.shape));
    }
  }

  /**
   * One update with step number `step` (1-based) and learning rate lr. Gradients are clipped to the global norm
   * config.clipNorm first. Returns the gradient norm before clipping.
   */
  async step(grads: Map<string, Tensor>, step: number, lr: number): Promise<number> {
    const b = this.backend;
    const ss = b.sumSquares([...grads.values()]);
    const norm = Math.sqrt((await b.readF32(ss))[0]!);
    b.dispose(ss);
    const c = this.config;
    const gradScale = c.clipNorm > 0 && norm > c.clipNorm ? c.clipNorm / (norm + 1e-6) : 1;
    for (const [name, p] of this.params) {
      b.adamwStep(p, grads.get(name)!, this.m.get(name)!, this.v.get(name)!, {
        lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, weightDecay: decays(name) ? c.weightDecay : 0, step, gradScale,
      });
    }
    return norm;
  }
}
