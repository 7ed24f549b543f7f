/**
 * `mamba-ts train`: trains a small Mamba on one of the paper's synthetic tasks (section 4.1) from a seeded
 * initialization, with a progress bar (loss, accuracy, tokens/s) on stderr, crash-safe checkpoints in --out and
 * DIR/metrics.json at the end (accuracy on freshly drawn held-out batches, over the scored positions only; when
 * stopped early, the run so far with `complete: false` and no accuracy).
 * `--resume` continues the run in --out from its latest checkpoint, exactly as if it had not stopped; the options
 * that define the run come from the checkpoint (repeating them is allowed, changing them is an error).
 * Ctrl-C stops after the current step and writes a checkpoint first (exit code 130).
 */
import { existsSync } from "node:fs";
import path from "node:path";
import cliProgress from "cli-progress";
import { Command, InvalidArgumentError, Option } from "commander";
import { createBackend } from "../../backend/create.ts";
import { isTrainingBackend, type TrainingBackend } from "../../backend/training.ts";
import { MambaError } from "../../errors.ts";
import { writeFileAtomic } from "../../io/safetensors.ts";
import type { MixerKind, ModelFamily } from "../../config.ts";
import { PRESET_NAMES, type PresetName, preset } from "../../train/presets.ts";
import { TASK_NAMES, type TaskName } from "../../train/tasks/task.ts";
import { LENGTH_EVAL_SEQUENCES, Trainer, type TrainOptions } from "../../train/trainer.ts";
import { writeTrainingReport } from "../../train/report.ts";
import { UsageError, parseInteger, parseNumber } from "../common.ts";

interface TrainCliOptions {
  task?: TaskName;
  mixer: MixerKind;
  arch: ModelFamily;
  preset: PresetName;
  backend: "cpu" | "webgpu";
  out: string;
  steps?: number;
  seed: number;
  seqLen?: number;
  lr?: number;
  minLr?: number;
  warmupSteps?: number;
  weightDecay?: number;
  stateNoise?: number;
  statePassing?: boolean;
  evalLengths?: number[];
  evalSequences?: number;
  keepBest?: number;
  batchSize?: number;
  gradAccum?: number;
  checkpointEvery?: number;
  evalBatches?: number;
  resume?: boolean;
  data?: string;
  precision?: "f32" | "f16";
}

export const EXIT_INTERRUPTED = 130;

export function integerAtLeast(min: number): (text: string) => number {
  return (text) => {
    const v = parseInteger(text);
    if (v < min) throw new InvalidArgumentError(`must be an integer >= ${min}.`);
    return v;
  };
}

function positiveNumber(text: string): number {
  const v = parseNumber(text);
  if (!(v > 0)) throw new InvalidArgumentError("must be a positive number.");
  return v;
}

function nonNegativeNumber(text: string): number {
  const v = parseNumber(text);
  if (!(v >= 0)) throw new InvalidArgumentError("must be a number >= 0.");
  return v;
}

function lengthList(text: string): number[] {
  const parts = text.split(",").map((s) => s.trim());
  if (parts.some((s) => !/^\d+$/.test(s) || Number(s) < 2 || !Number.isSafeInteger(Number(s)))) {
    throw new InvalidArgumentError("must be comma-separated integers >= 2, e.g. 4096,65536.");
  }
  return parts.map(Number);
}

function seedParser(text: string): number {
  const v = parseInteger(text);
  if (v < 0 || v > 0xffffffff) throw new InvalidArgumentError("must be an integer in [0, 4294967295].");
  return v;
}

export function trainCommand(): Command {
  return new Command("train")
    .description("train a small Mamba on a synthetic task of the paper (selective copying, induction heads) or on text")
    .addOption(new Option("--task <name>", "the synthetic task, or text (byte-level language modeling of --data)").choices(TASK_NAMES))
    .addOption(new Option("--data <dir>", "text task: a folder with train.txt and heldout.txt (scripts/fortunes-data.sh makes one)"))
    .addOption(new Option("--mixer <kind>", "s6 = selective (Mamba); lti = Δ, B, C input-independent (the paper's ablation)")
      .choices(["s6", "lti"]).default("s6"))
    .addOption(new Option("--arch <family>", "model family: mamba (Mamba-1), mamba2 (Mamba-2, SSD) or falcon-mamba")
      .choices(["mamba", "mamba2", "falcon-mamba"]).default("mamba"))
    .addOption(new Option("--preset <name>", "sizes and schedule: smoke (minutes on a CPU), paper (the paper's settings), default-model (text: the embedded model's)")
      .choices(PRESET_NAMES).default("smoke"))
    .addOption(new Option("--backend <name>", "compute backend").choices(["cpu", "webgpu"]).default("cpu"))
    .addOption(new Option("--out <dir>", "run folder: checkpoints and metrics.json").makeOptionMandatory())
    .addOption(new Option("--steps <n>", "optimizer steps (default: the preset's)").argParser(integerAtLeast(1)))
    .addOption(new Option("--seed <n>", "seed of the initialization and the data").argParser(seedParser).default(0))
    .addOption(new Option("--seq-len <n>", "training sequence length (default: the preset's)").argParser(integerAtLeast(2)))
    .addOption(new Option("--lr <x>", "peak learning rate (default: the preset's)").argParser(positiveNumber))
    .addOption(new Option("--min-lr <x>", "learning rate at the end of the cosine decay; equal to --lr for a constant rate (default: the preset's ratio to the peak)")
      .argParser(positiveNumber))
    .addOption(new Option("--warmup-steps <n>", "steps of linear warmup to the peak rate (default: the preset's, at most a tenth of --steps)")
      .argParser(integerAtLeast(0)))
    .addOption(new Option("--weight-decay <x>", "AdamW weight decay of the matrices (default: the preset's)").argParser(nonNegativeNumber))
    .addOption(new Option("--state-noise <std>", "start every training sequence from a random Gaussian SSM state of this standard deviation, " +
      "for length generalization (default 0: zeros; evaluation always starts from zeros)").argParser(nonNegativeNumber))
    .addOption(new Option("--state-passing", "start every training sequence from the final SSM states of the one before it in its batch row, " +
      "for length generalization (no gradient through them; evaluation always starts from zeros)"))
    .addOption(new Option("--eval-lengths <list>", "comma-separated sequence lengths at which to measure held-out accuracy " +
      `at every checkpoint and at the end (${LENGTH_EVAL_SEQUENCES} sequences each, or --eval-sequences), to follow length extrapolation; e.g. 4096,65536,1048576`)
      .argParser(lengthList))
    .addOption(new Option("--eval-sequences <n>", `sequences for each of --eval-lengths (default ${LENGTH_EVAL_SEQUENCES}; more for a steadier figure)`)
      .argParser(integerAtLeast(1)))
    .addOption(new Option("--keep-best <length>", "one of --eval-lengths: also keep the model with the best accuracy at that length " +
      "so far (the later one on ties) in OUT/best, e.g. to pick the best extrapolating checkpoint of a long run")
      .argParser(integerAtLeast(2)))
    .addOption(new Option("--batch-size <n>", "sequences per micro-batch (default: the preset's)").argParser(integerAtLeast(1)))
    .addOption(new Option("--grad-accum <n>", "micro-batches per optimizer step (default: the preset's)").argParser(integerAtLeast(1)))
    .addOption(new Option("--checkpoint-every <n>", "steps between checkpoints; 0 = only at the end (default: the preset's)")
      .argParser(integerAtLeast(0)))
    .addOption(new Option("--eval-batches <n>", "held-out batches for the final accuracy (default: the preset's)")
      .argParser(integerAtLeast(1)))
    .addOption(new Option("--precision <p>", "matrix products on WebGPU: f32, or f16 (mixed precision: f16 inputs and f32 sums " +
      "in the forward's products, f32 master weights and optimizer state; needs shader-f16) (default f32)").choices(["f32", "f16"]))
    .option("--resume", "continue the run in --out from its latest checkpoint")
    .action(async (opts: TrainCliOptions, cmd: Command) => {
      process.exitCode = await runTrain(opts, (k) => cmd.getOptionValueSource(k) === "cli");
    });
}

/** The run's options from the preset and the command line's overrides. */
function freshOptions(o: TrainCliOptions): TrainOptions {
  if (!o.task) throw new UsageError(`--task is required (${TASK_NAMES.join(" or ")}), unless --resume continues a run`);
  const t = preset(o.preset, o.task, o.mixer, o.seed);
  if (o.arch !== "mamba") t.model.arch = o.arch;
  if (o.task === "text") {
    if (!o.data) throw new UsageError("--task text needs --data <folder with train.txt and heldout.txt>");
    t.task.data = path.resolve(o.data);
  } else if (o.data !== undefined) {
    throw new UsageError("--data is only for --task text");
  }
  if (o.steps !== undefined) {
    t.steps = o.steps;
    t.optim.warmupSteps = Math.min(t.optim.warmupSteps, Math.floor(o.steps / 10));
  }
  if (o.seqLen !== undefined) t.task.seqLen = o.seqLen;
  if (o.lr !== undefined) t.optim.lr = o.lr;
  if (o.minLr !== undefined) {
    if (o.minLr > t.optim.lr) throw new UsageError(`--min-lr ${o.minLr} is above the peak learning rate ${t.optim.lr}`);
    t.optim.minLrRatio = o.minLr / t.optim.lr;
  }
  if (o.warmupSteps !== undefined) {
    if (o.warmupSteps > t.steps) throw new UsageError(`--warmup-steps ${o.warmupSteps} is more than the run's ${t.steps} steps`);
    t.optim.warmupSteps = o.warmupSteps;
  }
  if (o.weightDecay !== undefined) t.optim.weightDecay = o.weightDecay;
  if (o.stateNoise !== undefined) t.stateNoise = o.stateNoise;
  if (o.statePassing) {
    if (o.stateNoise) throw new UsageError("--state-passing and --state-noise are exclusive");
    t.statePassing = true;
  }
  if (o.evalLengths !== undefined) {
    if (o.task === "text") throw new UsageError("--eval-lengths is for the synthetic tasks, not --task text");
    t.evalLengths = o.evalLengths;
  }
  if (o.evalSequences !== undefined) {
    if (o.evalLengths === undefined) throw new UsageError("--eval-sequences sets the sequences of --eval-lengths; give --eval-lengths too");
    t.lengthEvalSequences = o.evalSequences;
  }
  if (o.keepBest !== undefined) {
    if (!o.evalLengths?.includes(o.keepBest)) {
      throw new UsageError(`--keep-best ${o.keepBest} must be one of --eval-lengths (${o.evalLengths?.join(",") ?? "not given"})`);
    }
    t.keepBest = o.keepBest;
  }
  if (o.precision !== undefined) t.precision = o.precision;
  if (o.batchSize !== undefined) t.batchSize = o.batchSize;
  if (o.gradAccum !== undefined) t.accumulation = o.gradAccum;
  if (o.checkpointEvery !== undefined) t.checkpointEvery = o.checkpointEvery;
  if (o.evalBatches !== undefined) t.evalBatches = o.evalBatches;
  return t;
}

/** On --resume: every run-defining option given on the command line must agree with the checkpoint's. */
function checkResumeOptions(o: TrainCliOptions, given: (k: string) => boolean, run: TrainOptions, dir: string): void {
  const pairs: [string, string, unknown, unknown][] = [
    ["task", "--task", o.task, run.task.name],
    ["mixer", "--mixer", o.mixer, run.model.mixer],
    ["arch", "--arch", o.arch, run.model.arch ?? "mamba"],
    ["preset", "--preset", o.preset, run.preset],
    ["steps", "--steps", o.steps, run.steps],
    ["seed", "--seed", o.seed, run.seed],
    ["seqLen", "--seq-len", o.seqLen, run.task.seqLen],
    ["lr", "--lr", o.lr, run.optim.lr],
    ["minLr", "--min-lr", o.minLr, run.optim.lr * run.optim.minLrRatio],
    ["warmupSteps", "--warmup-steps", o.warmupSteps, run.optim.warmupSteps],
    ["weightDecay", "--weight-decay", o.weightDecay, run.optim.weightDecay],
    ["stateNoise", "--state-noise", o.stateNoise, run.stateNoise ?? 0],
    ["statePassing", "--state-passing", o.statePassing, run.statePassing ?? false],
    ["evalLengths", "--eval-lengths", o.evalLengths?.join(","), (run.evalLengths ?? []).join(",")],
    ["evalSequences", "--eval-sequences", o.evalSequences, run.lengthEvalSequences ?? LENGTH_EVAL_SEQUENCES],
    ["keepBest", "--keep-best", o.keepBest, run.keepBest],
    ["batchSize", "--batch-size", o.batchSize, run.batchSize],
    ["gradAccum", "--grad-accum", o.gradAccum, run.accumulation],
    ["precision", "--precision", o.precision, run.precision ?? "f32"],
  ];
  for (const [key, flag, mine, theirs] of pairs) {
    // --min-lr is stored as a ratio to the peak, so it comes back with rounding
    const same = typeof mine === "number" && typeof theirs === "number"
      ? Math.abs(mine - theirs) <= 1e-9 * Math.max(Math.abs(mine), Math.abs(theirs))
      : mine === theirs;
    if (given(key) && !same) {
      throw new UsageError(`--resume: the run in ${dir} was started with ${flag} ${String(theirs)}, not ${String(mine)}; ` +
        `resume it with the same options (or leave them out)`);
    }
  }
  if (o.checkpointEvery !== undefined) run.checkpointEvery = o.checkpointEvery;
  if (o.evalBatches !== undefined) run.evalBatches = o.evalBatches;
}

async function trainingBackend(name: "cpu" | "webgpu"): Promise<TrainingBackend> {
  const b = await createBackend(name);
  if (!isTrainingBackend(b)) {
    await b.destroy();
    throw new MambaError(`the ${name} backend has no training ops; use --backend cpu`);
  }
  return b;
}

async function runTrain(o: TrainCliOptions, given: (k: string) => boolean): Promise<number> {
  const dir = o.out;
  if (dir.length === 0) throw new UsageError("--out is empty");
  const hasRun = existsSync(path.join(dir, "latest"));
  let options: TrainOptions | null = null;
  if (o.resume) {
    if (!hasRun) throw new UsageError(`--resume: no checkpoint in ${dir} (no 'latest' file)`);
  } else {
    if (hasRun) throw new UsageError(`${dir} already holds a training run; continue it with --resume, or choose another --out`);
    options = freshOptions(o); // usage errors before any backend is made
  }
  const backend = await trainingBackend(o.backend);
  try {
    let trainer: Trainer;
    if (options) trainer = Trainer.create(backend, options);
    else {
      trainer = await Trainer.resume(backend, dir);
      checkResumeOptions(o, given, trainer.options, dir);
    }
    return await trainLoop(trainer, dir, o.backend);
  } finally {
    await backend.destroy();
  }
}

/** Runs the run's length evaluations (if any) and prints them on one line; keeps the best model (--keep-best). */
async function evaluateLengths(trainer: Trainer, bar: cliProgress.SingleBar | null, dir: string): Promise<void> {
  if (!trainer.options.evalLengths?.length) return;
  const rows = await trainer.evaluateLengths();
  const text = rows.map((r) => `${r.seqLen}: ${r.accuracy.toFixed(4)}`).join(", ");
  const best = await trainer.keepBest(dir);
  const kept = best ? `; the best so far at ${best.seqLen}, kept in ${path.join(dir, "best")}` : "";
  process.stderr.write(`${bar ? "\n" : ""}step ${trainer.step}: held-out accuracy at length ${text}${kept}\n`);
}

async function trainLoop(trainer: Trainer, dir: string, backendName: string): Promise<number> {
  const o = trainer.options;
  let interrupted = false;
  const onSigint = () => { interrupted = true; };
  process.once("SIGINT", onSigint);
  const tty = process.stderr.isTTY === true;
  const bar = new cliProgress.SingleBar({
    format: "train |{bar}| {value}/{total} steps | loss {loss} | acc {acc} | {tps} tok/s | ETA {eta_formatted}",
    stream: process.stderr, hideCursor: true, etaBuffer: 50, fps: 5,
  }, cliProgress.Presets.shades_classic);
  const label = `${o.task.name} ${o.model.arch ? `${o.model.arch} ` : ""}${o.model.mixer} (${o.preset ?? "custom"}): ${o.steps} steps, L ${o.task.seqLen}, D ${o.model.hiddenSize}` +
    (o.stateNoise ? `, initial SSM states N(0, ${o.stateNoise}²)` : "") + (o.statePassing ? ", SSM states passed between batches" : "");
  process.stderr.write(`${trainer.step > 0 ? `resuming at step ${trainer.step}: ` : ""}${label}\n`);
  const start = performance.now();
  let tokens = 0;
  let emaLoss = NaN, emaAcc = NaN;
  const fmt = () => ({
    loss: Number.isNaN(emaLoss) ? "-" : emaLoss.toFixed(3),
    acc: Number.isNaN(emaAcc) ? "-" : emaAcc.toFixed(3),
    tps: tokens > 0 ? Math.round(tokens / ((performance.now() - start) / 1000)).toString() : "-",
  });
  if (tty) bar.start(o.steps, trainer.step, fmt());
  let lastSaved = trainer.step;
  let clock = performance.now();
  const tick = () => {
    const now = performance.now();
    trainer.elapsedSeconds += (now - clock) / 1000;
    clock = now;
  };
  try {
    while (!trainer.finished && !interrupted) {
      const s = await trainer.trainStep();
      tokens += s.tokens;
      emaLoss = Number.isNaN(emaLoss) ? s.loss : 0.95 * emaLoss + 0.05 * s.loss;
      emaAcc = Number.isNaN(emaAcc) ? s.accuracy : 0.95 * emaAcc + 0.05 * s.accuracy;
      if (tty) bar.update(trainer.step, fmt());
      if (o.checkpointEvery > 0 && trainer.step % o.checkpointEvery === 0 && !trainer.finished) {
        tick();
        await evaluateLengths(trainer, tty ? bar : null, dir);
        await trainer.save(dir);
        await report(trainer, dir, null);
        lastSaved = trainer.step;
        if (!tty) {
          const f = fmt();
          process.stderr.write(`step ${trainer.step}/${o.steps} | loss ${f.loss} | acc ${f.acc} | ${f.tps} tok/s | checkpoint saved\n`);
        }
      }
    }
  } finally {
    if (tty) bar.stop();
    process.removeListener("SIGINT", onSigint);
  }
  tick();
  // the final length evaluation (and --keep-best's choice) before the final checkpoint, which records them
  if (!interrupted && trainer.lengthHistory.at(-1)?.step !== trainer.step) await evaluateLengths(trainer, null, dir);
  if (trainer.step !== lastSaved || !existsSync(path.join(dir, "latest"))) await trainer.save(dir);
  const tokensPerSecond = tokens > 0 ? tokens / ((performance.now() - start) / 1000) : null;
  const writeMetrics = (ev: Parameters<typeof runMetrics>[3]) =>
    writeFileAtomic(path.join(dir, "metrics.json"), JSON.stringify(runMetrics(trainer, dir, backendName, ev, tokensPerSecond), null, 2) + "\n");
  if (interrupted) {
    // what the run has so far (its length evaluations, the best model kept), without the final evaluation
    await writeMetrics(null);
    process.stderr.write(`interrupted at step ${trainer.step}; checkpoint saved in ${dir}, continue with --resume\n`);
    return EXIT_INTERRUPTED;
  }
  const evalStart = performance.now();
  const ev = await trainer.evaluate();
  await writeMetrics({ ...ev, seconds: (performance.now() - evalStart) / 1000 });
  await report(trainer, dir, ev.accuracy);
  process.stdout.write(`${o.task.name} ${o.model.arch ? `${o.model.arch} ` : ""}${o.model.mixer}: accuracy ${ev.accuracy.toFixed(4)} on ${ev.scored} held-out scored positions ` +
    `after ${trainer.step} steps (${trainer.elapsedSeconds.toFixed(1)} s of training); ${path.join(dir, "metrics.json")}\n`);
  return 0;
}

/** DIR/metrics.json's record of a run: `complete` with the final held-out evaluation, or as far as it got when
 *  interrupted (accuracy null). */
function runMetrics(
  trainer: Trainer, dir: string, backendName: string, ev: { accuracy: number; scored: number; seconds: number } | null,
  tokensPerSecond: number | null,
): Record<string, unknown> {
  const o = trainer.options;
  return {
    task: o.task.name,
    mixer: o.model.mixer,
    preset: o.preset ?? null,
    backend: backendName,
    steps: trainer.step,
    seqLen: o.task.seqLen,
    stateNoise: o.stateNoise ?? 0,
    statePassing: o.statePassing ?? false,
    numTokens: o.task.numTokens,
    vocabSize: o.task.vocabSize,
    complete: ev !== null,
    accuracy: ev?.accuracy ?? null,
    evalScoredPositions: ev?.scored ?? null,
    evalBatches: o.evalBatches,
    evalBatchSize: o.batchSize,
    evalSeconds: ev?.seconds ?? null,
    lengthEvals: trainer.lengthHistory,
    lengthEvalSequences: o.evalLengths ? o.lengthEvalSequences ?? LENGTH_EVAL_SEQUENCES : null,
    best: trainer.best ? { ...trainer.best, folder: path.join(dir, "best") } : null,
    finalTrainLoss: trainer.lastStats?.loss ?? null,
    finalTrainAccuracy: trainer.lastStats?.accuracy ?? null,
    trainSeconds: trainer.elapsedSeconds,
    tokensPerSecondThisProcess: tokensPerSecond,
    model: { ...o.model, parameters: trainer.parameterCount },
    seed: o.seed,
  };
}

/** DIR/report.html: the curves of the run so far (and the held-out accuracy at the end). */
async function report(trainer: Trainer, dir: string, evalAccuracy: number | null): Promise<void> {
  const o = trainer.options;
  const records: { step: number; [k: string]: number }[] = trainer.history.map((r) => ({ ...r }));
  if (evalAccuracy !== null) records.push({ step: trainer.step, heldout_accuracy: evalAccuracy });
  // the accuracies at other lengths join the accuracy chart, one curve a length
  for (const r of trainer.lengthHistory) records.push({ step: r.step, [`heldout_accuracy_L${r.seqLen}`]: r.accuracy });
  await writeTrainingReport(dir, records, {
    title: `${o.task.name}, ${o.model.mixer}, ${o.model.numLayers} layers, D ${o.model.hiddenSize}`,
    details: {
      preset: o.preset ?? "custom", seqLen: o.task.seqLen, numTokens: o.task.numTokens, vocabSize: o.task.vocabSize,
      steps: `${trainer.step}/${o.steps}`, batch: `${o.batchSize} x ${o.accumulation}`, lr: o.optim.lr, seed: o.seed,
      trainSeconds: Number(trainer.elapsedSeconds.toFixed(1)),
    },
  });
}
