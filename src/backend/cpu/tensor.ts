/** CPU tensors: a shape and a host array. */
import type { Cols, Tensor, TensorOrCols } from "../backend.ts";
import { asCols } from "../backend.ts";
import { MambaError } from "../../errors.ts";

export class CpuTensor implements Tensor {
  constructor(
    readonly shape: readonly number[],
    readonly dtype: "f32" | "i32",
    readonly data: Float32Array | Int32Array,
  ) {}
  get f32(): Float32Array {
    return this.data as Float32Array;
  }
  get i32(): Int32Array {
    return this.data as Int32Array;
  }
}

export function cpu(t: Tensor): CpuTensor {
  if (!(t instanceof CpuTensor)) throw new MambaError("a tensor from another backend was passed to the CPU backend");
  return t;
}

/** A column window as raw data: element (r, c) of the window is data[r * ld + off + c]. */
export interface Strided {
  data: Float32Array;
  ld: number; // row stride (the full width of the matrix)
  off: number; // first column
  width: number;
  rows: number;
}

export function strided(x: TensorOrCols): Strided {
  const c: Cols = asCols(x);
  const t = cpu(c.tensor);
  const ld = t.shape[t.shape.length - 1]!;
  if (c.col0 < 0 || c.col0 + c.width > ld) throw new MambaError(`column window [${c.col0}, ${c.col0 + c.width}) outside ${ld} columns`);
  return { data: t.f32, ld, off: c.col0, width: c.width, rows: t.data.length / ld };
}
