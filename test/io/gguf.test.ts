/**
 * GGUF files (llama.cpp's format): the fixtures made by llama.cpp's converter from hf-mamba/tiny (f32, f16, q8_0,
 * q4_0) load through loadModel (a file, a folder holding one) and give the logits an independent reference computed
 * from their dequantized weights, on the CPU and on WebGPU; the weights equal hf-mamba/tiny's, rounded to the
 * file's types; Mamba-2 and Falcon-Mamba files in llama.cpp's layout load back; each kind of damage is one
 * MambaError that names it.
 */
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { MambaError, loadModel } from "../../src/index.ts";
import { loadCheckpoint } from "../../src/io/checkpoint.ts";
import { readSafetensors } from "../../src/io/safetensors.ts";
import { type HostTensor, toF16Bits, toFloat32 } from "../../src/io/tensor.ts";
import { GgufType, type GgufValue, ggufHeader, parseGgufHeader, serializeGguf } from "../../src/io/gguf-format.ts";
import { ggufModelContent, readGgufModel } from "../../src/io/gguf-model.ts";
import { modelFromTensors } from "../../src/model/build.ts";
import { readGgufFile, readGgufHeader } from "../../src/io/gguf.ts";
import { assertClose, fixture, maxAbsDiff, readSafetensorsAny } from "../helpers/fixtures.ts";
import { gpuTest } from "../helpers/backends.ts";
import { CpuBackend } from "../../src/backend/cpu/index.ts";

const root = mkdtempSync(path.join(os.tmpdir(), "mamba-ts-gguf-"));
after(() => rmSync(root, { recursive: true, force: true }));

const TYPES = ["f32", "f16", "q8_0", "q4_0"] as const;
const ggufPath = (type: string) => fixture("gguf", `tiny-${type}.gguf`);
const bytesOf = (type: string) => new Uint8Array(readFileSync(ggufPath(type)));

async function logitsMatch(type: string, backend: "reference" | "cpu" | "webgpu"): Promise<void> {
  const exp = await readSafetensorsAny(fixture("gguf", `tiny-${type}.expected.safetensors`));
  // "reference": the plain TypeScript CPU backend; "cpu": the CPU engine that backend "cpu" gives
  const model = await loadModel(ggufPath(type), { backend: backend === "reference" ? new CpuBackend() : backend });
  try {
    const ids = exp.get("input_ids")!;
    const [batch, seqLen] = ids.shape as [number, number];
    const out = await model.forward(ids.i32, { batch, seqLen });
    assert.deepEqual(exp.get("logits")!.shape, [batch, seqLen, model.config.paddedVocabSize]);
    assertClose(out.logits, exp.get("logits")!.f32, 1e-4, `${type} logits on ${backend}`);
  } finally {
    await model.dispose();
  }
}

describe("GGUF fixtures", { timeout: 600_000 }, () => {
  for (const type of TYPES) {
    test(`tiny-${type}.gguf: logits equal the reference from its dequantized weights (cpu reference backend)`,
      () => logitsMatch(type, "reference"));
  }
  test("the same on backend 'cpu' (the CPU engine)", async () => {
    for (const type of TYPES) await logitsMatch(type, "cpu");
  });
  test("the same on WebGPU; quantized files generate there as on the CPU", async (t) => {
    if (!(await gpuTest(t))) return;
    for (const type of TYPES) await logitsMatch(type, "webgpu");
    for (const type of ["q8_0", "q4_0"]) {
      const prompt = new Int32Array([5, 17, 40, 2]);
      const ids: number[][] = [];
      for (const backend of [new CpuBackend(), "webgpu" as const]) {
        const model = await loadModel(ggufPath(type), { backend });
        ids.push(Array.from(await model.generate(prompt, { maxNewTokens: 10, temperature: 0, stopTokens: [] })));
        await model.dispose();
      }
      assert.equal(ids[0]!.length, 14);
      assert.deepEqual(ids[1], ids[0], `${type}: greedy ids on WebGPU and on the reference CPU backend`);
    }
  });

  test("config and weights: those of hf-mamba/tiny, in the file's types (A_log back from A, conv [E, 1, K])", async () => {
    const hf = await readSafetensors(fixture("hf-mamba", "tiny", "model.safetensors"));
    const f32 = await readGgufFile(ggufPath("f32"));
    const ref = (await loadCheckpoint(fixture("hf-mamba", "tiny"))).config;
    for (const k of ["vocabSize", "hiddenSize", "intermediateSize", "stateSize", "numLayers", "convKernel", "timeStepRank",
      "useBias", "useConvBias", "tieEmbeddings", "residualInFp32", "eosTokenId", "bosTokenId"] as const) {
      assert.equal(f32.config[k], ref[k], k);
    }
    assert.ok(Math.abs(f32.config.layerNormEpsilon - 1e-5) < 1e-12);
    assert.equal(f32.tensors.size, hf.size);
    for (const [name, want] of hf) {
      const got = f32.tensors.get(name);
      assert.ok(got, `missing ${name}`);
      assert.deepEqual(got.shape, want.shape, name);
      // A_log went through A = -exp(A_log) in float32 and back: equal to within float rounding
      const tol = name.endsWith("A_log") ? 1e-6 : 0;
      assert.ok(maxAbsDiff(toFloat32(got), toFloat32(want)) <= tol, name);
    }
    const f16 = await readGgufFile(ggufPath("f16"));
    for (const [name, t] of f16.tensors) {
      if (t.dtype !== "F16") continue;
      assert.deepEqual(t.data, toF16Bits(toFloat32(hf.get(name)!)), `${name} is the f16 rounding of the checkpoint's`);
    }
    // quantized files: the projections and embedding quantized, dt_proj (rows of 2) in F16, the rest F32
    const q8 = await readGgufFile(ggufPath("q8_0"));
    assert.equal(q8.dtype, "Q8_0");
    assert.equal(q8.tensors.get("backbone.layers.0.mixer.in_proj.weight")!.dtype, "Q8_0");
    assert.equal(q8.tensors.get("backbone.layers.0.mixer.dt_proj.weight")!.dtype, "F16");
    assert.equal(q8.tensors.get("backbone.layers.0.mixer.D")!.dtype, "F32");
    for (const [name, t] of q8.tensors) {
      // each weight within half a quantization step of the original (|w| <= 127 d per block)
      const got = toFloat32(t);
      const want = toFloat32(hf.get(name)!);
      let amax = 0;
      for (const v of want) amax = Math.max(amax, Math.abs(v));
      assert.ok(maxAbsDiff(got, want) <= (t.dtype === "Q8_0" ? amax / 127 : amax * 1e-3), name);
    }
  });

  test("Mamba-2 and Falcon-Mamba in llama.cpp's layout (written here) load back and match their fixtures", async () => {
    for (const name of ["hf-mamba2/tiny", "mamba-ssm/mamba2-tiny", "hf-falcon-mamba/tiny"]) {
      const folder = fixture(...name.split("/"));
      const ckpt = await loadCheckpoint(folder);
      const content = ggufModelContent(ckpt.config, ckpt.tensors, "f32", { name: "Tiny", tokenizer: null, where: name });
      const file = readGgufModel(serializeGguf(content.metadata, content.tensors), name);
      assert.equal(file.config.family, ckpt.config.family);
      const exp = await readSafetensorsAny(path.join(folder, "expected.safetensors"));
      const ids = exp.get("input_ids")!;
      const [batch, seqLen] = ids.shape as [number, number];
      const model = await modelFromTensors(file.config, file.tensors, { backend: "cpu" });
      const got = (await model.forward(ids.i32, { batch, seqLen })).logits;
      await model.dispose();
      if (ckpt.config.family === "mamba2") {
        assertClose(got, exp.get("logits")!.f32, 1e-4, `${name} logits`);
        assert.deepEqual(content.tensors.find((t) => t.name === "blk.0.ssm_a")!.shape, [ckpt.config.mamba2!.numHeads, 1]);
      } else {
        // GGUF has no key for Falcon-Mamba's own epsilon of the dt, B, C norm: llama.cpp uses the layers' (1e-5
        // here, the checkpoint says 1e-6), so the reference is the checkpoint computed with that epsilon
        assert.equal(file.config.mixerRmsEps, file.config.layerNormEpsilon);
        const ref = await modelFromTensors({ ...ckpt.config, mixerRmsEps: file.config.layerNormEpsilon }, ckpt.tensors, { backend: "cpu" });
        assertClose(got, (await ref.forward(ids.i32, { batch, seqLen })).logits, 1e-5, `${name} logits`);
        await ref.dispose();
        assertClose(got, exp.get("logits")!.f32, 1e-2, `${name} logits against the fixture (epsilon 1e-5 for 1e-6)`);
      }
    }
  });

  test("a folder holding one GGUF file loads, as does the file; two GGUF files are ambiguous", async () => {
    const dir = path.join(root, "one");
    mkdirSync(dir);
    copyFileSync(ggufPath("q4_0"), path.join(dir, "model-q4_0.gguf"));
    const a = await loadModel(dir, { backend: "cpu" });
    const b = await loadModel(ggufPath("q4_0"), { backend: "cpu" });
    const ids = new Int32Array([5, 9, 2, 40]);
    assert.deepEqual((await a.forward(ids, { batch: 1, seqLen: 4 })).logits, (await b.forward(ids, { batch: 1, seqLen: 4 })).logits);
    await a.dispose();
    await b.dispose();
    copyFileSync(ggufPath("q8_0"), path.join(dir, "model-q8_0.gguf"));
    await rejects(loadModel(dir, { backend: "cpu" }), /several GGUF files.*model-q4_0\.gguf, model-q8_0\.gguf/);
  });
});

describe("the GGUF container", () => {
  test("every metadata value type, arrays (nested too) and 64-bit integers round trip", () => {
    const T = GgufType;
    const values: Array<[string, GgufValue]> = [
      ["u8", { type: T.UINT8, value: 250 }], ["i8", { type: T.INT8, value: -120 }],
      ["u16", { type: T.UINT16, value: 65000 }], ["i16", { type: T.INT16, value: -32000 }],
      ["u32", { type: T.UINT32, value: 4_000_000_000 }], ["i32", { type: T.INT32, value: -2_000_000_000 }],
      ["f32", { type: T.FLOAT32, value: Math.fround(0.1) }], ["f64", { type: T.FLOAT64, value: 0.1 }],
      ["bool", { type: T.BOOL, value: true }], ["str", { type: T.STRING, value: "naïve 日本 🐍" }],
      ["u64", { type: T.UINT64, value: 2 ** 40 }], ["u64 big", { type: T.UINT64, value: 2n ** 63n + 5n }],
      ["i64", { type: T.INT64, value: -(2 ** 50) }], ["i64 big", { type: T.INT64, value: -(2n ** 62n) }],
      ["ints", { type: T.ARRAY, itemType: T.INT32, value: [1, -2, 3] }],
      ["strs", { type: T.ARRAY, itemType: T.STRING, value: ["a", "", "c d"] }],
      ["bools", { type: T.ARRAY, itemType: T.BOOL, value: [true, false] }],
      ["empty", { type: T.ARRAY, itemType: T.FLOAT32, value: [] }],
      ["nested", { type: T.ARRAY, itemType: T.ARRAY, value: [{ itemType: T.UINT8, items: [1, 2] }, { itemType: T.STRING, items: ["x"] }] }],
    ];
    const bytes = serializeGguf(new Map(values), []);
    const back = parseGgufHeader(bytes, "all types");
    assert.equal(back.version, 3);
    assert.deepEqual([...back.metadata], values);
  });

  test("a header longer than the first read (1 MiB) is read in full", async () => {
    const many = Array.from({ length: 200_000 }, (_, i) => `token-${i}`);
    const bytes = rebuilt((m) => m.set("extra.strings", { type: GgufType.ARRAY, itemType: GgufType.STRING, value: many }));
    assert.ok(parseGgufHeader(bytes, "big").dataOffset > 3 << 20);
    const file = path.join(root, "big-header.gguf");
    writeFileSync(file, bytes);
    const header = await readGgufHeader(file);
    assert.deepEqual(header.metadata.get("extra.strings")!.value, many);
    const model = await loadModel(file, { backend: "cpu" });
    await model.dispose();
  });

  test("version 2 files are read; general.alignment is honoured, and must be a power of two", async () => {
    const v2 = patched("q4_0", (d) => d.setUint32(4, 2, true));
    const file = path.join(root, "v2.gguf");
    writeFileSync(file, v2);
    const model = await loadModel(file, { backend: "cpu" });
    await model.dispose();
    for (const alignment of [64, 256]) {
      const bytes = rebuilt((m) => m.set("general.alignment", { type: GgufType.UINT32, value: alignment }));
      const header = parseGgufHeader(bytes, "aligned");
      assert.equal(header.alignment, alignment);
      assert.equal(header.dataOffset % alignment, 0);
      assert.ok(header.tensors.every((t) => t.offset % alignment === 0));
      const got = readGgufModel(bytes, "aligned").tensors.get("backbone.layers.1.mixer.D")!;
      assert.deepEqual(got.data, (await readGgufFile(ggufPath("f32"))).tensors.get("backbone.layers.1.mixer.D")!.data);
    }
    const bad = patched("f32", (d, b) => {
      // the fixture has no general.alignment: repurpose general.file_type's key (same length: 17 bytes)
      const at = metaValueAt(b, "general.file_type") - 4 - 17;
      b.set(new TextEncoder().encode("general.alignment"), at);
      d.setUint32(at + 17 + 4, 48, true);
    });
    await damaged(bad, /general\.alignment must be a power of two/);
  });
});

// ---- damaged files -----------------------------------------------------------------------------------------------

async function rejects(p: Promise<unknown>, ...patterns: RegExp[]): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof MambaError, `expected a MambaError, got ${String(err)}`);
    for (const re of patterns) assert.match(err.message, re);
    return true;
  });
}

let n = 0;
/** Writes bytes to a fresh .gguf file and expects loadModel to reject it with a MambaError matching the patterns
 * (and the in-memory reader too). */
async function damaged(bytes: Uint8Array, ...patterns: RegExp[]): Promise<void> {
  const file = path.join(root, `d${n++}.gguf`);
  writeFileSync(file, bytes);
  await rejects(loadModel(file, { backend: "cpu" }), ...patterns);
  assert.throws(() => readGgufModel(bytes, "mem"), (err: unknown) => err instanceof MambaError);
}

/** Where a tensor's entry in the tensor table starts, just after its name. */
function tensorEntry(bytes: Uint8Array, name: string): number {
  const enc = new TextEncoder().encode(name);
  const header = parseGgufHeader(bytes, "fixture");
  // tensor names appear only in the tensor table; take the last occurrence before the data section
  let at = -1;
  for (let i = 0; i + enc.length <= header.dataOffset; i++) {
    if (enc.every((b, j) => bytes[i + j] === b) && new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(i - 8, true) === BigInt(enc.length)) at = i;
  }
  assert.ok(at > 0, `no entry for ${name}`);
  return at + enc.length;
}

function patched(type: string, fn: (view: DataView, bytes: Uint8Array) => void): Uint8Array {
  const bytes = bytesOf(type);
  fn(new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), bytes);
  return bytes;
}

/** The offset of a metadata key's value (after its u32 type). */
function metaValueAt(bytes: Uint8Array, key: string): number {
  const enc = new TextEncoder().encode(key);
  for (let i = 0; i < bytes.length; i++) {
    if (enc.every((b, j) => bytes[i + j] === b)) return i + enc.length + 4;
  }
  throw new Error(`no key ${key}`);
}

describe("damaged GGUF files: one MambaError each", { timeout: 120_000 }, () => {
  test("wrong magic, unsupported versions", async () => {
    await damaged(patched("f32", (_, b) => b.set(new TextEncoder().encode("GGML"), 0)), /not a GGUF file.*"GGML"/);
    for (const v of [1, 4, 0xffffffff]) {
      await damaged(patched("f32", (d) => d.setUint32(4, v, true)), new RegExp(`GGUF version ${v} is not supported`));
    }
    await damaged(new Uint8Array([0x47, 0x47]), /not a GGUF file/);
  });

  test("truncated header, metadata past the end", async () => {
    const whole = bytesOf("f32");
    const header = parseGgufHeader(whole, "f");
    for (const cut of [6, 20, 30, 1000, 400_000, header.dataOffset - 40]) {
      await damaged(whole.slice(0, cut), /truncated/);
    }
    // a string whose length runs past the end, an array that claims more items than the file holds
    await damaged(patched("f32", (d, b) => d.setBigUint64(metaValueAt(b, "general.name"), 1n << 40n, true)), /general\.name/, /more than the rest of the file|past the end/);
    await damaged(patched("f32", (d, b) => d.setBigUint64(metaValueAt(b, "tokenizer.ggml.tokens") + 4, 1n << 33n, true)),
      /tokenizer\.ggml\.tokens/, /more than the rest of the file/);
    // counts beyond anything the file could hold
    await damaged(patched("f32", (d) => d.setBigUint64(8, 1n << 50n, true)), /tensor count .* more than the rest of the file/);
    await damaged(patched("f32", (d) => d.setBigUint64(16, 1n << 50n, true)), /metadata count .* more than the rest of the file/);
    // an unknown value type
    await damaged(patched("f32", (d, b) => d.setUint32(metaValueAt(b, "general.name") - 4, 13, true)), /general\.name.*unknown value type 13/);
  });

  test("a tensor past the end, misaligned, or overlapping another", async () => {
    const whole = bytesOf("q8_0");
    await damaged(whole.slice(0, whole.length - 100), /tensor 'output_norm\.weight' .*runs past the end of the file/);
    await damaged(patched("q8_0", (d, b) => d.setBigUint64(tensorEntry(b, "blk.0.ssm_d") + 4 + 8 + 4, 1n << 30n, true)),
      /tensor 'blk\.0\.ssm_d' .*runs past the end/);
    await damaged(patched("q8_0", (d, b) => {
      const at = tensorEntry(b, "blk.0.ssm_d") + 4 + 8 + 4;
      d.setBigUint64(at, d.getBigUint64(at, true) + 16n, true);
    }), /tensor 'blk\.0\.ssm_d' starts at offset \d+, not a multiple of the alignment 32/);
    await damaged(patched("q8_0", (d, b) => d.setBigUint64(tensorEntry(b, "blk.0.ssm_d") + 4 + 8 + 4, 0n, true)), /overlap/);
  });

  test("an unknown or unsupported tensor type is named", async () => {
    // type 12 is Q4_K; 99 is no type at all
    await damaged(patched("q8_0", (d, b) => d.setUint32(tensorEntry(b, "blk.0.ssm_in.weight") + 4 + 16, 12, true)),
      /tensor 'blk\.0\.ssm_in\.weight' has type Q4_K, which mamba-ts does not read/);
    await damaged(patched("q8_0", (d, b) => d.setUint32(tensorEntry(b, "blk.0.ssm_in.weight") + 4 + 16, 99, true)),
      /tensor 'blk\.0\.ssm_in\.weight' has type unknown type 99/);
  });

  test("a shape that does not match the config", async () => {
    // the config's hidden size from the metadata, against the embedding's
    await damaged(patched("f32", (d, b) => d.setUint32(metaValueAt(b, "mamba.embedding_length"), 48, true)),
      /tensor 'token_embd\.weight' has shape \[96,32\], the config needs \[96,48\]/);
    // a tensor's own dims: ssm_d [64] claimed as [32] (still inside the file)
    await damaged(patched("f32", (d, b) => d.setBigUint64(tensorEntry(b, "blk.1.ssm_d") + 4, 32n, true)),
      /tensor 'blk\.1\.ssm_d' has shape \[32\], the config needs \[64\]/);
    // a missing metadata key
    await damaged(patched("f32", (_, b) => b.set(new TextEncoder().encode("mamba.ssm.state_sizX"), metaValueAt(b, "mamba.ssm.state_size") - 4 - 20)),
      /missing metadata 'mamba\.ssm\.state_size'/);
  });

  test("other architectures get a clear error", async () => {
    const arch = (name: string) => rebuilt((m) => m.set("general.architecture", { type: GgufType.STRING, value: name }));
    await damaged(arch("llama"), /architecture 'llama' is not supported \(mamba-ts reads Mamba models: mamba, mamba2\)/);
    // mamba2 metadata over Mamba-1 tensors: its keys are missing
    await damaged(arch("mamba2"), /missing metadata 'mamba2\.embedding_length'/);
  });

  test("the process survives: a damaged file does not stop a good one from loading after it", async () => {
    await damaged(bytesOf("f16").slice(0, 100), /truncated/);
    const model = await loadModel(ggufPath("f16"), { backend: "cpu" });
    await model.dispose();
  });
});

/** The f32 fixture rewritten with its metadata changed (tensor data as is). */
function rebuilt(edit: (m: Map<string, GgufValue>) => void): Uint8Array {
  const bytes = bytesOf("f32");
  const file = parseGgufHeader(bytes, "f32");
  const meta = new Map(file.metadata);
  edit(meta);
  const tensors = file.tensors.map((t) => ({ name: t.name, shape: [...t.dims].reverse(), dtype: "F32" as const }));
  const { header, offsets, dataSize } = ggufHeader(meta, tensors);
  const out = new Uint8Array(header.length + dataSize);
  out.set(header);
  file.tensors.forEach((t, i) => {
    const size = t.dims.reduce((a, b) => a * b, 1) * 4;
    const begin = file.dataOffset + t.offset;
    out.set(bytes.subarray(begin, begin + size), header.length + offsets[i]!);
  });
  return out;
}

export type { HostTensor };
