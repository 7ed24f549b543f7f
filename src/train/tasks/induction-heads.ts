/**
 * Induction heads (paper section 4.1, Table 2; associative recall): a sequence of random tokens contains a trigger
 * token once, followed by numTokens tokens; the sequence ends with the trigger again, and the model must recall
 * what followed it (with numTokens > 1 the recalled tokens are fed back one at a time, teacher-forced). Only the
 * recall positions are scored.
 *
 *   ids:     r r r S a r r r ... r r S          (numTokens = 1: S trigger, a the token to recall)
 *   targets: -1 ...                    -1  a
 *
 * Ids: 0 = trigger, 1 .. vocabSize−1 = ordinary tokens (the trigger occurs exactly twice).
 */
import type { Rng } from "../../generate/rng.ts";
import { check } from "../../errors.ts";
import type { Batch, Task, TaskSpec } from "./task.ts";

export const TRIGGER = 0;

export class InductionHeads implements Task {
  constructor(readonly spec: TaskSpec) {
    const { seqLen: L, numTokens: k, vocabSize: V } = spec;
    check(Number.isInteger(V) && V >= 2, `induction-heads: vocabulary size must be at least 2 (trigger and one token), got ${V}`);
    check(Number.isInteger(k) && k >= 1, `induction-heads: the number of tokens to recall must be a positive integer, got ${k}`);
    check(Number.isInteger(L) && L >= 2 * k + 1, `induction-heads: sequence length ${L} is too short for ${k} recalled tokens (needs at least ${2 * k + 1})`);
  }

  batch(rng: Rng, batchSize: number): Batch {
    const { seqLen: L, numTokens: k, vocabSize: V } = this.spec;
    const ids = new Int32Array(batchSize * L);
    const targets = new Int32Array(batchSize * L).fill(-1);
    for (let b = 0; b < batchSize; b++) {
      const o = b * L;
      for (let t = 0; t < L; t++) ids[o + t] = 1 + rng.int(V - 1);
      const p = rng.int(L - 2 * k); // the first trigger; its k tokens end before the final block [L-k, L)
      ids[o + p] = TRIGGER;
      const end = L - k;
      ids[o + end] = TRIGGER;
      for (let j = 0; j < k; j++) {
        const a = ids[o + p + 1 + j]!;
        targets[o + end + j] = a;
        if (j + 1 < k) ids[o + end + 1 + j] = a;
      }
    }
    return { ids, targets, shape: { batch: batchSize, seqLen: L } };
  }
}
