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

/** Parses a whole safetensors file held in memory. `where` names the file in error messages. */
export function parseSafetensors(bytes: Uint8Array, where: string): Map<string, HostTensor> {
  check(bytes.length >= 8, `${where}: not a safetensors file (${bytes.length} bytes, too short for a header)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = Number(view.getBigUint64(0, true));
  check(headerLen <= MAX_HEADER && 8 + headerLen <= bytes.length,
    `${where}: header length ${headerLen} does not fit in the file (${bytes.length} bytes); the file is truncated or not safetensors`);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + headerLen)));
  } catch {
    throw new MambaError(`${where}: the safetensors header is not valid JSON`);
  }
  check(header !== null && typeof header === "object" && !Array.isArray(header),
    `${where}: the safetensors header is not a JSON object`);
  const dataStart = 8 + headerLen;
  const dataLen = bytes.length - dataStart;
  const out = new Map<string, HostTensor>();
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
    const n = numel(shape);
    const start = dataStart + begin;
    // a fresh copy: aligned for typed-array views, and independent of the file's buffer (a Node Buffer's
    // slice() would share it)
    const raw = new Uint8Array(expected);
    raw.set(bytes.subarray(start, start + expected));
    const data = dtype === "F32" ? new Float32Array(raw.buffer, 0, n) : new Uint16Array(raw.buffer, 0, n);
    out.set(name, { dtype, shape: [...shape], data });
  }
  spans.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < spans.length; i++) {
    const [b, , name] = spans[i]!;
    const [, prevEnd, prevName] = spans[i - 1]!;
    check(b >= prevEnd, `${where}: tensors '${prevName}' and '${name}' overlap in the data section`);
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
