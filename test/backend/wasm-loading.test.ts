/**
 * Lazy safetensors loading (readSafetensorsLazy): the same tensors as the whole-file reader, the same errors for
 * damaged files, and the wasm engine filling its memory from the file without reading `data`.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm, readFile, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { readSafetensors, readSafetensorsLazy } from "../../src/io/safetensors.ts";
import { MambaError } from "../../src/errors.ts";
import { createWasmCpuBackend } from "../../src/backend/wasm/index.ts";
import { fixture } from "../helpers/fixtures.ts";

const files = [fixture("hf-mamba", "tiny", "model.safetensors"), fixture("hf-mamba", "tiny-f16", "model.safetensors")];

test("lazy tensors equal the whole-file reader's, through data and readInto", { timeout: 30_000 }, async () => {
  for (const file of files) {
    const whole = await readSafetensors(file);
    const lazy = await readSafetensorsLazy(file);
    assert.deepEqual([...lazy.keys()].sort(), [...whole.keys()].sort());
    for (const [name, t] of whole) {
      const l = lazy.get(name)!;
      assert.equal(l.dtype, t.dtype);
      assert.deepEqual(l.shape, t.shape);
      assert.deepEqual(l.data, t.data, name);
      const bytes = new Uint8Array(t.data.byteLength);
      l.readInto!(bytes);
      assert.deepEqual(bytes, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), name);
    }
  }
});

test("damaged files: the same MambaErrors as the whole-file reader", { timeout: 30_000 }, async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), "mamba-lazy-"));
  try {
    const bytes = await readFile(files[0]!);
    const cases: [string, Uint8Array][] = [
      ["short", bytes.subarray(0, 5)],
      ["truncated-header", bytes.subarray(0, 40)],
      ["truncated-data", bytes.subarray(0, bytes.length - 10)],
    ];
    for (const [name, b] of cases) {
      const file = path.join(dir, `${name}.safetensors`);
      await writeFile(file, b);
      const whole = await readSafetensors(file).then(() => null, (e: unknown) => e);
      const lazy = await readSafetensorsLazy(file).then(() => null, (e: unknown) => e);
      assert.ok(whole instanceof MambaError && lazy instanceof MambaError, name);
      assert.equal(lazy.message, whole.message, name);
    }
    await assert.rejects(readSafetensorsLazy(path.join(dir, "missing.safetensors")), MambaError);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("the wasm engine uploads lazy tensors from the file, f32 and f16 alike", { timeout: 30_000 }, async () => {
  const b = await createWasmCpuBackend({ threads: 1 });
  try {
    for (const file of files) {
      const whole = await readSafetensors(file);
      for (const [name, t] of await readSafetensorsLazy(file)) {
        let reads = 0;
        const probe = { dtype: t.dtype, shape: t.shape, readInto: t.readInto, get data() { reads++; return t.data; } };
        const up = b.upload(probe);
        const want = await b.readF32(b.upload(whole.get(name)!));
        assert.deepEqual(await b.readF32(up), want, name);
        // half-precision vectors and small matrices are widened from data; everything else comes through readInto
        const keptHalf = t.shape.length === 2 && t.shape[0]! * t.shape[1]! >= 1024;
        if (t.dtype === "F32" || keptHalf) assert.equal(reads, 0, `${name} read through data`);
        else assert.ok(reads > 0);
      }
    }
  } finally {
    await b.destroy();
  }
});
