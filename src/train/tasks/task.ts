/**
 * Synthetic tasks of the paper (section 4.1): seeded generators of batches where only some positions are scored.
 * A batch holds input ids [B, L] and targets [B, L]: the id the model should output at each position, or -1 where
 * nothing is scored. Training minimizes cross-entropy on the scored positions only; accuracy is measured there.
 */
import type { Rng } from "../../generate/rng.ts";
import { MambaError, optionKeys } from "../../errors.ts";
import { SelectiveCopying } from "./selective-copying.ts";
import { InductionHeads } from "./induction-heads.ts";
import { TextTask } from "./text.ts";

export interface Batch {
  ids: Int32Array; // [batch, seqLen]
  targets: Int32Array; // [batch, seqLen], -1 = not scored
  shape: { batch: number; seqLen: number };
}

export interface TaskSpec {
  name: TaskName;
  seqLen: number; // total input length L
  numTokens: number; // tokens to copy (selective copying) or to recall after the trigger (induction heads)
  vocabSize: number; // all ids, special ones included
  data?: string; // the text task's data folder (train.txt, heldout.txt)
}
export const TASK_SPEC_KEYS = optionKeys<TaskSpec>({ name: true, seqLen: true, numTokens: true, vocabSize: true, data: true });

export interface Task {
  readonly spec: TaskSpec;
  /** A batch drawn from rng (the same rng state gives the same batch). */
  batch(rng: Rng, batchSize: number): Batch;
  /** A held-out batch, when the task's held-out data differs from its training data (text). */
  evalBatch?(rng: Rng, batchSize: number): Batch;
}

export const TASK_NAMES = ["selective-copying", "induction-heads", "text"] as const;
export type TaskName = (typeof TASK_NAMES)[number];

export function makeTask(spec: TaskSpec): Task {
  if (spec.name === "selective-copying") return new SelectiveCopying(spec);
  if (spec.name === "induction-heads") return new InductionHeads(spec);
  if (spec.name === "text") return new TextTask(spec);
  throw new MambaError(`unknown task '${String(spec.name)}' (use ${TASK_NAMES.join(" or ")})`);
}

/** Scored positions and how many of them a [T, V] logits array gets right (argmax, ties to the lowest id). */
export function scoreLogits(logits: Float32Array, targets: Int32Array, V: number): { correct: number; scored: number } {
  let correct = 0, scored = 0;
  for (let t = 0; t < targets.length; t++) {
    const y = targets[t]!;
    if (y < 0) continue;
    scored++;
    const o = t * V;
    let arg = 0;
    for (let j = 1; j < V; j++) if (logits[o + j]! > logits[o + arg]!) arg = j;
    if (arg === y) correct++;
  }
  return { correct, scored };
}
