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
import { BYTE_VOCAB_SIZE } from "../byte-tokenizer.ts";
import type { TrainOptions } from "./trainer.ts";

export const PRESET_NAMES = ["smoke", "paper", "default-model"] as const;
export type PresetName = (typeof PRESET_NAMES)[number];

export function preset(name: PresetName, task: TaskName, mixer: MixerKind, seed: number): TrainOptions {
  if (task === "text") return textPreset(name, mixer, seed);
  if (name === "default-model") throw new MambaError("the default-model preset is for --task text");
  if (name === "smoke") {
    const steps = 800;
    return {
      preset: name,
      task: task === "selective-copying"
        ? { name: task, seqLen: 32, numTokens: 4, vocabSize: 8 }
        : { name: task, seqLen: 32, numTokens: 1, vocabSize: 8 },
      model: { hiddenSize: 32, numLayers: 2, stateSize: 16, expand: 2, mixer },
      steps, batchSize: 64, accumulation: 1,
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

/**
 * Byte-level language modeling (--task text --data DIR).
 *  - smoke: a tiny model for a few minutes on a CPU;
 *  - default-model: the embedded default model (4 layers, D = 256, about 1.8M parameters), meant for a GPU.
 */
function textPreset(name: PresetName, mixer: MixerKind, seed: number): TrainOptions {
  const task = { name: "text" as const, seqLen: 256, numTokens: 0, vocabSize: BYTE_VOCAB_SIZE };
  if (name === "smoke") {
    const steps = 300;
    return {
      preset: name, task: { ...task, seqLen: 128 },
      model: { hiddenSize: 64, numLayers: 2, stateSize: 16, expand: 2, mixer },
      steps, batchSize: 16, accumulation: 1,
      optim: { ...DEFAULT_OPTIM, lr: 3e-3, warmupSteps: 15 },
      seed, checkpointEvery: 100, evalBatches: 8,
    };
  }
  if (name === "default-model") {
    const steps = 4000;
    return {
      preset: name, task,
      model: { hiddenSize: 256, numLayers: 4, stateSize: 16, expand: 2, mixer },
      steps, batchSize: 32, accumulation: 1,
      optim: { ...DEFAULT_OPTIM, lr: 2e-3, warmupSteps: 200, weightDecay: 0.1 },
      seed, checkpointEvery: 500, evalBatches: 32,
    };
  }
  throw new MambaError(`the ${name} preset has no text setting (use smoke or default-model)`);
}
