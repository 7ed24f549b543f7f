/**
 * MambaModel: the public face of a loaded model. Checks every request before touching any state, runs one request
 * at a time (so a rejected or concurrent call never corrupts another), and turns the Mamba LM into forward,
 * generate and stream, and the state API: prefill a prompt into a MambaState, continue, clone, save and load it.
 *
 * Continuing from a state gives the tokens of the uninterrupted run. Greedy decoding needs only the recurrent
 * state and the last logits. Seeded sampling also needs where the random stream stands and which ids the
 * repetition penalty has seen: a state keeps the distinct ids it has read and generated, and a state that
 * generation advanced (advanceState) keeps its stream's seed, stream and draws. Generation that continues such a
 * state with no new prompt ids (and no seed, or the same seed) continues that stream; otherwise the new ids
 * count as a new prompt and the stream starts at the seed, as generate(wholeText) would.
 */
import type { Backend } from "../backend/backend.ts";
import type { MambaConfig } from "../config.ts";
import { MambaError, check, checkKeys, optionKeys } from "../errors.ts";
import { type GenerateOptions, resolveOptions } from "../generate/options.ts";
import { PREFILL_CHUNK, type RowEnd, type RowsFromStates, type TokenEvent, generateTokens, prefill } from "../generate/generate.ts";
import { Rng } from "../generate/rng.ts";
import { MambaState, type SamplerPosition, StateLayout, mergeSeen, parseState } from "./state.ts";
import type { MambaLM } from "./mamba.ts";
import { isTrainingBackend } from "../backend/training.ts";
import { lossAndGrads } from "../train/backprop.ts";

export interface ForwardOptions {
  /** also return the hidden state after the final norm */
  hiddenStates?: boolean;
}
const FORWARD_OPTION_KEYS = optionKeys<ForwardOptions>({ hiddenStates: true });

export interface ForwardResult {
  /** [batch, seqLen, rows of the output head] */
  logits: Float32Array;
  /** [batch, seqLen, hiddenSize], after norm_f; only when asked for */
  lastHiddenState?: Float32Array;
}

export interface PrefillOptions {
  /** the state the ids follow (left as it was); default: the empty sequence */
  state?: MambaState;
}
const PREFILL_OPTION_KEYS = optionKeys<PrefillOptions>({ state: true });

export class MambaModel {
  private tail: Promise<void> = Promise.resolve();
  private disposed = false;
  private states: StateLayout | null = null;

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

  /**
   * Runs fn while no other call uses the model (calls made inside fn would wait for it: use model.lm there).
   * For code that drives the LM itself, such as a server's scheduler.
   */
  runExclusive<T>(fn: () => Promise<T>): Promise<T> {
    return this.exclusive(fn);
  }

  /** What this model's states hold (made once). */
  stateLayout(): StateLayout {
    this.states ??= new StateLayout(this.backend, this.config);
    return this.states;
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
      checkKeys("forward", options, FORWARD_OPTION_KEYS);
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

  /**
   * A prompt followed by its new ids; for a list of prompts, one such array per prompt. With `state` (one, or one
   * per prompt of a list) the prompt is read after the state and may be empty: then the result is the new ids.
   */
  generate(prompt: Int32Array, options?: GenerateOptions): Promise<Int32Array>;
  generate(prompts: Int32Array[], options?: GenerateOptions): Promise<Int32Array[]>;
  generate(prompt: Int32Array | Int32Array[], options?: GenerateOptions): Promise<Int32Array | Int32Array[]> {
    return this.exclusive(async () => {
      const single = !Array.isArray(prompt);
      const prompts = single ? [prompt as Int32Array] : prompt as Int32Array[];
      const out: number[][] = [];
      for await (const ev of this.rows(prompts, options, single, (ps) => ps.forEach((p) => out.push(Array.from(p))))) {
        out[ev.row]!.push(ev.id);
      }
      const result = out.map((r) => Int32Array.from(r));
      return single ? result[0]! : result;
    });
  }

  /** The new ids of one prompt, as they come; for a list of prompts, every row's new ids as { row, id }. */
  stream(prompt: Int32Array, options?: GenerateOptions): AsyncIterable<number>;
  stream(prompts: Int32Array[], options?: GenerateOptions): AsyncIterable<TokenEvent>;
  stream(prompt: Int32Array | Int32Array[], options?: GenerateOptions): AsyncIterable<number | TokenEvent> {
    const self = this;
    return {
      [Symbol.asyncIterator]: async function* () {
        const release = await self.acquire(); // the model is held for the whole stream
        try {
          const single = !Array.isArray(prompt);
          for await (const ev of self.rows(single ? [prompt as Int32Array] : prompt as Int32Array[], options, single)) {
            yield single ? ev.id : ev;
          }
        } finally {
          release();
        }
      },
    };
  }

  /** The states of a generate call, checked: one per prompt, each this model's; null without `state`. */
  private optionStates(options: GenerateOptions | undefined, count: number, single: boolean): MambaState[] | null {
    const given = options && typeof options === "object" ? options.state : undefined;
    if (given === undefined) return null;
    const states = Array.isArray(given) ? given : [given];
    if (Array.isArray(given)) {
      check(!single, `generate: ${states.length} states need a list of ${states.length} prompts (empty ones read nothing more)`);
      check(states.length === count, `generate: ${states.length} states for ${count} prompts (one state per prompt)`);
    } else check(single, `generate: one state for a list of ${count} prompts (pass one state per prompt)`);
    states.forEach((s, r) => this.checkState(s, states.length > 1 ? `generate: state ${r}` : "generate: state"));
    if (options!.advanceState) check(new Set(states).size === states.length, "generate: a state given twice cannot be advanced");
    return states;
  }

  private checkState(s: unknown, what: string): asserts s is MambaState {
    check(s instanceof MambaState, `${what} must be a MambaState (from prefill or loadState)`);
    check(!s.disposed, `${what} has been disposed`);
    check(s.layout === this.states || (s.backend === this.backend && s.layout.fingerprint === this.stateLayout().fingerprint),
      `${what} belongs to another model or backend (move it with state.toBytes() and model.loadState())`);
  }

  /**
   * Generation of rows, with or without states; the model must be held. `onPrompts` sees the prompts that are
   * read (the bos token stands for an empty prompt without a state). States to advance are replaced only once the
   * whole generation has run.
   */
  private async *rows(
    prompts: Int32Array[], options: GenerateOptions | undefined, single: boolean, onPrompts?: (p: Int32Array[]) => void,
  ): AsyncGenerator<TokenEvent> {
    const states = this.optionStates(options, prompts.length, single);
    const o = resolveOptions(options, this.config.eosTokenId, this.config.vocabSize);
    if (!states) {
      const ready = this.preparePrompts(prompts);
      onPrompts?.(ready);
      yield* generateTokens(this.lm, ready, o);
      return;
    }
    check(prompts.length > 0, "generate: no prompts");
    prompts.forEach((p, r) => {
      check(p instanceof Int32Array, `generate: prompt ${r} must be an Int32Array`);
      this.checkIds(p, prompts.length > 1 ? `generate: prompt ${r}` : "generate: prompt");
    });
    onPrompts?.(prompts);
    const layout = this.stateLayout();
    const b = this.backend;
    const parts = states.map((s) => s.parts("generate from"));
    const seedGiven = options?.seed !== undefined;
    const positions: SamplerPosition[] = [];
    const rngs = parts.map((p, r) => {
      const carried = p.sampler;
      const pos = carried && prompts[r]!.length === 0 && (!seedGiven || o.seed === carried.seed)
        ? { ...carried } : { seed: o.seed, stream: r, draws: 0 };
      positions.push(pos);
      const rng = new Rng(pos.seed, pos.stream);
      for (let i = 0; i < pos.draws; i++) rng.next();
      return rng;
    });
    if (o.maxNewTokens === 0) {
      if (o.advanceState) {
        for (let r = 0; r < states.length; r++) if (prompts[r]!.length > 0) states[r]!.replace(await this.extend(parts[r]!, prompts[r]!));
      }
      return;
    }
    const ends: (RowEnd | null)[] = states.map(() => null);
    const from: RowsFromStates = {
      starts: parts.map((p) => ({ cache: layout.cacheOf(p.tensors), logits: b.concat0([p.logits]) })),
      rngs,
      seen: parts.map((p) => p.seen),
      onRowEnd: o.advanceState ? (r, end) => { ends[r] = end; } : null,
    };
    const generated: number[][] = states.map(() => []);
    let complete = false;
    try {
      for await (const ev of generateTokens(this.lm, prompts, o, from)) {
        generated[ev.row]!.push(ev.id);
        yield ev;
      }
      complete = true;
    } finally {
      if (o.advanceState && complete) {
        states.forEach((s, r) => {
          const end = ends[r]!;
          const p = parts[r]!;
          s.replace({
            tensors: end.conv.map((c, i) => [c, end.ssm[i]!]), logits: end.logits,
            length: p.length + prompts[r]!.length + generated[r]!.length,
            seen: mergeSeen(mergeSeen(p.seen, prompts[r]!), generated[r]!),
            sampler: { ...positions[r]!, draws: positions[r]!.draws + generated[r]!.length },
          });
        });
      } else for (const end of ends) if (end) b.dispose(...end.conv, ...end.ssm, end.logits);
    }
  }

  /** A state's parts extended by ids (a new state's parts; the given ones are left as they were). */
  private async extend(from: ReturnType<MambaState["parts"]> | null, ids: Int32Array) {
    const layout = this.stateLayout();
    const start = from ? layout.cacheOf(from.tensors) : null;
    const { cache, logits } = await prefill(this.lm, ids, PREFILL_CHUNK, start);
    const tensors = layout.fromCache(cache);
    cache.dispose();
    return { tensors, logits, length: (from?.length ?? 0) + ids.length, seen: mergeSeen(from?.seen ?? new Int32Array(0), ids), sampler: null };
  }

  /**
   * Reads ids into a state: every layer's recurrent state after them, and the logits of the last one. From a
   * given state (which is left as it was), else from the empty sequence.
   */
  prefill(ids: Int32Array, options: PrefillOptions = {}): Promise<MambaState> {
    return this.exclusive(async () => {
      check(ids instanceof Int32Array, "prefill: ids must be an Int32Array");
      checkKeys("prefill", options, PREFILL_OPTION_KEYS);
      this.checkIds(ids, "prefill");
      const state = options.state;
      if (state !== undefined) this.checkState(state, "prefill: state");
      if (state && ids.length === 0) return state.clone();
      check(ids.length > 0, "prefill: no ids to read (and no state to extend)");
      return new MambaState(this.stateLayout(), await this.extend(state ? state.parts("extend") : null, ids));
    });
  }

  /**
   * A state from state.toBytes(), on this model's backend (whichever backend wrote it). Refuses, with a MambaError,
   * bytes that are not a state, a truncated or damaged one, and a state of a model of another architecture.
   */
  loadState(bytes: Uint8Array): Promise<MambaState> {
    return this.exclusive(async () => new MambaState(this.stateLayout(), parseState(bytes, this.stateLayout())));
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
