/**
 * The WebGPU backend: Mamba on the GPU from TypeScript, in browsers (navigator.gpu) and in Node (the `webgpu`
 * package, loaded only there). Math in f32; f16 / bf16 weights stay packed, and Q8_0 / Q4_0 matrices in their GGUF
 * blocks, on the GPU and are widened in kernels. With precision "f16" the matrix products take f16 inputs with f32
 * accumulation (shader-f16, and the tensor cores through subgroup matrices where the device offers them).
 */
import type { Backend } from "../backend.ts";
import { acquireDevice, type WebGpuOptions } from "./device.ts";
import { Gpu } from "./gpu.ts";
import { MambaError, checkFlag } from "../../errors.ts";
import { WebGpuTrainingBackend } from "./training.ts";
import { type WebGpuInternalTuning, checkWebGpuOptions } from "./tuning.ts";
import "./ops-mamba2.ts"; // Mamba-2's and Falcon-Mamba's ops, assigned onto WebGpuBackend

export { WebGpuBackend } from "./backend.ts";
export { WebGpuTrainingBackend } from "./training.ts";
export type { WebGpuOptions } from "./device.ts";
export type { WebGpuInternalTuning, WebGpuTuning } from "./tuning.ts";

/** A WebGPU backend on the default adapter, with the training ops; throws a MambaError when there is none. Takes
 *  the internal knobs too (tests, benchmarks); the package's API offers WebGpuOptions & WebGpuTuning. */
export async function createWebGpuBackend(options: WebGpuOptions & WebGpuInternalTuning = {}): Promise<Backend> {
  checkWebGpuOptions("createWebGpuBackend", options); // the package's, a benchmark's, or loadModel's `webgpu` again
  const pool = options.poolBytes;
  if (pool !== undefined && !(typeof pool === "number" && Number.isFinite(pool) && pool >= 0)) {
    throw new MambaError(`createWebGpuBackend: poolBytes must be a number of bytes >= 0, got ${String(pool)}`);
  }
  checkFlag("unsafeApis", options.unsafeApis);
  const { gpu, device, description, half } = await acquireDevice(options);
  const g = new Gpu(device, description, gpu, options.poolBytes);
  g.half = half;
  try {
    return new WebGpuTrainingBackend(g, options);
  } catch (err) {
    await g.destroy(); // a refused tuning must not leave the device held
    throw err;
  }
}
