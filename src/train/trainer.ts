/**
 * Training a Mamba LM on a synthetic task: seeded init and data, micro-batch gradient accumulation, AdamW with
 * clipping and a warmup + cosine schedule, crash-safe checkpoints, exact resume.
 *
 * Determinism: the parameters come from initParameters(seed); micro-batch k of step s is drawn from its own
 * generator Rng(seed ^ DATA, s · accumulation + k), and held-out evaluation batches from Rng(seed ^ EVAL, i), so
 * the data never depends on what ran before. With the optimizer moments, the parameters and the step restored
 * bit for bit, a resumed run continues exactly as if it had not stopped (on the CPU, whose ops are
 * deterministic).
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import type { TrainingBackend } from "../backend/training.ts";
import type { Tensor } from "../backend/backend.ts";
import { type MambaConfig, type MixerKind, type ModelFamily, ssmStateShape, toHfConfig } from "../config.ts";
import { MambaError, check, checkChoice, checkKeys, optionKeys } from "../errors.ts";
import { Rng } from "../generate/rng.ts";
import { loadCheckpoint } from "../io/checkpoint.ts";
import { readSafetensors, serializeSafetensors } from "../io/safetensors.ts";
import type { HostTensor } from "../io/tensor.ts";
import { toFloat32 } from "../io/tensor.ts";
import { initParameters, makeConfig } from "../model/init.ts";
import { BYTE_EOS_ID, byteLevelTokenizerJson } from "../byte-tokenizer.ts";
import { type LMWeights, MambaLM, uploadWeights } from "../model/mamba.ts";
import { MambaCache } from "../model/cache.ts";
import { choosePrecision } from "../model/build.ts";
import { forwardBackward } from "./backprop.ts";
import { latestCheckpoint, writeCheckpoint } from "./checkpoint.ts";
import { AdamW, OPTIM_KEYS, type OptimConfig, learningRate } from "./optim.ts";
import { namedTensors, zerosLike } from "./params.ts";
import { TASK_SPEC_KEYS, type Task, type TaskSpec, makeTask, scoreLogits } from "./tasks/task.ts";

export interface ModelSpec {
  hiddenSize: number; // D
  numLayers: number;
  stateSize: number; // N
  expand: number; // E = expand · D
  mixer: MixerKind;
  /** the model family (config.ts ModelFamily); absent = "mamba" (Mamba-1) */
  arch?: ModelFamily;
}

export interface TrainOptions {
  preset?: string; // the preset these options came from (informational)
  task: TaskSpec;
  model: ModelSpec;
  steps: number; // optimizer steps in the whole run
  batchSize: number; // sequences per micro-batch
  accumulation: number; // micro-batches per optimizer step
  optim: OptimConfig;
  seed: number;
  checkpointEvery: number; // steps between checkpoints (0: only the final one)
  evalBatches: number; // held-out batches for the final accuracy
  /**
   * Standard deviation of a random Gaussian SSM state every training sequence starts from, per layer (0 or
   * absent: zeros, the usual). Exposes the model during training to states it would otherwise meet only beyond
   * the training length (Buitrago Ruiz & Gu 2025, "Understanding and Improving Length Generalization in Recurrent
   * Models"); evaluation always starts from zeros.
   */
  stateNoise?: number;
  /**
   * State passing (the same paper's other intervention): every training sequence starts from the final SSM
   * states of the sequence in its row of the micro-batch before (no gradient through them), so training meets
   * the states of ever longer histories. Exclusive with stateNoise; the carried states are saved in checkpoints.
   */
  statePassing?: boolean;
  /**
   * Sequence lengths at which to measure held-out accuracy at every checkpoint and at the end (synthetic tasks),
   * to follow length extrapolation during training: lengthEvalSequences sequences each (Trainer.evaluateLengths),
   * drawn from a validation stream apart from the final evaluation's (and `mamba-ts eval`'s).
   */
  evalLengths?: number[];
  /** sequences each evalLengths measurement uses (default 16) */
  lengthEvalSequences?: number;
  /**
   * One of evalLengths: the checkpoint with the best accuracy at that length so far (the later one on ties) is
   * also kept as a model in DIR/best (Trainer.keepBest), so that training can be stopped late and the best
   * extrapolating model still be had.
   */
  keepBest?: number;
  /**
   * The matrix products' precision (absent: "f32"). "f16" (WebGPU with shader-f16) is mixed precision: the
   * forward's products take f16 inputs with f32 accumulation, on the tensor cores where the device has them, from
   * f16 copies of the f32 master weights made again after each optimizer step; the weights, the optimizer's state,
   * the scan state and the backward stay f32.
   */
  precision?: "f32" | "f16";
}

const TRAIN_OPTION_KEYS = optionKeys<TrainOptions>({
  preset: true, task: true, model: true, steps: true, batchSize: true, accumulation: true, optim: true, seed: true,
  checkpointEvery: true, evalBatches: true, stateNoise: true, statePassing: true, evalLengths: true,
  lengthEvalSequences: true, keepBest: true, precision: true,
});
const MODEL_SPEC_KEYS = optionKeys<ModelSpec>({ hiddenSize: true, numLayers: true, stateSize: true, expand: true, mixer: true, arch: true });

/** Throws on an unknown key of training options or of their task, model and optim (a fresh run's: a checkpoint's
 *  saved options are not checked, so that runs saved before an option was dropped still resume). */
export function checkOptionKeys(o: TrainOptions): void {
  checkKeys("train", o, TRAIN_OPTION_KEYS);
  checkKeys("train", o.task, TASK_SPEC_KEYS, "task.");
  checkKeys("train", o.model, MODEL_SPEC_KEYS, "model.");
  checkKeys("train", o.optim, OPTIM_KEYS, "optim.");
}

/** Held-out accuracy at one length, at one step (Trainer.lengthHistory). */
export interface LengthEvalRecord {
  step: number;
  seqLen: number;
  accuracy: number;
  scored: number;
}

/** Sequences each length of evalLengths is measured on, by default. */
export const LENGTH_EVAL_SEQUENCES = 16;

export interface StepStats {
  step: number; // steps done after this one
  loss: number; // mean over the step's micro-batches
  accuracy: number; // on the step's scored positions
  gradNorm: number;
  lr: number;
  tokens: number; // tokens processed by this step
}

/** trainer.json */
interface TrainerState {
  format: "mamba-ts-trainer";
  version: 1;
  step: number;
  options: TrainOptions;
  /** the data streams: micro-batch k of step s uses Rng(seed ^ dataSalt, s · accumulation + k) */
  rng: { seed: number; dataSalt: number; evalSalt: number; nextStream: number };
  schedule: { lr: number; warmupSteps: number; totalSteps: number; nextLr: number };
  last: StepStats | null;
  elapsedSeconds: number; // training time of all the processes that made this checkpoint
  history: HistoryRecord[]; // for the report (about 1000 records at most)
  lengthHistory?: LengthEvalRecord[]; // evalLengths' results so far
  best?: LengthEvalRecord | null; // keepBest: the record of the model in DIR/best
}

/** One logged step: its own loss, accuracy, learning rate and gradient norm. */
export interface HistoryRecord {
  step: number;
  loss: number;
  accuracy: number;
  lr: number;
  gradNorm: number;
}

const DATA_SALT = 0x5eed0da7;
export const EVAL_SALT = 0x0e7a1ba7;
/** the validation stream of evaluateLengths (and so of keepBest's choice), apart from the final evaluation's */
const VALID_SALT = 0x7a11d8e5;

export function modelConfig(o: TrainOptions): MambaConfig {
  const m = o.model;
  const text = o.task.name === "text";
  return makeConfig({
    vocabSize: o.task.vocabSize, hiddenSize: m.hiddenSize, numLayers: m.numLayers, stateSize: m.stateSize,
    intermediateSize: m.expand * m.hiddenSize, mixer: m.mixer, family: m.arch ?? "mamba",
    // byte-level text: <|endoftext|> ends generation; an empty prompt starts on a fresh line ("\n"), as the
    // training windows show every text after a newline
    ...(text ? { eosTokenId: BYTE_EOS_ID, bosTokenId: 10, padTokenId: BYTE_EOS_ID } : {}),
  });
}

export function checkOptions(o: TrainOptions): void {
  const pos = (v: number, what: string) => check(Number.isInteger(v) && v > 0, `${what} must be a positive integer, got ${v}`);
  pos(o.steps, "steps");
  pos(o.batchSize, "batch size");
  pos(o.accumulation, "gradient accumulation");
  pos(o.model.hiddenSize, "hidden size");
  pos(o.model.numLayers, "number of layers");
  pos(o.model.stateSize, "state size");
  pos(o.model.expand, "expand");
  check(Number.isInteger(o.evalBatches) && o.evalBatches >= 0, `eval batches must be a non-negative integer, got ${o.evalBatches}`);
  check(Number.isInteger(o.checkpointEvery) && o.checkpointEvery >= 0, `checkpoint interval must be a non-negative integer, got ${o.checkpointEvery}`);
  check(Number.isInteger(o.seed) && o.seed >= 0 && o.seed <= 0xffffffff, `seed must be an integer in [0, 2^32), got ${o.seed}`);
  check(o.optim.lr > 0 && Number.isFinite(o.optim.lr), `learning rate must be positive, got ${o.optim.lr}`);
  check(o.optim.warmupSteps >= 0 && Number.isInteger(o.optim.warmupSteps), `warmup steps must be a non-negative integer`);
  checkChoice("precision", o.precision, ["f32", "f16"]);
  check(o.stateNoise === undefined || (Number.isFinite(o.stateNoise) && o.stateNoise >= 0),
    `state noise must be a number >= 0, got ${o.stateNoise}`);
  check(!(o.statePassing && o.stateNoise), "state passing and state noise are exclusive: choose one way to start training sequences");
  if (o.evalLengths) {
    check(o.task.name !== "text", "evaluation lengths are for the synthetic tasks, not text");
    for (const L of o.evalLengths) {
      check(Number.isInteger(L) && L >= 2, `evaluation lengths must be integers >= 2, got ${L}`);
      makeTask({ ...o.task, seqLen: L }); // validates that the task fits this length
    }
  }
  const n = o.lengthEvalSequences;
  check(n === undefined || (Number.isInteger(n) && n >= 1), `length evaluation sequences must be an integer >= 1, got ${n}`);
  check(o.keepBest === undefined || (o.evalLengths ?? []).includes(o.keepBest),
    `keeping the best model at length ${o.keepBest} needs that length among the evaluation lengths (${(o.evalLengths ?? []).join(", ") || "none"})`);
  makeTask(o.task); // validates the task's sizes
}

export class Trainer {
  readonly task: Task;
  readonly params: Map<string, Tensor>;
  private readonly grads: LMWeights;
  private readonly gradMap: Map<string, Tensor>;
  private last: StepStats | null = null;
  /** training time so far, over resumes (the caller adds to it) */
  elapsedSeconds = 0;
  /** every historyEvery-th step (and the first), over resumes */
  history: HistoryRecord[] = [];
  /** accuracy at options.evalLengths, each time evaluateLengths ran, over resumes */
  lengthHistory: LengthEvalRecord[] = [];
  /** options.keepBest: the record of the model kept in DIR/best, over resumes */
  best: LengthEvalRecord | null = null;
  /** modelFiles' result for one step (kept from keepBest to the save of the same checkpoint) */
  private modelFilesOf: { step: number; files: [string, Uint8Array | string][] } | null = null;
  /** state passing: per layer the SSM states [batch, E, N] the next micro-batch starts from (null: zeros) */
  private carry: Tensor[] | null = null;

  private constructor(
    readonly backend: TrainingBackend,
    readonly options: TrainOptions,
    readonly lm: MambaLM,
    readonly optimizer: AdamW,
    public step: number,
  ) {
    this.task = makeTask(options.task);
    // the master weights stay f32: no matrices are narrowed, each f16 product reads a copy (WebGpuBackend.halfWeight)
    const precision = choosePrecision(backend, options.precision ?? "f32", "F32");
    backend.usePrecision?.(precision);
    this.params = namedTensors(lm.config, lm.weights);
    this.grads = zerosLike(backend, lm.weights);
    this.gradMap = namedTensors(lm.config, this.grads);
  }

  get config(): MambaConfig {
    return this.lm.config;
  }

  /** A fresh run: parameters initialized from the seed. */
  static create(backend: TrainingBackend, options: TrainOptions): Trainer {
    checkOptionKeys(options);
    checkOptions(options);
    const cfg = modelConfig(options);
    const lm = new MambaLM(cfg, backend, uploadWeights(backend, cfg, initParameters(cfg, { seed: options.seed })));
    return new Trainer(backend, options, lm, new AdamW(backend, options.optim, namedTensors(cfg, lm.weights)), 0);
  }

  /** Continues the run whose latest checkpoint is in `dir`. */
  static async resume(backend: TrainingBackend, dir: string): Promise<Trainer> {
    const folder = await latestCheckpoint(dir);
    if (!folder) throw new MambaError(`no checkpoint to resume from in ${dir} (no 'latest' file)`);
    let state: TrainerState;
    try {
      state = JSON.parse(await fs.readFile(path.join(folder, "trainer.json"), "utf8")) as TrainerState;
    } catch (err) {
      throw new MambaError(`cannot read ${path.join(folder, "trainer.json")}: ${(err as Error).message}`);
    }
    check(state.format === "mamba-ts-trainer" && state.version === 1, `${folder}/trainer.json is not a mamba-ts trainer state`);
    checkOptions(state.options);
    const ckpt = await loadCheckpoint(folder);
    const cfg = ckpt.config;
    const lm = new MambaLM(cfg, backend, uploadWeights(backend, cfg, ckpt.tensors));
    const opt = new AdamW(backend, state.options.optim, namedTensors(cfg, lm.weights));
    const moments = await readSafetensors(path.join(folder, "optimizer.safetensors"));
    for (const [name] of opt.params) {
      for (const [key, dst] of [["m", opt.m], ["v", opt.v]] as const) {
        const t = moments.get(`${key}.${name}`);
        check(t, `${folder}/optimizer.safetensors: missing '${key}.${name}'`);
        const target = dst.get(name)!;
        const src = backend.fromF32(toFloat32(t), target.shape);
        backend.copyInto(target, src);
        backend.dispose(src);
      }
    }
    const t = new Trainer(backend, state.options, lm, opt, state.step);
    if (state.options.statePassing && moments.has("carry.0")) {
      t.carry = Array.from({ length: cfg.numLayers }, (_, i) => {
        const h = moments.get(`carry.${i}`);
        check(h, `${folder}/optimizer.safetensors: missing 'carry.${i}' (the states state passing carries)`);
        return backend.fromF32(toFloat32(h), h.shape);
      });
    }
    t.last = state.last;
    t.elapsedSeconds = state.elapsedSeconds ?? 0;
    t.history = state.history ?? [];
    t.lengthHistory = state.lengthHistory ?? [];
    t.best = state.best ?? null;
    return t;
  }

  private dataRng(index: number): Rng {
    return new Rng((this.options.seed ^ DATA_SALT) >>> 0, index);
  }

  /** the statistics of the last step (restored on resume) */
  get lastStats(): StepStats | null {
    return this.last;
  }

  /** parameters, a tied head counted once */
  get parameterCount(): number {
    let n = 0;
    for (const t of this.params.values()) n += t.shape.reduce((a, c) => a * c, 1);
    return n;
  }

  get finished(): boolean {
    return this.step >= this.options.steps;
  }

  /** One optimizer step over `accumulation` micro-batches. */
  async trainStep(): Promise<StepStats> {
    check(!this.finished, `the run is complete (${this.options.steps} steps)`);
    const b = this.backend;
    const o = this.options;
    for (const g of new Set(this.gradMap.values())) b.zeroFill(g);
    let loss = 0, correct = 0, scored = 0, tokens = 0;
    for (let k = 0; k < o.accumulation; k++) {
      const rng = this.dataRng(this.step * o.accumulation + k);
      const batch = this.task.batch(rng, o.batchSize);
      const ids = b.fromI32(batch.ids, [batch.ids.length]);
      const tgt = b.fromI32(batch.targets, [batch.targets.length]);
      const h0 = o.stateNoise ? this.noiseStates(rng, batch.shape.batch, o.stateNoise) : o.statePassing ? this.carry : null;
      const r = forwardBackward(this.lm, b, ids, tgt, batch.shape, this.grads, 1 / o.accumulation, h0, !!o.statePassing);
      if (h0) b.dispose(...h0);
      this.carry = r.finalSsm;
      loss += (await b.readF32(r.loss))[0]! / o.accumulation;
      correct += (await b.readF32(r.correct))[0]!;
      for (const v of batch.targets) if (v >= 0) scored++;
      tokens += batch.ids.length;
      b.dispose(ids, tgt, r.loss, r.correct);
    }
    const lr = learningRate(o.optim, this.step + 1, o.steps);
    const gradNorm = await this.optimizer.step(this.gradMap, this.step + 1, lr);
    this.step++;
    this.last = { step: this.step, loss, accuracy: scored > 0 ? correct / scored : 0, gradNorm, lr, tokens };
    const every = Math.max(1, Math.ceil(o.steps / 1000));
    if (this.step === 1 || this.step % every === 0 || this.finished) {
      this.history.push({ step: this.step, loss, accuracy: this.last.accuracy, lr, gradNorm });
    }
    return this.last;
  }

  /** Per layer a random initial SSM state ([B, E, N]; Mamba-2: [B, H, P, N]) with entries N(0, std²), drawn after the batch from its stream. */
  private noiseStates(rng: Rng, batch: number, std: number): Tensor[] {
    const shape = ssmStateShape(this.config, batch);
    const out: Tensor[] = [];
    for (let i = 0; i < this.config.numLayers; i++) {
      const data = new Float32Array(shape.reduce((a, v) => a * v, 1));
      for (let j = 0; j < data.length; j++) data[j] = std * rng.normal();
      out.push(this.backend.fromF32(data, shape));
    }
    return out;
  }

  /** Accuracy on the scored positions of `batches` freshly drawn held-out batches (task spec may differ, e.g. L). */
  async evaluate(batches = this.options.evalBatches, spec: TaskSpec = this.options.task, batchSize = this.options.batchSize): Promise<EvalResult> {
    return evaluateAccuracy(this.lm, makeTask(spec), this.options.seed, batches, batchSize);
  }

  /**
   * Held-out accuracy at each of options.evalLengths on lengthEvalSequences fresh validation sequences (in
   * batches of at most 2^20 tokens, so the count rounds up to whole batches), recorded in lengthHistory at this
   * step. Evaluation uses its own random stream and leaves the training state alone.
   */
  async evaluateLengths(): Promise<LengthEvalRecord[]> {
    const out: LengthEvalRecord[] = [];
    const n = this.options.lengthEvalSequences ?? LENGTH_EVAL_SEQUENCES;
    for (const seqLen of this.options.evalLengths ?? []) {
      const batchSize = Math.max(1, Math.min(n, Math.floor(2 ** 20 / seqLen)));
      const ev = await evaluateAccuracy(this.lm, makeTask({ ...this.options.task, seqLen }), this.options.seed,
        Math.ceil(n / batchSize), batchSize, undefined, { salt: VALID_SALT });
      out.push({ step: this.step, seqLen, accuracy: ev.accuracy, scored: ev.scored });
    }
    this.lengthHistory.push(...out);
    return out;
  }

  /**
   * options.keepBest: when this step's accuracy at that length (evaluateLengths must have run at this step) is
   * at least the best so far, writes the model to DIR/best/checkpoint-<step> (config.json, model.safetensors,
   * best.json; DIR/best/latest names it, as in a run folder) and returns its record; else null.
   */
  async keepBest(dir: string): Promise<LengthEvalRecord | null> {
    const L = this.options.keepBest;
    if (L === undefined) return null;
    const rec = this.lengthHistory.filter((r) => r.step === this.step && r.seqLen === L).at(-1);
    check(rec, `keepBest: no evaluation at length ${L} at step ${this.step}`);
    if (this.best && rec.accuracy < this.best.accuracy) return null;
    const files = new Map<string, Uint8Array | string>([
      ...await this.modelFiles(),
      ["best.json", JSON.stringify({ ...rec, task: this.options.task.name, seed: this.options.seed }, null, 2) + "\n"],
    ]);
    await writeCheckpoint(path.join(dir, "best"), this.step, files, 1);
    this.best = rec;
    return rec;
  }

  /**
   * config.json and model.safetensors of the model as it is at this step: read back and serialized once a step,
   * for keepBest and save at the same checkpoint.
   */
  private async modelFiles(): Promise<[string, Uint8Array | string][]> {
    if (this.modelFilesOf?.step !== this.step) {
      this.modelFilesOf = {
        step: this.step,
        files: [
          ["config.json", JSON.stringify(toHfConfig(this.config), null, 2) + "\n"],
          ["model.safetensors", serializeSafetensors(await this.parameters(), { format: "pt" })],
        ],
      };
    }
    return this.modelFilesOf.files;
  }

  /** Host copies of the parameters, by checkpoint name. */
  async parameters(): Promise<Map<string, HostTensor>> {
    const out = new Map<string, HostTensor>();
    for (const [name, t] of this.params) out.set(name, { dtype: "F32", shape: [...t.shape], data: await this.backend.readF32(t) });
    return out;
  }

  /** Writes DIR/checkpoint-<step> and makes it the latest (see checkpoint.ts). */
  async save(dir: string, keep = 1): Promise<string> {
    const b = this.backend;
    const o = this.options;
    const moments = new Map<string, HostTensor>();
    for (const [name, p] of this.params) {
      moments.set(`m.${name}`, { dtype: "F32", shape: [...p.shape], data: await b.readF32(this.optimizer.m.get(name)!) });
      moments.set(`v.${name}`, { dtype: "F32", shape: [...p.shape], data: await b.readF32(this.optimizer.v.get(name)!) });
    }
    for (const [i, h] of (this.carry ?? []).entries()) {
      moments.set(`carry.${i}`, { dtype: "F32", shape: [...h.shape], data: await b.readF32(h) });
    }
    const state: TrainerState = {
      format: "mamba-ts-trainer", version: 1, step: this.step, options: o,
      rng: { seed: o.seed, dataSalt: DATA_SALT, evalSalt: EVAL_SALT, nextStream: this.step * o.accumulation },
      schedule: { lr: o.optim.lr, warmupSteps: o.optim.warmupSteps, totalSteps: o.steps, nextLr: learningRate(o.optim, this.step + 1, o.steps) },
      last: this.last,
      elapsedSeconds: this.elapsedSeconds,
      history: this.history,
      lengthHistory: this.lengthHistory,
      best: this.best,
    };
    const files = new Map<string, Uint8Array | string>([
      ...await this.modelFiles(),
      ["optimizer.safetensors", serializeSafetensors(moments)],
      ["trainer.json", JSON.stringify(state, null, 2) + "\n"],
    ]);
    // a text model's checkpoint is a complete model folder: `mamba-ts generate --model` reads it as is
    if (o.task.name === "text") files.set("tokenizer.json", JSON.stringify(byteLevelTokenizerJson()) + "\n");
    this.modelFilesOf = null; // saved: the next change of the parameters comes with the next step
    return writeCheckpoint(dir, this.step, files, keep);
  }
}

export interface EvalResult {
  accuracy: number; // correct / scored (0 when nothing is scored)
  correct: number;
  scored: number; // scored positions seen
}

/** Bytes of the widest activation of one evaluation pass: a batch's positions run in passes of at most this. */
const EVAL_PASS_BYTES = 256 * 2 ** 20;

export interface EvalOptions {
  /** the held-out stream: EVAL_SALT (the final evaluation's, the default) or VALID_SALT (length evaluations) */
  salt?: number;
  /** bytes of the widest activation a pass may make (default 256 MiB) */
  passBytes?: number;
}

/**
 * Held-out accuracy of a model on a task: batch i comes from Rng(seed ^ salt, i), by default the final
 * evaluation's stream (EVAL_SALT). onBatch: after each batch. Long batches run in passes over their positions
 * that carry the recurrent state (the same results as one pass), so that no activation nears a device's buffer
 * limit whatever the batch size and length; only the scored positions' logits are computed and read.
 */
export async function evaluateAccuracy(
  lm: MambaLM, task: Task, seed: number, batches: number, batchSize: number,
  onBatch?: (done: number, total: number) => void, options: EvalOptions = {},
): Promise<EvalResult> {
  const { salt = EVAL_SALT, passBytes = EVAL_PASS_BYTES } = options;
  const b = lm.backend;
  const c = lm.config;
  // in_proj's output (2E a token) is the widest activation, or the logits of a position
  const widest = 4 * Math.max(2 * c.intermediateSize, c.paddedVocabSize, c.hiddenSize);
  let correct = 0, scored = 0;
  for (let i = 0; i < batches; i++) {
    const rng = new Rng((seed ^ salt) >>> 0, i);
    const batch = task.evalBatch ? task.evalBatch(rng, batchSize) : task.batch(rng, batchSize);
    const { batch: B, seqLen: L } = batch.shape;
    const len = Math.max(1, Math.min(L, Math.floor(passBytes / (widest * B)))); // positions a pass
    const cache = len < L ? MambaCache.zeros(b, c, B) : null;
    try {
      for (let start = 0; start < L; start += len) {
        const n = Math.min(len, L - start);
        const ids = new Int32Array(B * n);
        const rows: number[] = [];
        const targets: number[] = [];
        for (let r = 0; r < B; r++) {
          ids.set(batch.ids.subarray(r * L + start, r * L + start + n), r * n);
          for (let t = 0; t < n; t++) {
            const y = batch.targets[r * L + start + t]!;
            if (y >= 0) {
              rows.push(r * n + t);
              targets.push(y);
            }
          }
        }
        const idsT = b.fromI32(ids, [ids.length]);
        const h = lm.hidden(idsT, { batch: B, seqLen: n }, cache);
        b.dispose(idsT);
        if (!rows.length) {
          b.dispose(h);
          continue;
        }
        const picked = rows.length === B * n ? h : b.takeRows(h, rows);
        const logits = lm.logits(picked);
        const s = scoreLogits(await b.readF32(logits), Int32Array.from(targets), logits.shape[logits.shape.length - 1]!);
        correct += s.correct;
        scored += s.scored;
        b.dispose(logits);
        if (picked !== h) b.dispose(picked);
        b.dispose(h);
      }
    } finally {
      cache?.dispose();
    }
    onBatch?.(i + 1, batches);
  }
  return { accuracy: scored > 0 ? correct / scored : 0, correct, scored };
}
