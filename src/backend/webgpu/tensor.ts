/**
 * WebGPU tensors: a shape and a pooled buffer. Parameters stored in half precision keep their 16-bit patterns
 * packed two per u32 (`storage` "f16" or "bf16"), quantized matrices their GGUF blocks ("q8_0", "q4_0"); the
 * matmul, embedding and fused decode kernels widen them as they read, and other ops read a float32 copy made once
 * on first use.
 */
import type { Backend, Cols, Tensor, TensorOrCols } from "../backend.ts";
import { asCols } from "../backend.ts";
import { MambaError } from "../../errors.ts";
import { numel } from "../../io/tensor.ts";
import type { Buf } from "./gpu.ts";

/** How a tensor's values lie in its buffer: f32 / i32 words, f16 / bf16 packed two per u32, or GGUF's Q8_0 / Q4_0
 *  blocks (the file's bytes, for 2-D weight matrices whose rows are whole 32-value blocks). */
export type Storage = "f32" | "i32" | "f16" | "bf16" | "q8_0" | "q4_0";

export class GpuTensor implements Tensor {
  /** A float32 copy of a half-precision tensor, made on first use by an op that reads float32. */
  widened: GpuTensor | null = null;
  disposed = false;
  /** Bumped whenever an op overwrites the tensor's values, so that caches derived from it can tell. */
  version = 0;
  /** A state tensor's previous buffer, kept once it took part in a recorded step: the op after writes into it, so
   *  two recordings of the step alternate between two fixed buffers (WebGpuBackend.capture). */
  partner: Buf | null = null;
  constructor(
    readonly shape: readonly number[],
    readonly dtype: "f32" | "i32",
    public buf: Buf, // state tensors get a new buffer when an op rewrites them
    public storage: Storage, // a matrix narrowed to f16 for half-precision products changes it (usePrecision)
    readonly owner: Backend, // the backend that made it (ops refuse tensors of another)
  ) {}
  get numel(): number {
    return numel(this.shape);
  }
  get cols(): number {
    return this.shape[this.shape.length - 1] ?? 1;
  }
}

export function gpuTensor(t: Tensor, owner: Backend, what: string): GpuTensor {
  if (!(t instanceof GpuTensor) || t.owner !== owner) {
    throw new MambaError(`${what}: a tensor from another backend was passed to the WebGPU backend`);
  }
  if (t.disposed) throw new MambaError(`${what}: the tensor has been disposed`);
  return t;
}

/** A column window as the kernels see it: element (r, c) is buf[r * ld + off + c]. */
export interface Window {
  t: GpuTensor;
  ld: number;
  off: number;
  width: number;
  rows: number;
}

export function windowOf(x: TensorOrCols, owner: Backend, what: string): Window {
  const c: Cols = asCols(x);
  const t = gpuTensor(c.tensor, owner, what);
  const ld = t.cols;
  if (c.col0 < 0 || c.width < 0 || c.col0 + c.width > ld) {
    throw new MambaError(`${what}: column window [${c.col0}, ${c.col0 + c.width}) outside ${ld} columns`);
  }
  return { t, ld, off: c.col0, width: c.width, rows: t.numel / ld };
}
