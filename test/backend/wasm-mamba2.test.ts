/**
 * The wasm CPU engine's Mamba-2 ops against the reference CPU backend:
 *  - ssdScan (assembly/ssd.ts, the step-by-step recurrence) against the reference's chunked SSD and its sequential
 *    twin, on random and edge shapes: L = 1, L not a multiple of the chunk, P and N not multiples of 4, 1 to 4
 *    groups, batch 2, a carried state or none, a clamp of dt, a gate, x, B, C, dt and z as column windows;
 *  - gatedRmsNorm per group, the gate before or after the norm, groups not multiples of 4;
 *  - both SIMD builds, 1, 2 and 3 threads, and the same bits whatever the thread count;
 *  - the Mamba-2 fixtures on the engine with 1 and 3 threads, within the reference's tolerance, and greedy
 *    generation on a random Mamba-2 model equal to the reference engine's.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { CpuBackend } from "../../src/backend/cpu/index.ts";
import { asCols, cols, type TensorOrCols } from "../../src/backend/backend.ts";
import { ssdData, ssdSequentialF32 } from "../../src/backend/cpu/ssd.ts";
import { createCpuBackend } from "../../src/backend/wasm/create.ts";
import { createModel } from "../../src/index.ts";
import { TestRng } from "../helpers/random.ts";
import { bits, maxAbs, wasmEngines } from "../helpers/wasm-engines.ts";
import { type SsdCase, ssdArgs } from "../helpers/ssd-cases.ts";
import { assertClose, checkFixtureForward, fixture, maxAbsDiff } from "../helpers/fixtures.ts";

const ref = new CpuBackend();
const engines = wasmEngines();

type Case = SsdCase;
const cases: Case[] = [
  { B: 1, L: 1, H: 2, P: 4, G: 1, N: 4, Q: 4, state: true, gate: false, limit: [0, Infinity] },
  { B: 2, L: 1, H: 4, P: 6, G: 2, N: 5, Q: 256, state: true, gate: true, limit: [0, Infinity] },
  { B: 2, L: 13, H: 4, P: 3, G: 2, N: 5, Q: 4, state: true, gate: false, limit: [0, Infinity] },
  { B: 1, L: 8, H: 2, P: 2, G: 1, N: 3, Q: 8, state: false, gate: true, limit: [0, Infinity] },
  { B: 2, L: 20, H: 6, P: 4, G: 3, N: 6, Q: 7, state: true, gate: true, limit: [0.05, 0.6] },
  { B: 1, L: 37, H: 8, P: 16, G: 2, N: 16, Q: 16, state: false, gate: false, limit: [0.001, 0.1] },
  { B: 2, L: 23, H: 4, P: 37, G: 4, N: 9, Q: 5, state: true, gate: false, limit: [0, Infinity] },
  { B: 1, L: 70, H: 3, P: 64, G: 1, N: 32, Q: 32, state: true, gate: true, limit: [0, Infinity] },
];

describe("wasm engine: Mamba-2 ops against the reference", { timeout: 120_000 }, () => {
  test("the engines run the SSD scan and the gated norm kernels", () => {
    for (const e of engines) {
      assert.ok(e.b.rt.has("ssdScan") && e.b.rt.has("ssdDtDecay") && e.b.rt.has("gatedRmsNorm"), e.name);
      assert.deepEqual(e.b.referenceOps, []);
    }
  });

  test("ssdScan: outputs and final states against the chunked reference and the sequential twin; bitwise the same for 1-3 threads", async () => {
    for (const [i, c] of cases.entries()) {
      const seed = 100 + i;
      const want = ssdArgs(ref, c, seed);
      const wantY = await ref.readF32(ref.ssdScan(want));
      const wantState = want.state ? await ref.readF32(want.state) : null;
      // the sequential twin too (float64 sums)
      const seqArgs = ssdArgs(ref, c, seed);
      const { data, dims } = ssdData(seqArgs);
      const seqY = new Float32Array(c.B * c.L * c.H * c.P);
      ssdSequentialF32(data, dims, seqY);
      const scale = Math.max(1, maxAbs(wantY));
      const first: Record<string, { y: Float32Array; state: Float32Array | null }> = {};
      for (const e of engines) {
        const a = ssdArgs(e.b, c, seed);
        const y = await e.b.readF32(e.b.ssdScan(a));
        const state = a.state ? await e.b.readF32(a.state) : null;
        const what = `${JSON.stringify(c)} (${e.name})`;
        assert.ok(maxAbsDiff(y, wantY) <= 2e-5 * scale, `${what}: y differs from the chunked reference by ${maxAbsDiff(y, wantY)}`);
        assert.ok(maxAbsDiff(y, seqY) <= 2e-5 * scale, `${what}: y differs from the sequential twin by ${maxAbsDiff(y, seqY)}`);
        if (state) assert.ok(maxAbsDiff(state, wantState!) <= 2e-5 * Math.max(1, maxAbs(wantState!)), `${what}: final state`);
        const build = e.name.split(",")[0]!;
        const f = first[build];
        if (!f) first[build] = { y, state };
        else {
          assert.deepEqual(bits(y), bits(f.y), `${what}: y bitwise against 1 thread`);
          if (state) assert.deepEqual(bits(state), bits(f.state!), `${what}: state bitwise against 1 thread`);
        }
      }
    }
  });

  test("ssdScan: a prefill then steps with the carried state equal the whole sequence at once", async () => {
    const c: Case = { B: 2, L: 12, H: 4, P: 8, G: 2, N: 8, Q: 4, state: true, gate: false, limit: [0, Infinity] };
    for (const e of engines) {
      const b = e.b;
      const whole = ssdArgs(b, c, 7);
      const yAll = await b.readF32(b.ssdScan(whole));
      const parts = ssdArgs(b, c, 7);
      const E = c.H * c.P;
      // rows t of [B, L, ...] windows, for one split point: the first 9 positions, then three single steps
      const slice = (t0: number, t1: number) => {
        const rows = (x: TensorOrCols) => {
          const w = asCols(x);
          const full = b.takeRows(w.tensor, Array.from({ length: c.B * (t1 - t0) }, (_, i) => Math.floor(i / (t1 - t0)) * c.L + t0 + (i % (t1 - t0))));
          return cols(full, w.col0, w.width);
        };
        return { ...parts, seqLen: t1 - t0, x: rows(parts.x), B: rows(parts.B), C: rows(parts.C), dt: rows(parts.dt) };
      };
      const ys: Float32Array[] = [];
      for (const [t0, t1] of [[0, 9], [9, 10], [10, 11], [11, 12]] as const) ys.push(await b.readF32(b.ssdScan(slice(t0, t1))));
      const got = new Float32Array(c.B * c.L * E);
      let t0 = 0;
      for (const y of ys) {
        const n = y.length / (c.B * E);
        for (let bb = 0; bb < c.B; bb++) got.set(y.subarray(bb * n * E, (bb + 1) * n * E), (bb * c.L + t0) * E);
        t0 += n;
      }
      assert.ok(maxAbsDiff(got, yAll) <= 1e-5 * Math.max(1, maxAbs(yAll)), `${e.name}: ${maxAbsDiff(got, yAll)}`);
      assertClose(await b.readF32(parts.state!), await b.readF32(whole.state!), 1e-5 * Math.max(1, maxAbs(await b.readF32(whole.state!))), `${e.name}: state`);
    }
  });

  test("ssdScan: shapes that do not fit are one clear error", () => {
    const c = cases[2]!;
    for (const e of engines.slice(0, 1)) {
      const a = ssdArgs(e.b, c, 3);
      assert.throws(() => e.b.ssdScan({ ...a, headDim: c.P + 1 }), /ssdScan: .* do not fit/);
      assert.throws(() => e.b.ssdScan({ ...a, state: e.b.zeros([1, 2, 3]) }), /ssdScan: the state needs/);
      assert.throws(() => e.b.ssdScan({ ...a, chunkSize: 0 }), /chunk size/);
    }
  });

  // rows T, channels E, group size gs; z a window of a wider tensor
  const norms: [number, number, number][] = [[1, 4, 4], [3, 12, 6], [5, 10, 5], [2, 64, 32], [7, 48, 48], [4, 30, 3], [9, 256, 64]];
  test("gatedRmsNorm: per group, gate after or before the norm; bitwise the same for 1-3 threads", async () => {
    for (const [T, E, gs] of norms) {
      for (const before of [false, true]) {
        const r = new TestRng(T * 100 + E + gs);
        const y = r.f32(T * E), zw = r.f32(T * (E + 5)), w = r.f32(E, 0.5);
        const eps = 1e-5;
        const want = await ref.readF32(ref.gatedRmsNorm(ref.fromF32(y, [T, E]), cols(ref.fromF32(zw, [T, E + 5]), 2, E), ref.fromF32(w, [E]), eps, gs, before));
        const first: Record<string, Float32Array> = {};
        for (const e of engines) {
          const b = e.b;
          const got = await b.readF32(b.gatedRmsNorm(b.fromF32(y, [T, E]), cols(b.fromF32(zw, [T, E + 5]), 2, E), b.fromF32(w, [E]), eps, gs, before));
          assert.ok(maxAbsDiff(got, want) <= 2e-6 * Math.max(1, maxAbs(want)), `T ${T} E ${E} gs ${gs} before ${before} (${e.name}): ${maxAbsDiff(got, want)}`);
          const build = e.name.split(",")[0]!;
          if (!first[build]) first[build] = got;
          else assert.deepEqual(bits(got), bits(first[build]!), `T ${T} E ${E} gs ${gs} (${e.name}): bitwise against 1 thread`);
        }
      }
    }
  });

  test("gatedRmsNorm: a group size that does not divide the width is one clear error", () => {
    const b = engines[0]!.b;
    assert.throws(() => b.gatedRmsNorm(b.zeros([2, 12]), b.zeros([2, 12]), b.zeros([12]), 1e-5, 5, false), /gatedRmsNorm: .* do not fit/);
  });
});

for (const name of ["hf-mamba2/tiny", "mamba-ssm/mamba2-tiny"]) {
  for (const s of [{ threads: 1, simd: "auto" as const }, { threads: 3, simd: "plain" as const }]) {
    test(`${name}: PyTorch's logits, hidden states and greedy output on the wasm engine (${s.threads} threads, ${s.simd} simd)`, { timeout: 120_000 }, async () => {
      await checkFixtureForward(fixture(...name.split("/")), await createCpuBackend(s), { tol: 1e-4, family: "mamba2" });
    });
  }
}

test("a random Mamba-2 model: greedy generation equals the reference engine's, logits bitwise the same for 1, 2 and 3 threads", { timeout: 120_000 }, async () => {
  // odd sizes: D not a multiple of 8, two groups, a head size not a multiple of 4, chunks crossed by the prompt
  const sizes = { family: "mamba2" as const, vocabSize: 203, hiddenSize: 44, numLayers: 2, stateSize: 12, mamba2: { headDim: 11, nGroups: 2, chunkSize: 16 } };
  const prompt = Int32Array.from({ length: 37 }, (_, i) => (i * 53 + 7) % 203);
  const reference = await createModel(sizes, { seed: 5, backend: await createCpuBackend({ reference: true }) });
  const want = await reference.generate(prompt, { maxNewTokens: 16, stopTokens: [] });
  const refLogits = (await reference.forward(prompt, { batch: 1, seqLen: prompt.length })).logits;
  await reference.dispose();
  let first: Float32Array | null = null;
  for (const threads of [1, 2, 3]) {
    const model = await createModel(sizes, { seed: 5, backend: await createCpuBackend({ threads }) });
    const got = await model.generate(prompt, { maxNewTokens: 16, stopTokens: [] });
    assert.deepEqual(Array.from(got), Array.from(want), `${threads} threads`);
    const logits = (await model.forward(prompt, { batch: 1, seqLen: prompt.length })).logits;
    assertClose(logits, refLogits, 1e-4, `logits (${threads} threads) against the reference`);
    if (first === null) first = logits;
    else assert.deepEqual(bits(logits), bits(first), `logits bitwise, ${threads} threads against 1`);
    await model.dispose();
  }
});
