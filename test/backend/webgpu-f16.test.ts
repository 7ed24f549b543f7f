/**
 * The WebGPU backend's half-precision path: the shader-f16 tiled product (matmul-f16.ts) against a host reference
 * on the same f16-rounded inputs (both tiles, K split or not, K, N and rows that are not multiples of a tile,
 * column windows, bias or none, weights stored f32 / bf16 / f16), the one-time narrowing of weights to f16, the
 * routing of products by precision (f16 takes these kernels, f32 is unchanged), the options' errors, the
 * tensor-core tile knob's checks and defaults (the tensor-core kernel itself runs in test/gpu), and whole models with
 * precision f16 against the fp32 PyTorch fixtures.
 * Mesa lavapipe offers shader-f16, so all of it runs on CI's software GPU.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { cols } from "../../src/backend/backend.ts";
import type { Buf } from "../../src/backend/webgpu/gpu.ts";
import type { WebGpuBackend } from "../../src/backend/webgpu/index.ts";
import type { GpuTensor } from "../../src/backend/webgpu/tensor.ts";
import { HALF_TILE_LARGE, HALF_TILE_SMALL, matmulF16, narrowToF16 } from "../../src/backend/webgpu/kernels/matmul-f16.ts";
import { splitPlan, tileBytes, tiledMatmulWgsl, tileProblem } from "../../src/backend/webgpu/kernels/matmul.ts";
import { MATVEC_MAX_ROWS } from "../../src/backend/webgpu/kernels/matvec.ts";
import {
  TC_TILE, TC_TILE_SHARED, TC_TILE_WIDE, defaultTensorCoreTile, tensorCoreTileBytes, tensorCoreTileProblem,
} from "../../src/backend/webgpu/kernels/matmul-tc.ts";
import { parseTensorCoreTile } from "../../src/backend/webgpu/tuning.ts";
import { hasTensorCores } from "../../src/backend/webgpu/ops.ts";
import { MambaError, loadModel } from "../../src/index.ts";
import { toBF16Bits, toF16Bits } from "../../src/io/tensor.ts";
import { fixture } from "../helpers/fixtures.ts";
import { gpuTest, withOwnWebgpu } from "../helpers/backends.ts";
import { TestRng } from "../helpers/random.ts";
import {
  FIXTURE_BOUNDS, type ProductShape as Shape, assertProductNear as assertNear, fixtureF16Error, productReference as reference, rand, roundBF16, roundF16,
} from "../helpers/half.ts";

const productCases: Shape[] = [
  { T: 70, K: 300, N: 130, off: 3, ld: 310 }, // 64 x 64 tiles, K split, a window not 4-aligned (one value a load)
  { T: 70, K: 296, N: 132, off: 4, ld: 304 }, // the same 4-aligned: 4 values a load
  { T: 33, K: 7, N: 65, off: 0, ld: 7 }, // K shorter than a tile, N and rows off the tile
  { T: 17, K: 20, N: 5, off: 0, ld: 20 }, // N narrower than a thread's columns
  { T: 260, K: 44, N: 16390, off: 0, ld: 44 }, // 128 x 128 tiles (256 and more of them)
];

test("f16 products: the shader-f16 kernel matches the reference on f16-rounded inputs (weights f32, bf16, f16; windows; bias or none)", { timeout: 600_000 }, async (t) => {
  await withOwnWebgpu(t, async (b) => {
    b.usePrecision("f16");
    let seed = 1;
    for (const s of productCases) {
      for (const store of ["f32", "bf16", "f16"] as const) {
        const withBias = store !== "bf16";
        const rng = new TestRng(seed++);
        const wide = rand(rng, s.T * s.ld);
        const w = rand(rng, s.N * s.K);
        const bias = withBias ? rand(rng, s.N) : null;
        const data = store === "f32" ? w : store === "bf16" ? toBF16Bits(w) : toF16Bits(w);
        const wt = b.upload({ dtype: store === "f32" ? "F32" : store === "bf16" ? "BF16" : "F16", shape: [s.N, s.K], data } as never);
        const xt = b.fromF32(wide, [s.T, s.ld]);
        const bt = bias ? b.fromF32(bias, [s.N]) : null;
        const y = b.matmul(s.ld === s.K ? xt : cols(xt, s.off, s.K), wt, bt);
        const got = await b.readF32(y);
        b.dispose(xt, wt, bt, y);
        // the weights as stored, then rounded to f16 (bf16 -> f16 rounds again); x rounded to f16
        const wStored = store === "bf16" ? roundBF16(w) : w;
        assertNear(got, reference(roundF16(wide), roundF16(wStored), bias, s), `${JSON.stringify(s)} ${store}${withBias ? " bias" : ""}`);
      }
    }
    // where the device has tensor cores (subgroup matrices) the products run there; else on the shader-f16 tiles
    if (hasTensorCores(b)) {
      assert.ok(b.gpu.kernelNames.some((n) => n.startsWith("matmul_tc_")), "the tensor-core kernel ran");
    } else {
      assert.ok(b.gpu.kernelNames.some((n) => n.startsWith("matmul_f16_128x128")), "the 128 x 128 tile ran");
      assert.ok(b.gpu.kernelNames.some((n) => n.startsWith("matmul_f16_64x64")), "the 64 x 64 tile ran");
    }
    assert.ok(!b.gpu.kernelNames.some((n) => /^matmul_\d/.test(n)), "no f32 tiled product ran");
  });
});

test("f16 products: each tile alone, whole and K split, matches the reference", { timeout: 300_000 }, async (t) => {
  await withOwnWebgpu(t, async (b) => {
    const s: Shape = { T: 45, K: 100, N: 70, off: 2, ld: 103 };
    const rng = new TestRng(77);
    const wide = rand(rng, s.T * s.ld), w = rand(rng, s.N * s.K), bias = rand(rng, s.N);
    const want = reference(roundF16(wide), roundF16(w), bias, s);
    for (const cfg of [HALF_TILE_LARGE, HALF_TILE_SMALL]) {
      for (const splits of [1, 3]) {
        const plan = splitPlan(s.K, splits);
        const x = b.fromF32(wide, [s.T, s.ld]) as GpuTensor;
        const wt = b.upload({ dtype: "F16", shape: [s.N, s.K], data: toF16Bits(w) }) as GpuTensor;
        const bt = b.fromF32(bias, [s.N]) as GpuTensor;
        const part = b.gpu.alloc(plan.count * s.T * s.N * 4);
        matmulF16(b.gpu, { x: x.buf, ldx: s.ld, offx: s.off, rows: s.T, K: s.K, w: wt.buf, ws: "f16", N: s.N, bias: bt.buf, y: part }, cfg, plan);
        const raw = new Float32Array(await b.gpu.read(part, plan.count * s.T * s.N * 4));
        const got = new Float32Array(s.T * s.N);
        for (let i = 0; i < got.length; i++) {
          let v = plan.count > 1 ? bias[i % s.N]! : 0; // the partials come without the bias (matmulReduce adds it)
          for (let z = 0; z < plan.count; z++) v += raw[z * s.T * s.N + i]!;
          got[i] = v;
        }
        b.gpu.release(part);
        b.dispose(x, wt, bt);
        assertNear(got, want, `tile ${cfg.TM}x${cfg.TN}, ${plan.count} K parts`);
      }
    }
    assert.throws(() => matmulF16(b.gpu, { x: b.gpu.dummy, ldx: 4, offx: 0, rows: 1, K: 4, w: b.gpu.dummy, ws: "f32", N: 1, bias: null, y: b.gpu.dummyOut }, HALF_TILE_SMALL), MambaError);
  });
});

test("f16 tiles: both are tiles the shared template runs with halves staged, in half the workgroup memory of f32 tiles; other shapes are refused", () => {
  for (const cfg of [HALF_TILE_LARGE, HALF_TILE_SMALL]) {
    assert.equal(tileProblem(cfg, "f16"), null);
    assert.equal(2 * tileBytes(cfg, "f16"), tileBytes(cfg));
    assert.match(tiledMatmulWgsl("matmul_f16", cfg, "f16", true, "f16"), /^\s*enable f16;[^]*var<workgroup> As: array<vec4<f16>/);
  }
  assert.match(tileProblem({ ...HALF_TILE_LARGE, BK: 8 }, "f16") ?? "", /BK must be 16, got 8/);
  assert.match(tileProblem({ ...HALF_TILE_SMALL, BM: 32 }, "f16") ?? "", /BM must be 16 times TM, got 32 with TM 4/);
  assert.match(tileProblem(HALF_TILE_SMALL) ?? "", /TM must be 8 and TN 4 or 8, got 4 and 4/, "f32 tiles take 8 rows a thread");
  assert.throws(() => tiledMatmulWgsl("matmul_f16", HALF_TILE_LARGE, "f32", true, "f16"), (e: Error) => e instanceof MambaError && /f16 tiles take f16 weights, got f32/.test(e.message));
  assert.throws(() => tiledMatmulWgsl("matmul_f16", { ...HALF_TILE_LARGE, TN: 2 }, "f16", true, "f16"), /matmul_f16: tile 128x128_k16 cannot run: TM must be 4 or 8 and TN 4 or 8, got 8 and 2/);
});

test("f16 products: a few rows (decode) read f16 weights with f32 math and their activations unrounded", { timeout: 120_000 }, async (t) => {
  await withOwnWebgpu(t, async (b) => {
    b.usePrecision("f16");
    const s: Shape = { T: MATVEC_MAX_ROWS, K: 64, N: 40, off: 0, ld: 64 };
    const rng = new TestRng(5);
    const x = rand(rng, s.T * s.K), w = rand(rng, s.N * s.K), bias = rand(rng, s.N);
    const [xt, wt, bt] = [b.fromF32(x, [s.T, s.K]), b.upload({ dtype: "F32", shape: [s.N, s.K], data: w }), b.fromF32(bias, [s.N])];
    const y = b.matmul(xt, wt, bt);
    assertNear(await b.readF32(y), reference(x, roundF16(w), bias, s), "matvec over f16 weights");
    b.dispose(xt, wt, bt, y);
  });
});

test("narrowToF16: f32 and bf16 weights become exactly the host's round-to-nearest-even halves (odd lengths too)", { timeout: 120_000 }, async (t) => {
  await withOwnWebgpu(t, async (b) => {
    const rng = new TestRng(9);
    // values across f16's range: normals, subnormals, ties, ±0
    const v = Float32Array.from({ length: 1001 }, (_, i) => (2 * rng.next() - 1) * 2 ** ((i % 40) - 25));
    v[0] = 0; v[1] = -0; v[2] = 1 + 2 ** -11; v[3] = 1 + 3 * 2 ** -11; v[4] = 65504; v[5] = 2 ** -24;
    for (const store of ["f32", "bf16"] as const) {
      const src = store === "f32" ? b.fromF32(v, [v.length]) : b.upload({ dtype: "BF16", shape: [v.length], data: toBF16Bits(v) });
      const out: Buf = b.gpu.alloc(Math.ceil(v.length / 2) * 4);
      narrowToF16(b.gpu, (src as GpuTensor).buf, store, v.length, out);
      const got = new Uint16Array(await b.gpu.read(out, Math.ceil(v.length / 2) * 4)).subarray(0, v.length);
      const want = toF16Bits(store === "f32" ? v : roundBF16(v));
      assert.deepEqual(Array.from(got), Array.from(want), `${store} -> f16 bits`);
      b.gpu.release(out);
      b.dispose(src);
    }
  });
});

test("precision f32 (the default) takes the f32 kernels and gives the same bits as before; f16 copies follow weight changes", { timeout: 300_000 }, async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  const s: Shape = { T: 70, K: 296, N: 132, off: 4, ld: 304 };
  const rng = new TestRng(3);
  const wide = rand(rng, s.T * s.ld), w = rand(rng, s.N * s.K);
  const outputs: Float32Array[] = [];
  for (const precision of [undefined, "f32", "f16"] as const) {
    const b = (await createWebGpuBackend(precision ? { precision } : {})) as WebGpuBackend;
    try {
      assert.equal(b.precision, precision ?? "f32");
      const [xt, wt] = [b.fromF32(wide, [s.T, s.ld]), b.fromF32(w, [s.N, s.K])];
      const y = b.matmul(cols(xt, s.off, s.K), wt, null);
      outputs.push(await b.readF32(y));
      assert.equal(b.gpu.kernelNames.some((n) => n.startsWith("matmul_f16") || n.startsWith("matmul_tc_")), precision === "f16", `f16 kernels with precision ${precision}`);
      if (precision === "f16") {
        // a changed weight (a training step) makes a new f16 copy
        const w2 = rand(rng, s.N * s.K);
        b.copyInto(wt, b.fromF32(w2, [s.N, s.K]));
        const y2 = b.matmul(cols(xt, s.off, s.K), wt, null);
        assertNear(await b.readF32(y2), reference(roundF16(wide), roundF16(w2), null, s), "after copyInto");
        assert.equal((wt as GpuTensor).storage, "f32", "the f32 master weights stay");
      }
    } finally {
      await b.destroy();
    }
  }
  assert.deepEqual(outputs[1], outputs[0], "precision f32 is bit-identical to the default");
  assert.notDeepEqual(outputs[2], outputs[0], "precision f16 rounds");
});

test("precision options: clear errors for bad values, for f16 on the CPU and on a device without shader-f16", { timeout: 120_000 }, async (t) => {
  const folder = fixture("hf-mamba", "tiny");
  await assert.rejects(loadModel(folder, { backend: "cpu", precision: "f16" }), (e: Error) => e instanceof MambaError && /CPU backend computes in f32/.test(e.message));
  await assert.rejects(loadModel(folder, { backend: "cpu", precision: "f8" as never }), (e: Error) => e instanceof MambaError && /precision must be one of f32, f16, auto/.test(e.message));
  const cpu = await loadModel(folder, { backend: "cpu", precision: "auto" });
  assert.equal(cpu.backend.precision ?? "f32", "f32");
  await cpu.dispose();
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  await assert.rejects(createWebGpuBackend({ precision: "half" as never }), (e: Error) => e instanceof MambaError && /precision must be one of f32, f16/.test(e.message));
  await assert.rejects(createWebGpuBackend({ unsafeApis: "no" as never }), (e: Error) => e instanceof MambaError && /unsafeApis must be true or false/.test(e.message));
  const b = (await createWebGpuBackend()) as WebGpuBackend;
  try {
    b.gpu.half = { f16: false, subgroupMatrix: [] }; // as a device without shader-f16 shows itself
    assert.deepEqual(b.precisions, ["f32"]);
    assert.throws(() => b.usePrecision("f16"), (e: Error) => e instanceof MambaError && /shader-f16/.test(e.message));
    await assert.rejects(loadModel(folder, { backend: b, precision: "f16" }), (e: Error) => e instanceof MambaError && /shader-f16/.test(e.message));
  } finally {
    await b.destroy();
  }
});

test("precision auto: f16 for an f16 or bf16 checkpoint where the device has shader-f16, f32 for an f32 one", { timeout: 120_000 }, async (t) => {
  if (!(await gpuTest(t))) return;
  for (const [name, want] of [["tiny", "f32"], ["tiny-f16", "f16"], ["tiny-bf16-sharded", "f16"]] as const) {
    const model = await loadModel(fixture("hf-mamba", name), { backend: "webgpu", precision: "auto" });
    try {
      assert.equal(model.backend.precision, want, name);
    } finally {
      await model.dispose();
    }
  }
});

// the bounds and their reasons: test/helpers/half.ts
for (const name of Object.keys(FIXTURE_BOUNDS)) {
  test(`${name}: precision f16 logits within the stated bound of the fp32 PyTorch logits`, { timeout: 300_000 }, async (t) => {
    if (!(await gpuTest(t))) return;
    const { maxAbs, scale, bound } = await fixtureF16Error(name, "webgpu");
    t.diagnostic(`max abs ${maxAbs.toExponential(3)}, max |logit| ${scale.toFixed(3)}, relative ${(maxAbs / scale).toExponential(3)}`);
    assert.ok(maxAbs / scale <= bound, `${name}: ${(maxAbs / scale).toExponential(3)} of max |logit| > ${bound}`);
  });
}

test("Dawn's toggles: unsafeApis false leaves out allow_unsafe_apis and vulkan_enable_f16_on_nvidia, with a GPU object of its own", { timeout: 120_000 }, async (t) => {
  const { dawnToggles, nodeGpu } = await import("../../src/backend/webgpu/node.ts");
  const saved = process.env.MAMBA_TS_DAWN_TOGGLES;
  delete process.env.MAMBA_TS_DAWN_TOGGLES;
  try {
    assert.match(dawnToggles(true).enabled, /allow_unsafe_apis/);
    assert.match(dawnToggles(true).enabled, /vulkan_enable_f16_on_nvidia/);
    assert.doesNotMatch(dawnToggles(false).enabled, /allow_unsafe_apis|vulkan_enable_f16_on_nvidia/);
    assert.match(dawnToggles(false).enabled, /disable_robustness/);
    process.env.MAMBA_TS_DAWN_TOGGLES = "disable_robustness";
    assert.equal(dawnToggles(true).enabled, "disable_robustness", "the environment replaces the list");
  } finally {
    if (saved === undefined) delete process.env.MAMBA_TS_DAWN_TOGGLES;
    else process.env.MAMBA_TS_DAWN_TOGGLES = saved;
  }
  if (!(await gpuTest(t))) return;
  assert.notEqual(await nodeGpu(false), await nodeGpu(true), "another toggle set, another GPU object");
  assert.equal(await nodeGpu(false), await nodeGpu(false), "one GPU object a toggle set");
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  const b = (await createWebGpuBackend({ unsafeApis: false })) as WebGpuBackend;
  try {
    // lavapipe offers shader-f16 without the toggles; subgroup matrices need allow_unsafe_apis wherever they exist
    assert.deepEqual(b.gpu.half.subgroupMatrix, []);
  } finally {
    await b.destroy();
  }
});

test("training with precision f16: f32 master weights, f16 products in the forward; a tiny run tracks the f32 run", { timeout: 300_000 }, async (t) => {
  if (!(await gpuTest(t))) return;
  const { Trainer } = await import("../../src/train/trainer.ts");
  const { CpuBackend } = await import("../../src/backend/cpu/index.ts");
  const { tinyOptions } = await import("../train/helpers/tiny-run.ts");
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  assert.throws(() => Trainer.create(new CpuBackend(), tinyOptions({ precision: "f16" })), (e: Error) => e instanceof MambaError && /CPU backend computes in f32/.test(e.message));
  assert.throws(() => Trainer.create(new CpuBackend(), tinyOptions({ precision: "f8" as never })), (e: Error) => e instanceof MambaError && /precision must be one of f32, f16/.test(e.message));
  const gb = (await createWebGpuBackend()) as WebGpuBackend & import("../../src/backend/training.ts").TrainingBackend;
  try {
    const o = tinyOptions({ steps: 12 });
    const f32 = Trainer.create(new CpuBackend(), o);
    const f16 = Trainer.create(gb, { ...o, precision: "f16" });
    assert.equal(gb.precision, "f16");
    const diffs: string[] = [];
    for (let i = 0; i < o.steps; i++) {
      const a = await f32.trainStep(), b = await f16.trainStep();
      const rel = Math.abs(a.loss - b.loss) / Math.abs(a.loss);
      diffs.push(rel.toExponential(1));
      // measured: at most 3e-5 over these steps (f16 rounding of the forward's product inputs, about 2^-11 each,
      // averaged over the loss's terms); 1e-3 leaves room for other GPUs' orders of sums, not for a wrong product
      assert.ok(rel <= 1e-3, `step ${i + 1}: loss ${b.loss} vs f32 ${a.loss}`);
    }
    t.diagnostic(`losses' relative differences by step: ${diffs.join(" ")}`);
    for (const w of f16.lm.weights.layers.flatMap((l) => [l.mixer.inProj, l.mixer.outProj])) {
      assert.equal((w as GpuTensor).storage, "f32", "the master weights stay f32");
    }
    assert.ok(gb.gpu.kernelNames.some((n) => n.startsWith("matmul_f16")), "the forward's products ran in f16");
  } finally {
    await gb.destroy();
  }
});

test("precision f16: the fused decode step reads the narrowed f16 weights (batch 1 and 3) within the forward's bound of the CPU's f32 step", { timeout: 300_000 }, async (t) => {
  if (!(await gpuTest(t))) return;
  const { decodeStepsMatchCpu } = await import("../helpers/decode.ts");
  const folder = fixture("hf-mamba", "tiny");
  const gpu = await loadModel(folder, { backend: "webgpu", precision: "f16" });
  const cpu = await loadModel(folder, { backend: "cpu" });
  try {
    const w = gpu.lm.weights;
    for (const m of [w.head, ...w.layers.flatMap((l) => [l.mixer.inProj, l.mixer.xProj!, l.mixer.dtProj!, l.mixer.outProj])]) {
      assert.equal((m as GpuTensor).storage, "f16", "the projections and the head are stored in f16");
    }
    assert.equal((w.layers[0]!.mixer.A_log as GpuTensor).storage, "f32", "A_log stays f32");
    // the weights' f16 rounding alone (decode's activations are not rounded): measured between 5.9e-4 and 8e-4
    // at most over these steps; the bound is the whole-model bound above (1e-3 of max |logit|, about 3.7)
    for (const B of [1, 3]) {
      await decodeStepsMatchCpu(gpu, cpu, B, { steps: 4, rng: new TestRng(B), tol: 3.7e-3, what: "f16 weights" });
    }
  } finally {
    await gpu.dispose();
    await cpu.dispose();
  }
});

test("tensor-core tiles: the knob's spelling, the checks of a tile, and the default for a device's subgroups and workgroup memory", () => {
  // BMxBNxBK, or BMxBNxBKxSGMxSGN
  assert.deepEqual(parseTensorCoreTile("64x64x16"), { BM: 64, BN: 64, BK: 16 });
  assert.deepEqual(parseTensorCoreTile("128x256x32x2x4"), { BM: 128, BN: 256, BK: 32, SG: [2, 4] });
  for (const [text, why] of [["64x64", /BMxBNxBK/], ["64x64x16x2", /BMxBNxBK/], ["100x64x16", /multiples of 16/],
    ["64x64x24", /BK must be 16, 32 or 64/], ["256x256x16", /more than 16 result matrices/], ["64x64x16x3x3", /SG must be 1 to 8/]] as const) {
    assert.throws(() => parseTensorCoreTile(text), (e: unknown) => e instanceof MambaError && why.test(e.message), text);
  }
  // workgroup memory: the wide tile needs 38,912 bytes
  assert.equal(tensorCoreTileBytes(TC_TILE_WIDE), 38_912);
  assert.match(tensorCoreTileProblem(TC_TILE_WIDE, 32_768) ?? "", /over this device's 32768/);
  assert.equal(tensorCoreTileProblem(TC_TILE_WIDE, 49_152), null);
  const device = (min: number, max: number, bytes: number) => ({ subgroupMinSize: min, subgroupMaxSize: max, limits: { maxComputeWorkgroupStorageSize: bytes } as GPUSupportedLimits });
  assert.equal(defaultTensorCoreTile(device(32, 32, 49_152)), TC_TILE_WIDE);
  assert.equal(defaultTensorCoreTile(device(32, 32, 32_768)), TC_TILE_SHARED);
  assert.equal(defaultTensorCoreTile(device(32, 32, 16_384)), TC_TILE); // WebGPU's default limit (browsers)
  assert.ok(tensorCoreTileBytes(TC_TILE) <= 16_384);
  assert.equal(defaultTensorCoreTile(device(16, 32, 49_152)), TC_TILE); // subgroups not always 32 wide: one a workgroup
  assert.equal(defaultTensorCoreTile(device(0, 0, 49_152)), TC_TILE);
});

test("tensor-core tiles: a tile the device cannot run is refused when the backend is made, saying why", { timeout: 120_000 }, async (t) => {
  await withOwnWebgpu(t, async (b) => {
    const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
    const wide32 = b.gpu.subgroupMinSize === 32 && b.gpu.subgroupMaxSize === 32;
    const bytes = b.gpu.limits.maxComputeWorkgroupStorageSize;
    for (const tile of [TC_TILE_SHARED, TC_TILE_WIDE]) {
      const name = `${tile.BM}x${tile.BN}x${tile.BK}x${tile.SG![0]}x${tile.SG![1]}`;
      // the tile's own checks (workgroup memory among them) come first, then the device's subgroups
      const why = tensorCoreTileBytes(tile) > bytes ? /workgroup memory/ : !wide32 ? /needs subgroups 32 wide/ : null;
      t.diagnostic(`${name} on ${b.device} (subgroups ${b.gpu.subgroupMinSize} to ${b.gpu.subgroupMaxSize}, ${bytes} bytes): ${why ? "refused" : "accepted"}`);
      if (why) await assert.rejects(createWebGpuBackend({ tensorCoreTile: name }), (e: unknown) => e instanceof MambaError && why.test(e.message));
      else await (await createWebGpuBackend({ tensorCoreTile: name })).destroy();
    }
  });
});
