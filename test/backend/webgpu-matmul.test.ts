/**
 * The tiled matmul's variants (K tile 16 or 32, vec4 or scalar global loads) against the CPU backend, on shapes
 * that take the 128 x 128 tiles: ragged edges, a long K split over workgroups, column windows 4-aligned or not,
 * f32 and bf16 weights. Runs when a WebGPU adapter exists (skipped otherwise, failed under CI=true).
 */
import { test } from "node:test";
import type { Backend } from "../../src/backend/backend.ts";
import { cols } from "../../src/backend/backend.ts";
import { CpuBackend } from "../../src/backend/cpu/index.ts";
import { Rng } from "../../src/generate/rng.ts";
import { toBF16Bits } from "../../src/io/tensor.ts";
import { assertClose } from "../helpers/fixtures.ts";
import { gpuTest } from "../helpers/backends.ts";

const cases = [
  { T: 300, K: 100, N: 16400, ld: 100, off: 0 }, // K not a multiple of 32: a part tile
  { T: 257, K: 64, N: 16390, ld: 72, off: 8 }, // a 4-aligned window
  { T: 129, K: 40, N: 16385, ld: 43, off: 3 }, // a window that is not
  { T: 5000, K: 8, N: 1000, ld: 8, off: 0 }, // many row tiles, one K tile
];

function rand(rng: Rng, n: number): Float32Array {
  return Float32Array.from({ length: n }, () => rng.next() * 2 - 1);
}

test("webgpu matmul: K tile 16/32 and vec4/scalar loads equal the CPU (f32 and bf16 weights)", async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  const cpu = new CpuBackend();
  for (const matmulTileK of [16, 32] as const) {
    for (const matmulVec4 of [true, false]) {
      const gpu = await createWebGpuBackend({ matmulTileK, matmulVec4 });
      try {
        let seed = 1;
        for (const s of cases) {
          for (const dtype of ["F32", "BF16"] as const) {
            const rng = new Rng(seed++);
            const xh = rand(rng, s.T * s.ld);
            const wh = rand(rng, s.N * s.K);
            const bh = rand(rng, s.N);
            const w = dtype === "F32" ? { dtype, shape: [s.N, s.K], data: wh } : { dtype, shape: [s.N, s.K], data: toBF16Bits(wh) };
            const run = async (k: Backend) => {
              const xt = k.fromF32(xh, [s.T, s.ld]);
              const wt = k.upload(w);
              const bt = k.fromF32(bh, [s.N]);
              const y = k.matmul(s.K === s.ld ? xt : cols(xt, s.off, s.K), wt, bt);
              const out = await k.readF32(y);
              k.dispose(xt, wt, bt, y);
              return out;
            };
            assertClose(await run(gpu), await run(cpu), 1e-4, `K tile ${matmulTileK}, vec4 ${matmulVec4}, ${JSON.stringify(s)} ${dtype}`);
          }
        }
      } finally {
        await gpu.destroy();
      }
    }
  }
});
