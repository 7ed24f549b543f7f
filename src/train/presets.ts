/**
 * Training presets for the synthetic tasks.
 *  - smoke: small enough to finish in a few minutes on a 2-core CPU (2 layers, D = 32, short sequences); the
 *    measured results are in EXPERIMENTS.md.
 *  - paper: the paper's settings (appendix E.1 as we read it): 2 layers, D = 64.
 *    Selective copying: L = 4096, vocabulary 16 (noise and marker included here), 16 tokens to copy, batch 64,
 *    400K steps at a constant lr 1e-4. Induction heads: trained at L = 256, vocabulary 16, batch 8, lr 1e-3,
 *    about 200K steps. Meant for a GPU backend; far too slow for the CPU.
 */
import type { MixerKind } from "../config.ts";
import { MambaError } from "../errors.ts";
import { DEFAULT_OPTIM } from "./optim.ts";
import type { TaskName } from "./tasks/task.ts";
import type { TrainOptions } from "./trainer.ts";

export const PRESET_NAMES = ["smoke", "paper"] as const;
export type PresetName = (typeof PRESET_NAMES)[number];

export function preset(name: PresetName, task: TaskName, mixer: MixerKind, seed: number): TrainOptions {
  if (name === "smoke") {
    const steps = 800;
    return {
      preset: name,
      task: task === "selective-copying"
        ? { name: task, seqLen: 32, numTokens: 4, vocabSize: 8 }
        : { name: task, seqLen: 32, numTokens: 1, vocabSize: 8 },
      model: { hiddenSize: 32, numLayers: 2, stateSize: 16, expand: 2, mixer },
      steps, batchSize: 32, accumulation: 1,
      optim: { ...DEFAULT_OPTIM, lr: 5e-3, warmupSteps: Math.round(steps / 20) },
      seed, checkpointEvery: 200, evalBatches: 16,
    };
  }
  if (name === "paper") {
    const sc = task === "selective-copying";
    const steps = sc ? 400_000 : 200_000;
    return {
      preset: name,
      task: sc ? { name: task, seqLen: 4096 + 16, numTokens: 16, vocabSize: 16 } : { name: task, seqLen: 256, numTokens: 1, vocabSize: 16 },
      model: { hiddenSize: 64, numLayers: 2, stateSize: 16, expand: 2, mixer },
      steps, batchSize: sc ? 64 : 8, accumulation: 1,
      optim: sc
        ? { ...DEFAULT_OPTIM, lr: 1e-4, minLrRatio: 1, warmupSteps: 0, weightDecay: 0 }
        : { ...DEFAULT_OPTIM, lr: 1e-3, warmupSteps: 1000 },
      seed, checkpointEvery: 1000, evalBatches: 32,
    };
  }
  throw new MambaError(`unknown preset '${String(name)}' (use ${PRESET_NAMES.join(" or ")})`);
}
