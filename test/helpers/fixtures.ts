/**
 * Paths of the PyTorch reference fixtures (test/fixtures, see its README), small comparison helpers, and the
 * whole-model checks against a fixture folder (forward and greedy output; loss and gradients) that several backends' tests share.
 */
import path from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { readSafetensors } from "../../src/io/safetensors.ts";
import { toFloat32 } from "../../src/io/tensor.ts";
import type { LoadOptions } from "../../src/index.ts";

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

/**
 * max |got − want| / max(max |want|, minScale): the relative error of a whole gradient (a NaN anywhere makes it
 * Infinity). With the default minScale 0, an all-zero want fails any `<` check (the error is NaN or Infinity).
 */
export function relErr(got: Float32Array, want: Float32Array, minScale = 0): number {
  assert.equal(got.length, want.length, "lengths differ");
  let d = 0, m = 0;
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i]! - want[i]!);
    d = Number.isNaN(e) ? Infinity : Math.max(d, e);
    m = Math.max(m, Math.abs(want[i]!));
  }
  return d / Math.max(m, minScale);
}

export interface FixtureForwardCheck {
  /** largest max abs difference allowed for the logits and the last hidden state */
  tol: number;
  /** the model family the fixture's config must load as */
  family?: string;
  /** the name the loaded model's backend must have (model.backend.name) */
  backendName?: string;
}

/**
 * Loads a fixture folder on a backend and checks it against the folder's expected.safetensors: the logits' shape
 * [batch, seqLen, paddedVocabSize], the logits and the last hidden state of a forward over input_ids within tol,
 * and greedy generation from greedy_prompt equal to greedy_output token for token. Disposes the model.
 */
export async function checkFixtureForward(folder: string, backend: LoadOptions["backend"], check: FixtureForwardCheck): Promise<void> {
  // loaded here, not at the top, so that tests which only need the fixture paths don't load the package
  const { loadModel } = await import("../../src/index.ts");
  const exp = await expected(folder);
  const model = await loadModel(folder, { backend });
  try {
    if (check.family !== undefined) assert.equal(model.config.family, check.family);
    if (check.backendName !== undefined) assert.equal(model.backend.name, check.backendName);
    const ids = exp.get("input_ids")!;
    const [batch, seqLen] = ids.shape as [number, number];
    const out = await model.forward(ids.i32, { batch, seqLen }, { hiddenStates: true });
    assert.deepEqual(exp.get("logits")!.shape, [batch, seqLen, model.config.paddedVocabSize]);
    assertClose(out.logits, exp.get("logits")!.f32, check.tol, "logits");
    assertClose(out.lastHiddenState!, exp.get("last_hidden_state")!.f32, check.tol, "last hidden state");
    const prompt = exp.get("greedy_prompt")!.i32;
    const want = exp.get("greedy_output")!.i32;
    const got = await model.generate(prompt, { maxNewTokens: want.length - prompt.length, stopTokens: [] });
    assert.deepEqual(Array.from(got), Array.from(want));
  } finally {
    await model.dispose();
  }
}

export interface FixtureGradsCheck {
  /** largest relErr allowed for each parameter's gradient */
  tol: number;
  /** the name the loaded model's backend must have (model.backend.name) */
  backendName?: string;
}

/**
 * Loads a fixture folder on a backend and checks model.lossAndGrads over its input_ids against grads.safetensors:
 * the loss within 1e-5 relative, the gradients' names exactly those of the file (less "loss"), and every gradient's
 * relErr below tol. Disposes the model.
 */
export async function checkFixtureGrads(folder: string, backend: LoadOptions["backend"], check: FixtureGradsCheck): Promise<void> {
  const ids = (await expected(folder)).get("input_ids")!;
  const want = await readSafetensorsAny(path.join(folder, "grads.safetensors"));
  const { loadModel } = await import("../../src/index.ts");
  const model = await loadModel(folder, { backend });
  try {
    if (check.backendName !== undefined) assert.equal(model.backend.name, check.backendName);
    const [batch, seqLen] = ids.shape as [number, number];
    const { loss, grads } = await model.lossAndGrads(ids.i32, { batch, seqLen });
    const wantLoss = want.get("loss")!.f32[0]!;
    assert.ok(Math.abs(loss - wantLoss) <= 1e-5 * Math.abs(wantLoss), `loss ${loss} vs ${wantLoss}`);
    const names = [...want.keys()].filter((k) => k !== "loss").sort();
    assert.deepEqual([...grads.keys()].sort(), names, "gradient names");
    for (const name of names) {
      const e = relErr(grads.get(name)!, want.get(name)!.f32);
      assert.ok(e < check.tol, `${name}: max abs error / max abs value ${e.toExponential(2)}`);
    }
  } finally {
    await model.dispose();
  }
}
