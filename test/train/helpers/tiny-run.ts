/**
 * A tiny training run for tests (milliseconds a step on the CPU), and a child-process entry point:
 *   node --import tsx test/train/helpers/tiny-run.ts DIR [resume]
 * trains the tiny run in DIR with a checkpoint after every step, printing "step N" as each one is saved.
 */
import { CpuBackend } from "../../../src/backend/cpu/index.ts";
import { DEFAULT_OPTIM } from "../../../src/train/optim.ts";
import { Trainer, type TrainOptions } from "../../../src/train/trainer.ts";

export function tinyOptions(o: Partial<TrainOptions> = {}): TrainOptions {
  return {
    task: { name: "selective-copying", seqLen: 12, numTokens: 2, vocabSize: 6 },
    model: { hiddenSize: 8, numLayers: 2, stateSize: 4, expand: 2, mixer: "s6" },
    steps: 8, batchSize: 3, accumulation: 2,
    optim: { ...DEFAULT_OPTIM, lr: 1e-2, warmupSteps: 2 },
    seed: 7, checkpointEvery: 1, evalBatches: 2,
    ...o,
  };
}

async function child(dir: string, resume: boolean): Promise<void> {
  const b = new CpuBackend();
  const t = resume ? await Trainer.resume(b, dir) : Trainer.create(b, tinyOptions({ steps: 40 }));
  while (!t.finished) {
    await t.trainStep();
    await t.save(dir);
    process.stdout.write(`step ${t.step}\n`);
  }
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split("/").pop()!) && process.argv[2]) {
  await child(process.argv[2], process.argv[3] === "resume");
}
