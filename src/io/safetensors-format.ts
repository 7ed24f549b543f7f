/**
 * The safetensors format on bytes in memory, with no file system: usable in browsers. An 8-byte little-endian
 * header length, a JSON header mapping names to {dtype, shape, data_offsets: [begin, end]} (offsets relative to
 * the end of the header), then raw data. The reader trusts nothing: header length within the file, JSON that
 * parses, known dtypes, offsets inside the data, non-overlapping, byte sizes that match shapes.
 * Reading and writing files: ./safetensors.ts (Node).
 */
import { MambaError, check } from "../errors.ts";
import { type HostTensor, type StorageDType, bytesPerElement, numel } from "./tensor.ts";

const DTYPES: Record<string, StorageDType> = { F32: "F32", F16: "F16", BF16: "BF16" };
const MAX_HEADER = 100_000_000; // the reference implementation's own limit

/** One tensor of a safetensors file: where its bytes lie in the file, [start, end). */
export interface SafetensorsEntry {
  name: string;
  dtype: StorageDType;
  shape: number[];
  start: number;
  end: number;
}

/**
 * Reads and checks a safetensors header. `head` holds the file's first bytes: at least 8, and 8 + the header length
 * for the entries (safetensorsHeaderLength says how many); `fileLength` is the whole file's.
 */
export function safetensorsHeaderLength(head: Uint8Array, fileLength: number, where: string): number {
  check(head.length >= 8 && fileLength >= 8, `${where}: not a safetensors file (${fileLength} bytes, too short for a header)`);
  const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
  const headerLen = Number(view.getBigUint64(0, true));
  check(headerLen <= MAX_HEADER && 8 + headerLen <= fileLength,
    `${where}: header length ${headerLen} does not fit in the file (${fileLength} bytes); the file is truncated or not safetensors`);
  return headerLen;
}

/** The tensors a safetensors header lists, checked against the file's length (see safetensorsHeaderLength). */
export function safetensorsEntries(head: Uint8Array, fileLength: number, where: string): SafetensorsEntry[] {
  const headerLen = safetensorsHeaderLength(head, fileLength, where);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(head.subarray(8, 8 + headerLen)));
  } catch {
    throw new MambaError(`${where}: the safetensors header is not valid JSON`);
  }
  check(header !== null && typeof header === "object" && !Array.isArray(header),
    `${where}: the safetensors header is not a JSON object`);
  const dataStart = 8 + headerLen;
  const dataLen = fileLength - dataStart;
  const out: SafetensorsEntry[] = [];
  const spans: [number, number, string][] = [];
  for (const [name, info] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") continue;
    const e = info as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    check(e && typeof e === "object", `${where}: entry '${name}' is not an object`);
    const dtype = typeof e.dtype === "string" ? DTYPES[e.dtype] : undefined;
    check(dtype, `${where}: tensor '${name}' has unsupported dtype ${JSON.stringify(e.dtype)} (F32, F16, BF16 are read)`);
    check(Array.isArray(e.shape) && e.shape.every((d) => Number.isSafeInteger(d) && d >= 0),
      `${where}: tensor '${name}' has an invalid shape ${JSON.stringify(e.shape)}`);
    const shape = e.shape as number[];
    const offs = e.data_offsets;
    check(Array.isArray(offs) && offs.length === 2 && offs.every((o) => Number.isSafeInteger(o) && o >= 0),
      `${where}: tensor '${name}' has invalid data_offsets ${JSON.stringify(offs)}`);
    const [begin, end] = offs as [number, number];
    check(begin <= end && end <= dataLen,
      `${where}: tensor '${name}' data [${begin}, ${end}) lies outside the data section (${dataLen} bytes); the file is truncated or damaged`);
    const expected = numel(shape) * bytesPerElement(dtype);
    check(end - begin === expected,
      `${where}: tensor '${name}' has ${end - begin} bytes but ${dtype} ${JSON.stringify(shape)} needs ${expected}`);
    spans.push([begin, end, name]);
    out.push({ name, dtype, shape: [...shape], start: dataStart + begin, end: dataStart + end });
  }
  spans.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < spans.length; i++) {
    const [b, , name] = spans[i]!;
    const [, prevEnd, prevName] = spans[i - 1]!;
    check(b >= prevEnd, `${where}: tensors '${prevName}' and '${name}' overlap in the data section`);
  }
  return out;
}

/** Parses a whole safetensors file held in memory. `where` names the file in error messages. */
export function parseSafetensors(bytes: Uint8Array, where: string): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const e of safetensorsEntries(bytes, bytes.length, where)) {
    const n = numel(e.shape);
    const size = e.end - e.start;
    // a fresh copy: aligned for typed-array views, and independent of the file's buffer (a Node Buffer's
    // slice() would share it)
    const raw = new Uint8Array(size);
    raw.set(bytes.subarray(e.start, e.end));
    const data = e.dtype === "F32" ? new Float32Array(raw.buffer, 0, n) : new Uint16Array(raw.buffer, 0, n);
    out.set(e.name, { dtype: e.dtype, shape: e.shape, data });
  }
  return out;
}

/** Serializes tensors (in the given order) to safetensors bytes. */
export function serializeSafetensors(tensors: Map<string, HostTensor>, metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of tensors) {
    const n = numel(t.shape) * bytesPerElement(t.dtype);
    check(t.data.byteLength === n, `tensor '${name}': data has ${t.data.byteLength} bytes, shape needs ${n}`);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + n] };
    offset += n;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((8 + new TextEncoder().encode(json).length) % 8)) % 8); // align the data section to 8 bytes
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let p = 8 + headerBytes.length;
  for (const t of tensors.values()) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), p);
    p += t.data.byteLength;
  }
  return out;
}
