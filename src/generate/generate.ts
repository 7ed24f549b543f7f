/**
 * Autoregressive generation over a batch of prompts. Each prompt is prefilled alone (its length is its own), or
 * with its neighbours of the same length as one batch (the same states, fewer passes); the states are stacked, then all rows step together; a row that meets a stop token or its budget is
 * done and its later draws are ignored. Greedy rows come out exactly as they would alone. Sampled row r draws from
 * stream r of the seed (so that a batch of one prompt repeated gives different samples), and what it draws never
 * depends on the other rows.
 *
 * A row may start from a state (MambaModel's state API): its prompt is read after that state's cache, or, when it
 * is empty, its first draw comes from the state's logits; its random stream and the ids its repetition penalty has
 * seen come with it. When the caller asks for the rows' final states (onRowEnd), the steps run one at a time and
 * unrecorded, and a row's state is taken right after the step that read its last id.
 */
import type { Captured, SampleRequest, Tensor } from "../backend/backend.ts";
import { MambaCache } from "../model/cache.ts";
import type { MambaLM } from "../model/mamba.ts";
import { takeBatchRow } from "../model/state.ts";
import type { ResolvedOptions } from "./options.ts";
import { Rng } from "./rng.ts";

export interface TokenEvent {
  row: number;
  id: number;
}

/** Prompt tokens per prefill chunk: bounds the memory of long prompts; the state carries across chunks. */
export const PREFILL_CHUNK = 2048;

/** Decode steps a queued backend may have in flight: enough to hide a readback behind the GPU's work, few enough
 *  that a stop token wastes little. */
export const PIPELINE_DEPTH = 3;

/**
 * Runs a prompt through the model and returns its cache and the logits of its last position ([1, V]). From a
 * given batch-1 cache (advanced in place and returned), else from zeros.
 */
export async function prefill(
  lm: MambaLM, prompt: Int32Array, chunk = PREFILL_CHUNK, from: MambaCache | null = null,
): Promise<{ cache: MambaCache; logits: Tensor }> {
  const b = lm.backend;
  const cache = from ?? MambaCache.zeros(b, lm.config, 1);
  let last: Tensor | null = null;
  for (let start = 0; start < prompt.length; start += chunk) {
    const part = prompt.subarray(start, Math.min(prompt.length, start + chunk));
    const ids = b.fromI32(part, [part.length]);
    const h = lm.hidden(ids, { batch: 1, seqLen: part.length }, cache);
    if (start + chunk >= prompt.length) last = b.takeRows(h, [part.length - 1]);
    b.dispose(ids, h);
  }
  const logits = lm.logits(last!);
  b.dispose(last);
  return { cache, logits };
}

/**
 * Prefill of prompts of one length as one batch: the same states and logits as prefilling each alone, with the
 * batch's rows in one pass of up to 4 · chunk tokens. Returns the cache and each prompt's last logits ([B, V]).
 */
export async function prefillBatch(lm: MambaLM, prompts: Int32Array[], chunk = PREFILL_CHUNK): Promise<{ cache: MambaCache; logits: Tensor }> {
  const b = lm.backend;
  const B = prompts.length;
  const L = prompts[0]!.length;
  const cache = MambaCache.zeros(b, lm.config, B);
  const step = Math.max(1, Math.min(chunk, Math.floor((4 * chunk) / B))); // positions per pass
  let last: Tensor | null = null;
  for (let start = 0; start < L; start += step) {
    const len = Math.min(step, L - start);
    const part = new Int32Array(B * len);
    prompts.forEach((p, r) => part.set(p.subarray(start, start + len), r * len));
    const ids = b.fromI32(part, [part.length]);
    const h = lm.hidden(ids, { batch: B, seqLen: len }, cache);
    if (start + step >= L) last = b.takeRows(h, prompts.map((_, r) => r * len + len - 1));
    b.dispose(ids, h);
  }
  const logits = lm.logits(last!);
  b.dispose(last);
  return { cache, logits };
}

function throwIfAborted(signal: AbortSignal | null): void {
  if (signal?.aborted) throw signal.reason ?? new DOMException("generation aborted", "AbortError");
}

/**
 * Lets timers and other events run (an AbortSignal.timeout, a SIGINT handler calling abort): a backend whose reads
 * resolve at once (the CPU) would otherwise keep generation in the microtask queue until it ends.
 */
function nextTurn(): Promise<void> {
  return new Promise((resolve) => (typeof setImmediate === "function" ? setImmediate(resolve) : setTimeout(resolve, 0)));
}

/** A row's state to continue from: a batch-1 cache and the logits of its last position ([1, V]). */
export interface RowStart {
  cache: MambaCache;
  logits: Tensor;
}

/** A row's state once it is done: the tensors of its cache row (per layer conv, ssm) and its next logits [1, V]. */
export interface RowEnd {
  conv: Tensor[];
  ssm: Tensor[];
  logits: Tensor;
}

/** What generation from states adds to the plain options (MambaModel.generate with `state`). */
export interface RowsFromStates {
  /** per row: the state its prompt follows (owned by generateTokens from then on), or null (zeros) */
  starts: (RowStart | null)[];
  /** per row: its random stream (default: stream r of the seed) */
  rngs: Rng[];
  /** per row: the ids the repetition penalty has seen before the prompt */
  seen: Int32Array[];
  /** when set, called once for each row when it is done with its state after its last new id (the callee owns
   *  the tensors): the ops run one step at a time and unrecorded, so that the cache names the states */
  onRowEnd: ((row: number, end: RowEnd) => void) | null;
}

/** Copies of row r of a batch's cache: tensors held as matrices [rows, last dimension]. */
function cacheRow(b: MambaLM["backend"], cache: MambaCache, B: number, r: number): { conv: Tensor[]; ssm: Tensor[] } {
  return { conv: cache.conv.map((t) => takeBatchRow(b, t, B, r)), ssm: cache.ssm.map((t) => takeBatchRow(b, t, B, r)) };
}

/** The same data as a matrix [rows, last dimension], the form states of one row take (a copy when it is not). */
function asMatrix(b: MambaLM["backend"], t: Tensor): Tensor {
  if (t.shape.length === 2) return t;
  const w = t.shape[t.shape.length - 1]!;
  const rows = t.shape.reduce((a, d) => a * d, 1) / w;
  const out = b.takeRows(t, Array.from({ length: rows }, (_, i) => i));
  b.dispose(t);
  return out;
}

/**
 * Yields every new token of every row as it comes. Prompts must be validated, and non-empty unless their row
 * starts from a state.
 */
export async function* generateTokens(
  lm: MambaLM, prompts: Int32Array[], o: ResolvedOptions, from: RowsFromStates | null = null,
): AsyncGenerator<TokenEvent> {
  const b = lm.backend;
  const B = prompts.length;
  const starts = from?.starts ?? null;
  const disposeStarts = () => { for (const s of starts ?? []) if (s) { s.cache.dispose(); b.dispose(s.logits); } };
  if (o.maxNewTokens === 0) { disposeStarts(); return; }
  try {
    throwIfAborted(o.signal);
  } catch (err) {
    disposeStarts();
    throw err;
  }
  const parts: { cache: MambaCache; logits: Tensor }[] = [];
  try {
    for (let i = 0; i < B;) {
      const start = starts?.[i] ?? null;
      if (start) {
        // a row that continues a state reads its prompt from there (or nothing more)
        if (prompts[i]!.length === 0) {
          parts.push(start);
          starts![i] = null; // ours now: freed with the parts
        } else {
          const read = await prefill(lm, prompts[i]!, PREFILL_CHUNK, start.cache); // advances start.cache
          starts![i] = null;
          parts.push(read);
          b.dispose(start.logits);
        }
        i++;
      } else {
        // consecutive prompts of one length are prefilled together (rows stay in order)
        let j = i + 1;
        while (j < B && !starts?.[j] && prompts[j]!.length === prompts[i]!.length) j++;
        parts.push(j - i === 1 ? await prefill(lm, prompts[i]!) : await prefillBatch(lm, prompts.slice(i, j)));
        i = j;
      }
      throwIfAborted(o.signal);
    }
  } catch (err) {
    for (const part of parts) { part.cache.dispose(); b.dispose(part.logits); }
    disposeStarts();
    throw err;
  }
  const one = parts.length === 1;
  if (!one && starts) {
    // rows of states are held as matrices: the batch is stacked in that one form
    for (const part of parts) {
      part.cache = MambaCache.of(b, part.cache.batch, part.cache.conv.map((t) => asMatrix(b, t)), part.cache.ssm.map((t) => asMatrix(b, t)));
    }
  }
  const cache = one ? parts[0]!.cache : MambaCache.concat(parts.map((p) => p.cache));
  let logits = one ? parts[0]!.logits : b.concat0(parts.map((p) => p.logits));
  if (!one) for (const part of parts) { part.cache.dispose(); b.dispose(part.logits); }

  const rngs = from?.rngs ?? prompts.map((_, r) => new Rng(o.seed, r));
  const history = o.repetitionPenalty !== 1 ? prompts.map((p, r) => [...(from?.seen[r] ?? []), ...p]) : null;
  const onRowEnd = from?.onRowEnd ?? null;
  const emitted = new Array<number>(B).fill(0);
  const done = new Array<boolean>(B).fill(false);
  let remaining = B;
  // the uniforms of step s are drawn when step s is sampled, in step order, pipelined or not
  const request = (): SampleRequest => {
    const uniforms = new Float32Array(B);
    for (let r = 0; r < B; r++) uniforms[r] = rngs[r]!.next();
    return {
      vocabSize: lm.config.vocabSize, temperature: o.temperature, topK: o.topK, topP: o.topP, minP: o.minP,
      repetitionPenalty: o.repetitionPenalty, history: history?.map((h) => Int32Array.from(h)) ?? null, uniforms,
    };
  };
  const stepper = new Stepper(lm, B, cache, onRowEnd === null);
  /** Runs the step after `ids` and samples it; the read of its ids starts (and submits it) at once. Rows that
   *  end with `ids` hand over their states first. */
  const advance = (ids: Tensor, ending: number[] = []) => {
    const lg = stepper.logits(ids);
    for (const r of ending) onRowEnd!(r, { ...cacheRow(b, cache, B, r), logits: b.takeRows(lg, [r]) });
    const next = b.sample(lg, request());
    stepper.done(lg);
    return { ids: next, read: b.readI32(next) };
  };
  // A queued backend (a GPU) works on the next steps while the host waits for the ids of step s: up to
  // PIPELINE_DEPTH steps are in flight. The repetition penalty needs each step's ids before the next draw, so it
  // runs one step at a time, as does a generation that hands over its rows' states.
  const depth = b.queued === true && history === null && onRowEnd === null ? PIPELINE_DEPTH : 1;
  const queue: { ids: Tensor; read: Promise<Int32Array> }[] = [];
  let sampled = 0; // steps sampled so far
  try {
    for (let step = 0; step < o.maxNewTokens; step++) {
      if (o.signal) await nextTurn();
      throwIfAborted(o.signal);
      if (sampled === 0) {
        const ids = b.sample(logits, request());
        b.dispose(logits);
        queue.push({ ids, read: b.readI32(ids) });
        sampled = 1;
      }
      while (queue.length < depth && sampled < o.maxNewTokens) {
        queue.push(advance(queue[queue.length - 1]!.ids));
        sampled++;
      }
      const cur = queue[0]!;
      const host = await cur.read;
      const ending: number[] = [];
      for (let r = 0; r < B; r++) {
        if (done[r]) continue;
        const id = host[r]!;
        history?.[r]!.push(id);
        emitted[r]!++;
        yield { row: r, id };
        if (o.stopTokens.has(id)) { done[r] = true; remaining--; ending.push(r); }
      }
      const last = remaining === 0 || step === o.maxNewTokens - 1;
      if (onRowEnd) {
        if (last) for (let r = 0; r < B; r++) if (!done[r]) ending.push(r);
        // the states after a row's last id: one more step reads those ids
        if (ending.length > 0) {
          queue.push(advance(cur.ids, ending));
          sampled++;
        }
      }
      if (last) return;
      if (queue.length === 1) {
        queue.push(advance(cur.ids)); // one step at a time: the next draw needed this step's ids
        sampled++;
      }
      queue.shift();
      b.dispose(cur.ids);
    }
  } finally {
    for (const pending of queue) {
      pending.read.catch(() => {}); // a speculative step's ids are not wanted
      b.dispose(pending.ids);
    }
    stepper.dispose();
    cache.dispose();
  }
}

/**
 * Decode steps of one generation, ids [B] -> logits [B, V], the fastest way the backend offers: its fused step
 * when it has one for this model and batch; else the model's ops one by one, recorded and replayed
 * (Backend.capture: the host encodes a batch-64 step of 130m, 244 dispatches, in milliseconds, a replay in
 * microseconds); else the ops one by one each step. Nothing is fused or recorded while an observer watches the
 * mixers (it must see every step).
 *
 * A recorded step reads the states from fixed buffers and writes them to others, so two recordings alternate:
 * the first reads where the prefill left the states and writes the second's inputs, and so on. After an odd
 * number of runs the states lie in the buffers the cache's tensors no longer name; generateTokens disposes the
 * cache with the Stepper, so nothing reads them.
 */
class Stepper {
  private captured: { ids: Tensor; steps: [Captured, Captured]; runs: number } | null = null;

  /** record: may record the step (the cache's tensors then stop naming the states, see above) */
  constructor(private readonly lm: MambaLM, private readonly B: number, private readonly cache: MambaCache, private readonly record = true) {}

  logits(ids: Tensor): Tensor {
    const { lm, B, cache } = this;
    const b = lm.backend;
    // the backend's fused step, where it takes this model's layer (it declines the others, e.g. Falcon-Mamba's)
    const fused = b.decodeStep && !lm.observer ? b.decodeStep(lm, ids, cache.conv, cache.ssm) : null;
    if (fused) return fused;
    if (b.capture && !lm.observer && this.record) {
      if (!this.captured) {
        const fixed = b.fromI32(new Int32Array(B), [B]);
        const record = () => b.capture!(() => {
          const h = lm.hidden(fixed, { batch: B, seqLen: 1 }, cache);
          const lg = lm.logits(h);
          b.dispose(h);
          return lg;
        });
        const first = record();
        this.captured = { ids: fixed, steps: [first, record()], runs: 0 };
      }
      const c = this.captured;
      const step = c.steps[c.runs++ % 2]!;
      b.copyInto(c.ids, ids);
      step.run();
      return step.output;
    }
    const h = lm.hidden(ids, { batch: B, seqLen: 1 }, cache);
    const logits = lm.logits(h);
    b.dispose(h);
    return logits;
  }

  /** After the logits of a step are used: frees them unless a recording owns them. */
  done(logits: Tensor): void {
    if (!this.captured?.steps.some((s) => s.output === logits)) this.lm.backend.dispose(logits);
  }

  dispose(): void {
    if (!this.captured) return;
    for (const s of this.captured.steps) s.dispose();
    this.lm.backend.dispose(this.captured.ids);
    this.captured = null;
  }
}
