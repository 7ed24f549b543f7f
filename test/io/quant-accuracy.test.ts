/**
 * What quantization costs the embedded text model (models/default, byte-level, trained on English fortunes): bits
 * per byte with q8_0 weights within +1% of f32, with q4_0 within +5%. The model's held-out split is not in the
 * repository (scripts/fortunes-data.sh makes it from Debian's fortunes package), so this measures on text that is:
 * the first 8 KiB of LICENSE, English prose. The README gives the figures on the held-out split itself.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { loadCheckpoint } from "../../src/io/checkpoint.ts";
import { serializeGguf } from "../../src/io/gguf-format.ts";
import { ggufModelContent, readGgufModel } from "../../src/io/gguf-model.ts";
import { modelFromTensors } from "../../src/model/build.ts";
import { bitsPerByte } from "../../src/train/tasks/text.ts";
import { ROOT } from "../helpers/cli.ts";

test("bits per byte of the embedded model: q8_0 within +1% of f32, q4_0 within +5% (cpu)", { timeout: 600_000 }, async () => {
  const text = new Uint8Array(readFileSync(path.join(ROOT, "LICENSE"))).subarray(0, 8192);
  const ckpt = await loadCheckpoint(path.join(ROOT, "models", "default"));
  const bpb: Record<string, number> = {};
  for (const type of ["f32", "q8_0", "q4_0"] as const) {
    // through a GGUF file's bytes, as `mamba-ts quantize` writes them and loadModel reads them
    const content = ggufModelContent(ckpt.config, ckpt.tensors, type, { name: "Default", tokenizer: null, where: "default" });
    const file = readGgufModel(serializeGguf(content.metadata, content.tensors), `default-${type}.gguf`);
    if (type !== "f32") assert.equal(file.tensors.get("backbone.layers.0.mixer.in_proj.weight")!.dtype, type.toUpperCase());
    const model = await modelFromTensors(file.config, file.tensors, { backend: "cpu" });
    try {
      bpb[type] = await bitsPerByte(model.lm, text);
    } finally {
      await model.dispose();
    }
  }
  const f32 = bpb.f32!;
  assert.ok(f32 > 0.5 && f32 < 4, `f32: ${f32} bits per byte (a trained model on English text)`);
  assert.ok(bpb.q8_0! <= f32 * 1.01, `q8_0: ${bpb.q8_0} bits per byte, f32 ${f32} (+${(100 * (bpb.q8_0! / f32 - 1)).toFixed(2)}%)`);
  assert.ok(bpb.q4_0! <= f32 * 1.05, `q4_0: ${bpb.q4_0} bits per byte, f32 ${f32} (+${(100 * (bpb.q4_0! / f32 - 1)).toFixed(2)}%)`);
});
