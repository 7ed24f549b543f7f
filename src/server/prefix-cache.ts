/**
 * The server's prefix cache: an LRU of model states keyed by the token prefix they have read, bounded in bytes.
 * Where the state API pays off: a Mamba state is a few hundred kB whatever the prefix's length, so a long shared
 * prompt (a system prompt, a document, the turns of a conversation) is read once and every later request that
 * starts with it continues from its state.
 *
 * States are kept at every multiple of `interval` tokens along a prompt and at its end. A request starts from the
 * entry of its whole prompt when there is one, else from the longest kept multiple of `interval`: prompts are read
 * in chunks that end at those multiples, so a request reads exactly what it would read with an empty cache and
 * its answer never depends on what the cache holds.
 */
import type { MambaState } from "../model/state.ts";

interface Entry {
  ids: Int32Array;
  state: MambaState;
  bytes: number;
}

export interface PrefixHit {
  /** a copy of the cached state (the caller's to dispose) */
  state: MambaState;
  /** tokens of the prompt it has read */
  length: number;
}

/** FNV-1a over the ids, 32 bits: a key's first part; entries compare their ids in full. */
function hashIds(ids: Int32Array, length: number): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < length; i++) {
    const v = ids[i]!;
    for (let k = 0; k < 4; k++) h = Math.imul(h ^ ((v >>> (8 * k)) & 0xff), 0x01000193);
  }
  return `${length}:${(h >>> 0).toString(16)}`;
}

export class PrefixCache {
  // a Map iterates in insertion order: the first entry is the least recently used
  private readonly entries = new Map<string, Entry>();
  private used = 0;
  hits = 0;
  misses = 0;
  /** prompt tokens that requests did not have to read */
  tokensReused = 0;

  constructor(
    /** the budget in bytes; 0 turns the cache off */
    readonly capacity: number,
    /** states are kept every `interval` tokens along a prompt */
    readonly interval: number,
  ) {}

  get bytes(): number {
    return this.used;
  }
  get size(): number {
    return this.entries.size;
  }

  /** The longest usable cached prefix of a prompt (see the header), or null. */
  lookup(prompt: Int32Array): PrefixHit | null {
    if (this.capacity === 0) return null;
    const L = prompt.length;
    const lengths = [L];
    for (let k = Math.floor(L / this.interval) * this.interval; k > 0; k -= this.interval) if (k !== L) lengths.push(k);
    for (const len of lengths) {
      const key = hashIds(prompt, len);
      const e = this.entries.get(key);
      if (!e || e.ids.length !== len || e.state.disposed) continue;
      let same = true;
      for (let i = 0; i < len && same; i++) same = e.ids[i] === prompt[i];
      if (!same) continue;
      this.entries.delete(key); // most recently used now
      this.entries.set(key, e);
      this.hits++;
      this.tokensReused += len;
      return { state: e.state.clone(), length: len };
    }
    this.misses++;
    return null;
  }

  /** Keeps the state of prompt[0, length) (the cache owns it from now on), evicting the least recently used
   *  entries past the budget. */
  store(prompt: Int32Array, length: number, state: MambaState, bytes: number): void {
    if (this.capacity === 0 || bytes > this.capacity) { state.dispose(); return; }
    const key = hashIds(prompt, length);
    const old = this.entries.get(key);
    if (old) {
      this.entries.delete(key);
      this.entries.set(key, old);
      state.dispose();
      return;
    }
    this.entries.set(key, { ids: prompt.slice(0, length), state, bytes });
    this.used += bytes;
    for (const [k, e] of this.entries) {
      if (this.used <= this.capacity) break;
      this.entries.delete(k);
      this.used -= e.bytes;
      e.state.dispose();
    }
  }

  clear(): void {
    for (const e of this.entries.values()) e.state.dispose();
    this.entries.clear();
    this.used = 0;
  }
}
