/**
 * Gpu.timePass, the benchmarks' GPU clock: the work timed inside it runs and gives the same results as untimed;
 * the time is a finite number of ms (or null without 'timestamp-query'); timed work that reads back (which would
 * end the timed pass) is a clear error, after which the backend still works; and when the backend submits on its
 * own (flushEvery). Durations are not asserted (speed belongs to benchmarks). Runs when a WebGPU adapter exists
 * (skipped otherwise, failed under CI=true).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import type { WebGpuBackend } from "../../src/backend/webgpu/index.ts";
import { MambaError } from "../../src/errors.ts";
import { gpuTest, withOwnWebgpu } from "../helpers/backends.ts";
import { TestRng } from "../helpers/random.ts";

test("webgpu timePass: timed work runs and gives the untimed results; a readback inside is an error", async (t) => {
  await withOwnWebgpu(t, async (b) => {
    const r = new TestRng(3);
    const x = b.fromF32(r.f32(64 * 48), [64, 48]);
    const w = b.fromF32(r.f32(40 * 48), [40, 48]);
    const want = await b.readF32(b.matmul(x, w, null));
    let y: ReturnType<typeof b.matmul> | null = null;
    const ms = await b.gpu.timePass(() => {
      for (let i = 0; i < 3; i++) {
        if (y) b.dispose(y);
        y = b.matmul(x, w, null);
      }
    });
    if (b.gpu.hasTimestamps) assert.ok(typeof ms === "number" && Number.isFinite(ms) && ms >= 0, `time ${ms}`);
    else assert.equal(ms, null);
    assert.deepEqual(await b.readF32(y!), want, "the timed matmul's result");
    if (b.gpu.hasTimestamps) {
      await assert.rejects(b.gpu.timePass(() => void b.readF32(x)), MambaError);
      assert.deepEqual(await b.readF32(b.matmul(x, w, null)), want, "the backend works after the error");
    }
  });
});

test("webgpu timeGpu: the backend's early submits wait while a pass is timed", async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  const b = (await createWebGpuBackend({ flushEvery: 1 })) as WebGpuBackend; // would submit after every op
  try {
    const r = new TestRng(4);
    const x = b.fromF32(r.f32(32 * 16), [32, 16]);
    const w = b.fromF32(r.f32(8 * 16), [8, 16]);
    const want = await b.readF32(b.matmul(x, w, null));
    let y: ReturnType<typeof b.matmul> | null = null;
    const submits = b.gpu.submits;
    const ms = await b.timeGpu(() => {
      for (let i = 0; i < 4; i++) {
        if (y) b.dispose(y);
        y = b.matmul(x, w, null);
      }
    });
    if (b.gpu.hasTimestamps) {
      assert.ok(typeof ms === "number" && ms >= 0, `time ${ms}`);
      assert.equal(b.gpu.submits - submits, 1, "one submit: the timed pass, with the query resolve");
    }
    assert.deepEqual(await b.readF32(y!), want);
  } finally {
    await b.destroy();
  }
});

test("webgpu profileKernels: every dispatch is counted under its kernel, results are unchanged, a readback is an error", async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  const b = (await createWebGpuBackend({ flushEvery: 1 })) as WebGpuBackend;
  try {
    const r = new TestRng(5);
    const x = b.fromF32(r.f32(24 * 20), [24, 20]);
    const w = b.fromF32(r.f32(12 * 20), [12, 20]);
    const nw = b.fromF32(r.f32(12), [12]);
    const norm = (m: ReturnType<typeof b.matmul>) => b.addRmsNorm(m, null, nw, 1e-5).out;
    const want = await b.readF32(norm(b.matmul(x, w, null)));
    let y: ReturnType<typeof b.matmul> | null = null;
    const d0 = b.gpu.dispatches;
    const prof = await b.profileKernels(() => {
      for (let i = 0; i < 3; i++) {
        if (y) b.dispose(y);
        const m = b.matmul(x, w, null);
        y = norm(m);
        b.dispose(m);
      }
    });
    const dispatched = b.gpu.dispatches - d0;
    assert.deepEqual(await b.readF32(y!), want, "the profiled work's result");
    if (!b.gpu.hasTimestamps) {
      assert.equal(prof, null);
      return;
    }
    assert.ok(prof);
    const counts = [...prof.values()].map((v) => v.count);
    assert.equal(counts.reduce((s, c) => s + c, 0), dispatched, "every dispatch is in the profile");
    assert.ok(prof.size >= 2, `two kinds of kernel at least: ${[...prof.keys()]}`);
    for (const [name, v] of prof) assert.ok(Number.isFinite(v.ms) && v.ms >= 0 && v.count % 3 === 0, `${name}: ${JSON.stringify(v)}`);
    // a recorded plan replayed while profiling: each of its dispatches is timed under its kernel too
    const plan = b.gpu.record(() => b.dispose(norm(b.matmul(x, w, null))));
    const replayed = await b.profileKernels(() => b.gpu.replay(plan));
    assert.ok(replayed);
    assert.equal([...replayed.values()].reduce((s, v) => s + v.count, 0), plan.length, "every replayed dispatch is in the profile");
    await assert.rejects(b.profileKernels(() => void b.readF32(x)), MambaError);
    await assert.rejects(b.profileKernels(() => { for (let i = 0; i < 3; i++) b.dispose(b.matmul(x, w, null)); }, 2), /more than 2 dispatches/);
    assert.deepEqual(await b.readF32(norm(b.matmul(x, w, null))), want, "the backend works after the errors");
  } finally {
    await b.destroy();
  }
});

test("webgpu flushEvery: encoded ops submit every flushEvery; a decode step's replay does not count, so a step is one submit", async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  const { createModel } = await import("../../src/index.ts");
  const b = (await createWebGpuBackend({ flushEvery: 10 })) as WebGpuBackend;
  const model = await createModel({ vocabSize: 30, hiddenSize: 16, numLayers: 3 }, { backend: b, seed: 2 });
  try {
    await b.sync();
    let submits = b.gpu.submits;
    const zs = Array.from({ length: 25 }, () => b.zeros([4]));
    assert.equal(b.gpu.submits - submits, 2, "25 ops encoded: submits after the 10th and the 20th");
    b.dispose(...zs);
    // greedy steps of one row: the fused step (3 layers x 3 dispatches, replayed) and the head, the sampler and the
    // read; the prefill of 12 tokens encodes well over 10 ops, so it submits early at least once
    await b.sync();
    submits = b.gpu.submits;
    const d0 = b.gpu.dispatches;
    const prompt = Int32Array.from({ length: 12 }, (_, i) => (i * 7) % 30);
    await model.generate(prompt, { maxNewTokens: 1, stopTokens: [] });
    const prefillSubmits = b.gpu.submits - submits;
    assert.ok(prefillSubmits >= 2, `the prefill (${b.gpu.dispatches - d0} dispatches) submitted early: ${prefillSubmits} submits`);
    await b.sync();
    const before = b.gpu.submits;
    await model.generate(prompt, { maxNewTokens: 9, stopTokens: [] });
    const steps = 8; // after the first token
    assert.equal(b.gpu.submits - before - prefillSubmits, steps, "one submit a decode step (its read)");
  } finally {
    await model.dispose();
  }
});
