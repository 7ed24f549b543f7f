/**
 * The tensor-core product (kernels/matmul-tc.ts: subgroup matrices, f16 inputs, f32 sums) against a host reference
 * on the same f16-rounded inputs, the backend's routing of precision-f16 products to it, and whole models through
 * it against the fp32 PyTorch fixtures within the bounds of test/helpers/half.ts. Needs a device with
 * chromium-experimental-subgroup-matrix offering f16 × f16 -> f32 at 16 × 16 × 16 (the H100 through Dawn's
 * allow_unsafe_apis and vulkan_enable_f16_on_nvidia); elsewhere each test is skipped with what the adapter offers
 * (lavapipe: shader-f16 yes, chromium-experimental-subgroup-matrix no). Not part of `npm test`: `npm run test:gpu`.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { cols } from "../../src/backend/backend.ts";
import type { WebGpuBackend } from "../../src/backend/webgpu/index.ts";
import type { GpuTensor } from "../../src/backend/webgpu/tensor.ts";
import { hasTensorCores } from "../../src/backend/webgpu/ops.ts";
import { matmulTensorCore, TC_TILE, TC_TILE_SHARED, TC_TILE_WIDE, tensorCoreFits, tensorCoreTileBytes, tensorCoreTileName, type TensorCoreTile } from "../../src/backend/webgpu/kernels/matmul-tc.ts";
import { toF16Bits } from "../../src/io/tensor.ts";
import { TestRng } from "../helpers/random.ts";
import { FIXTURE_BOUNDS, type ProductShape, assertProductNear, fixtureF16Error, productReference, rand, roundF16 } from "../helpers/half.ts";

/** A backend with tensor cores, or null after skipping the test with what the adapter offers. */
async function tensorCoreBackend(t: TestContext): Promise<WebGpuBackend | null> {
  let b: WebGpuBackend;
  try {
    const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
    b = (await createWebGpuBackend()) as WebGpuBackend;
  } catch (err) {
    t.skip(`no WebGPU adapter: ${(err as Error).message}`);
    return null;
  }
  if (hasTensorCores(b)) return b;
  const { f16, subgroupMatrix } = b.gpu.half;
  const shapes = subgroupMatrix.map((c) => `${c.componentType}->${c.resultComponentType} ${c.M}x${c.N}x${c.K}`).join(", ");
  t.skip(`${b.device}: shader-f16 ${f16 ? "yes" : "no"}, chromium-experimental-subgroup-matrix ` +
    (subgroupMatrix.length ? `yes but without f16->f32 16x16x16 (${shapes})` : "no"));
  await b.destroy();
  return null;
}

const cases: (ProductShape & { bias: boolean })[] = [
  { T: 16, K: 16, N: 16, off: 0, ld: 16, bias: true }, // one matrix tile
  { T: 17, K: 4, N: 17, off: 0, ld: 4, bias: false }, // K shorter than a tile, rows and columns one past 16
  { T: 45, K: 100, N: 70, off: 4, ld: 108, bias: true }, // nothing a multiple of 16, a column window
  { T: 130, K: 36, N: 200, off: 8, ld: 48, bias: false }, // past one 128 x 128 workgroup tile each way
  { T: 300, K: 772, N: 260, off: 0, ld: 772, bias: true }, // many K tiles of 32, K off them by 4
];

// the default tile, one staging 32 K columns at a time, and workgroups of several subgroups sharing staged tiles
const tiles: TensorCoreTile[] = [TC_TILE, { BM: 64, BN: 64, BK: 32 }, TC_TILE_SHARED, TC_TILE_WIDE];

for (const tile of tiles) {
  test(`tensor cores: matmulTensorCore (tile ${tensorCoreTileName(tile)}) matches the reference on f16-rounded inputs (edges, windows, bias or none)`, { timeout: 300_000 }, async (t) => {
    const b = await tensorCoreBackend(t);
    if (!b) return;
    try {
      if (tile.SG && !(b.gpu.subgroupMinSize === 32 && b.gpu.subgroupMaxSize === 32)) {
        t.skip(`${b.device}: subgroups ${b.gpu.subgroupMinSize} to ${b.gpu.subgroupMaxSize} wide; several-subgroup tiles need 32`);
        return;
      }
      if (tensorCoreTileBytes(tile) > b.gpu.limits.maxComputeWorkgroupStorageSize) {
        t.skip(`${b.device}: ${b.gpu.limits.maxComputeWorkgroupStorageSize} bytes of workgroup memory; the tile needs ${tensorCoreTileBytes(tile)}`);
        return;
      }
      let seed = 1;
      for (const s of cases) {
        assert.ok(tensorCoreFits({ rows: s.T, K: s.K, N: s.N, ldx: s.ld, offx: s.off }), `${JSON.stringify(s)} fits`);
        const rng = new TestRng(seed++);
        const wide = rand(rng, s.T * s.ld), w = rand(rng, s.N * s.K), bias = s.bias ? rand(rng, s.N) : null;
        const x = b.fromF32(wide, [s.T, s.ld]) as GpuTensor;
        const wt = b.upload({ dtype: "F16", shape: [s.N, s.K], data: toF16Bits(w) }) as GpuTensor;
        const bt = bias ? (b.fromF32(bias, [s.N]) as GpuTensor) : null;
        const y = b.make([s.T, s.N], "f32");
        matmulTensorCore(b.gpu, { x: x.buf, ldx: s.ld, offx: s.off, rows: s.T, K: s.K, w: wt.buf, ws: "f16", N: s.N, bias: bt?.buf ?? null, y: y.buf }, undefined, tile);
        const got = await b.readF32(y);
        b.dispose(x, wt, bt, y);
        assertProductNear(got, productReference(roundF16(wide), roundF16(w), bias, s), JSON.stringify(s));
      }
    } finally {
      await b.destroy();
    }
  });
}

test("tensor cores: precision f16 products that fit take them, with f32 weights narrowed once", { timeout: 300_000 }, async (t) => {
  const b = await tensorCoreBackend(t);
  if (!b) return;
  try {
    b.usePrecision("f16");
    const s: ProductShape = { T: 64, K: 96, N: 80, off: 4, ld: 104 };
    const rng = new TestRng(42);
    const wide = rand(rng, s.T * s.ld), w = rand(rng, s.N * s.K), bias = rand(rng, s.N);
    const [xt, wt, bt] = [b.fromF32(wide, [s.T, s.ld]), b.fromF32(w, [s.N, s.K]), b.fromF32(bias, [s.N])];
    const y = b.matmul(cols(xt, s.off, s.K), wt, bt);
    assertProductNear(await b.readF32(y), productReference(roundF16(wide), roundF16(w), bias, s), "through matmul");
    assert.ok(b.gpu.kernelNames.some((n) => n.startsWith("matmul_tc")), "the tensor-core kernel ran");
    assert.ok(!b.gpu.kernelNames.some((n) => n.startsWith("matmul_f16")), "the shader-f16 kernel did not");
    b.dispose(xt, wt, bt, y);
  } finally {
    await b.destroy();
  }
});

for (const name of Object.keys(FIXTURE_BOUNDS)) {
  test(`${name}: precision f16 on the tensor cores, logits within the bound of the fp32 PyTorch logits`, { timeout: 300_000 }, async (t) => {
    const b = await tensorCoreBackend(t);
    if (!b) return;
    // the model owns the backend from here, and disposes of it
    const { maxAbs, scale, bound } = await fixtureF16Error(name, b,
      () => assert.ok(b.gpu.kernelNames.some((n) => n.startsWith("matmul_tc")), "the tensor-core kernel ran"));
    t.diagnostic(`max abs ${maxAbs.toExponential(3)}, max |logit| ${scale.toFixed(3)}, relative ${(maxAbs / scale).toExponential(3)}`);
    assert.ok(maxAbs / scale <= bound, `${name}: ${(maxAbs / scale).toExponential(3)} of max |logit| > ${bound}`);
  });
}
