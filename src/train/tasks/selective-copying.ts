/**
 * Selective copying (paper section 4.1, Table 1; Figure 2): numTokens content tokens sit at random positions of a
 * region filled with a noise token; after it come numTokens marker tokens, and at the j-th marker the model must
 * output the j-th content token (in order of appearance). Only the marker positions are scored.
 *
 *   ids:     n n c0 n n n c1 n c2 n ... n | M  M  M        (n noise, M marker; region length L − numTokens)
 *   targets: -1 ...                    -1 | c0 c1 c2
 *
 * Ids: 0 = noise, 1 = marker, 2 .. vocabSize−1 = content. A time-invariant (LTI) model cannot do this: where the
 * content sits varies from sequence to sequence, so what it must carry depends on the input itself.
 */
import type { Rng } from "../../generate/rng.ts";
import { check } from "../../errors.ts";
import type { Batch, Task, TaskSpec } from "./task.ts";

export const NOISE = 0;
export const MARKER = 1;

export class SelectiveCopying implements Task {
  constructor(readonly spec: TaskSpec) {
    const { seqLen: L, numTokens: k, vocabSize: V } = spec;
    check(Number.isInteger(V) && V >= 3, `selective-copying: vocabulary size must be at least 3 (noise, marker, one content token), got ${V}`);
    check(Number.isInteger(k) && k >= 1, `selective-copying: the number of tokens to copy must be a positive integer, got ${k}`);
    check(Number.isInteger(L) && L >= 2 * k, `selective-copying: sequence length ${L} is too short for ${k} tokens (needs at least ${2 * k})`);
  }

  batch(rng: Rng, batchSize: number): Batch {
    const { seqLen: L, numTokens: k, vocabSize: V } = this.spec;
    const region = L - k;
    const ids = new Int32Array(batchSize * L);
    const targets = new Int32Array(batchSize * L).fill(-1);
    const pos = new Int32Array(region);
    for (let b = 0; b < batchSize; b++) {
      const o = b * L;
      // k distinct positions of the region: a partial Fisher-Yates shuffle, then in order
      for (let i = 0; i < region; i++) pos[i] = i;
      for (let i = 0; i < k; i++) {
        const j = i + rng.int(region - i);
        const t = pos[i]!; pos[i] = pos[j]!; pos[j] = t;
      }
      const chosen = Array.from(pos.subarray(0, k)).sort((a, c) => a - c);
      chosen.forEach((p, j) => {
        const c = 2 + rng.int(V - 2);
        ids[o + p] = c;
        ids[o + region + j] = MARKER;
        targets[o + region + j] = c;
      });
    }
    return { ids, targets, shape: { batch: batchSize, seqLen: L } };
  }
}
