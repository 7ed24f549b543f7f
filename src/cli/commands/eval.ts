/**
 * `mamba-ts eval`: the accuracy of a trained model on a synthetic task, over the positions the task scores, on
 * freshly drawn held-out batches (the same generator as training's final evaluation). --model is a run folder
 * (its latest checkpoint is used) or a checkpoint folder. The task's sizes default to those the model was trained
 * with (trainer.json); --seq-len tests another length (induction heads: the paper tests far beyond training's).
 */
import cliProgress from "cli-progress";
import { existsSync, promises as fs } from "node:fs";
import path from "node:path";
import { Command, Option } from "commander";
import { loadModel } from "../../index.ts";
import type { BackendName } from "../../backend/create.ts";
import { latestCheckpoint } from "../../train/checkpoint.ts";
import { preset } from "../../train/presets.ts";
import { TextTask, bitsPerByte } from "../../train/tasks/text.ts";
import { TASK_NAMES, type TaskName, type TaskSpec, makeTask } from "../../train/tasks/task.ts";
import { type TrainOptions, evaluateAccuracy } from "../../train/trainer.ts";
import { UsageError, cpuOptions, precisionOption, threadsOption } from "../common.ts";
import { describeBackend } from "../../backend/wasm/create.ts";
import { integerAtLeast } from "./train.ts";

interface EvalCliOptions {
  data?: string;
  task: TaskName;
  model: string;
  seqLen?: number;
  numTokens?: number;
  batches: number;
  batchSize: number;
  seed?: number;
  backend: BackendName;
  threads?: number;
  precision: "f32" | "f16" | "auto";
}

export function evalCommand(): Command {
  return new Command("eval")
    .description("accuracy of a trained model on a synthetic task (scored positions of held-out batches)")
    .addOption(new Option("--task <name>", "the synthetic task").choices(TASK_NAMES).makeOptionMandatory())
    .addOption(new Option("-m, --model <dir>", "a run folder of `mamba-ts train` or one checkpoint folder").makeOptionMandatory())
    .addOption(new Option("--data <dir>", "text task: folder with heldout.txt (default: the one the model was trained on)"))
    .addOption(new Option("--seq-len <n>", "sequence length to test (default: the training length)").argParser(integerAtLeast(2)))
    .addOption(new Option("--num-tokens <n>", "tokens to copy / recall (default: as trained)").argParser(integerAtLeast(1)))
    .addOption(new Option("--batches <n>", "held-out batches").argParser(integerAtLeast(1)).default(16))
    .addOption(new Option("--batch-size <n>", "sequences per batch").argParser(integerAtLeast(1)).default(32))
    .addOption(new Option("--seed <n>", "seed of the held-out data (default: the training seed)").argParser(integerAtLeast(0)))
    .addOption(new Option("--backend <name>", "compute backend; auto = WebGPU when available, else CPU")
      .choices(["cpu", "webgpu", "auto"]).default("cpu"))
    .addOption(threadsOption())
    .addOption(precisionOption())
    .action(async (opts: EvalCliOptions) => {
      process.exitCode = await runEval(opts);
    });
}

async function runEval(o: EvalCliOptions): Promise<number> {
  if (o.model.length === 0) throw new UsageError("--model is empty");
  if (!existsSync(o.model)) throw new UsageError(`--model: ${o.model} does not exist`);
  const folder = existsSync(path.join(o.model, "latest")) ? (await latestCheckpoint(o.model))! : o.model;
  let trained: TrainOptions | null = null;
  const stateFile = path.join(folder, "trainer.json");
  if (existsSync(stateFile)) trained = (JSON.parse(await fs.readFile(stateFile, "utf8")) as { options: TrainOptions }).options;
  const model = await loadModel(folder, { backend: o.backend, precision: o.precision, ...cpuOptions(o.threads) });
  try {
    process.stderr.write(`engine: ${describeBackend(model.backend)}\n`);
    const V = model.config.vocabSize;
    const base: TaskSpec = trained && trained.task.name === o.task
      ? { ...trained.task }
      : { ...preset("smoke", o.task, model.config.mixer, 0).task, vocabSize: V };
    const spec: TaskSpec = { ...base, seqLen: o.seqLen ?? base.seqLen, numTokens: o.numTokens ?? base.numTokens };
    if (o.data !== undefined) spec.data = path.resolve(o.data);
    if (spec.vocabSize > V) throw new UsageError(`the task needs ${spec.vocabSize} token ids, the model has ${V}`);
    const task = makeTask(spec);
    const seed = o.seed ?? trained?.seed ?? 0;
    const start = performance.now();
    // a bar on a terminal: a batch of long sequences takes minutes on the CPU
    const bar = process.stderr.isTTY && o.batches > 1
      ? new cliProgress.SingleBar({ format: "eval |{bar}| {value}/{total} batches | ETA {eta_formatted}", stream: process.stderr, hideCursor: true },
        cliProgress.Presets.shades_classic)
      : null;
    bar?.start(o.batches, 0);
    let r: Awaited<ReturnType<typeof evaluateAccuracy>>;
    try {
      r = await evaluateAccuracy(model.lm, task, seed, o.batches, o.batchSize, (done) => bar?.update(done));
    } finally {
      bar?.stop();
    }
    const secs = (performance.now() - start) / 1000;
    process.stdout.write(`accuracy: ${r.accuracy.toFixed(4)} (${o.task}, seq-len ${spec.seqLen}, num-tokens ${spec.numTokens}, ` +
      `${r.correct}/${r.scored} scored positions, ${model.config.mixer}, ${secs.toFixed(1)} s)\n`);
    if (task instanceof TextTask) {
      const t0 = performance.now();
      const bpb = await bitsPerByte(model.lm, task.heldout);
      process.stdout.write(`bits per byte: ${bpb.toFixed(4)} (all ${task.heldout.length} bytes of ${spec.data}/heldout.txt, ` +
        `${((performance.now() - t0) / 1000).toFixed(1)} s)\n`);
    }
    return 0;
  } finally {
    await model.dispose();
  }
}
