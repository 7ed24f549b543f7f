/**
 * The tensor-core matrix product: y = x · wᵀ + bias with w f16 (packed two halves per u32), x f32 rounded to f16
 * as it is read, f32 accumulation, through Dawn's subgroup matrices (chromium-experimental-subgroup-matrix).
 * Placeholder until the kernel lands: no call fits, so the products take the shader-f16 tiled kernel.
 */
import type { Gpu } from "../gpu.ts";
import type { MatmulArgs } from "./matmul.ts";
import { MambaError } from "../../../errors.ts";

/** Whether the tensor-core kernel takes a product of these sizes. */
export function tensorCoreFits(_a: { rows: number; K: number; N: number }): boolean {
  return false;
}

// x: [rows, K] window (f32, rounded to f16), w: [N, K] f16, bias: [N] -> y: [rows, N] f32
export function matmulTensorCore(_gpu: Gpu, _a: MatmulArgs): void {
  throw new MambaError("matmulTensorCore: the tensor-core kernel is not available in this build");
}
