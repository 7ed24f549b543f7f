/** Getting the GPU to its working clock before timing: at rest it idles at a fraction of it, and a short first
 *  measurement (the scan at B1 L2048 takes 10 ms in all) would otherwise run partly at the idle clock. */
import type { Backend } from "../src/backend/backend.ts";

/** Keeps the GPU busy with [2048, 2048] matmuls for `ms` milliseconds. */
export async function warmUpGpu(b: Backend, ms = 1500): Promise<void> {
  const n = 2048;
  const x = b.fromF32(new Float32Array(n * n).fill(0.01), [n, n]);
  const w = b.fromF32(new Float32Array(n * n).fill(0.01), [n, n]);
  const t0 = performance.now();
  while (performance.now() - t0 < ms) {
    for (let i = 0; i < 20; i++) b.dispose(b.matmul(x, w, null));
    const done = b.zeros([1]);
    await b.readF32(done); // waits for the matmuls before it
    b.dispose(done);
  }
  b.dispose(x, w);
}
