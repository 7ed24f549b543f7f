/**
 * A safe reader for PyTorch `torch.save` checkpoints, the `pytorch_model.bin` that the `state-spaces/mamba-*`
 * repositories ship. Since torch 1.6 such a file is a zip archive (entries STORED, i.e. uncompressed):
 *
 *   <archive>/data.pkl      a pickle of the saved object (here a state dict: name -> tensor)
 *   <archive>/data/<key>    the raw little-endian bytes of each storage the tensors are views of
 *   <archive>/byteorder     "little" (absent in older files, which are always little-endian)
 *
 * Unpickling with Python's pickle would run arbitrary code named by the file. This module instead runs a small
 * pickle machine that builds plain values only: the few globals a state dict needs (tensor rebuild functions,
 * storage types, OrderedDict) are recognised by name from an allow-list and interpreted here; any other global
 * is refused. Nothing in the file is ever executed. Every offset and length is checked against the buffer, so a
 * damaged file gives a MambaError that names the file and the problem, never a RangeError.
 */
import { MambaError } from "../errors.ts";
import type { HostTensor, StorageDType } from "./tensor.ts";

/** Reads the state dict (tensor name -> tensor) saved in a torch zip checkpoint. `where` names the file in errors. */
export function readTorchStateDict(bytes: Uint8Array, where: string): Map<string, HostTensor> {
  const fail = (msg: string): never => {
    throw new MambaError(`${where}: ${msg}`);
  };
  if (bytes.length === 0) fail("the file is empty");
  // The pre-1.6 torch.save format is a bare pickle (it starts with PROTO); say so rather than "not a zip".
  if (bytes[0] === 0x80) {
    fail("legacy (pre-1.6) torch.save format, not a zip archive; re-save it with a recent torch or convert to safetensors");
  }
  const zip = readZipDirectory(bytes, fail);
  const prefix = findArchivePrefix(zip, fail);
  checkByteOrder(bytes, zip, prefix, fail);
  const pkl = entryBytes(bytes, zip.get(`${prefix}data.pkl`)!, fail);
  const storages = new StorageTable(bytes, zip, prefix, fail);
  const root = unpickle(pkl, storages, fail);
  return collectStateDict(root, fail);
}

type Fail = (msg: string) => never;

// ---------------------------------------------------------------------------------------------------------------
// Zip: the central directory (with zip64 extensions) and the local headers it points to.

interface ZipEntry {
  name: string;
  method: number; // 0 = STORED
  flags: number;
  compressedSize: number;
  size: number;
  localHeaderOffset: number;
}

const EOCD_SIG = 0x06054b50;
const ZIP64_LOCATOR_SIG = 0x07064b50;
const ZIP64_EOCD_SIG = 0x06064b50;
const CENTRAL_SIG = 0x02014b50;
const LOCAL_SIG = 0x04034b50;
const EOCD_SIZE = 22;

/** Reads a little-endian unsigned integer of `n` bytes (1, 2, 4 or 8) at `off`, bounds-checked. */
function readUint(bytes: Uint8Array, off: number, n: number, what: string, fail: Fail): number {
  if (!(off >= 0 && off + n <= bytes.length)) fail(`${what} at offset ${off} lies past the end of the file (${bytes.length} bytes); the file is truncated or damaged`);
  let v = 0;
  for (let i = n - 1; i >= 0; i--) v = v * 256 + bytes[off + i]!;
  // 8-byte fields above 2^53 cannot be exact in a number; no real offset or size is that large anyway
  if (!Number.isSafeInteger(v)) fail(`${what} at offset ${off} is absurdly large`);
  return v;
}

/** Finds the end-of-central-directory record and reads every entry of the central directory. */
function readZipDirectory(bytes: Uint8Array, fail: Fail): Map<string, ZipEntry> {
  const notZip = () => fail(`not a zip archive (no end-of-central-directory record in ${bytes.length} bytes); the file is truncated or not a torch.save checkpoint`);
  if (bytes.length < EOCD_SIZE) notZip();
  // The record sits at the very end, followed only by a comment of at most 65535 bytes: scan backwards for it.
  let eocd = -1;
  for (let off = bytes.length - EOCD_SIZE; off >= Math.max(0, bytes.length - EOCD_SIZE - 0xffff); off--) {
    if (readUint(bytes, off, 4, "zip record", fail) === EOCD_SIG && off + EOCD_SIZE + readUint(bytes, off + 20, 2, "zip comment length", fail) === bytes.length) {
      eocd = off;
      break;
    }
  }
  if (eocd < 0) notZip();

  let count = readUint(bytes, eocd + 10, 2, "zip entry count", fail);
  let cdSize = readUint(bytes, eocd + 12, 4, "zip central directory size", fail);
  let cdOffset = readUint(bytes, eocd + 16, 4, "zip central directory offset", fail);
  // Any field at its maximum means the real value is in the zip64 record (torch writes one for files > 4 GiB).
  if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    const loc = eocd - 20;
    if (!(loc >= 0 && readUint(bytes, loc, 4, "zip64 locator", fail) === ZIP64_LOCATOR_SIG)) {
      fail("the zip archive needs a zip64 end-of-central-directory locator but has none; the file is damaged");
    }
    const rec = readUint(bytes, loc + 8, 8, "zip64 record offset", fail);
    if (readUint(bytes, rec, 4, "zip64 end-of-central-directory record", fail) !== ZIP64_EOCD_SIG) {
      fail(`no zip64 end-of-central-directory record at offset ${rec}; the file is damaged`);
    }
    count = readUint(bytes, rec + 32, 8, "zip64 entry count", fail);
    cdSize = readUint(bytes, rec + 40, 8, "zip64 central directory size", fail);
    cdOffset = readUint(bytes, rec + 48, 8, "zip64 central directory offset", fail);
  }
  if (cdOffset + cdSize > bytes.length) {
    fail(`the zip central directory [${cdOffset}, ${cdOffset + cdSize}) lies outside the file (${bytes.length} bytes); the file is truncated or damaged`);
  }
  // each entry takes at least 46 bytes, so a larger count cannot be real
  if (count * 46 > cdSize) fail(`the zip central directory claims ${count} entries in ${cdSize} bytes; the file is damaged`);

  const entries = new Map<string, ZipEntry>();
  let off = cdOffset;
  for (let i = 0; i < count; i++) {
    const entry = readCentralEntry(bytes, off, cdOffset + cdSize, fail);
    entries.set(entry.entry.name, entry.entry);
    off = entry.next;
  }
  return entries;
}

/** Reads one central-directory entry at `off` (which must end before `end`), resolving zip64 sizes and offset. */
function readCentralEntry(bytes: Uint8Array, off: number, end: number, fail: Fail): { entry: ZipEntry; next: number } {
  if (readUint(bytes, off, 4, "zip central directory entry", fail) !== CENTRAL_SIG) {
    fail(`bad zip central directory entry at offset ${off}; the file is damaged`);
  }
  const flags = readUint(bytes, off + 8, 2, "zip flags", fail);
  const method = readUint(bytes, off + 10, 2, "zip compression method", fail);
  let compressedSize = readUint(bytes, off + 20, 4, "zip entry size", fail);
  let size = readUint(bytes, off + 24, 4, "zip entry size", fail);
  const nameLen = readUint(bytes, off + 28, 2, "zip name length", fail);
  const extraLen = readUint(bytes, off + 30, 2, "zip extra length", fail);
  const commentLen = readUint(bytes, off + 32, 2, "zip comment length", fail);
  let localHeaderOffset = readUint(bytes, off + 42, 4, "zip local header offset", fail);
  const nameStart = off + 46;
  const next = nameStart + nameLen + extraLen + commentLen;
  if (next > end) fail(`zip central directory entry at offset ${off} runs past the directory's end; the file is damaged`);
  const name = decodeUtf8(bytes.subarray(nameStart, nameStart + nameLen), "zip entry name", fail);

  // zip64 extra field (id 1): 8-byte values, present only for the fields that are at their 32-bit maximum,
  // in the order size, compressed size, local header offset.
  let p = nameStart + nameLen;
  const extraEnd = p + extraLen;
  while (p + 4 <= extraEnd) {
    const id = readUint(bytes, p, 2, "zip extra field", fail);
    const len = readUint(bytes, p + 2, 2, "zip extra field", fail);
    if (p + 4 + len > extraEnd) fail(`zip entry '${name}' has a damaged extra field`);
    if (id === 1) {
      let q = p + 4;
      const take = (): number => {
        if (q + 8 > p + 4 + len) fail(`zip entry '${name}' has a short zip64 extra field`);
        const v = readUint(bytes, q, 8, "zip64 extra field", fail);
        q += 8;
        return v;
      };
      if (size === 0xffffffff) size = take();
      if (compressedSize === 0xffffffff) compressedSize = take();
      if (localHeaderOffset === 0xffffffff) localHeaderOffset = take();
    }
    p += 4 + len;
  }
  return { entry: { name, method, flags, compressedSize, size, localHeaderOffset }, next };
}

/** The bytes of a STORED entry: found through its local header, whose extra field torch uses as alignment padding. */
function entryBytes(bytes: Uint8Array, e: ZipEntry, fail: Fail): Uint8Array {
  if (e.flags & 1) fail(`zip entry '${e.name}' is encrypted`);
  if (e.method !== 0) {
    fail(`zip entry '${e.name}' is compressed (method ${e.method}); torch.save writes entries uncompressed (stored), so this file was repacked. Unzip and re-zip it with 'zip -0', or re-save it with torch`);
  }
  if (e.compressedSize !== e.size) fail(`zip entry '${e.name}' is stored but its sizes differ (${e.compressedSize} vs ${e.size}); the file is damaged`);
  const h = e.localHeaderOffset;
  if (readUint(bytes, h, 4, `local header of zip entry '${e.name}'`, fail) !== LOCAL_SIG) {
    fail(`zip entry '${e.name}' has no local header at offset ${h}; the file is damaged`);
  }
  const start = h + 30 + readUint(bytes, h + 26, 2, "zip name length", fail) + readUint(bytes, h + 28, 2, "zip extra length", fail);
  if (start + e.size > bytes.length) {
    fail(`zip entry '${e.name}' (${e.size} bytes at offset ${start}) runs past the end of the file (${bytes.length} bytes); the file is truncated`);
  }
  return bytes.subarray(start, start + e.size);
}

/** torch names the archive's top folder after the file (`archive/`, `pytorch_model/`, ...): find the one with data.pkl. */
function findArchivePrefix(zip: Map<string, ZipEntry>, fail: Fail): string {
  const candidates = [...zip.keys()].filter((n) => /^[^/]*\/data\.pkl$/.test(n));
  if (candidates.length === 0) fail("the zip archive has no '<archive>/data.pkl'; it is not a torch.save checkpoint");
  if (candidates.length > 1) fail(`the zip archive has several pickles (${candidates.join(", ")}); expected one torch.save checkpoint`);
  return candidates[0]!.slice(0, -"data.pkl".length);
}

function checkByteOrder(bytes: Uint8Array, zip: Map<string, ZipEntry>, prefix: string, fail: Fail): void {
  const e = zip.get(`${prefix}byteorder`);
  if (!e) return; // older writers omit it; they only ever wrote little-endian
  const order = decodeUtf8(entryBytes(bytes, e, fail), "byteorder", fail).trim();
  if (order !== "little") fail(`the checkpoint's byte order is '${order}'; only little-endian checkpoints are supported`);
}

function decodeUtf8(b: Uint8Array, what: string, fail: Fail): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(b);
  } catch {
    return fail(`${what} is not valid UTF-8`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Storages: `data/<key>` entries, typed by the storage class named in the pickle.

/** Storage classes torch may name, with their element size; those with a dtype are the ones we can return. */
const STORAGE_TYPES: Record<string, { dtype?: StorageDType; itemSize: number; torchName: string }> = {
  FloatStorage: { dtype: "F32", itemSize: 4, torchName: "float32" },
  HalfStorage: { dtype: "F16", itemSize: 2, torchName: "float16" },
  BFloat16Storage: { dtype: "BF16", itemSize: 2, torchName: "bfloat16" },
  DoubleStorage: { itemSize: 8, torchName: "float64" },
  LongStorage: { itemSize: 8, torchName: "int64" },
  IntStorage: { itemSize: 4, torchName: "int32" },
  ShortStorage: { itemSize: 2, torchName: "int16" },
  CharStorage: { itemSize: 1, torchName: "int8" },
  ByteStorage: { itemSize: 1, torchName: "uint8" },
  BoolStorage: { itemSize: 1, torchName: "bool" },
};

class Storage {
  constructor(
    readonly key: string,
    readonly typeName: string, // e.g. "FloatStorage"
    readonly numel: number,
    readonly bytes: Uint8Array, // exactly numel * itemSize bytes
  ) {}
}

/** Resolves persistent ids to storages, once per key, so tensors that share a storage read the same bytes. */
class StorageTable {
  private readonly cache = new Map<string, Storage>();

  constructor(
    private readonly file: Uint8Array,
    private readonly zip: Map<string, ZipEntry>,
    private readonly prefix: string,
    private readonly fail: Fail,
  ) {}

  get(key: string, typeName: string, numel: number): Storage {
    const fail = this.fail;
    const cached = this.cache.get(key);
    if (cached) {
      if (cached.typeName !== typeName) fail(`storage '${key}' is referenced both as ${cached.typeName} and as ${typeName}`);
      return cached;
    }
    const info = STORAGE_TYPES[typeName]!;
    const entry = this.zip.get(`${this.prefix}data/${key}`);
    if (!entry) fail(`storage '${key}' is referenced by the pickle but '${this.prefix}data/${key}' is missing from the archive`);
    const raw = entryBytes(this.file, entry!, fail);
    const need = numel * info.itemSize;
    if (raw.length < need) fail(`storage '${key}' has ${raw.length} bytes but ${numel} ${info.torchName} elements need ${need}; the file is damaged`);
    const storage = new Storage(key, typeName, numel, raw.subarray(0, need));
    this.cache.set(key, storage);
    return storage;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Pickle values: only what a state dict is made of. Lists and tuples are tagged so REDUCE can tell them apart.

type PyValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PyList
  | PyTuple
  | PyDict
  | PyGlobal
  | Storage
  | Tensor;

class PyList { constructor(readonly items: PyValue[]) {} }
class PyTuple { constructor(readonly items: PyValue[]) {} }
class PyDict { readonly map = new Map<PyValue, PyValue>(); }
class PyGlobal { constructor(readonly name: string) {} }
/** A tensor; `host` is null for dtypes we do not return (int64 buffers, ...), reported if they are in the result. */
class Tensor { constructor(readonly host: HostTensor | null, readonly torchDType: string) {} }

const REBUILD_TENSOR = new Set(["torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor"]);
const REBUILD_PARAMETER = new Set(["torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state"]);

/** The only globals a checkpoint may name; everything else (os.system, builtins.eval, ...) is refused. */
function isAllowedGlobal(name: string): boolean {
  if (name === "collections.OrderedDict" || REBUILD_TENSOR.has(name) || REBUILD_PARAMETER.has(name)) return true;
  return name.startsWith("torch.") && Object.hasOwn(STORAGE_TYPES, name.slice("torch.".length));
}

// ---------------------------------------------------------------------------------------------------------------
// The pickle machine (protocols 2 to 5, binary opcodes only).

const MARK = Symbol("mark");
type StackItem = PyValue | typeof MARK;

const OP = {
  MARK: 0x28, STOP: 0x2e, POP: 0x30, POP_MARK: 0x31, DUP: 0x32,
  BININT: 0x4a, BININT1: 0x4b, BININT2: 0x4d, NONE: 0x4e, BINPERSID: 0x51, REDUCE: 0x52,
  BINUNICODE: 0x58, EMPTY_LIST: 0x5d, APPEND: 0x61, BUILD: 0x62, GLOBAL: 0x63, DICT: 0x64, APPENDS: 0x65,
  BINGET: 0x68, LONG_BINGET: 0x6a, LIST: 0x6c, BINPUT: 0x71, LONG_BINPUT: 0x72, SETITEM: 0x73, TUPLE: 0x74,
  SETITEMS: 0x75, EMPTY_DICT: 0x7d, EMPTY_TUPLE: 0x29, BINFLOAT: 0x47, BINBYTES: 0x42, SHORT_BINBYTES: 0x43,
  PROTO: 0x80, NEWOBJ: 0x81, TUPLE1: 0x85, TUPLE2: 0x86, TUPLE3: 0x87, NEWTRUE: 0x88, NEWFALSE: 0x89,
  LONG1: 0x8a, LONG4: 0x8b, SHORT_BINUNICODE: 0x8c, BINUNICODE8: 0x8d, BINBYTES8: 0x8e,
  STACK_GLOBAL: 0x93, MEMOIZE: 0x94, FRAME: 0x95,
} as const;

/** Runs the pickle in `pkl` and returns the object it builds. */
function unpickle(pkl: Uint8Array, storages: StorageTable, fail: Fail): PyValue {
  let pos = 0;
  const stack: StackItem[] = [];
  const memo = new Map<number, PyValue>();
  const pfail = (msg: string): never => fail(`data.pkl: ${msg}`);

  const need = (n: number): void => {
    if (pos + n > pkl.length) pfail(`truncated at byte ${pos} (needs ${n} more bytes, has ${pkl.length - pos})`);
  };
  const u8 = (): number => { need(1); return pkl[pos++]!; };
  const uint = (n: number): number => {
    need(n);
    let v = 0;
    for (let i = n - 1; i >= 0; i--) v = v * 256 + pkl[pos + i]!;
    pos += n;
    if (!Number.isSafeInteger(v)) pfail(`length ${v} is absurdly large`);
    return v;
  };
  const take = (n: number): Uint8Array => { need(n); pos += n; return pkl.subarray(pos - n, pos); };
  const str = (n: number): string => decodeUtf8(take(n), "a pickled string", pfail);
  const line = (): string => {
    const end = pkl.indexOf(0x0a, pos);
    if (end < 0) pfail("truncated GLOBAL name");
    const s = decodeUtf8(pkl.subarray(pos, end), "a GLOBAL name", pfail);
    pos = end + 1;
    return s;
  };

  const pop = (): PyValue => {
    const v = stack.pop();
    if (v === undefined) pfail(`stack underflow at byte ${pos - 1}`);
    if (v === MARK) pfail(`unexpected MARK at byte ${pos - 1}`);
    return v as PyValue;
  };
  const top = (): PyValue => {
    const v = stack[stack.length - 1];
    if (v === undefined || v === MARK) pfail(`stack underflow at byte ${pos - 1}`);
    return v as PyValue;
  };
  /** Pops everything above the topmost MARK, and the MARK. */
  const popMark = (): PyValue[] => {
    const i = stack.lastIndexOf(MARK);
    if (i < 0) pfail(`no MARK on the stack at byte ${pos - 1}`);
    const items = stack.splice(i) as PyValue[];
    items.shift();
    return items;
  };
  const global = (name: string): PyGlobal => {
    if (!isAllowedGlobal(name)) pfail(`unsupported pickle global '${name}'; only torch tensor rebuilds are allowed`);
    return new PyGlobal(name);
  };
  const put = (i: number): void => { memo.set(i, top()); };
  const get = (i: number): PyValue => {
    if (!memo.has(i)) pfail(`memo entry ${i} is read before it is written`);
    return memo.get(i)!;
  };
  const asDict = (v: PyValue, op: string): PyDict => {
    if (!(v instanceof PyDict)) pfail(`${op} on a ${typeName(v)}, not a dict`);
    return v as PyDict;
  };
  const asList = (v: PyValue, op: string): PyList => {
    if (!(v instanceof PyList)) pfail(`${op} on a ${typeName(v)}, not a list`);
    return v as PyList;
  };

  for (;;) {
    const at = pos;
    const op = u8();
    switch (op) {
      case OP.PROTO: {
        const p = u8();
        if (p < 2 || p > 5) pfail(`pickle protocol ${p} is not supported (2 to 5 are)`);
        break;
      }
      case OP.FRAME: uint(8); break; // frames only group opcodes for buffered reads; the content is inline
      case OP.STOP: return pop();
      case OP.MARK: stack.push(MARK); break;
      case OP.POP: pop(); break;
      case OP.POP_MARK: popMark(); break;
      case OP.DUP: stack.push(top()); break;

      case OP.NONE: stack.push(null); break;
      case OP.NEWTRUE: stack.push(true); break;
      case OP.NEWFALSE: stack.push(false); break;
      case OP.BININT: { need(4); const v = new DataView(pkl.buffer, pkl.byteOffset + pos, 4).getInt32(0, true); pos += 4; stack.push(v); break; }
      case OP.BININT1: stack.push(uint(1)); break;
      case OP.BININT2: stack.push(uint(2)); break;
      case OP.LONG1: stack.push(readLong(take(u8()))); break;
      case OP.LONG4: stack.push(readLong(take(uint(4)))); break;
      case OP.BINFLOAT: { need(8); const v = new DataView(pkl.buffer, pkl.byteOffset + pos, 8).getFloat64(0, false); pos += 8; stack.push(v); break; }
      case OP.SHORT_BINUNICODE: stack.push(str(u8())); break;
      case OP.BINUNICODE: stack.push(str(uint(4))); break;
      case OP.BINUNICODE8: stack.push(str(uint(8))); break;
      case OP.SHORT_BINBYTES: stack.push(take(u8())); break;
      case OP.BINBYTES: stack.push(take(uint(4))); break;
      case OP.BINBYTES8: stack.push(take(uint(8))); break;

      case OP.EMPTY_LIST: stack.push(new PyList([])); break;
      case OP.EMPTY_TUPLE: stack.push(new PyTuple([])); break;
      case OP.EMPTY_DICT: stack.push(new PyDict()); break;
      case OP.LIST: stack.push(new PyList(popMark())); break;
      case OP.TUPLE: stack.push(new PyTuple(popMark())); break;
      case OP.TUPLE1: { const a = pop(); stack.push(new PyTuple([a])); break; }
      case OP.TUPLE2: { const b = pop(); const a = pop(); stack.push(new PyTuple([a, b])); break; }
      case OP.TUPLE3: { const c = pop(); const b = pop(); const a = pop(); stack.push(new PyTuple([a, b, c])); break; }
      case OP.DICT: {
        const d = new PyDict();
        setItems(d, popMark(), pfail);
        stack.push(d);
        break;
      }
      case OP.APPEND: { const v = pop(); asList(top(), "APPEND").items.push(v); break; }
      case OP.APPENDS: { const vs = popMark(); asList(top(), "APPENDS").items.push(...vs); break; }
      case OP.SETITEM: { const v = pop(); const k = pop(); asDict(top(), "SETITEM").map.set(k, v); break; }
      case OP.SETITEMS: { const kvs = popMark(); setItems(asDict(top(), "SETITEMS"), kvs, pfail); break; }

      case OP.BINPUT: put(uint(1)); break;
      case OP.LONG_BINPUT: put(uint(4)); break;
      case OP.MEMOIZE: put(memo.size); break;
      case OP.BINGET: stack.push(get(uint(1))); break;
      case OP.LONG_BINGET: stack.push(get(uint(4))); break;

      case OP.GLOBAL: { const module = line(); const name = line(); stack.push(global(`${module}.${name}`)); break; }
      case OP.STACK_GLOBAL: {
        const name = pop();
        const module = pop();
        if (typeof module !== "string" || typeof name !== "string") pfail("STACK_GLOBAL needs two strings");
        stack.push(global(`${module as string}.${name as string}`));
        break;
      }
      case OP.REDUCE: {
        const args = pop();
        const fn = pop();
        if (!(fn instanceof PyGlobal)) pfail(`REDUCE calls a ${typeName(fn)}, not an allowed global`);
        if (!(args instanceof PyTuple)) pfail(`REDUCE arguments are a ${typeName(args)}, not a tuple`);
        stack.push(callGlobal(fn as PyGlobal, (args as PyTuple).items, pfail));
        break;
      }
      case OP.NEWOBJ: {
        const args = pop();
        const cls = pop();
        // cls.__new__(cls, *args): only OrderedDict makes sense here, and it starts empty
        if (!(cls instanceof PyGlobal) || cls.name !== "collections.OrderedDict") pfail(`NEWOBJ of ${describe(cls)} is not supported`);
        if (!(args instanceof PyTuple)) pfail("NEWOBJ arguments are not a tuple");
        stack.push(new PyDict());
        break;
      }
      case OP.BUILD: {
        // obj.__setstate__(state): for an OrderedDict state dict this sets attributes such as `_metadata`
        // (per-module version numbers), and tensors may carry Python attributes; none of it is data we need.
        pop();
        const obj = top();
        if (!(obj instanceof PyDict || obj instanceof Tensor)) pfail(`BUILD on a ${typeName(obj)} is not supported`);
        break;
      }
      case OP.BINPERSID: stack.push(persistentLoad(pop(), storages, pfail)); break;

      default:
        pfail(`unsupported pickle opcode 0x${op.toString(16).padStart(2, "0")} at byte ${at}`);
    }
  }
}

/** LONG1/LONG4: a little-endian two's-complement integer; a number when exact, else a bigint (rejected where used). */
function readLong(b: Uint8Array): number | bigint {
  if (b.length === 0) return 0;
  let v = 0n;
  for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
  if (b[b.length - 1]! & 0x80) v -= 1n << BigInt(8 * b.length);
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

function setItems(d: PyDict, kvs: PyValue[], pfail: Fail): void {
  if (kvs.length % 2 !== 0) pfail("SETITEMS with an odd number of items");
  for (let i = 0; i < kvs.length; i += 2) d.map.set(kvs[i]!, kvs[i + 1]!);
}

/** torch's persistent ids: ('storage', <storage class>, key, location, numel). */
function persistentLoad(pid: PyValue, storages: StorageTable, pfail: Fail): Storage {
  if (!(pid instanceof PyTuple) || pid.items[0] !== "storage" || pid.items.length !== 5) {
    return pfail(`unsupported persistent id ${describe(pid)}; expected ('storage', type, key, location, numel)`);
  }
  const [, type, key, , numel] = pid.items;
  const typeName = type instanceof PyGlobal ? type.name.replace(/^torch\./, "") : "";
  if (!Object.hasOwn(STORAGE_TYPES, typeName)) pfail(`persistent id names ${describe(type)}, not a torch storage type`);
  if (typeof key !== "string") pfail(`storage key ${describe(key)} is not a string`);
  if (!(typeof numel === "number" && Number.isSafeInteger(numel) && numel >= 0)) pfail(`storage '${String(key)}' has an invalid size ${describe(numel)}`);
  return storages.get(key as string, typeName, numel as number);
}

/** Interprets a call to an allowed global. */
function callGlobal(fn: PyGlobal, args: PyValue[], pfail: Fail): PyValue {
  if (fn.name === "collections.OrderedDict") {
    if (args.length !== 0) pfail("OrderedDict called with arguments");
    return new PyDict();
  }
  if (REBUILD_TENSOR.has(fn.name)) {
    // _rebuild_tensor(storage, storage_offset, size, stride); the v2 form adds requires_grad, backward_hooks
    // and optional metadata, which do not change the values.
    if (args.length < 4) pfail(`${fn.name} called with ${args.length} arguments (at least 4 needed)`);
    return rebuildTensor(args[0]!, args[1]!, args[2]!, args[3]!, pfail);
  }
  if (REBUILD_PARAMETER.has(fn.name)) {
    // _rebuild_parameter(data, requires_grad, backward_hooks): a Parameter is its data for our purposes
    if (!(args[0] instanceof Tensor)) pfail(`${fn.name} wraps a ${typeName(args[0] ?? null)}, not a tensor`);
    return args[0]!;
  }
  return pfail(`the global '${fn.name}' cannot be called`); // storage classes are only used as type tags
}

/** Builds a tensor as a view of a storage (offset and strides in elements), copied out in row-major order. */
function rebuildTensor(storage: PyValue, offsetV: PyValue, sizeV: PyValue, strideV: PyValue, pfail: Fail): Tensor {
  if (!(storage instanceof Storage)) return pfail(`tensor rebuild from a ${typeName(storage)}, not a storage`);
  const s = storage;
  const offset = offsetV;
  if (!(typeof offset === "number" && Number.isSafeInteger(offset) && offset >= 0)) pfail(`tensor on storage '${s.key}' has an invalid storage offset ${describe(offset)}`);
  const shape = intTuple(sizeV, `size of a tensor on storage '${s.key}'`, pfail);
  const stride = intTuple(strideV, `stride of a tensor on storage '${s.key}'`, pfail);
  if (stride.length !== shape.length) pfail(`tensor on storage '${s.key}' has size ${fmt(shape)} but stride ${fmt(stride)}`);

  let n = 1;
  let last = offset as number; // highest element index the view touches
  for (let i = 0; i < shape.length; i++) {
    n *= shape[i]!;
    last += (shape[i]! - 1) * stride[i]!;
  }
  if (!Number.isSafeInteger(n) || !Number.isSafeInteger(last)) pfail(`tensor on storage '${s.key}' has an absurd size ${fmt(shape)}`);
  const view = `size ${fmt(shape)}, stride ${fmt(stride)}, offset ${offset}`;
  if (n > 0 && last >= s.numel) pfail(`tensor view (${view}) reaches element ${last} of storage '${s.key}', which has ${s.numel}`);
  if (n === 0 && (offset as number) > s.numel) pfail(`tensor view (${view}) starts past the end of storage '${s.key}' (${s.numel} elements)`);

  const info = STORAGE_TYPES[s.typeName]!;
  if (!info.dtype) return new Tensor(null, info.torchName);
  // A view may hold more elements than its storage (stride 0, as `expand` makes), so the size alone bounds it.
  let out: Float32Array | Uint16Array;
  try {
    out = info.dtype === "F32" ? new Float32Array(n) : new Uint16Array(n);
  } catch {
    return pfail(`tensor view (${view}) on storage '${s.key}' has ${n} elements, more than can be allocated`);
  }
  const data = gather(typedView(s.bytes, info.dtype), offset as number, shape, stride, out);
  return new Tensor({ dtype: info.dtype, shape, data }, info.torchName);
}

/** The storage as typed elements; copied first when the bytes are not aligned for the element type. */
function typedView(b: Uint8Array, dtype: StorageDType): Float32Array | Uint16Array {
  const size = dtype === "F32" ? 4 : 2;
  // typed arrays need an aligned start; the platform is little-endian, as the checkpoint is
  const src = b.byteOffset % size === 0 ? b : b.slice();
  return dtype === "F32" ? new Float32Array(src.buffer, src.byteOffset, src.length / 4) : new Uint16Array(src.buffer, src.byteOffset, src.length / 2);
}

/** Copies the strided view into `out` in row-major order (one copy when the view is already contiguous). */
function gather(src: Float32Array | Uint16Array, offset: number, shape: number[], stride: number[], out: Float32Array | Uint16Array): Float32Array | Uint16Array {
  const n = out.length;
  if (n === 0) return out;
  let contiguous = true;
  for (let i = shape.length - 1, expect = 1; i >= 0; expect *= shape[i]!, i--) {
    if (shape[i] !== 1 && stride[i] !== expect) contiguous = false;
  }
  if (contiguous) {
    out.set(src.subarray(offset, offset + n));
    return out;
  }
  // odometer over the index space; `at` follows the source element
  const rank = shape.length;
  const idx = new Array<number>(rank).fill(0);
  let at = offset;
  for (let k = 0; k < n; k++) {
    out[k] = src[at]!;
    for (let d = rank - 1; d >= 0; d--) {
      if (++idx[d]! < shape[d]!) { at += stride[d]!; break; }
      at -= (shape[d]! - 1) * stride[d]!;
      idx[d] = 0;
    }
  }
  return out;
}

function intTuple(v: PyValue, what: string, pfail: Fail): number[] {
  if (!(v instanceof PyTuple || v instanceof PyList)) return pfail(`${what} is a ${typeName(v)}, not a tuple`);
  const items = v.items;
  if (!items.every((x) => typeof x === "number" && Number.isSafeInteger(x) && x >= 0)) pfail(`${what} ${describe(v)} is not a tuple of non-negative integers`);
  return items as number[];
}

// ---------------------------------------------------------------------------------------------------------------
// The result: name -> tensor from the unpickled object.

function collectStateDict(root: PyValue, fail: Fail): Map<string, HostTensor> {
  if (!(root instanceof PyDict)) return fail(`the checkpoint holds a ${typeName(root)}, not a state dict`);
  let dict = root;
  // training checkpoints wrap the weights: {"model": state_dict, "optimizer": ...} or {"state_dict": ...}
  if (![...dict.map.values()].some((v) => v instanceof Tensor)) {
    for (const k of ["state_dict", "model"]) {
      const inner = dict.map.get(k);
      if (inner instanceof PyDict) { dict = inner; break; }
    }
  }
  const out = new Map<string, HostTensor>();
  for (const [k, v] of dict.map) {
    if (typeof k !== "string" || !(v instanceof Tensor)) continue; // e.g. step counters, config blobs
    if (!v.host) fail(`tensor '${k}' has dtype ${v.torchDType}; only float32, float16 and bfloat16 tensors are read`);
    out.set(k, v.host!);
  }
  if (out.size === 0) fail("the checkpoint holds no float tensors (no state dict found)");
  return out;
}

function typeName(v: PyValue): string {
  if (v === null) return "None";
  if (v instanceof PyList) return "list";
  if (v instanceof PyTuple) return "tuple";
  if (v instanceof PyDict) return "dict";
  if (v instanceof PyGlobal) return `global '${v.name}'`;
  if (v instanceof Tensor) return "tensor";
  if (v instanceof Uint8Array) return "bytes";
  if (v instanceof Storage) return "storage";
  return typeof v === "string" ? "str" : typeof v === "number" ? (Number.isInteger(v) ? "int" : "float") : typeof v === "bigint" ? "int" : "bool";
}

/** A short printable form for error messages. */
function describe(v: PyValue): string {
  if (typeof v === "string") return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v);
  if (typeof v === "number" || typeof v === "bigint" || typeof v === "boolean") return String(v);
  if (v instanceof PyTuple) return `(${v.items.slice(0, 6).map(describe).join(", ")}${v.items.length > 6 ? ", ..." : ""})`;
  return typeName(v);
}

function fmt(xs: number[]): string {
  return `[${xs.join(", ")}]`;
}
