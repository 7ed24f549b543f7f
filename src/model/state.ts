/**
 * MambaState: everything a Mamba LM remembers of the tokens it has read, for one sequence. A state is fixed in size
 * whatever the length of the text behind it, which makes saving, restoring, branching and sharing prompts cheap:
 *
 *   - per layer, the recurrent state tensors of step mode (for Mamba: conv [1, K-1, E] and ssm [1, E, N], as
 *     MambaCache lays them out; the format keeps any number of tensors of any shape per layer);
 *   - the logits of the last position read ([1, V], V the head's rows), so that generation can draw the next token
 *     without reading anything again;
 *   - what the sampler needs to continue exactly where an uninterrupted run would be: the distinct ids read or
 *     generated so far (the repetition penalty counts each id once, so the set is all it needs, at most V ids), and,
 *     for a state that generation advanced, the position of its random stream (seed, stream, draws).
 *
 * Tensors live on the backend of the model that made the state (GPU buffers on WebGPU); only toBytes reads them
 * back. Each tensor is held as a matrix [rows, last dimension] of its logical shape, the form the backend's row
 * operations (concat0, takeRows) move between batches.
 *
 * toBytes() writes (all little-endian):
 *   bytes 0..7     the magic "MAMBA-TS"
 *   bytes 8..11    u32 format version (STATE_FORMAT_VERSION)
 *   bytes 12..15   u32 H, the length of the header
 *   16..16+H       the header, UTF-8 JSON padded with spaces to a multiple of 4 bytes: the model's architecture
 *                  (the config fields a state depends on) and its fingerprint, tokens read, sampler position, the
 *                  number of seen ids, and every tensor's layer, name and shape, in the order of the body
 *   body           float32 data of every tensor in header order, then the logits, then the seen ids as int32
 *   last 4 bytes   u32 CRC-32 (IEEE) of everything before it
 */
import type { Backend, Tensor } from "../backend/backend.ts";
import type { MambaConfig } from "../config.ts";
import { MambaError, check } from "../errors.ts";
import { MambaCache } from "./cache.ts";

export const STATE_MAGIC = "MAMBA-TS";
export const STATE_FORMAT_VERSION = 1;

/** Where a state's random stream stands: generation of stream `stream` of `seed` has drawn `draws` uniforms. */
export interface SamplerPosition {
  seed: number;
  stream: number;
  draws: number;
}

/** One state tensor of one layer: its name and its logical shape for one sequence. */
export interface StateTensorSpec {
  name: string;
  shape: readonly number[];
}

/** The config fields that decide what a state means: two models agreeing on these can share states. */
const ARCHITECTURE_KEYS = [
  "vocabSize", "paddedVocabSize", "hiddenSize", "intermediateSize", "stateSize", "numLayers", "convKernel",
  "timeStepRank", "useBias", "useConvBias", "tieEmbeddings", "layerNormEpsilon", "residualInFp32", "mixer",
] as const;

function architecture(config: MambaConfig): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const c = config as unknown as Record<string, unknown>;
  for (const k of ARCHITECTURE_KEYS) if (k in c) out[k] = c[k];
  // fields added to the config later (e.g. another mixer's sizes) take part too, in a fixed order
  for (const k of Object.keys(c).sort()) {
    if (!(k in out) && !["format", "eosTokenId", "bosTokenId", "padTokenId"].includes(k)) out[k] = c[k];
  }
  return out;
}

let crcTable: Uint32Array | null = null;

/** CRC-32 (IEEE 802.3, the zlib / PNG polynomial) of bytes. */
export function crc32(bytes: Uint8Array): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) crc = crcTable[(crc ^ bytes[i]!) & 0xff]! ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

const numel = (shape: readonly number[]) => shape.reduce((a, d) => a * d, 1);

/** The matrix a tensor of this logical shape is held as: [rows, last dimension]. */
function matrixShape(shape: readonly number[]): [number, number] {
  const w = shape[shape.length - 1] ?? 1;
  return [numel(shape) / w, w];
}

/**
 * What the states of one model look like: the tensors of each layer (taken from MambaCache, so that a cache of
 * another shape brings its own), the logits' width and the model's fingerprint. Made once per model.
 */
export class StateLayout {
  readonly layers: StateTensorSpec[][];
  readonly logitsWidth: number;
  readonly architecture: Record<string, unknown>;
  /** CRC-32 of the architecture's JSON, as 8 hex digits */
  readonly fingerprint: string;

  constructor(readonly backend: Backend, readonly config: MambaConfig) {
    const probe = MambaCache.zeros(backend, config, 1);
    this.layers = probe.conv.map((conv, i) => [
      { name: "conv", shape: [...conv.shape] },
      { name: "ssm", shape: [...probe.ssm[i]!.shape] },
    ]);
    probe.dispose();
    this.logitsWidth = config.paddedVocabSize;
    this.architecture = architecture(config);
    this.fingerprint = crc32(new TextEncoder().encode(JSON.stringify(this.architecture))).toString(16).padStart(8, "0");
  }

  /**
   * Copies of row `row` of a cache of `batch` rows, as one state's tensors (per layer, in the layout's order).
   * The cache's tensors may be held in any shape of the right size: rows are found by counting values.
   */
  rowOf(cache: MambaCache, batch: number, row: number): Tensor[][] {
    return this.layers.map((specs, i) => specs.map((spec) => {
      const t = spec.name === "conv" ? cache.conv[i]! : cache.ssm[i]!;
      return takeBatchRow(this.backend, t, batch, row);
    }));
  }

  /** A batch-1 cache over copies of a state's tensors (the state keeps its own). */
  cacheOf(tensors: Tensor[][]): MambaCache {
    const b = this.backend;
    return MambaCache.of(b, 1, tensors.map((l) => b.concat0([l[0]!])), tensors.map((l) => b.concat0([l[1]!])));
  }

  /** A batch-1 cache as a state's tensors: matrices [rows, last dimension] (copies; the cache is left as it was). */
  fromCache(cache: MambaCache): Tensor[][] {
    return this.rowOf(cache, 1, 0);
  }
}

/** Row `row` of a tensor that holds `batch` rows, as a matrix [rows of one batch row, last dimension] (a copy). */
export function takeBatchRow(b: Backend, t: Tensor, batch: number, row: number): Tensor {
  const w = t.shape[t.shape.length - 1] ?? 1;
  const perRow = numel(t.shape) / batch / w; // matrix rows per batch row
  const rows: number[] = [];
  for (let i = 0; i < perRow; i++) rows.push(row * perRow + i);
  return b.takeRows(t, rows);
}

/** Sorted distinct ids of a set and some more ids. */
export function mergeSeen(seen: Int32Array, more: ArrayLike<number>): Int32Array {
  if (more.length === 0) return seen;
  const set = new Set<number>(seen);
  for (let i = 0; i < more.length; i++) set.add(more[i]!);
  return Int32Array.from([...set].sort((a, b) => a - b));
}

export interface StateParts {
  tensors: Tensor[][];
  logits: Tensor;
  /** tokens read since the zero state */
  length: number;
  seen: Int32Array;
  sampler: SamplerPosition | null;
}

/**
 * The state of one sequence on one model's backend. Made by MambaModel.prefill, by generate with advanceState, by
 * clone and by MambaModel.loadState; nothing else changes it. dispose() frees its tensors (GPU memory).
 */
export class MambaState {
  #parts: StateParts | null;

  /** Made by MambaModel, not directly. */
  constructor(readonly layout: StateLayout, parts: StateParts) {
    this.#parts = parts;
  }

  /** The backend the state's tensors live on. */
  get backend(): Backend {
    return this.layout.backend;
  }

  /** Tokens read (prompt and generated) since the empty sequence. */
  get length(): number {
    return this.parts("length").length;
  }

  /** The random stream's position, when generation advanced this state; null otherwise. */
  get sampler(): SamplerPosition | null {
    const s = this.parts("sampler").sampler;
    return s && { ...s };
  }

  get disposed(): boolean {
    return this.#parts === null;
  }

  /** The live parts; a MambaError once disposed. Internal: model code reads and replaces them. */
  parts(what = "use"): StateParts {
    if (!this.#parts) throw new MambaError(`cannot ${what} a disposed MambaState`);
    return this.#parts;
  }

  /** Replaces the state's contents (generation with advanceState), freeing the old tensors. Internal. */
  replace(parts: StateParts): void {
    const old = this.parts("advance");
    this.#parts = parts;
    this.backend.dispose(...old.tensors.flat(), old.logits);
  }

  /** An independent copy: advancing or disposing either leaves the other as it is. */
  clone(): MambaState {
    const p = this.parts("clone");
    const b = this.backend;
    return new MambaState(this.layout, {
      tensors: p.tensors.map((l) => l.map((t) => b.concat0([t]))),
      logits: b.concat0([p.logits]),
      length: p.length,
      seen: p.seen.slice(),
      sampler: p.sampler && { ...p.sampler },
    });
  }

  /** The state as bytes (the format in this module's header); reads GPU tensors back. */
  async toBytes(): Promise<Uint8Array> {
    const p = this.parts("serialize");
    const b = this.backend;
    const specs = this.layout.layers;
    const data: Float32Array[] = [];
    for (const layer of p.tensors) for (const t of layer) data.push(await b.readF32(t));
    const logits = await b.readF32(p.logits);
    this.parts("serialize"); // still alive after the reads
    const header = {
      format: "mamba-ts state",
      version: STATE_FORMAT_VERSION,
      byteOrder: "little-endian",
      dtype: "float32",
      fingerprint: this.layout.fingerprint,
      architecture: this.layout.architecture,
      length: p.length,
      sampler: p.sampler,
      seen: p.seen.length,
      tensors: specs.flatMap((layer, i) => layer.map((s) => ({ layer: i, name: s.name, shape: s.shape }))),
      logits: [1, this.layout.logitsWidth],
    };
    let json = JSON.stringify(header);
    json += " ".repeat((4 - (new TextEncoder().encode(json).length % 4)) % 4);
    const head = new TextEncoder().encode(json);
    const values = data.reduce((a, d) => a + d.length, 0) + logits.length + p.seen.length;
    const out = new Uint8Array(16 + head.length + values * 4 + 4);
    const view = new DataView(out.buffer);
    out.set(new TextEncoder().encode(STATE_MAGIC), 0);
    view.setUint32(8, STATE_FORMAT_VERSION, true);
    view.setUint32(12, head.length, true);
    out.set(head, 16);
    let o = 16 + head.length;
    for (const d of [...data, logits]) {
      for (let i = 0; i < d.length; i++, o += 4) view.setFloat32(o, d[i]!, true);
    }
    for (let i = 0; i < p.seen.length; i++, o += 4) view.setInt32(o, p.seen[i]!, true);
    view.setUint32(o, crc32(out.subarray(0, o)), true);
    return out;
  }

  /** Frees the state's tensors; later use is a MambaError. Disposing twice is fine. */
  dispose(): void {
    const p = this.#parts;
    if (!p) return;
    this.#parts = null;
    this.backend.dispose(...p.tensors.flat(), p.logits);
  }
}

/** Reads toBytes' format for a model of this layout: one clear MambaError for each way bytes can be wrong. */
export function parseState(bytes: Uint8Array, layout: StateLayout): StateParts {
  check(bytes instanceof Uint8Array, "loadState: the state must be a Uint8Array (from state.toBytes())");
  const what = "loadState";
  check(bytes.length >= 16, `${what}: truncated state: ${bytes.length} bytes, not even a header`);
  const magic = new TextDecoder().decode(bytes.subarray(0, 8));
  check(magic === STATE_MAGIC, `${what}: not a mamba-ts state (the bytes do not start with "${STATE_MAGIC}")`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint32(8, true);
  check(version === STATE_FORMAT_VERSION,
    `${what}: state format version ${version}; this version of mamba-ts reads version ${STATE_FORMAT_VERSION}`);
  const H = view.getUint32(12, true);
  check(16 + H + 4 <= bytes.length, `${what}: truncated state: ${bytes.length} bytes, the header alone needs ${16 + H + 4}`);
  let header: {
    fingerprint?: unknown; architecture?: unknown; length?: unknown; sampler?: unknown; seen?: unknown;
    tensors?: { layer: number; name: string; shape: number[] }[]; logits?: unknown;
  };
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(16, 16 + H)));
  } catch {
    throw new MambaError(`${what}: damaged state: its header is not valid JSON`);
  }
  const tensors = Array.isArray(header?.tensors) ? header.tensors : null;
  const logitsShape = Array.isArray(header?.logits) ? header.logits as number[] : null;
  const seen = header?.seen;
  const validShape = (s: unknown) => Array.isArray(s) && s.every((d) => Number.isInteger(d) && d > 0);
  check(tensors !== null && tensors.every((t) => validShape(t?.shape)) && validShape(logitsShape) &&
    Number.isInteger(seen) && (seen as number) >= 0, `${what}: damaged state: its header does not describe the tensors`);
  const values = tensors.reduce((a, t) => a + numel(t.shape), 0) + numel(logitsShape!) + (seen as number);
  const expected = 16 + H + values * 4 + 4;
  check(bytes.length >= expected, `${what}: truncated state: ${bytes.length} bytes of the ${expected} its header describes`);
  check(bytes.length === expected, `${what}: damaged state: ${bytes.length - expected} bytes after its end`);
  const stored = view.getUint32(expected - 4, true);
  check(crc32(bytes.subarray(0, expected - 4)) === stored, `${what}: damaged state: its checksum does not match its contents`);

  // intact: now is it this model's?
  if (header.fingerprint !== layout.fingerprint) {
    const theirs = (header.architecture ?? {}) as Record<string, unknown>;
    const diff = Object.keys(layout.architecture).filter((k) => JSON.stringify(theirs[k]) !== JSON.stringify(layout.architecture[k]));
    const shown = diff.slice(0, 4).map((k) => `${k} ${JSON.stringify(theirs[k])} here ${JSON.stringify(layout.architecture[k])}`);
    throw new MambaError(`${what}: this state belongs to another model (fingerprint ${String(header.fingerprint)}, this ` +
      `model's is ${layout.fingerprint}${shown.length ? `: ${shown.join(", ")}` : ""})`);
  }
  const specs = layout.layers.flatMap((layer, i) => layer.map((s) => ({ layer: i, name: s.name, shape: [...s.shape] })));
  check(JSON.stringify(tensors.map((t) => ({ layer: t.layer, name: t.name, shape: t.shape }))) === JSON.stringify(specs) &&
    logitsShape![1] === layout.logitsWidth && logitsShape![0] === 1,
    `${what}: the state's tensors are not the ones this model keeps`);
  const length = header.length;
  check(Number.isInteger(length) && (length as number) >= 0, `${what}: damaged state: bad length`);
  const sampler = header.sampler as SamplerPosition | null;
  check(sampler === null || (typeof sampler === "object" && Number.isInteger(sampler.seed) &&
    Number.isInteger(sampler.stream) && sampler.stream >= 0 && Number.isInteger(sampler.draws) && sampler.draws >= 0),
  `${what}: damaged state: bad sampler position`);

  const b = layout.backend;
  let o = 16 + H;
  const readF32 = (n: number) => {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++, o += 4) out[i] = view.getFloat32(o, true);
    return out;
  };
  const host = specs.map((s) => readF32(numel(s.shape)));
  const logits = readF32(layout.logitsWidth);
  const ids = new Int32Array(seen as number);
  for (let i = 0; i < ids.length; i++, o += 4) ids[i] = view.getInt32(o, true);
  const V = layout.config.vocabSize;
  check(ids.every((id, i) => id >= 0 && id < V && (i === 0 || id > ids[i - 1]!)), `${what}: damaged state: bad seen ids`);
  // uploads last, once nothing can fail
  let k = 0;
  const tensorsOut = layout.layers.map((layer) => layer.map((s) => b.fromF32(host[k++]!, matrixShape(s.shape))));
  return { tensors: tensorsOut, logits: b.fromF32(logits, [1, layout.logitsWidth]), length: length as number, seen: ids, sampler };
}
