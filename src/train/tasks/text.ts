/**
 * Byte-level language modeling on a text corpus: the task behind the embedded default model.
 * A data folder holds train.txt and heldout.txt (scripts/fortunes-data.sh writes them); ids are UTF-8 bytes
 * (src/byte-tokenizer.ts), a batch is random windows of seqLen bytes, and every position is scored with the
 * byte that follows it. Held-out batches come from heldout.txt only.
 */
import { readFileSync, statSync } from "node:fs";
import path from "node:path";
import type { Rng } from "../../generate/rng.ts";
import { MambaError, check } from "../../errors.ts";
import { MambaCache } from "../../model/cache.ts";
import type { MambaLM } from "../../model/mamba.ts";
import { BYTE_VOCAB_SIZE } from "../../byte-tokenizer.ts";
import type { Batch, Task, TaskSpec } from "./task.ts";

function readText(file: string): Uint8Array {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new MambaError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)} (make the data with scripts/fortunes-data.sh)`);
  }
}

export class TextTask implements Task {
  readonly train: Uint8Array;
  readonly heldout: Uint8Array;

  constructor(readonly spec: TaskSpec) {
    check(spec.data, "text: --data <folder with train.txt and heldout.txt> is required");
    check(statSync(spec.data, { throwIfNoEntry: false })?.isDirectory(), `text: data folder not found: ${spec.data}`);
    check(spec.vocabSize >= BYTE_VOCAB_SIZE, `text: the vocabulary must hold the ${BYTE_VOCAB_SIZE} byte-level ids, got ${spec.vocabSize}`);
    this.train = readText(path.join(spec.data, "train.txt"));
    this.heldout = readText(path.join(spec.data, "heldout.txt"));
    check(this.train.length > spec.seqLen + 1, `text: ${spec.data}/train.txt is shorter than one window of ${spec.seqLen + 1} bytes`);
    check(this.heldout.length > spec.seqLen + 1, `text: ${spec.data}/heldout.txt is shorter than one window of ${spec.seqLen + 1} bytes`);
  }

  private windows(text: Uint8Array, rng: Rng, batchSize: number): Batch {
    const L = this.spec.seqLen;
    const ids = new Int32Array(batchSize * L);
    const targets = new Int32Array(batchSize * L);
    for (let b = 0; b < batchSize; b++) {
      const start = rng.int(text.length - L);
      for (let t = 0; t < L; t++) {
        ids[b * L + t] = text[start + t]!;
        targets[b * L + t] = text[start + t + 1]!;
      }
    }
    return { ids, targets, shape: { batch: batchSize, seqLen: L } };
  }

  batch(rng: Rng, batchSize: number): Batch {
    return this.windows(this.train, rng, batchSize);
  }

  evalBatch(rng: Rng, batchSize: number): Batch {
    return this.windows(this.heldout, rng, batchSize);
  }
}

/**
 * Bits per byte of a model on a whole text: the mean of -log2 p(byte | all bytes before it), the first byte
 * excluded. The text runs through in chunks that carry the recurrent state, so every byte sees its full past.
 */
export async function bitsPerByte(lm: MambaLM, text: Uint8Array, chunk = 4096): Promise<number> {
  const b = lm.backend;
  const cache = MambaCache.zeros(b, lm.config, 1);
  let nll = 0;
  let count = 0;
  try {
    for (let start = 0; start + 1 < text.length; start += chunk) {
      const end = Math.min(text.length - 1, start + chunk);
      const ids = b.fromI32(Int32Array.from(text.subarray(start, end)), [end - start]);
      const h = lm.hidden(ids, { batch: 1, seqLen: end - start }, cache);
      const logitsT = lm.logits(h);
      const logits = await b.readF32(logitsT);
      b.dispose(ids, h, logitsT);
      const V = logits.length / (end - start);
      for (let t = 0; t < end - start; t++) {
        const o = t * V;
        let max = -Infinity;
        for (let j = 0; j < V; j++) if (logits[o + j]! > max) max = logits[o + j]!;
        let sum = 0;
        for (let j = 0; j < V; j++) sum += Math.exp(logits[o + j]! - max);
        nll += Math.log(sum) + max - logits[o + text[start + t + 1]!]!;
        count++;
      }
    }
  } finally {
    cache.dispose();
  }
  return nll / count / Math.LN2;
}
