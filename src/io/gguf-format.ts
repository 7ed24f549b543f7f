/**
 * The GGUF container (llama.cpp's model format, versions 2 and 3) on bytes in memory, with no file system: usable
 * in browsers. Little-endian throughout:
 *
 *   "GGUF"  u32 version  u64 tensor_count  u64 metadata_count
 *   metadata_count × (string key, u32 value_type, value)       strings: u64 byte length + UTF-8
 *   tensor_count × (string name, u32 n_dims, u64 dims[n_dims] (fastest-varying first), u32 ggml_type,
 *                   u64 offset from the start of the data section)
 *   padding to `general.alignment` (default 32), then the data section; each tensor starts at a multiple of the
 *   alignment.
 *
 * The reader trusts nothing: every read is bounds-checked (a damaged count cannot make it allocate more than the
 * file holds), tensors must lie inside the data section at aligned offsets, and their types must be known.
 * Model-level meaning (names, config, tokenizer) is in ./gguf.ts.
 */
import { MambaError, check } from "../errors.ts";
import type { HostDType, HostTensor } from "./tensor.ts";
import { numel } from "./tensor.ts";
import { BLOCK_BYTES, QK } from "./quant.ts";

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_DEFAULT_ALIGNMENT = 32;

/** GGUF metadata value types */
export const GgufType = {
  UINT8: 0, INT8: 1, UINT16: 2, INT16: 3, UINT32: 4, INT32: 5, FLOAT32: 6, BOOL: 7, STRING: 8, ARRAY: 9,
  UINT64: 10, INT64: 11, FLOAT64: 12,
} as const;
export type GgufType = (typeof GgufType)[keyof typeof GgufType];

const TYPE_NAMES = Object.keys(GgufType);

/**
 * A metadata value with its stored type (kept so that a file can be written back with the same types): a number
 * (64-bit integers are bigints when they are not safe integers), a boolean, a string, or for ARRAY a JS array of
 * items of `itemType` (nested arrays as { itemType, items }).
 */
export interface GgufValue {
  type: GgufType;
  itemType?: GgufType;
  value: unknown;
}

/** ggml tensor types: id -> name (all that llama.cpp defines, so that an unsupported one is named) */
export const GGML_TYPE_NAMES: Record<number, string> = {
  0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K",
  12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S",
  20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
  29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
};

/** The ggml types mamba-ts reads, with their ids. */
export const GGML_TYPE_IDS: Record<HostDType, number> = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8, BF16: 30 };
const READABLE: Record<number, HostDType> = { 0: "F32", 1: "F16", 2: "Q4_0", 8: "Q8_0", 30: "BF16" };

export interface GgufTensorInfo {
  name: string;
  /** dims as stored: fastest-varying first (the reverse of PyTorch's shape) */
  dims: number[];
  /** ggml type id */
  type: number;
  /** offset from the start of the data section */
  offset: number;
}

export interface GgufFile {
  version: number;
  metadata: Map<string, GgufValue>;
  tensors: GgufTensorInfo[];
  alignment: number;
  /** where the data section starts in the file */
  dataOffset: number;
}

/** Bytes that a tensor of `n` elements takes in a readable type (quantized: whole 32-value blocks). */
export function ggmlBytes(dtype: HostDType, n: number): number {
  if (dtype === "Q8_0" || dtype === "Q4_0") return (n / QK) * BLOCK_BYTES[dtype];
  return n * (dtype === "F32" ? 4 : 2);
}

/**
 * Thrown by parseGgufHeader when it was given only the head of a file and the header goes on past it: the
 * caller reads more of the file and tries again (not a MambaError: the file is not known to be damaged).
 */
export class NeedMoreBytes extends Error {
  override name = "NeedMoreBytes";
}

// bounds-checked little-endian reads; `what` says which part of the file was being read when it ran out
class Cursor {
  pos = 0;
  private readonly view: DataView;
  private readonly utf8 = new TextDecoder("utf-8", { fatal: true });
  /** `bytes` is the file's first bytes, `total` the file's whole size */
  constructor(private readonly bytes: Uint8Array, readonly where: string, private readonly total: number) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  /** bytes left in the whole file */
  get left(): number {
    return this.total - this.pos;
  }
  need(n: number, what: string): void {
    check(n <= this.left, () => `${this.where}: ${what} runs past the end of the file (at byte ${this.pos}, ${n} bytes needed, ${this.left} left); the file is truncated or damaged`);
    if (this.pos + n > this.bytes.length) throw new NeedMoreBytes(`the header goes on past byte ${this.bytes.length}`);
  }
  u8(what: string): number { this.need(1, what); return this.view.getUint8(this.pos++); }
  i8(what: string): number { this.need(1, what); return this.view.getInt8(this.pos++); }
  u16(what: string): number { this.need(2, what); const v = this.view.getUint16(this.pos, true); this.pos += 2; return v; }
  i16(what: string): number { this.need(2, what); const v = this.view.getInt16(this.pos, true); this.pos += 2; return v; }
  u32(what: string): number { this.need(4, what); const v = this.view.getUint32(this.pos, true); this.pos += 4; return v; }
  i32(what: string): number { this.need(4, what); const v = this.view.getInt32(this.pos, true); this.pos += 4; return v; }
  f32(what: string): number { this.need(4, what); const v = this.view.getFloat32(this.pos, true); this.pos += 4; return v; }
  f64(what: string): number { this.need(8, what); const v = this.view.getFloat64(this.pos, true); this.pos += 8; return v; }
  u64(what: string): number | bigint {
    this.need(8, what);
    const v = this.view.getBigUint64(this.pos, true);
    this.pos += 8;
    return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  }
  i64(what: string): number | bigint {
    this.need(8, what);
    const v = this.view.getBigInt64(this.pos, true);
    this.pos += 8;
    return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(v) : v;
  }
  /** a u64 count that must be a safe integer of at most `limit` */
  count(what: string, limit: number): number {
    const v = this.u64(what);
    check(typeof v === "number" && v <= limit, () => `${this.where}: ${what} is ${v}, more than the rest of the file (${this.left} bytes) can hold; the file is truncated or damaged`);
    return v;
  }
  str(what: string): string {
    const n = this.count(`the length of ${what}`, this.left);
    this.need(n, what);
    const s = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    try {
      return this.utf8.decode(s);
    } catch {
      throw new MambaError(`${this.where}: ${what} is not valid UTF-8; the file is damaged`);
    }
  }
}

/** Smallest size in bytes of one value of a type (for checking array counts against what is left). */
function minSize(type: GgufType): number {
  switch (type) {
    case GgufType.UINT8: case GgufType.INT8: case GgufType.BOOL: return 1;
    case GgufType.UINT16: case GgufType.INT16: return 2;
    case GgufType.UINT32: case GgufType.INT32: case GgufType.FLOAT32: return 4;
    case GgufType.STRING: case GgufType.UINT64: case GgufType.INT64: case GgufType.FLOAT64: return 8;
    case GgufType.ARRAY: return 12;
  }
}

function readValue(c: Cursor, type: GgufType, what: string, depth: number): unknown {
  switch (type) {
    case GgufType.UINT8: return c.u8(what);
    case GgufType.INT8: return c.i8(what);
    case GgufType.UINT16: return c.u16(what);
    case GgufType.INT16: return c.i16(what);
    case GgufType.UINT32: return c.u32(what);
    case GgufType.INT32: return c.i32(what);
    case GgufType.FLOAT32: return c.f32(what);
    case GgufType.UINT64: return c.u64(what);
    case GgufType.INT64: return c.i64(what);
    case GgufType.FLOAT64: return c.f64(what);
    case GgufType.BOOL: {
      const b = c.u8(what);
      check(b <= 1, `${c.where}: ${what}: a bool holds ${b} (0 or 1 expected); the file is damaged`);
      return b === 1;
    }
    case GgufType.STRING: return c.str(what);
    case GgufType.ARRAY: {
      check(depth < 4, `${c.where}: ${what}: arrays nested too deep; the file is damaged`);
      const itemType = c.u32(`the item type of ${what}`) as GgufType;
      check(itemType <= GgufType.FLOAT64, `${c.where}: ${what}: unknown array item type ${itemType}; the file is damaged`);
      const n = c.count(`the length of ${what}`, Math.floor(c.left / minSize(itemType)));
      const items: unknown[] = new Array(n);
      for (let i = 0; i < n; i++) items[i] = readValue(c, itemType, what, depth + 1);
      return { itemType, items };
    }
    default:
      throw new MambaError(`${c.where}: ${what}: unknown value type ${type}; the file is damaged`);
  }
}

/** True when the bytes start with the GGUF magic. */
export function isGguf(bytes: Uint8Array): boolean {
  return bytes.length >= 4 && bytes[0] === 0x47 && bytes[1] === 0x47 && bytes[2] === 0x55 && bytes[3] === 0x46;
}

/**
 * Parses the header of a GGUF file (metadata and tensor table) and checks that every tensor lies inside the
 * file. `bytes` may be the whole file, or only its head when `fileSize` gives the whole size: NeedMoreBytes is
 * thrown when the header goes on past the head.
 */
export function parseGgufHeader(bytes: Uint8Array, where: string, fileSize = bytes.length): GgufFile {
  const c = new Cursor(bytes, where, fileSize);
  check(fileSize >= 4, `${where}: not a GGUF file (${fileSize} bytes, too short for the magic)`);
  const magic = c.u32("the magic");
  check(magic === GGUF_MAGIC, () => `${where}: not a GGUF file (it starts with ${JSON.stringify(new TextDecoder().decode(bytes.subarray(0, 4)))}, not "GGUF")`);
  const version = c.u32("the version");
  check(version === 2 || version === 3, `${where}: GGUF version ${version} is not supported (versions 2 and 3 are read)`);
  const tensorCount = c.count("the tensor count", Math.floor(c.left / 24));
  const kvCount = c.count("the metadata count", Math.floor(c.left / 12));

  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < kvCount; i++) {
    const key = c.str(`metadata key ${i}`);
    const type = c.u32(`the type of metadata '${key}'`) as GgufType;
    check(type <= GgufType.FLOAT64, `${where}: metadata '${key}' has unknown value type ${type}; the file is damaged`);
    const v = readValue(c, type, `metadata '${key}'`, 0); // the cursor names the file
    check(!metadata.has(key), `${where}: metadata '${key}' appears twice; the file is damaged`);
    if (type === GgufType.ARRAY) {
      const a = v as { itemType: GgufType; items: unknown[] };
      metadata.set(key, { type, itemType: a.itemType, value: a.items });
    } else {
      metadata.set(key, { type: type as GgufType, value: v });
    }
  }

  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const al = metadata.get("general.alignment");
  if (al !== undefined) {
    check(al.type === GgufType.UINT32 && typeof al.value === "number" && al.value > 0 && (al.value & (al.value - 1)) === 0,
      `${where}: general.alignment must be a power of two (u32), got ${String(al.value)}`);
    alignment = al.value;
  }

  const tensors: GgufTensorInfo[] = [];
  const names = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    const name = c.str(`the name of tensor ${i}`);
    check(!names.has(name), `${where}: tensor '${name}' appears twice`);
    names.add(name);
    const nDims = c.u32(`the dimension count of tensor '${name}'`);
    check(nDims >= 1 && nDims <= 4, `${where}: tensor '${name}' has ${nDims} dimensions (1 to 4 expected); the file is damaged`);
    const dims: number[] = [];
    for (let d = 0; d < nDims; d++) {
      const v = c.u64(`the dimensions of tensor '${name}'`);
      check(typeof v === "number" && v > 0 && v <= fileSize * 8, `${where}: tensor '${name}' has an impossible dimension ${v}; the file is damaged`);
      dims.push(v);
    }
    const type = c.u32(`the type of tensor '${name}'`);
    const off = c.u64(`the offset of tensor '${name}'`);
    check(typeof off === "number", `${where}: tensor '${name}' has an impossible offset ${off}; the file is damaged`);
    tensors.push({ name, dims, type, offset: off });
  }
  const dataOffset = Math.ceil(c.pos / alignment) * alignment;
  check(dataOffset <= fileSize, `${where}: the tensor data section starts at byte ${dataOffset}, past the end of the file (${fileSize} bytes); the file is truncated`);

  const spans: [number, number, string][] = [];
  for (const t of tensors) {
    const dtype = READABLE[t.type];
    const typeName = GGML_TYPE_NAMES[t.type] ?? `unknown type ${t.type}`;
    check(dtype !== undefined, `${where}: tensor '${t.name}' has type ${typeName}, which mamba-ts does not read (F32, F16, BF16, Q8_0 and Q4_0 are read)`);
    check(t.offset % alignment === 0, `${where}: tensor '${t.name}' starts at offset ${t.offset}, not a multiple of the alignment ${alignment}; the file is damaged`);
    const n = numel(t.dims);
    if (dtype === "Q8_0" || dtype === "Q4_0") {
      check(t.dims[0]! % QK === 0, `${where}: tensor '${t.name}' is ${dtype} with rows of ${t.dims[0]} values, not a multiple of ${QK}; the file is damaged`);
    }
    const size = ggmlBytes(dtype, n);
    const begin = dataOffset + t.offset;
    check(begin + size <= fileSize,
      `${where}: tensor '${t.name}' (bytes ${begin} to ${begin + size}) runs past the end of the file (${fileSize} bytes); the file is truncated or damaged`);
    spans.push([t.offset, t.offset + size, t.name]);
  }
  spans.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < spans.length; i++) {
    check(spans[i]![0] >= spans[i - 1]![1], `${where}: tensors '${spans[i - 1]![2]}' and '${spans[i]![2]}' overlap in the data section; the file is damaged`);
  }
  return { version, metadata, tensors, alignment, dataOffset };
}

/** The host type of a ggml type id (undefined for the types mamba-ts does not read). */
export function ggmlDType(type: number): HostDType | undefined {
  return READABLE[type];
}

/** The bytes a tensor of the table takes in the data section. */
export function tensorBytes(t: GgufTensorInfo): number {
  return ggmlBytes(READABLE[t.type]!, numel(t.dims));
}

/**
 * A tensor as a HostTensor from exactly its bytes: shape in PyTorch order (dims reversed). The bytes are used as
 * they are when they are aligned for a typed-array view, else copied.
 */
export function tensorFromBytes(t: GgufTensorInfo, raw: Uint8Array): HostTensor {
  const dtype = READABLE[t.type]!;
  const n = numel(t.dims);
  check(raw.length === ggmlBytes(dtype, n), `tensor '${t.name}': ${raw.length} bytes do not hold ${dtype} [${t.dims}]`);
  if (raw.byteOffset % 4 !== 0) raw = raw.slice();
  const shape = [...t.dims].reverse();
  const data = dtype === "F32" ? new Float32Array(raw.buffer, raw.byteOffset, n)
    : dtype === "F16" || dtype === "BF16" ? new Uint16Array(raw.buffer, raw.byteOffset, n) : raw;
  return { dtype, shape, data };
}

/** A tensor of a parsed file held whole in memory, copied out of the file's bytes (independent of its buffer). */
export function ggufTensor(file: GgufFile, bytes: Uint8Array, t: GgufTensorInfo): HostTensor {
  const begin = file.dataOffset + t.offset;
  return tensorFromBytes(t, bytes.slice(begin, begin + tensorBytes(t)));
}

/** A metadata value's plain content (arrays as JS arrays). */
export function metaValue(file: GgufFile, key: string): unknown {
  return file.metadata.get(key)?.value;
}

export function describeType(type: GgufType): string {
  return TYPE_NAMES[type] ?? String(type);
}

// ---------------------------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------------------------

/** One tensor to write: its name, PyTorch-order shape, type and the bytes in that type's layout. */
export interface GgufTensorOut {
  name: string;
  shape: number[];
  dtype: HostDType;
  /** the bytes, or a function producing them when the writer gets to them (to hold one big tensor at a time) */
  data: Uint8Array | (() => Uint8Array);
}

class ByteSink {
  private chunks: Uint8Array[] = [];
  private cur = new Uint8Array(1 << 16);
  private n = 0;
  length = 0;
  private room(k: number): DataView {
    if (this.n + k > this.cur.length) {
      this.chunks.push(this.cur.subarray(0, this.n));
      this.cur = new Uint8Array(Math.max(1 << 16, k));
      this.n = 0;
    }
    const v = new DataView(this.cur.buffer, this.n, k);
    this.n += k;
    this.length += k;
    return v;
  }
  u8(v: number): void { this.room(1).setUint8(0, v); }
  i8(v: number): void { this.room(1).setInt8(0, v); }
  u16(v: number): void { this.room(2).setUint16(0, v, true); }
  i16(v: number): void { this.room(2).setInt16(0, v, true); }
  u32(v: number): void { this.room(4).setUint32(0, v, true); }
  i32(v: number): void { this.room(4).setInt32(0, v, true); }
  f32(v: number): void { this.room(4).setFloat32(0, v, true); }
  f64(v: number): void { this.room(8).setFloat64(0, v, true); }
  u64(v: number | bigint): void { this.room(8).setBigUint64(0, BigInt(v), true); }
  i64(v: number | bigint): void { this.room(8).setBigInt64(0, BigInt(v), true); }
  bytes(b: Uint8Array): void {
    const v = this.room(b.length);
    new Uint8Array(v.buffer, v.byteOffset, b.length).set(b);
  }
  str(s: string): void {
    const b = new TextEncoder().encode(s);
    this.u64(b.length);
    this.bytes(b);
  }
  finish(): Uint8Array {
    this.chunks.push(this.cur.subarray(0, this.n));
    const out = new Uint8Array(this.length);
    let o = 0;
    for (const c of this.chunks) { out.set(c, o); o += c.length; }
    return out;
  }
}

function writeValue(s: ByteSink, type: GgufType, v: unknown, key: string): void {
  switch (type) {
    case GgufType.UINT8: s.u8(v as number); return;
    case GgufType.INT8: s.i8(v as number); return;
    case GgufType.UINT16: s.u16(v as number); return;
    case GgufType.INT16: s.i16(v as number); return;
    case GgufType.UINT32: s.u32(v as number); return;
    case GgufType.INT32: s.i32(v as number); return;
    case GgufType.FLOAT32: s.f32(v as number); return;
    case GgufType.UINT64: s.u64(v as number | bigint); return;
    case GgufType.INT64: s.i64(v as number | bigint); return;
    case GgufType.FLOAT64: s.f64(v as number); return;
    case GgufType.BOOL: s.u8(v ? 1 : 0); return;
    case GgufType.STRING: s.str(v as string); return;
    case GgufType.ARRAY: {
      // a nested array, as the reader gives it
      const a = v as { itemType: GgufType; items: unknown[] };
      s.u32(a.itemType);
      s.u64(a.items.length);
      for (const item of a.items) writeValue(s, a.itemType, item, key);
      return;
    }
    default: throw new MambaError(`metadata '${key}': cannot write a value of type ${describeType(type)}`);
  }
}

/**
 * The header of a GGUF v3 file (through the padding before the data section) and the offsets of the tensors'
 * data, in order; each tensor's bytes go at dataStart + offsets[i], zero-padded to the alignment.
 */
export function ggufHeader(metadata: Map<string, GgufValue>, tensors: ReadonlyArray<Omit<GgufTensorOut, "data">>):
  { header: Uint8Array; offsets: number[]; dataSize: number; alignment: number } {
  const al = metadata.get("general.alignment");
  const alignment = al?.type === GgufType.UINT32 ? (al.value as number) : GGUF_DEFAULT_ALIGNMENT;
  const s = new ByteSink();
  s.u32(GGUF_MAGIC);
  s.u32(3);
  s.u64(tensors.length);
  s.u64(metadata.size);
  for (const [key, v] of metadata) {
    s.str(key);
    s.u32(v.type);
    if (v.type === GgufType.ARRAY) {
      const items = v.value as unknown[];
      s.u32(v.itemType!);
      s.u64(items.length);
      for (const item of items) writeValue(s, v.itemType!, item, key);
    } else {
      writeValue(s, v.type, v.value, key);
    }
  }
  const offsets: number[] = [];
  let offset = 0;
  for (const t of tensors) {
    s.str(t.name);
    s.u32(t.shape.length);
    for (let d = t.shape.length - 1; d >= 0; d--) s.u64(t.shape[d]!);
    s.u32(GGML_TYPE_IDS[t.dtype]);
    s.u64(offset);
    offsets.push(offset);
    offset += Math.ceil(ggmlBytes(t.dtype, numel(t.shape)) / alignment) * alignment;
  }
  const pad = (alignment - (s.length % alignment)) % alignment;
  s.bytes(new Uint8Array(pad));
  return { header: s.finish(), offsets, dataSize: offset, alignment };
}

/** A whole GGUF v3 file in memory (small models and tests; ./gguf.ts streams big ones to disk). */
export function serializeGguf(metadata: Map<string, GgufValue>, tensors: GgufTensorOut[]): Uint8Array {
  const { header, offsets, dataSize } = ggufHeader(metadata, tensors);
  const out = new Uint8Array(header.length + dataSize);
  out.set(header);
  tensors.forEach((t, i) => {
    const b = typeof t.data === "function" ? t.data() : t.data;
    check(b.length === ggmlBytes(t.dtype, numel(t.shape)), `tensor '${t.name}': ${b.length} bytes do not hold ${t.dtype} [${t.shape}]`);
    out.set(b, header.length + offsets[i]!);
  });
  return out;
}
