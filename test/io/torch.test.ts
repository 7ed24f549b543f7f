/**
 * Tests for the torch.save checkpoint reader: the real mamba_ssm fixture against the same model's safetensors,
 * hand-built archives (views, shared storages, half precision, zip64, wrappers), and damaged or hostile files,
 * which must all fail with a MambaError that says what is wrong, never a RangeError or TypeError.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { MambaError } from "../../src/errors.ts";
import { readTorchStateDict } from "../../src/io/torch.ts";
import type { HostTensor } from "../../src/io/tensor.ts";
import { fixture } from "../helpers/fixtures.ts";

const BIN = fixture("mamba-ssm", "tiny", "pytorch_model.bin");
const SAFETENSORS = fixture("hf-mamba", "tiny", "model.safetensors");

// ---------------------------------------------------------------------------------------------------------------
// Helpers: a safetensors reader for the reference, a zip writer, and a pickle builder.

/** Minimal safetensors parse (F32 only), kept here so this test does not depend on the project's reader. */
function readF32Safetensors(path: string): Map<string, { shape: number[]; data: Float32Array }> {
  const bytes = readFileSync(path);
  const headerLen = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString("utf8")) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, e] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    assert.equal(e.dtype, "F32");
    const raw = bytes.slice(8 + headerLen + e.data_offsets[0], 8 + headerLen + e.data_offsets[1]);
    out.set(name, { shape: e.shape, data: new Float32Array(raw.buffer, raw.byteOffset, raw.length / 4) });
  }
  return out;
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(b: Uint8Array): number {
  let c = 0xffffffff;
  for (const x of b) c = CRC_TABLE[(c ^ x) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

interface ZipInput { name: string; data: Uint8Array; method?: number }

/** Writes a zip of stored entries (the method field can be set to fake a compressed one); zip64 records on request. */
function makeZip(entries: ZipInput[], opts: { zip64?: boolean } = {}): Uint8Array {
  const parts: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name, "utf8");
    const crc = crc32(e.data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(opts.zip64 ? 45 : 20, 4);
    local.writeUInt16LE(e.method ?? 0, 8);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(e.data.length, 18);
    local.writeUInt32LE(e.data.length, 22);
    local.writeUInt16LE(name.length, 26);
    parts.push(local, name, Buffer.from(e.data));

    const extra = Buffer.alloc(opts.zip64 ? 4 + 24 : 0);
    if (opts.zip64) {
      extra.writeUInt16LE(1, 0);
      extra.writeUInt16LE(24, 2);
      extra.writeBigUInt64LE(BigInt(e.data.length), 4);
      extra.writeBigUInt64LE(BigInt(e.data.length), 12);
      extra.writeBigUInt64LE(BigInt(offset), 20);
    }
    const c = Buffer.alloc(46);
    c.writeUInt32LE(0x02014b50, 0);
    c.writeUInt16LE(opts.zip64 ? 45 : 20, 4);
    c.writeUInt16LE(opts.zip64 ? 45 : 20, 6);
    c.writeUInt16LE(e.method ?? 0, 10);
    c.writeUInt32LE(crc, 16);
    c.writeUInt32LE(opts.zip64 ? 0xffffffff : e.data.length, 20);
    c.writeUInt32LE(opts.zip64 ? 0xffffffff : e.data.length, 24);
    c.writeUInt16LE(name.length, 28);
    c.writeUInt16LE(extra.length, 30);
    c.writeUInt32LE(opts.zip64 ? 0xffffffff : offset, 42);
    central.push(c, name, extra);
    offset += local.length + name.length + e.data.length;
  }
  const cd = Buffer.concat(central);
  const tail: Buffer[] = [];
  if (opts.zip64) {
    const rec = Buffer.alloc(56);
    rec.writeUInt32LE(0x06064b50, 0);
    rec.writeBigUInt64LE(44n, 4);
    rec.writeUInt16LE(45, 12);
    rec.writeUInt16LE(45, 14);
    rec.writeBigUInt64LE(BigInt(entries.length), 24);
    rec.writeBigUInt64LE(BigInt(entries.length), 32);
    rec.writeBigUInt64LE(BigInt(cd.length), 40);
    rec.writeBigUInt64LE(BigInt(offset), 48);
    const loc = Buffer.alloc(20);
    loc.writeUInt32LE(0x07064b50, 0);
    loc.writeBigUInt64LE(BigInt(offset + cd.length), 8);
    loc.writeUInt32LE(1, 16);
    tail.push(rec, loc);
  }
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(opts.zip64 ? 0xffff : entries.length, 8);
  eocd.writeUInt16LE(opts.zip64 ? 0xffff : entries.length, 10);
  eocd.writeUInt32LE(opts.zip64 ? 0xffffffff : cd.length, 12);
  eocd.writeUInt32LE(opts.zip64 ? 0xffffffff : offset, 16);
  return new Uint8Array(Buffer.concat([...parts, cd, ...tail, eocd]));
}

/** Pickle opcodes as byte arrays, to be concatenated into a pickle. */
const P = {
  proto: [0x80, 2],
  stop: [0x2e],
  mark: [0x28],
  str(s: string): number[] {
    const b = [...Buffer.from(s, "utf8")];
    return [0x58, b.length & 0xff, (b.length >> 8) & 0xff, (b.length >> 16) & 0xff, b.length >>> 24, ...b];
  },
  int(n: number): number[] {
    if (n < 256) return [0x4b, n];
    if (n < 65536) return [0x4d, n & 0xff, n >> 8];
    return [0x4a, n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, (n >>> 24) & 0xff];
  },
  global(module: string, name: string): number[] {
    return [0x63, ...Buffer.from(`${module}\n${name}\n`, "utf8")];
  },
  tuple(...items: number[][]): number[] {
    return [0x28, ...items.flat(), 0x74];
  },
  /** A dict literal: EMPTY_DICT, MARK, k, v, ..., SETITEMS. */
  dict(...kvs: [number[], number[]][]): number[] {
    return [0x7d, 0x28, ...kvs.flatMap(([k, v]) => [...k, ...v]), 0x75];
  },
};

interface TensorSpec { key: string; type?: string; numel: number; offset?: number; size: number[]; stride?: number[] }

/** The pickle torch writes for one tensor: _rebuild_tensor_v2(persistent storage, offset, size, stride, False, OrderedDict()). */
function pickleTensor(t: TensorSpec): number[] {
  const stride = t.stride ?? t.size.map((_, i) => t.size.slice(i + 1).reduce((a, b) => a * b, 1));
  const pid = P.tuple(P.str("storage"), P.global("torch", t.type ?? "FloatStorage"), P.str(t.key), P.str("cpu"), P.int(t.numel));
  return [
    ...P.global("torch._utils", "_rebuild_tensor_v2"),
    ...P.tuple([...pid, 0x51], P.int(t.offset ?? 0), P.tuple(...t.size.map(P.int)), P.tuple(...stride.map(P.int)),
      [0x89], [...P.global("collections", "OrderedDict"), 0x29, 0x52]),
    0x52,
  ];
}

/** A torch.save-style archive: `<prefix>/data.pkl`, `<prefix>/data/<key>` for each storage, and `byteorder`. */
function makeCheckpoint(pickle: number[], storages: Record<string, Uint8Array>, opts: { prefix?: string; zip64?: boolean } = {}): Uint8Array {
  const prefix = opts.prefix ?? "archive";
  return makeZip([
    { name: `${prefix}/data.pkl`, data: new Uint8Array(pickle) },
    { name: `${prefix}/byteorder`, data: new TextEncoder().encode("little") },
    ...Object.entries(storages).map(([key, data]) => ({ name: `${prefix}/data/${key}`, data })),
    { name: `${prefix}/version`, data: new TextEncoder().encode("3\n") },
  ], opts);
}

const f32Bytes = (xs: number[]) => new Uint8Array(new Float32Array(xs).buffer);
const u16Bytes = (xs: number[]) => new Uint8Array(new Uint16Array(xs).buffer);
const iota = (n: number) => Array.from({ length: n }, (_, i) => i);

/** Asserts that `fn` throws a MambaError whose message matches `re` (and names the file). */
function throwsMamba(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof MambaError, `expected MambaError, got ${String(err)}`);
    assert.match(err.message, re);
    assert.match(err.message, /^test\.bin: /);
    return true;
  });
}

const read = (bytes: Uint8Array) => readTorchStateDict(bytes, "test.bin");

// ---------------------------------------------------------------------------------------------------------------
// The real checkpoint.

test("mamba_ssm pytorch_model.bin equals the same model's safetensors, element for element", () => {
  const bin = readTorchStateDict(readFileSync(BIN), BIN);
  const ref = readF32Safetensors(SAFETENSORS);
  assert.equal(bin.size, ref.size + 1); // + lm_head.weight, which the safetensors file leaves to tying
  for (const [refName, r] of ref) {
    const name = refName.replace("backbone.embeddings.", "backbone.embedding.");
    const t = bin.get(name);
    assert.ok(t, `missing ${name}`);
    assert.equal(t.dtype, "F32");
    assert.deepEqual(t.shape, r.shape, name);
    assert.ok(t.data instanceof Float32Array);
    assert.deepEqual(t.data, r.data, name);
  }
  const head = bin.get("lm_head.weight")!;
  assert.deepEqual(head.shape, [96, 32]);
  assert.deepEqual(head.data, ref.get("backbone.embeddings.weight")!.data);
  // spot-check a value against the reference directly, so an all-zero read could not pass
  assert.ok(Math.abs(bin.get("backbone.layers.0.mixer.D")!.data[0]! - 1.0161470174789429) < 1e-7);
});

test("the fixture read from an unaligned buffer gives the same tensors", () => {
  const file = readFileSync(BIN);
  const shifted = new Uint8Array(file.length + 1).subarray(1);
  shifted.set(file);
  const a = readTorchStateDict(file, BIN);
  const b = readTorchStateDict(shifted, BIN);
  for (const [k, t] of a) assert.deepEqual(b.get(k)!.data, t.data, k);
});

// ---------------------------------------------------------------------------------------------------------------
// Hand-built archives.

test("views of one storage: offsets, a transpose, and tied tensors all read right", () => {
  // storage "0": 12 floats 0..11. `a` is it as [3, 4]; `t` is a's transpose (stride [1, 4]); `row` is a[1];
  // `tied` is a second reference to the very same view as `a`.
  const pickle = [
    ...P.proto,
    ...P.dict(
      [P.str("a"), pickleTensor({ key: "0", numel: 12, size: [3, 4] })],
      [P.str("t"), pickleTensor({ key: "0", numel: 12, size: [4, 3], stride: [1, 4] })],
      [P.str("row"), pickleTensor({ key: "0", numel: 12, offset: 4, size: [4] })],
      [P.str("tied"), pickleTensor({ key: "0", numel: 12, size: [3, 4] })],
      [P.str("scalar"), pickleTensor({ key: "1", numel: 3, offset: 2, size: [] })],
      [P.str("step"), P.int(7)], // a non-tensor value: skipped
    ),
    ...P.stop,
  ];
  const sd = read(makeCheckpoint(pickle, { "0": f32Bytes(iota(12)), "1": f32Bytes([5, 6, 7.5]) }, { prefix: "pytorch_model" }));
  assert.deepEqual([...sd.keys()], ["a", "t", "row", "tied", "scalar"]);
  assert.deepEqual(sd.get("a"), { dtype: "F32", shape: [3, 4], data: new Float32Array(iota(12)) });
  assert.deepEqual(sd.get("t")!.shape, [4, 3]);
  assert.deepEqual([...sd.get("t")!.data], [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]);
  assert.deepEqual([...sd.get("row")!.data], [4, 5, 6, 7]);
  assert.deepEqual(sd.get("tied"), sd.get("a"));
  assert.deepEqual(sd.get("scalar"), { dtype: "F32", shape: [], data: new Float32Array([7.5]) });
});

test("F16 and BF16 storages come back as raw 16-bit patterns", () => {
  const pickle = [
    ...P.proto,
    ...P.dict(
      [P.str("h"), pickleTensor({ key: "0", type: "HalfStorage", numel: 4, size: [2, 2], stride: [1, 2] })],
      [P.str("b"), pickleTensor({ key: "1", type: "BFloat16Storage", numel: 3, offset: 1, size: [2] })],
    ),
    ...P.stop,
  ];
  const sd = read(makeCheckpoint(pickle, { "0": u16Bytes([0x3c00, 0x4000, 0x4200, 0xbc00]), "1": u16Bytes([0x3f80, 0x4040, 0xc000]) }));
  assert.deepEqual(sd.get("h"), { dtype: "F16", shape: [2, 2], data: new Uint16Array([0x3c00, 0x4200, 0x4000, 0xbc00]) });
  assert.deepEqual(sd.get("b"), { dtype: "BF16", shape: [2], data: new Uint16Array([0x4040, 0xc000]) });
});

test("OrderedDict state dicts with _metadata, Parameters, memo and wrappers {state_dict: ...} / {model: ...}", () => {
  // OrderedDict() REDUCE, memoized, SETITEMS, then BUILD with {'_metadata': {...}} as torch writes a state dict
  const od = [...P.global("collections", "OrderedDict"), 0x29, 0x52, 0x71, 0];
  const param = [...P.global("torch._utils", "_rebuild_parameter"),
    ...P.tuple(pickleTensor({ key: "0", numel: 2, size: [2] }), [0x89], [...P.global("collections", "OrderedDict"), 0x29, 0x52]), 0x52];
  const stateDict = [
    ...od, 0x28, ...P.str("w"), ...param, 0x71, 1, ...P.str("w2"), 0x68, 1, 0x75,
    ...P.dict([P.str("_metadata"), P.dict([P.str(""), P.dict([P.str("version"), P.int(1)])])]), 0x62,
  ];
  for (const key of ["state_dict", "model"]) {
    const pickle = [...P.proto, ...P.dict([P.str("epoch"), P.int(3)], [P.str(key), stateDict], [P.str("lr"), [0x47, ...Buffer.from([0x3f, 0x50, 0x62, 0x4d, 0xd2, 0xf1, 0xa9, 0xfc])]]), ...P.stop];
    const sd = read(makeCheckpoint(pickle, { "0": f32Bytes([1.5, -2]) }));
    assert.deepEqual([...sd.keys()], ["w", "w2"]);
    assert.deepEqual([...sd.get("w")!.data], [1.5, -2]);
    assert.deepEqual([...sd.get("w2")!.data], [1.5, -2]);
  }
});

test("zip64 archives are read", () => {
  const pickle = [...P.proto, ...P.dict([P.str("x"), pickleTensor({ key: "0", numel: 3, size: [3] })]), ...P.stop];
  const sd = read(makeCheckpoint(pickle, { "0": f32Bytes([1, 2, 3]) }, { zip64: true }));
  assert.deepEqual([...sd.get("x")!.data], [1, 2, 3]);
});

// ---------------------------------------------------------------------------------------------------------------
// Bad input.

const goodPickle = [...P.proto, ...P.dict([P.str("x"), pickleTensor({ key: "0", numel: 4, size: [2, 2] })]), ...P.stop];
const goodStorages = { "0": f32Bytes([1, 2, 3, 4]) };

test("empty, random and non-zip files", () => {
  throwsMamba(() => read(new Uint8Array(0)), /empty/);
  throwsMamba(() => read(new Uint8Array(10)), /not a zip archive/);
  throwsMamba(() => read(new TextEncoder().encode("{\"not\": \"a checkpoint\"}")), /not a zip archive/);
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 16) & 0xff;
  for (let i = 0; i < 20; i++) {
    const junk = Uint8Array.from({ length: 1 + i * 97 }, rand);
    if (junk[0] === 0x80) junk[0] = 0; // that byte would be reported as the legacy format instead
    throwsMamba(() => read(junk), /not a zip archive/);
  }
  throwsMamba(() => read(new Uint8Array([0x80, 2, 0x8a, 10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e])), /legacy/);
  throwsMamba(() => read(makeZip([{ name: "a.txt", data: new Uint8Array(3) }])), /no '<archive>\/data\.pkl'/);
});

test("a truncated fixture fails clearly at every cut", () => {
  const file = readFileSync(BIN);
  for (const cut of [1, 22, 100, 2000, 2600, 50_000, file.length - 2000, file.length - 100, file.length - 23, file.length - 1]) {
    throwsMamba(() => read(file.subarray(0, cut)), /not a zip archive|truncated|damaged/);
  }
});

test("a zip whose directory points past the data fails clearly", () => {
  // keep the central directory but drop a storage's bytes: rebuild the zip with a short entry, then claim the full size
  const zip = makeCheckpoint(goodPickle, goodStorages);
  const view = Buffer.from(zip);
  // the central directory entry of "archive/data/0" says 16 bytes; make it say 1 MB
  const name = Buffer.from("archive/data/0");
  const cdPos = view.indexOf(Buffer.concat([Buffer.from([0x50, 0x4b, 0x01, 0x02])]), 0);
  let p = cdPos;
  while (p >= 0 && !view.subarray(p + 46, p + 46 + name.length).equals(name)) p = view.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]), p + 1);
  assert.ok(p >= 0);
  view.writeUInt32LE(1 << 20, p + 20);
  view.writeUInt32LE(1 << 20, p + 24);
  throwsMamba(() => read(view), /'archive\/data\/0' .*runs past the end of the file/);
  // an absurd central directory offset
  const bad = Buffer.from(zip);
  bad.writeUInt32LE(0xfffffff0, bad.length - 6);
  throwsMamba(() => read(bad), /central directory .* lies outside the file/);
});

test("randomly damaged fixtures either read or fail with a MambaError", () => {
  const file = readFileSync(BIN);
  let seed = 7;
  const rand = (n: number) => (seed = (seed * 1103515245 + 12345) >>> 0) % n;
  let failures = 0;
  for (let i = 0; i < 300; i++) {
    const damaged = Buffer.from(file);
    // hit the pickle and the zip records more often than the tensor data, where any byte is a valid float
    const region = i % 3 === 0 ? rand(2300) : i % 3 === 1 ? file.length - 1 - rand(4000) : rand(file.length);
    for (let j = 0; j < 1 + rand(3); j++) damaged[Math.min(file.length - 1, region + j)] = rand(256);
    try {
      read(damaged);
    } catch (err) {
      assert.ok(err instanceof MambaError, `mutation ${i}: ${String(err)}`);
      failures++;
    }
  }
  assert.ok(failures > 20, `only ${failures} of 300 mutations were caught`);
});

test("a truncated pickle inside a valid zip", () => {
  for (const cut of [1, 2, 10, goodPickle.length - 20, goodPickle.length - 1]) {
    throwsMamba(() => read(makeCheckpoint(goodPickle.slice(0, cut), goodStorages)), /data\.pkl: (truncated|stack underflow|no MARK)/);
  }
});

test("pickles that name os.system or builtins.eval are refused, not run", () => {
  // the classic exploit: os.system("echo pwned") via GLOBAL + REDUCE
  const viaGlobal = [...P.proto, ...P.global("os", "system"), ...P.tuple(P.str("echo pwned")), 0x52, ...P.stop];
  throwsMamba(() => read(makeCheckpoint(viaGlobal, {})), /unsupported pickle global 'os\.system'; only torch tensor rebuilds are allowed/);
  // the same with STACK_GLOBAL (protocol 4), inside a state dict value
  const viaStackGlobal = [0x80, 4, ...P.dict([P.str("x"), [...P.str("builtins"), ...P.str("eval"), 0x93, ...P.tuple(P.str("1+1")), 0x52]]), ...P.stop];
  throwsMamba(() => read(makeCheckpoint(viaStackGlobal, {})), /unsupported pickle global 'builtins\.eval'/);
  // a global that looks like torch but is not on the list
  const torchish = [...P.proto, ...P.global("torch", "load"), ...P.tuple(P.str("x")), 0x52, ...P.stop];
  throwsMamba(() => read(makeCheckpoint(torchish, {})), /unsupported pickle global 'torch\.load'/);
  // an allowed global used as a function it is not
  const storageCall = [...P.proto, ...P.global("torch", "FloatStorage"), ...P.tuple(), 0x52, ...P.stop];
  throwsMamba(() => read(makeCheckpoint(storageCall, {})), /'torch\.FloatStorage' cannot be called/);
});

test("tensor views outside their storage are refused", () => {
  const cases: [TensorSpec, RegExp][] = [
    [{ key: "0", numel: 4, size: [2, 3] }, /reaches element 5 of storage '0', which has 4/],
    [{ key: "0", numel: 4, offset: 3, size: [2] }, /reaches element 4/],
    [{ key: "0", numel: 4, size: [2, 2], stride: [3, 1] }, /reaches element 4/],
    [{ key: "0", numel: 8, size: [8] }, /storage '0' has 16 bytes but 8 float32 elements need 32/],
  ];
  for (const [spec, re] of cases) {
    const pickle = [...P.proto, ...P.dict([P.str("x"), pickleTensor(spec)]), ...P.stop];
    throwsMamba(() => read(makeCheckpoint(pickle, goodStorages)), re);
  }
  // stride 0 (an expanded view) is legal, but not when it asks for more elements than can exist
  const expanded = [...P.proto, ...P.dict([P.str("x"), pickleTensor({ key: "0", numel: 4, offset: 1, size: [2, 3], stride: [1, 0] })]), ...P.stop];
  assert.deepEqual([...read(makeCheckpoint(expanded, goodStorages)).get("x")!.data], [2, 2, 2, 3, 3, 3]);
  const huge = [...P.proto, ...P.dict([P.str("x"), pickleTensor({ key: "0", numel: 4, size: [65535, 65535, 65535], stride: [0, 0, 0] })]), ...P.stop];
  throwsMamba(() => read(makeCheckpoint(huge, goodStorages)), /more than can be allocated/);
  // size and stride of different ranks
  const mismatched = [...P.proto, ...P.dict([P.str("x"), pickleTensor({ key: "0", numel: 4, size: [4], stride: [1, 1] })]), ...P.stop];
  throwsMamba(() => read(makeCheckpoint(mismatched, goodStorages)), /size \[4\] but stride \[1, 1\]/);
});

test("missing storages, compressed entries, unsupported dtypes and non-dict roots", () => {
  throwsMamba(() => read(makeCheckpoint(goodPickle, {})), /'archive\/data\/0' is missing/);
  const compressed = makeZip([
    { name: "archive/data.pkl", data: new Uint8Array(goodPickle) },
    { name: "archive/data/0", data: goodStorages["0"], method: 8 },
  ]);
  throwsMamba(() => read(compressed), /'archive\/data\/0' is compressed \(method 8\)/);
  const long = [...P.proto, ...P.dict([P.str("ids"), pickleTensor({ key: "0", type: "LongStorage", numel: 2, size: [2] })]), ...P.stop];
  throwsMamba(() => read(makeCheckpoint(long, goodStorages)), /tensor 'ids' has dtype int64/);
  throwsMamba(() => read(makeCheckpoint([...P.proto, ...P.str("hi"), ...P.stop], {})), /holds a str, not a state dict/);
  throwsMamba(() => read(makeCheckpoint([...P.proto, ...P.dict([P.str("a"), P.int(1)]), ...P.stop], {})), /no float tensors/);
  throwsMamba(() => read(makeCheckpoint([...P.proto, 0x49, 0x31, 0x0a, ...P.stop], {})), /unsupported pickle opcode 0x49/);
  throwsMamba(() => read(makeCheckpoint([...P.proto, 0x68, 9, ...P.stop], {})), /memo entry 9/);
});

test("the result holds HostTensors", () => {
  const sd: Map<string, HostTensor> = read(makeCheckpoint(goodPickle, goodStorages));
  assert.deepEqual(sd.get("x"), { dtype: "F32", shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) });
});
