/**
 * MambaModel: the public face of a loaded model. Checks every request before touching any state, runs one request
 * at a time (so a rejected or concurrent call never corrupts another), and turns the Mamba LM into forward,
 * generate and stream.
 */
import type { Backend } from "../backend/backend.ts";
import type { MambaConfig } from "../config.ts";
import { MambaError, check } from "../errors.ts";
import { type GenerateOptions, resolveOptions } from "../generate/options.ts";
import { generateTokens } from "../generate/generate.ts";
import type { MambaLM } from "./mamba.ts";
import { isTrainingBackend } from "../backend/training.ts";
import { lossAndGrads } from "../train/backprop.ts";

export interface ForwardOptions {
  /** also return the hidden state after the final norm */
  hiddenStates?: boolean;
}

export interface ForwardResult {
  /** [batch, seqLen, rows of the output head] */
  logits: Float32Array;
  /** [batch, seqLen, hiddenSize], after norm_f; only when asked for */
  lastHiddenState?: Float32Array;
}

export class MambaModel {
  private tail: Promise<void> = Promise.resolve();
  private disposed = false;

  constructor(
    readonly lm: MambaLM,
    /** where the weights came from and in which dtype they were stored */
    readonly info: { source: string; folder: string; dtype: string },
  ) {}

  get config(): MambaConfig {
    return this.lm.config;
  }
  get backend(): Backend {
    return this.lm.backend;
  }

  /** Waits for every earlier request to settle; returns the function that lets the next one run. */
  private async acquire(): Promise<() => void> {
    let release!: () => void;
    const prev = this.tail;
    this.tail = new Promise<void>((r) => (release = r));
    await prev;
    if (this.disposed) {
      release();
      throw new MambaError("the model has been disposed");
    }
    return release;
  }

  private async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire();
    try {
      return await fn();
    } finally {
      release();
    }
  }

  private checkIds(ids: ArrayLike<number>, what: string): void {
    const V = this.config.vocabSize;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (!(Number.isInteger(id) && id >= 0 && id < V)) {
        throw new MambaError(`${what}: token id ${id} at position ${i} is outside the vocabulary [0, ${V})`);
      }
    }
  }

  /** ids: row-major [batch, seqLen] -> logits [batch, seqLen, V] (and the final hidden state if asked). */
  forward(ids: Int32Array, shape: { batch: number; seqLen: number }, options: ForwardOptions = {}): Promise<ForwardResult> {
    return this.exclusive(async () => {
      check(ids instanceof Int32Array, "forward: ids must be an Int32Array");
      check(shape && Number.isInteger(shape.batch) && shape.batch > 0 && Number.isInteger(shape.seqLen) && shape.seqLen > 0,
        `forward: batch and seqLen must be positive integers, got ${JSON.stringify(shape)}`);
      check(ids.length === shape.batch * shape.seqLen,
        `forward: ids has ${ids.length} values but batch ${shape.batch} x seqLen ${shape.seqLen} = ${shape.batch * shape.seqLen}`);
      this.checkIds(ids, "forward");
      const b = this.backend;
      const idt = b.fromI32(ids, [ids.length]);
      const hidden = this.lm.hidden(idt, shape, null);
      const logits = this.lm.logits(hidden);
      const out: ForwardResult = { logits: await b.readF32(logits) };
      if (options.hiddenStates) out.lastHiddenState = await b.readF32(hidden);
      b.dispose(idt, hidden, logits);
      return out;
    });
  }

  /**
   * Next-token cross-entropy on ids [batch, seqLen] (mean over positions 0..seqLen-2 of every row) and its gradient
   * for every parameter, keyed by the checkpoint's tensor names (a tied head's share is in the embeddings').
   * Needs a backend with training ops (the CPU and WebGPU backends have them).
   */
  lossAndGrads(ids: Int32Array, shape: { batch: number; seqLen: number }): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
    return this.exclusive(async () => {
      check(ids instanceof Int32Array, "lossAndGrads: ids must be an Int32Array");
      check(shape && Number.isInteger(shape.batch) && shape.batch > 0 && Number.isInteger(shape.seqLen) && shape.seqLen > 1,
        `lossAndGrads: batch must be a positive integer and seqLen an integer >= 2, got ${JSON.stringify(shape)}`);
      check(ids.length === shape.batch * shape.seqLen,
        `lossAndGrads: ids has ${ids.length} values but batch ${shape.batch} x seqLen ${shape.seqLen} = ${shape.batch * shape.seqLen}`);
      this.checkIds(ids, "lossAndGrads");
      const b = this.backend;
      check(isTrainingBackend(b), `lossAndGrads: the ${b.name} backend has no training ops (TrainingBackend); the cpu and webgpu backends have them`);
      return lossAndGrads(this.lm, b, ids, shape);
    });
  }

  private preparePrompts(prompts: Int32Array[]): Int32Array[] {
    check(prompts.length > 0, "generate: no prompts");
    return prompts.map((p, r) => {
      check(p instanceof Int32Array, `generate: prompt ${r} must be an Int32Array`);
      this.checkIds(p, prompts.length > 1 ? `generate: prompt ${r}` : "generate: prompt");
      if (p.length > 0) return p;
      check(this.config.bosTokenId !== null, "generate: the prompt is empty and the model has no bos token to start from");
      return Int32Array.of(this.config.bosTokenId);
    });
  }

  /** A prompt followed by its new ids; for a list of prompts, one such array per prompt. */
  generate(prompt: Int32Array, options?: GenerateOptions): Promise<Int32Array>;
  generate(prompts: Int32Array[], options?: GenerateOptions): Promise<Int32Array[]>;
  generate(prompt: Int32Array | Int32Array[], options?: GenerateOptions): Promise<Int32Array | Int32Array[]> {
    return this.exclusive(async () => {
      const single = !Array.isArray(prompt);
      const prompts = this.preparePrompts(single ? [prompt as Int32Array] : prompt as Int32Array[]);
      const o = resolveOptions(options, this.config.eosTokenId, this.config.vocabSize);
      const out = prompts.map((p) => Array.from(p));
      for await (const ev of generateTokens(this.lm, prompts, o)) out[ev.row]!.push(ev.id);
      const result = out.map((r) => Int32Array.from(r));
      return single ? result[0]! : result;
    });
  }

  /** The new ids of one prompt, as they come. */
  stream(prompt: Int32Array, options?: GenerateOptions): AsyncIterable<number> {
    const self = this;
    return {
      [Symbol.asyncIterator]: async function* () {
        const release = await self.acquire(); // the model is held for the whole stream
        try {
          const [p] = self.preparePrompts([prompt]);
          const o = resolveOptions(options, self.config.eosTokenId, self.config.vocabSize);
          for await (const ev of generateTokens(self.lm, [p!], o)) yield ev.id;
        } finally {
          release();
        }
      },
    };
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    const release = await this.acquire().catch(() => null);
    if (!release) return;
    this.disposed = true;
    release();
    await this.backend.destroy();
  }
}
