/**
 * Quantized weights and GGUF writing: the Q8_0 / Q4_0 quantizers round as llama.cpp's do (the files written from
 * hf-mamba/tiny equal llama.cpp's fixtures byte for byte, given the same tokenizer metadata), dequantization is
 * exact, and `mamba-ts quantize` writes files that load back with the checkpoint's weights.
 */
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { loadModel } from "../../src/index.ts";
import { loadCheckpoint } from "../../src/io/checkpoint.ts";
import { toHfConfig } from "../../src/config.ts";
import { initParameters, makeConfig } from "../../src/model/init.ts";
import { serializeSafetensors } from "../../src/io/safetensors.ts";
import { loadTokenizer } from "../../src/tokenizer.ts";
import { toFloat32 } from "../../src/io/tensor.ts";
import { dequantize, quantizeQ4_0, quantizeQ8_0 } from "../../src/io/quant.ts";
import { parseGgufHeader, serializeGguf } from "../../src/io/gguf-format.ts";
import { ggufModelContent, sizeLabel } from "../../src/io/gguf-model.ts";
import { readGgufFile } from "../../src/io/gguf.ts";
import { cli } from "../helpers/cli.ts";
import { fixture, maxAbsDiff } from "../helpers/fixtures.ts";
import { TestRng } from "../helpers/random.ts";

const root = mkdtempSync(path.join(os.tmpdir(), "mamba-ts-quant-"));
after(() => rmSync(root, { recursive: true, force: true }));

function randomValues(n: number, seed: number, scale = 1): Float32Array {
  const rng = new TestRng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (rng.next() * 2 - 1) * scale;
  return out;
}

describe("quantizers", () => {
  test("Q8_0: d = absmax / 127 in f16, q = round(x / d) halves away from zero, dequantized exactly", () => {
    const x = randomValues(32 * 40, 1, 3);
    x.fill(0, 64, 96); // an all-zero block: d = 0, q = 0
    const q = quantizeQ8_0(x);
    assert.equal(q.length, 40 * 34);
    const y = dequantize("Q8_0", q, x.length);
    const view = new DataView(q.buffer);
    for (let b = 0; b < 40; b++) {
      let amax = 0;
      for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b * 32 + j]!));
      const d = toFloat32({ dtype: "F16", shape: [1], data: new Uint16Array([view.getUint16(b * 34, true)]) })[0]!;
      assert.ok(Math.abs(d - amax / 127) <= (amax / 127) * 2 ** -11, `block ${b} scale`);
      for (let j = 0; j < 32; j++) {
        const qi = (q[b * 34 + 2 + j]! << 24) >> 24;
        assert.equal(y[b * 32 + j], qi * d, "dequantized = q * d exactly");
        // the nearest step (the scale rounded to f16 moves the grid by at most one step at the block's ends)
        assert.ok(Math.abs(y[b * 32 + j]! - x[b * 32 + j]!) <= d * 0.5 + amax * 2 ** -10, `block ${b} element ${j}`);
      }
    }
    assert.deepEqual(Array.from(y.subarray(64, 96)), new Array(32).fill(0));
    // halves round away from zero: d = 127 / 127 = 1, values k + 0.5
    const half = new Float32Array(32);
    half[0] = 127;
    half[1] = 2.5;
    half[2] = -2.5;
    half[3] = 0.5;
    const h = quantizeQ8_0(half);
    assert.deepEqual([h[2], h[3], (h[4]! << 24) >> 24, h[5]], [127, 3, -3, 1]);
  });

  test("Q4_0: d = (value of largest magnitude) / -8, nibbles (low = 0..15, high = 16..31), dequantized exactly", () => {
    const x = randomValues(32 * 30, 2, 0.7);
    const q = quantizeQ4_0(x);
    assert.equal(q.length, 30 * 18);
    const y = dequantize("Q4_0", q, x.length);
    for (let b = 0; b < 30; b++) {
      let max = 0;
      for (let j = 0; j < 32; j++) if (Math.abs(x[b * 32 + j]!) > Math.abs(max)) max = x[b * 32 + j]!;
      const dBits = new DataView(q.buffer).getUint16(b * 18, true);
      const d = toFloat32({ dtype: "F16", shape: [1], data: new Uint16Array([dBits]) })[0]!;
      for (let j = 0; j < 16; j++) {
        const byte = q[b * 18 + 2 + j]!;
        assert.equal(y[b * 32 + j], ((byte & 15) - 8) * d);
        assert.equal(y[b * 32 + 16 + j], ((byte >> 4) - 8) * d);
      }
      // the largest magnitude is exactly -8 d; the grid runs from -8 d to 7 d, so values beyond 7 d on the other side
      // are clipped there (an error of up to one step), the rest round to the nearest step
      assert.ok(Math.abs(-8 * d - max) <= Math.abs(max) * 2 ** -10, `block ${b}: max maps to -8 d`);
      for (let j = 0; j < 32; j++) {
        const v = x[b * 32 + j]!;
        const clipped = Math.abs(v) > 7.5 * Math.abs(d) && Math.sign(v) !== Math.sign(max);
        assert.ok(Math.abs(y[b * 32 + j]! - v) <= Math.abs(d) * (clipped ? 1 : 0.5) + Math.abs(max) * 2 ** -9, `block ${b} element ${j}`);
      }
    }
  });

  test("llama.cpp's size labels", () => {
    assert.equal(sizeLabel(23_456), "23K");
    assert.equal(sizeLabel(129_135_360), "129M");
    assert.equal(sizeLabel(1_372_000_000), "1.4B");
  });
});

describe("writing GGUF", { timeout: 300_000 }, () => {
  test("from hf-mamba/tiny: byte for byte llama.cpp's f32, f16, q8_0 and q4_0 files (same name and tokenizer keys)", async () => {
    const ckpt = await loadCheckpoint(fixture("hf-mamba", "tiny"));
    for (const type of ["f32", "f16", "q8_0", "q4_0"] as const) {
      const theirs = new Uint8Array(readFileSync(fixture("gguf", `tiny-${type}.gguf`)));
      const header = parseGgufHeader(theirs, type);
      const tokenizer = new Map([...header.metadata].filter(([k]) => k.startsWith("tokenizer.")));
      const content = ggufModelContent(ckpt.config, ckpt.tensors, type, { name: "Tiny", tokenizer, where: "tiny" });
      const ours = serializeGguf(content.metadata, content.tensors);
      assert.equal(ours.length, theirs.length, type);
      assert.ok(Buffer.from(ours).equals(Buffer.from(theirs)), `${type}: the files differ`);
    }
  });

  test("quantize --type f32 / f16 loads back with the checkpoint's weights; q8_0 / q4_0 with its blocks", async () => {
    const source = fixture("hf-mamba", "tiny");
    const ckpt = await loadCheckpoint(source);
    for (const type of ["f32", "f16", "q8_0", "q4_0"]) {
      const out = path.join(root, `tiny-${type}.gguf`);
      const r = await cli(["quantize", "--model", source, "--type", type, "--out", out]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`wrote .*tiny-${type}\\.gguf: ${type}`));
      const back = await readGgufFile(out);
      const llama = await readGgufFile(fixture("gguf", `tiny-${type}.gguf`));
      for (const [name, t] of ckpt.tensors) {
        const got = back.tensors.get(name)!;
        assert.deepEqual(got.shape, t.shape, name);
        // the same stored values as llama.cpp's file of this type
        assert.equal(got.dtype, llama.tensors.get(name)!.dtype, name);
        assert.deepEqual(got.data, llama.tensors.get(name)!.data, name);
        if (type === "f32") {
          // f32: the checkpoint's weights; A_log through A = -exp(A_log) and back, to within float rounding
          assert.ok(maxAbsDiff(toFloat32(got), toFloat32(t)) <= (name.endsWith("A_log") ? 1e-6 : 0), name);
        }
      }
    }
    // a GGUF source: re-quantized (q8_0 -> f16 here), its tokenizer keys carried over
    const out = path.join(root, "again.gguf");
    const r = await cli(["quantize", "--model", fixture("gguf", "tiny-q8_0.gguf"), "--type", "f16", "--out", out]);
    assert.equal(r.code, 0, r.stderr);
    const tok = await loadTokenizer(out);
    assert.deepEqual(Array.from(tok.encode("Hello!")), Array.from((await loadTokenizer(fixture("gguf", "tiny-q8_0.gguf"))).encode("Hello!")));
  });

  test("the embedded model: its tokenizer.json goes into the file; the q8_0 file generates", async () => {
    const out = path.join(root, "default-q8_0.gguf");
    const r = await cli(["quantize", "--type", "q8_0", "--out", out]);
    assert.equal(r.code, 0, r.stderr);
    const folderTok = await loadTokenizer(path.resolve("models/default"));
    const fileTok = await loadTokenizer(out);
    for (const text of ["Hello, world!", "naïve café — 日本語", "  two  spaces\n"]) {
      assert.deepEqual(Array.from(fileTok.encode(text)), Array.from(folderTok.encode(text)), text);
    }
    const model = await loadModel(out, { backend: "cpu" });
    const ids = await model.generate(fileTok.encode("The "), { maxNewTokens: 4, temperature: 0 });
    assert.equal(ids.length, 8);
    await model.dispose();
    // the embedded model is stored in bf16: --type bf16 keeps its matrices' bits
    const bf16 = path.join(root, "default-bf16.gguf");
    assert.equal((await cli(["quantize", "--type", "bf16", "--out", bf16])).code, 0);
    const src = await loadCheckpoint(path.resolve("models/default"));
    const back = await readGgufFile(bf16);
    let matrices = 0;
    for (const [name, t] of src.tensors) {
      const got = back.tensors.get(name)!;
      if (got.dtype !== "BF16") continue;
      matrices++;
      assert.deepEqual(got.data, t.data, name);
    }
    assert.ok(matrices >= 13);
  });

  test("mamba-ts generate takes a .gguf file (its tokenizer from the metadata); one without a tokenizer is an error line", async () => {
    const r = await cli(["generate", "--model", fixture("gguf", "tiny-q4_0.gguf"), "--prompt", "Hi!", "-n", "5", "-t", "0", "--backend", "cpu"]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.startsWith("Hi!"), r.stdout);
    const bare = path.join(root, "bare.gguf");
    assert.equal((await cli(["quantize", "--model", fixture("hf-mamba", "tiny"), "--type", "q8_0", "--out", bare])).code, 0);
    const none = await cli(["generate", "--model", bare, "--prompt", "Hi", "--backend", "cpu"]);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /^mamba-ts: error: .*bare\.gguf holds no tokenizer/m);
  });

  test("bad requests are one error line", async () => {
    const bad = await cli(["quantize", "--model", fixture("hf-mamba", "tiny"), "--type", "q5_k", "--out", path.join(root, "x.gguf")]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--type.*q5_k.*choices/s);
    const noDir = await cli(["quantize", "--model", fixture("hf-mamba", "tiny"), "--type", "q8_0", "--out", path.join(root, "nope", "x.gguf")]);
    assert.equal(noDir.code, 2);
    assert.match(noDir.stderr, /mamba-ts: error: --out: the folder .* does not exist/);
    // the LTI ablation has no GGUF form
    const lti = path.join(root, "lti");
    mkdirSync(lti);
    const cfg = makeConfig({ vocabSize: 16, hiddenSize: 8, numLayers: 1, mixer: "lti" });
    writeFileSync(path.join(lti, "config.json"), JSON.stringify(toHfConfig(cfg)));
    writeFileSync(path.join(lti, "model.safetensors"), serializeSafetensors(initParameters(cfg, { seed: 1 })));
    const ltiRun = await cli(["quantize", "--model", lti, "--type", "q8_0", "--out", path.join(root, "lti.gguf")]);
    assert.equal(ltiRun.code, 1);
    assert.match(ltiRun.stderr, /mamba-ts: error: .*the LTI mixer has no GGUF form/);
    assert.ok(!existsSync(path.join(root, "lti.gguf")));
  });
});
