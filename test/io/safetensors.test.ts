/**
 * The safetensors reader and writer: damaged or hostile files (every one a MambaError naming the file and, where
 * there is one, the tensor), round trips in F32 / F16 / BF16, and the half-precision conversions against
 * references written here from the IEEE 754 definitions (nearest representable value, ties to the even pattern).
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { MambaError } from "../../src/errors.ts";
import { parseSafetensors, readSafetensors, serializeSafetensors, writeSafetensors } from "../../src/io/safetensors.ts";
import { type HostTensor, toBF16Bits, toF16Bits, toFloat32 } from "../../src/io/tensor.ts";
import { TestRng } from "../helpers/random.ts";

const WHERE = "/models/x/model.safetensors";

/** A safetensors file from a header (object or raw text), data bytes, and optionally a forged header length. */
function build(header: unknown, data: Uint8Array = new Uint8Array(0), headerLen?: bigint): Uint8Array {
  const h = new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, headerLen ?? BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

function rejects(bytes: Uint8Array, ...patterns: RegExp[]): void {
  assert.throws(() => parseSafetensors(bytes, WHERE), (err: unknown) => {
    assert.ok(err instanceof MambaError, `expected a MambaError, got ${String(err)}`);
    assert.ok(err.message.includes(WHERE), `message does not name the file: ${err.message}`);
    for (const p of patterns) assert.match(err.message, p);
    return true;
  });
}

const f32Tensor = (shape: number[], values?: number[]): HostTensor => {
  const n = shape.reduce((a, b) => a * b, 1);
  return { dtype: "F32", shape, data: values ? Float32Array.from(values) : Float32Array.from({ length: n }, (_, i) => i * 0.5 - 1) };
};

describe("damaged safetensors files", () => {
  const good = serializeSafetensors(new Map([["a.weight", f32Tensor([2, 3])], ["b.bias", f32Tensor([5])]]));
  const headerLen = Number(new DataView(good.buffer).getBigUint64(0, true));

  test("the intact file parses", () => {
    const m = parseSafetensors(good, WHERE);
    assert.deepEqual([...m.keys()].sort(), ["a.weight", "b.bias"]);
  });

  test("empty file and files shorter than the length prefix", () => {
    rejects(new Uint8Array(0), /too short/);
    rejects(good.subarray(0, 7), /too short/);
  });

  test("truncated at several points: inside the header, at its end, inside the data, one byte short", () => {
    for (const cut of [8, 9, 8 + (headerLen >> 1), 8 + headerLen - 1]) rejects(good.subarray(0, cut), /header length|truncated/);
    for (const cut of [8 + headerLen, 8 + headerLen + 4, 8 + headerLen + 24, good.length - 1]) {
      // the header parses, so the message names a tensor whose data is cut off
      rejects(good.subarray(0, cut), /tensor '(a\.weight|b\.bias)'/, /outside the data section|truncated/);
    }
  });

  test("absurd header lengths", () => {
    for (const len of [2n ** 64n - 1n, 2n ** 63n, 2n ** 53n + 1n, 100_000_001n, BigInt(good.length)]) {
      const bad = good.slice();
      new DataView(bad.buffer).setBigUint64(0, len, true);
      rejects(bad, /header length/);
    }
  });

  test("a header that is not JSON, not UTF-8, or empty", () => {
    rejects(build("{\"a\": {"), /not valid JSON/);
    rejects(build("not json at all"), /not valid JSON/);
    rejects(build(""), /not valid JSON/);
    const bin = build("{}");
    bin[8] = 0xff; // invalid UTF-8
    rejects(bin, /not valid JSON/);
  });

  test("a header that is not a JSON object", () => {
    for (const h of ["[]", "[1, 2]", "42", "null", "\"text\"", "true"]) rejects(build(h), /not a JSON object/);
  });

  test("entries that are not objects", () => {
    for (const e of [5, null, "x", true]) rejects(build({ "t.w": e }), /'t\.w'/, /not an object|dtype/);
  });

  test("unknown or missing dtype", () => {
    for (const dtype of ["I64", "F64", "I32", "f32", "BOOL", 4, undefined]) {
      rejects(build({ "t.w": { dtype, shape: [1], data_offsets: [0, 4] } }, new Uint8Array(8)), /'t\.w'/, /unsupported dtype/);
    }
  });

  test("invalid shapes", () => {
    for (const shape of [[-1], [2.5], ["2"], 3, null, undefined, [1, Number.MAX_SAFE_INTEGER * 2]]) {
      rejects(build({ "t.w": { dtype: "F32", shape, data_offsets: [0, 4] } }, new Uint8Array(4)), /'t\.w'/, /invalid shape/);
    }
  });

  test("invalid data_offsets", () => {
    for (const offs of [undefined, [0], [0, 4, 8], [-4, 0], [0.5, 4.5], ["0", "4"], null]) {
      rejects(build({ "t.w": { dtype: "F32", shape: [1], data_offsets: offs } }, new Uint8Array(8)), /'t\.w'/, /data_offsets/);
    }
  });

  test("offsets outside the data section or reversed", () => {
    rejects(build({ "t.w": { dtype: "F32", shape: [2], data_offsets: [4, 12] } }, new Uint8Array(8)), /'t\.w'/, /outside the data section/);
    rejects(build({ "t.w": { dtype: "F32", shape: [2], data_offsets: [8, 0] } }, new Uint8Array(8)), /'t\.w'/, /outside the data section/);
    rejects(build({ "t.w": { dtype: "F32", shape: [1e9], data_offsets: [0, 4e9] } }, new Uint8Array(8)), /'t\.w'/, /outside the data section/);
  });

  test("byte sizes that do not match the shape and dtype", () => {
    rejects(build({ "t.w": { dtype: "F32", shape: [3], data_offsets: [0, 8] } }, new Uint8Array(16)), /'t\.w'/, /8 bytes but F32 \[3\] needs 12/);
    rejects(build({ "t.w": { dtype: "F16", shape: [2, 2], data_offsets: [0, 16] } }, new Uint8Array(16)), /'t\.w'/, /needs 8/);
    rejects(build({ "t.w": { dtype: "BF16", shape: [], data_offsets: [0, 0] } }, new Uint8Array(16)), /'t\.w'/, /needs 2/);
  });

  test("overlapping tensors", () => {
    const h = {
      "a": { dtype: "F32", shape: [2], data_offsets: [0, 8] },
      "b": { dtype: "F32", shape: [2], data_offsets: [4, 12] },
    };
    rejects(build(h, new Uint8Array(12)), /'a' and 'b' overlap/);
    const same = { "a": { dtype: "F16", shape: [2], data_offsets: [0, 4] }, "b": { dtype: "F32", shape: [1], data_offsets: [0, 4] } };
    rejects(build(same, new Uint8Array(4)), /overlap/);
  });

  test("a missing file is a MambaError naming it", async () => {
    const p = path.join(os.tmpdir(), "mamba-ts-no-such-dir", "model.safetensors");
    await assert.rejects(readSafetensors(p), (e: unknown) => e instanceof MambaError && e.message.includes(p) && /ENOENT/.test(e.message));
  });
});

describe("round trips", () => {
  test("F32, F16 and BF16 tensors of several shapes, with metadata, through bytes and through a file", async () => {
    const r = new TestRng(9);
    const vals = Float32Array.from({ length: 24 }, () => r.normal() * 10);
    const tensors = new Map<string, HostTensor>([
      ["f32.matrix", { dtype: "F32", shape: [4, 6], data: vals }],
      ["f32.scalar", { dtype: "F32", shape: [], data: Float32Array.of(-3.5) }],
      ["f32.empty", { dtype: "F32", shape: [0, 3], data: new Float32Array(0) }],
      ["f16.vec", { dtype: "F16", shape: [3], data: toF16Bits(Float32Array.from([1, -0.5, 65504])) }],
      ["bf16.cube", { dtype: "BF16", shape: [2, 1, 3], data: toBF16Bits(vals.subarray(0, 6)) }],
    ]);
    const bytes = serializeSafetensors(tensors, { format: "pt", note: "é" });
    const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal((8 + headerLen) % 8, 0, "the data section is 8-byte aligned");
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLen))) as Record<string, unknown>;
    assert.deepEqual(header.__metadata__, { format: "pt", note: "é" });

    // parsed from a view at an odd offset of a larger buffer: the reader copies into aligned arrays
    const shifted = new Uint8Array(bytes.length + 3);
    shifted.set(bytes, 3);
    for (const src of [bytes, shifted.subarray(3)]) {
      const back = parseSafetensors(src, "mem");
      assert.deepEqual([...back.keys()], [...tensors.keys()]);
      for (const [name, t] of tensors) {
        const b = back.get(name)!;
        assert.equal(b.dtype, t.dtype, name);
        assert.deepEqual(b.shape, t.shape, name);
        assert.deepEqual(Array.from(b.data), Array.from(t.data), name);
        assert.equal(b.data instanceof Float32Array, t.dtype === "F32", name);
      }
    }
    // the parsed tensors do not share memory with the file bytes
    const again = parseSafetensors(bytes, "mem");
    bytes.fill(0, 8 + headerLen);
    assert.deepEqual(Array.from(again.get("f32.matrix")!.data), Array.from(vals));
    assert.deepEqual(Array.from(toFloat32(again.get("f16.vec")!)), [1, -0.5, 65504]);

    const dir = mkdtempSync(path.join(os.tmpdir(), "mamba-ts-st-"));
    try {
      const file = path.join(dir, "m.safetensors");
      await writeSafetensors(file, tensors);
      const fromFile = await readSafetensors(file);
      for (const [name, t] of tensors) assert.deepEqual(Array.from(fromFile.get(name)!.data), Array.from(t.data), name);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("serializing data whose size does not match its shape is a MambaError", () => {
    assert.throws(() => serializeSafetensors(new Map([["w", { dtype: "F32", shape: [3], data: new Float32Array(2) }]])), MambaError);
    assert.throws(() => serializeSafetensors(new Map([["w", { dtype: "F16", shape: [2], data: new Uint16Array(3) }]])), MambaError);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// IEEE references, from the definitions: value of a bit pattern, and rounding to nearest with ties to even.

/** IEEE binary16 value of a bit pattern. */
function f16Value(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0x1f) return m ? NaN : s * Infinity;
  return e === 0 ? s * m * 2 ** -24 : s * (1024 + m) * 2 ** (e - 25);
}

/** bfloat16 value of a bit pattern (sign, 8-bit exponent with bias 127, 7-bit fraction). */
function bf16Value(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 7) & 0xff, m = h & 0x7f;
  if (e === 0xff) return m ? NaN : s * Infinity;
  return e === 0 ? s * m * 2 ** -133 : s * (128 + m) * 2 ** (e - 134);
}

/**
 * Nearest pattern to x among the positive patterns 0..maxFinite of a format, where maxFinite + 1 is infinity and
 * counts, for rounding only, as the next power of two (the IEEE overflow rule). Ties go to the even pattern.
 */
function roundTo(x: number, value: (h: number) => number, maxFinite: number, infValue: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a === Infinity) return sign | (maxFinite + 1);
  const v = (h: number) => (h === maxFinite + 1 ? infValue : value(h));
  // largest pattern with value <= a (values grow with the pattern)
  let lo = 0, hi = maxFinite;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (v(mid) <= a) lo = mid; else hi = mid - 1;
  }
  if (v(lo) === a) return sign | lo;
  const up = lo + 1;
  const dLo = a - v(lo), dUp = v(up) - a;
  const pick = dLo < dUp ? lo : dUp < dLo ? up : (lo & 1 ? up : lo);
  return sign | pick;
}
const refF16 = (x: number) => roundTo(x, f16Value, 0x7bff, 65536);
const refBF16 = (x: number) => roundTo(x, bf16Value, 0x7f7f, 2 ** 128);

describe("half-precision conversions", () => {
  test("known binary16 patterns decode to their values", () => {
    const known: [number, number][] = [
      [0x0000, 0], [0x3c00, 1], [0xc000, -2], [0x3800, 0.5], [0x7bff, 65504], [0x0001, 2 ** -24], [0x03ff, 1023 * 2 ** -24],
      [0x0400, 2 ** -14], [0x3555, 0.333251953125], [0x7c00, Infinity], [0xfc00, -Infinity], [0x4248, 3.140625],
    ];
    for (const [h, v] of known) assert.equal(toFloat32({ dtype: "F16", shape: [1], data: Uint16Array.of(h) })[0], v, `0x${h.toString(16)}`);
    assert.ok(Object.is(toFloat32({ dtype: "F16", shape: [1], data: Uint16Array.of(0x8000) })[0], -0));
    assert.ok(Number.isNaN(toFloat32({ dtype: "F16", shape: [1], data: Uint16Array.of(0x7e00) })[0]));
  });

  test("toFloat32 of every F16 and every BF16 pattern equals the IEEE value", () => {
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const f16 = toFloat32({ dtype: "F16", shape: [65536], data: all });
    const bf16 = toFloat32({ dtype: "BF16", shape: [65536], data: all });
    for (let h = 0; h < 65536; h++) {
      const a = f16Value(h), b = bf16Value(h);
      assert.ok(Object.is(f16[h], a) || (Number.isNaN(a) && Number.isNaN(f16[h]!)), `F16 0x${h.toString(16)}: ${f16[h]} vs ${a}`);
      assert.ok(Object.is(bf16[h], Math.fround(b)) || (Number.isNaN(b) && Number.isNaN(bf16[h]!)), `BF16 0x${h.toString(16)}: ${bf16[h]} vs ${b}`);
    }
  });

  test("toF16Bits and toBF16Bits round to nearest, ties to even, overflow to infinity, keep signs and NaN", () => {
    const r = new TestRng(10);
    const bits = new Uint32Array(60000);
    for (let i = 0; i < bits.length; i++) bits[i] = Math.floor(r.next() * 2 ** 32);
    // and values of the half range specifically (exponents near binary16's), which random patterns rarely hit
    const specials = new Float32Array(bits.buffer);
    const extra = [
      0, -0, 1, -1, 65504, 65519.99, 65520, -65520, 65536, 1e10, -1e30, 3.4028234663852886e38, Infinity, -Infinity,
      1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 2 ** -25, 3 * 2 ** -25, 2 ** -26, 2 ** -24 * 1.5,
      2 ** -14, 2 ** -14 - 2 ** -25, 1e-8, 6.1e-5, 1.401298464324817e-45, 1.1754943508222875e-38, 0.1, 1 / 3, Math.PI,
    ];
    for (let i = 0; i < 20000; i++) extra.push((r.next() - 0.5) * 2 ** r.int(-28, 17));
    const xs = Float32Array.from([...specials, ...extra]);
    const f16 = toF16Bits(xs), bf16 = toBF16Bits(xs);
    for (let i = 0; i < xs.length; i++) {
      const x = xs[i]!;
      if (Number.isNaN(x)) {
        assert.ok(Number.isNaN(f16Value(f16[i]!)), `F16 of NaN is 0x${f16[i]!.toString(16)}`);
        assert.ok(Number.isNaN(bf16Value(bf16[i]!)), `BF16 of NaN is 0x${bf16[i]!.toString(16)}`);
        continue;
      }
      assert.equal(f16[i], refF16(x), `F16 of ${x}`);
      assert.equal(bf16[i], refBF16(x), `BF16 of ${x}`);
    }
  });

  test("every finite binary16 value survives F16 -> f32 -> F16", () => {
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i).filter((h) => ((h >> 10) & 0x1f) !== 0x1f);
    const back = toF16Bits(toFloat32({ dtype: "F16", shape: [all.length], data: all }));
    assert.deepEqual(Array.from(back), Array.from(all));
  });

  test("toF16Bits and toBF16Bits read a Float32Array view at an offset", () => {
    const big = Float32Array.from([7, 1, 2, 3]);
    assert.deepEqual(Array.from(toF16Bits(big.subarray(1))), [0x3c00, 0x4000, 0x4200]);
    assert.deepEqual(Array.from(toBF16Bits(big.subarray(1))), [0x3f80, 0x4000, 0x4040]);
  });
});
