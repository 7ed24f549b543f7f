/** Paths of the PyTorch reference fixtures (test/fixtures, see its README) and small comparison helpers for tests. */
import path from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { readSafetensors } from "../../src/io/safetensors.ts";
import { toFloat32 } from "../../src/io/tensor.ts";

const here = path.dirname(fileURLToPath(import.meta.url));
/** The reference fixtures kept in the repository (test/fixtures); MAMBA_TS_FIXTURES points the tests at another copy. */
export const FIXTURES = process.env.MAMBA_TS_FIXTURES ?? path.resolve(here, "../fixtures");
export const fixture = (...p: string[]) => path.join(FIXTURES, ...p);

export async function expected(folder: string): Promise<Map<string, { shape: number[]; f32: Float32Array; i32: Int32Array }>> {
  const m = await readSafetensorsAny(path.join(folder, "expected.safetensors"));
  return m;
}

/** Reads F32 and I32 tensors (fixtures store ids as I32, which model files never use). */
export async function readSafetensorsAny(file: string): Promise<Map<string, { shape: number[]; f32: Float32Array; i32: Int32Array }>> {
  const fs = await import("node:fs/promises");
  const bytes = await fs.readFile(file);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString("utf8")) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const out = new Map<string, { shape: number[]; f32: Float32Array; i32: Int32Array }>();
  for (const [name, e] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const raw = bytes.slice(8 + n + e.data_offsets[0], 8 + n + e.data_offsets[1]);
    const buf = raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength);
    out.set(name, { shape: e.shape, f32: new Float32Array(buf), i32: new Int32Array(buf) });
  }
  return out;
}

export async function readF32Tensors(file: string): Promise<Map<string, Float32Array>> {
  const m = await readSafetensors(file);
  return new Map([...m].map(([k, v]) => [k, toFloat32(v)]));
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, "lengths differ");
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : Math.max(m, d);
  }
  return m;
}

export function assertClose(actual: ArrayLike<number>, expectedValues: ArrayLike<number>, tol: number, what: string): void {
  const d = maxAbsDiff(actual, expectedValues);
  assert.ok(d <= tol, `${what}: max abs difference ${d.toExponential(3)} > ${tol}`);
}
