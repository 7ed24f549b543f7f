/**
 * The WebGPU buffer pool: freed buffers are reused by size; by default it keeps twice the largest working set so
 * far; when the pooled bytes exceed the budget the buffers released longest ago are destroyed first, so a loop that
 * frees and takes back the same large buffer keeps it even while older buffers fill the pool. Runs when a WebGPU adapter exists (skipped otherwise, failed
 * under CI=true).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import type { WebGpuBackend } from "../../src/backend/webgpu/index.ts";
import type { WebGpuOptions, WebGpuTuning } from "../../src/index.ts";
import { gpuTest, withOwnWebgpu } from "../helpers/backends.ts";
import { assertClose } from "../helpers/fixtures.ts";

const MiB = 2 ** 20;

test("webgpu pool: over its budget it destroys the buffers released longest ago, not the hot one", async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  const backend = (await createWebGpuBackend({ poolBytes: 8 * MiB })) as WebGpuBackend;
  const gpu = backend.gpu;
  // the pool is trimmed when pending work is submitted
  const submit = () => {
    backend.dispose(backend.zeros([4]));
    return backend.sync();
  };
  try {
    // older, smaller buffers: 6 MiB pooled, under the budget
    const old = Array.from({ length: 6 }, () => gpu.alloc(MiB));
    old.forEach((b) => gpu.release(b));
    await submit();
    const live = gpu.liveBytes;
    // a 3 MiB buffer freed and taken back again and again, a submit each time: 9 MiB pooled, over the budget
    const hot = gpu.alloc(3 * MiB);
    for (let i = 0; i < 4; i++) {
      gpu.release(hot);
      await submit();
      assert.equal(gpu.alloc(3 * MiB), hot, `round ${i}: the freed 3 MiB buffer is taken back, not destroyed and made anew`);
    }
    // the older buffers went instead (down to half the budget): only the hot one is left of the two sizes
    assert.equal(gpu.liveBytes, live - 6 * MiB + 3 * MiB, "bytes alive: the six 1 MiB buffers destroyed, the hot one kept");
    gpu.release(hot);
  } finally {
    await backend.destroy();
  }
});

/** One round of work in phases: each phase takes buffers of its sizes (MiB) and frees them all before the next;
 *  then a submit, after which the pool trims. */
async function round(backend: WebGpuBackend, phases: number[][]): Promise<void> {
  for (const sizes of phases) {
    const bufs = sizes.map((mib) => backend.gpu.alloc(mib * MiB));
    bufs.forEach((b) => backend.gpu.release(b));
  }
  backend.dispose(backend.zeros([4]));
  await backend.sync();
}

test("webgpu pool: by default it keeps a working set larger than its floor, so the next round creates nothing", async (t) => {
  await withOwnWebgpu(t, async (backend) => {
    const gpu = backend.gpu;
    // a training step's shape of use: 320 MiB (over the 256 MiB floor) taken, all freed, a submit, taken again
    const step = [Array<number>(10).fill(32)];
    await round(backend, step);
    const created = gpu.buffersCreated;
    const live = gpu.liveBytes;
    assert.ok(gpu.peakInUseBytes >= 320 * MiB, `working set recorded: ${gpu.peakInUseBytes}`);
    for (let i = 0; i < 3; i++) await round(backend, step);
    assert.equal(gpu.buffersCreated - created, 0, "buffers created by three more rounds");
    assert.equal(gpu.liveBytes, live, "bytes alive after three more rounds");
  });
});

test("webgpu pool: by default it keeps the buffers of work whose phases take different sizes, more in all than the working set, so the next round creates nothing", async (t) => {
  await withOwnWebgpu(t, async (backend) => {
    const gpu = backend.gpu;
    // a forward's shape of use: its layers take 6 × 48 MiB and free them, then its logits take 4 × 80 MiB (another
    // size, so the layers' buffers cannot serve them): 320 MiB held at once at most, 608 MiB freed by the round
    const forward = [Array<number>(6).fill(48), Array<number>(4).fill(80)];
    await round(backend, forward);
    const created = gpu.buffersCreated;
    assert.ok(gpu.peakInUseBytes < 608 * MiB, `the working set (${gpu.peakInUseBytes}) is less than what a round frees`);
    for (let i = 0; i < 3; i++) await round(backend, forward);
    assert.equal(gpu.buffersCreated - created, 0, "buffers created by three more rounds");
  });
});

test("webgpu: a backend made with options through the package API runs a model as the CPU does", async (t) => {
  if (!(await gpuTest(t))) return;
  const { createModel, createWebGpuBackend } = await import("../../src/index.ts");
  const sizes = { vocabSize: 40, hiddenSize: 16, numLayers: 2 };
  const gpu = await createModel(sizes, { backend: await createWebGpuBackend({ poolBytes: 16 * MiB, decodePersistent: false }), seed: 3 });
  const cpu = await createModel(sizes, { backend: "cpu", seed: 3 });
  try {
    assert.equal(gpu.backend.name, "webgpu");
    await assert.rejects(createWebGpuBackend({ poolBytes: -1 }), /poolBytes must be a number of bytes >= 0, got -1/);
    await assert.rejects(createWebGpuBackend({ decodePersistent: 1 as unknown as boolean }), /decodePersistent must be true or false, got 1/);
    // the internal knobs (tests and benchmarks) are checked alike
    const internal = await import("../../src/backend/webgpu/index.ts");
    await assert.rejects(internal.createWebGpuBackend({ flushEvery: 0 }), /flushEvery must be a whole number >= 1, got 0/);
    await assert.rejects(internal.createWebGpuBackend({ scanThreads: 2.5 }), /scanThreads must be a whole number >= 1, got 2.5/);
    const ids = Int32Array.from({ length: 14 }, (_, i) => (i * 7) % 40);
    const shape = { batch: 2, seqLen: 7 };
    assertClose((await gpu.forward(ids, shape)).logits, (await cpu.forward(ids, shape)).logits, 1e-4, "logits");
  } finally {
    await gpu.dispose();
    await cpu.dispose();
  }
});

test("the package's WebGPU options are the adapter choice, poolBytes and decodePersistent; the kernel knobs are not among them", () => {
  const options: WebGpuOptions & WebGpuTuning = { powerPreference: "high-performance", allowFallbackAdapter: true, poolBytes: 2 ** 28, decodePersistent: false };
  // @ts-expect-error the knobs of tests and benchmarks (WebGpuInternalTuning) are not part of the package's type
  const internal: WebGpuTuning = { scanThreads: 64 };
  // @ts-expect-error nor are the variants that lost (BENCHMARKS.md)
  const removed: WebGpuTuning = { matmulBK: 16 };
  assert.equal(Object.keys(options).length, 4);
  assert.ok(internal && removed);
});
