/**
 * Continuous batching: the scheduler owns the model and runs one loop of iterations. Each iteration
 *   1. lets go of rows whose requests ended or were cancelled (a client that went away frees its row here);
 *   2. admits waiting requests, first come first served, while the batch has fewer than maxBatch rows;
 *   3. reads prompts of admitted requests, a chunk at a time (chunks end at multiples of the prefix cache's
 *      interval; states are cached along the way and at the end), starting from the longest cached prefix; a
 *      request whose prompt is read draws its first token and joins the decode batch;
 *   4. runs one decode step of the whole batch (each row its own recurrent state, its own sampler); on a GPU,
 *      while the batch stays the same, the next step is sent before the ids of this one are read (see step()).
 * A row's state depends only on its own tokens and the ops are row-wise, so a request's tokens are the same
 * whatever else runs beside it; and a prompt is read in the same chunks whatever the cache holds. Sampled rows
 * draw from their own seeded stream (stream 0 of their seed, as model.generate of one prompt does).
 *
 * The batch's states are held as one tensor per layer and kind, [rows of every request, last dimension]; a row
 * that joins is stacked on (concat0) and rows that leave are dropped (takeRows), at step boundaries only.
 */
import type { Tensor } from "../backend/backend.ts";
import { MambaError } from "../errors.ts";
import { type MambaLM } from "../model/mamba.ts";
import type { MambaModel } from "../model/model.ts";
import { MambaCache } from "../model/cache.ts";
import { MambaState, type StateLayout, mergeSeen, takeBatchRow } from "../model/state.ts";
import { prefill, prefillBatch } from "../generate/generate.ts";
import { Rng } from "../generate/rng.ts";
import type { SamplingParams } from "../generate/options.ts";
import { PrefixCache } from "./prefix-cache.ts";

export interface JobSpec extends SamplingParams {
  /** the prompt's ids (non-empty, validated) */
  prompt: Int32Array;
  maxTokens: number;
  /** ids that end the request (kept in the output) */
  stopIds: Set<number>;
}

export type EndReason = "length" | "stop";

/** Where a request's tokens go; called from inside the scheduler's iteration. */
export interface JobSink {
  token(id: number): void;
  /** the request ended on its own (budget or stop id), or failed */
  end(reason: EndReason | "error", error?: Error): void;
}

export interface SchedulerOptions {
  maxBatch: number;
  /** bytes of states the prefix cache may hold (0: no cache) */
  prefixCacheBytes: number;
  /** prompt tokens per chunk, and the spacing of cached states along a prompt */
  chunk?: number;
}

/** A request in the scheduler, from the queue to its end. */
export class Job {
  cancelled = false;
  finished = false;
  /** tokens generated so far */
  generated = 0;
  /** where its prompt stands while it is read */
  pos = 0;
  cache: MambaCache | null = null;
  logits: Tensor | null = null;
  rng: Rng;
  history: number[] | null;
  seen: Int32Array = new Int32Array(0);
  /** the id the next decode step reads */
  last = -1;
  /** prompt tokens that came from the prefix cache */
  reused = 0;

  constructor(readonly spec: JobSpec, readonly sink: JobSink, private readonly scheduler: Scheduler) {
    this.rng = new Rng(spec.seed, 0);
    this.history = spec.repetitionPenalty !== 1 ? Array.from(spec.prompt) : null;
  }

  /** Ends the request now: no more tokens; its row is freed at the next step boundary. */
  cancel(): void {
    if (this.cancelled || this.finished) return;
    this.cancelled = true;
    this.scheduler.wake();
  }
}

export interface SchedulerStats {
  queued: number;
  prefilling: number;
  rows: number;
  maxBatch: number;
  steps: number;
  rowSteps: number;
  promptTokens: number;
  generatedTokens: number;
  prefix: { hits: number; misses: number; bytes: number; entries: number; tokensReused: number };
}

export class Scheduler {
  private readonly queue: Job[] = [];
  private readonly prefilling: Job[] = [];
  /** rows of the decode batch, in the order of the batch's tensors */
  private active: Job[] = [];
  private conv: Tensor[] = [];
  private ssm: Tensor[] = [];
  private readonly layout: StateLayout;
  private readonly lm: MambaLM;
  readonly prefix: PrefixCache;
  private readonly chunk: number;
  private readonly stateBytes: number;
  private wakeUp: (() => void) | null = null;
  private running: Promise<void> | null = null;
  private stopped = false;
  /** a decode step sent but not yet read (pipelined steps): its rows and its sampled ids [rows], read or not */
  private inFlight: { rows: Job[]; ids: Tensor; read: Promise<Int32Array> } | null = null;
  private idleWaiters: (() => void)[] = [];
  private counters = { steps: 0, rowSteps: 0, promptTokens: 0, generatedTokens: 0 };

  constructor(private readonly model: MambaModel, private readonly options: SchedulerOptions) {
    this.lm = model.lm;
    this.layout = model.stateLayout();
    this.chunk = options.chunk ?? 256;
    this.prefix = new PrefixCache(options.prefixCacheBytes, this.chunk);
    const values = this.layout.layers.flat().reduce((a, s) => a + s.shape.reduce((x, d) => x * d, 1), 0) + this.layout.logitsWidth;
    this.stateBytes = values * 4;
  }

  /** Queues a request; its tokens go to the sink as they come. */
  submit(spec: JobSpec, sink: JobSink): Job {
    if (this.stopped) throw new MambaError("the server is shutting down");
    if (spec.prompt.length === 0) throw new MambaError("empty prompt");
    const job = new Job(spec, sink, this);
    this.queue.push(job);
    this.counters.promptTokens += spec.prompt.length;
    this.wake();
    this.running ??= this.loop();
    return job;
  }

  stats(): SchedulerStats {
    return {
      queued: this.queue.filter((j) => !j.cancelled).length, prefilling: this.prefilling.length, rows: this.active.length,
      maxBatch: this.options.maxBatch, ...this.counters,
      prefix: { hits: this.prefix.hits, misses: this.prefix.misses, bytes: this.prefix.bytes, entries: this.prefix.size, tokensReused: this.prefix.tokensReused },
    };
  }

  /** Resolves when no request is queued or running. */
  idle(): Promise<void> {
    if (this.busy() === false) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  wake(): void {
    const w = this.wakeUp;
    this.wakeUp = null;
    w?.();
  }

  /** Cancels every request (their sinks hear "error") and stops the loop; the prefix cache is emptied. */
  async close(): Promise<void> {
    this.stopped = true;
    const err = new MambaError("the server is shutting down");
    for (const job of [...this.queue, ...this.prefilling, ...this.active]) {
      if (!job.cancelled && !job.finished) { job.finished = true; job.sink.end("error", err); }
      job.cancelled = true;
    }
    this.wake();
    await this.running;
    this.prefix.clear();
  }

  private busy(): boolean {
    return this.queue.length + this.prefilling.length + this.active.length > 0 || this.inFlight !== null;
  }

  private async loop(): Promise<void> {
    try {
      while (true) {
        if (!this.busy()) {
          for (const w of this.idleWaiters.splice(0)) w();
          if (this.stopped) break;
          await new Promise<void>((resolve) => { this.wakeUp = resolve; });
          continue;
        }
        try {
          await this.model.runExclusive(() => this.iteration());
        } catch (err) {
          this.failAll(err as Error);
        }
        // let the sockets breathe: new requests, disconnects, writes
        await new Promise((resolve) => setImmediate(resolve));
      }
    } finally {
      this.running = null;
    }
  }

  /** An error in the model's ops ends every running request with it; the server goes on. */
  private failAll(err: Error): void {
    if (this.inFlight) {
      this.inFlight.read.catch(() => {});
      this.lm.backend.dispose(this.inFlight.ids);
      this.inFlight = null;
    }
    for (const job of [...this.prefilling, ...this.active]) {
      if (!job.finished && !job.cancelled) { job.finished = true; job.sink.end("error", err); }
      job.cancelled = true;
    }
    this.release();
  }

  private finish(job: Job, reason: EndReason): void {
    job.finished = true;
    job.sink.end(reason);
  }

  private async iteration(): Promise<void> {
    // the batch changes only once the step in flight is read: rows leave, requests join
    const joins = this.prefilling.length > 0 || (this.queue.length > 0 && this.active.length < this.options.maxBatch);
    if (this.inFlight && (joins || this.active.some((j) => j.cancelled || j.finished))) await this.drain();
    this.release();
    // admit, first come first served
    while (this.queue.length > 0 && this.prefilling.length + this.active.length < this.options.maxBatch) {
      const job = this.queue.shift()!;
      if (job.cancelled) continue;
      const hit = this.prefix.lookup(job.spec.prompt);
      if (hit) {
        const parts = hit.state.parts();
        job.cache = this.layout.cacheOf(parts.tensors);
        job.logits = this.lm.backend.concat0([parts.logits]);
        job.seen = parts.seen.slice();
        job.pos = hit.length;
        job.reused = hit.length;
        hit.state.dispose();
      }
      this.prefilling.push(job);
    }
    await this.readPrompts();
    if (this.active.length > 0 || this.inFlight) await this.step();
    if (!this.inFlight) this.release(); // else the next iteration reads the step in flight first
  }

  /**
   * Reads admitted prompts, a chunk at a time, up to one chunk's worth of tokens per iteration (at least one
   * chunk). Short prompts of one length that start from nothing are read together, in one pass of the model (its
   * rows are computed as they would be alone). Requests whose prompt is read draw their first token and join the
   * batch, all at once.
   */
  private async readPrompts(): Promise<void> {
    const b = this.lm.backend;
    let budget = this.chunk;
    budget -= await this.readShortPrompts(budget);
    const joining: Job[] = [];
    while (this.prefilling.length > 0 && budget >= 0) {
      const job = this.prefilling[0]!;
      if (job.cancelled) { this.prefilling.shift(); this.drop(job); continue; }
      const prompt = job.spec.prompt;
      while (job.pos < prompt.length && budget > 0) {
        const end = Math.min(prompt.length, (Math.floor(job.pos / this.chunk) + 1) * this.chunk);
        const part = prompt.subarray(job.pos, end);
        const r = await prefill(this.lm, part, this.chunk, job.cache);
        job.cache = r.cache;
        b.dispose(job.logits);
        job.logits = r.logits;
        job.seen = mergeSeen(job.seen, part);
        job.pos = end;
        budget -= part.length;
        if (end % this.chunk === 0 || end === prompt.length) this.keep(job, end);
      }
      if (job.pos < prompt.length) break;
      this.prefilling.shift();
      // the prompt is read: its first token, then the batch
      const [id] = await this.sample([job], job.logits!);
      b.dispose(job.logits);
      job.logits = null;
      if (this.emit(job, id!)) {
        this.drop(job);
        continue;
      }
      joining.push(job);
    }
    if (joining.length === 0) return;
    // one copy of the batch for all that join
    const rows = joining.map((job) => {
      const row = { conv: job.cache!.conv.map((t) => takeBatchRow(b, t, 1, 0)), ssm: job.cache!.ssm.map((t) => takeBatchRow(b, t, 1, 0)) };
      job.cache!.dispose();
      job.cache = null;
      return row;
    });
    const stack = (old: Tensor[], kind: "conv" | "ssm") => rows[0]![kind].map((_, i) => {
      const parts = [...(this.active.length > 0 ? [old[i]!] : []), ...rows.map((r) => r[kind][i]!)];
      const out = parts.length === 1 ? parts[0]! : b.concat0(parts);
      if (parts.length > 1) b.dispose(...parts);
      return out;
    });
    this.conv = stack(this.conv, "conv");
    this.ssm = stack(this.ssm, "ssm");
    this.active.push(...joining);
  }

  /**
   * Prompts of one length that fit one chunk and start from nothing (no cached prefix), at the head of the
   * prefilling list, read in one batched pass. Returns the tokens read.
   */
  private async readShortPrompts(budget: number): Promise<number> {
    const b = this.lm.backend;
    const fresh = (j: Job) => !j.cancelled && j.pos === 0 && j.cache === null && j.spec.prompt.length <= this.chunk;
    const byLength = new Map<number, Job[]>();
    let taken = 0;
    for (const job of this.prefilling) {
      if (!fresh(job)) break; // in order: the first that is not one ends the run
      const L = job.spec.prompt.length;
      if (taken + L > budget) break;
      taken += L;
      const g = byLength.get(L);
      if (g) g.push(job); else byLength.set(L, [job]);
    }
    let read = 0;
    for (const [L, jobs] of byLength) {
      if (jobs.length < 2) continue; // alone: the general path
      // a pass of the whole prompt for every row (prefillBatch takes min(chunk, 4·chunk/B) positions a pass)
      const chunk = Math.max(L, Math.ceil((jobs.length * L) / 4));
      const { cache, logits } = await prefillBatch(this.lm, jobs.map((j) => j.spec.prompt), chunk);
      jobs.forEach((job, r) => {
        job.cache = MambaCache.of(b, 1, cache.conv.map((t) => takeBatchRow(b, t, jobs.length, r)), cache.ssm.map((t) => takeBatchRow(b, t, jobs.length, r)));
        job.logits = b.takeRows(logits, [r]);
        job.seen = mergeSeen(job.seen, job.spec.prompt);
        job.pos = L;
        this.keep(job, L);
      });
      cache.dispose();
      b.dispose(logits);
      read += L * jobs.length;
    }
    return read;
  }

  /** Puts a copy of a job's state after prompt[0, length) in the prefix cache. */
  private keep(job: Job, length: number): void {
    if (this.prefix.capacity === 0 || length <= job.reused) return;
    const b = this.lm.backend;
    const state = new MambaState(this.layout, {
      tensors: this.layout.fromCache(job.cache!), logits: b.concat0([job.logits!]), length, seen: job.seen.slice(), sampler: null,
    });
    this.prefix.store(job.spec.prompt, length, state, this.stateBytes);
  }

  /** The logits of one decode step of every row, from ids [B] (the batch's states advance). */
  private logitsOf(ids: Tensor): Tensor {
    const b = this.lm.backend;
    const B = this.active.length;
    const cache = MambaCache.of(b, B, this.conv, this.ssm); // a view: the batch's tensors stay ours
    let logits: Tensor | null = b.decodeStep && !this.lm.observer ? b.decodeStep(this.lm, ids, cache.conv, cache.ssm) : null;
    if (!logits) {
      const h = this.lm.hidden(ids, { batch: B, seqLen: 1 }, cache);
      logits = this.lm.logits(h);
      b.dispose(h);
    }
    this.counters.steps++;
    this.counters.rowSteps += B;
    return logits;
  }

  /**
   * One decode step of every row. On a queued backend (a GPU), while the batch stays the same and its rows share
   * one sampling setting without a repetition penalty, the step is sent before the host reads the ids of the one
   * before (the step reads them on the device): the device works while the host hands out tokens. The tokens are
   * the same either way; a row that ended with the step before wastes its row of this one.
   */
  private async step(): Promise<void> {
    const b = this.lm.backend;
    const B = this.active.length;
    if (B === 0) { await this.drain(); return; }
    const s0 = this.active[0]!.spec;
    const key = (j: Job) => `${j.spec.temperature}|${j.spec.topK}|${j.spec.topP}|${j.spec.minP}|${j.spec.repetitionPenalty}`;
    const pipelined = b.queued === true && s0.repetitionPenalty === 1 && this.active.every((j) => key(j) === key(this.active[0]!));
    if (!pipelined) {
      await this.drain();
      const ids = b.fromI32(Int32Array.from(this.active, (j) => j.last), [B]);
      const logits = this.logitsOf(ids);
      b.dispose(ids);
      const next = await this.sample(this.active, logits);
      b.dispose(logits);
      this.active.forEach((job, r) => { if (!job.cancelled && !job.finished) this.emit(job, next[r]!); });
      return;
    }
    const before = this.inFlight;
    const input = before?.ids ?? b.fromI32(Int32Array.from(this.active, (j) => j.last), [B]);
    const logits = this.logitsOf(input);
    const ids = b.sample(logits, {
      vocabSize: this.lm.config.vocabSize, temperature: s0.temperature, topK: s0.topK, topP: s0.topP, minP: s0.minP,
      repetitionPenalty: 1, history: null, uniforms: Float32Array.from(this.active, (j) => j.rng.next()),
    });
    b.dispose(logits);
    if (!before) b.dispose(input); // the step in flight's ids go once they are read
    this.inFlight = { rows: [...this.active], ids, read: b.readI32(ids) };
    if (before) {
      const host = await before.read;
      b.dispose(before.ids);
      this.hand(before.rows, host);
    }
  }

  /** Reads the step in flight, if any, and hands out its tokens. */
  private async drain(): Promise<void> {
    const f = this.inFlight;
    if (!f) return;
    this.inFlight = null;
    const host = await f.read;
    this.lm.backend.dispose(f.ids);
    this.hand(f.rows, host);
  }

  private hand(rows: Job[], ids: Int32Array): void {
    rows.forEach((job, r) => { if (!job.cancelled && !job.finished) this.emit(job, ids[r]!); });
  }

  /** Gives a job its next id; true when that ended it. */
  private emit(job: Job, id: number): boolean {
    if (job.cancelled || job.finished) return true;
    job.generated++;
    this.counters.generatedTokens++;
    job.history?.push(id);
    job.last = id;
    job.sink.token(id);
    if (job.cancelled) return true; // the sink may cancel (a stop string)
    if (job.spec.stopIds.has(id)) { this.finish(job, "stop"); return true; }
    if (job.generated >= job.spec.maxTokens) { this.finish(job, "length"); return true; }
    return false;
  }

  /** Each job's next id from its row of logits [jobs, V], rows of one sampling setting drawn together. */
  private async sample(jobs: Job[], logits: Tensor): Promise<number[]> {
    const b = this.lm.backend;
    const out = new Array<number>(jobs.length).fill(0);
    const groups = new Map<string, number[]>();
    jobs.forEach((j, r) => {
      const s = j.spec;
      const key = `${s.temperature}|${s.topK}|${s.topP}|${s.minP}|${s.repetitionPenalty}`;
      const g = groups.get(key);
      if (g) g.push(r); else groups.set(key, [r]);
    });
    for (const rows of groups.values()) {
      const s = jobs[rows[0]!]!.spec;
      const all = rows.length === jobs.length;
      const lg = all ? logits : b.takeRows(logits, rows);
      const ids = b.sample(lg, {
        vocabSize: this.lm.config.vocabSize, temperature: s.temperature, topK: s.topK, topP: s.topP, minP: s.minP,
        repetitionPenalty: s.repetitionPenalty,
        history: s.repetitionPenalty !== 1 ? rows.map((r) => Int32Array.from(jobs[r]!.history!)) : null,
        uniforms: Float32Array.from(rows, (r) => jobs[r]!.rng.next()),
      });
      if (!all) b.dispose(lg);
      const host = await b.readI32(ids);
      b.dispose(ids);
      rows.forEach((r, i) => { out[r] = host[i]!; });
    }
    return out;
  }

  /** Drops the batch rows of ended or cancelled requests (their states go with them). */
  private release(): void {
    const b = this.lm.backend;
    const keep = this.active.map((j, r) => (j.cancelled || j.finished ? -1 : r)).filter((r) => r >= 0);
    if (keep.length < this.active.length) {
      const B = this.active.length;
      const take = (t: Tensor) => {
        if (keep.length === 0) { b.dispose(t); return t; }
        const w = t.shape[t.shape.length - 1]!;
        const per = t.shape.reduce((a, d) => a * d, 1) / B / w;
        const rows: number[] = [];
        for (const r of keep) for (let i = 0; i < per; i++) rows.push(r * per + i);
        const out = b.takeRows(t, rows);
        b.dispose(t);
        return out;
      };
      this.conv = this.conv.map(take);
      this.ssm = this.ssm.map(take);
      this.active = keep.map((r) => this.active[r]!);
      if (this.active.length === 0) { this.conv = []; this.ssm = []; }
    }
    for (let i = this.prefilling.length - 1; i >= 0; i--) {
      const job = this.prefilling[i]!;
      if (job.cancelled || job.finished) { this.prefilling.splice(i, 1); this.drop(job); }
    }
    for (let i = this.queue.length - 1; i >= 0; i--) if (this.queue[i]!.cancelled) this.queue.splice(i, 1);
  }

  /** Frees what a job holds outside the batch. */
  private drop(job: Job): void {
    job.cache?.dispose();
    job.cache = null;
    this.lm.backend.dispose(job.logits);
    job.logits = null;
  }
}
