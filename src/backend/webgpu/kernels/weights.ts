/**
 * How kernels read a weight matrix stored as f32, or as f16 / bf16 packed two per u32 (element i is half i & 1
 * of word i >> 1): the WGSL element type of the binding and a `weight(i)` function returning element i as f32.
 */
import type { Storage } from "../tensor.ts";

export type WeightStorage = Extract<Storage, "f32" | "f16" | "bf16">;

export function weightBinding(s: WeightStorage): string {
  return s === "f32" ? "f32" : "u32";
}

/** WGSL of `fn weight(i: u32) -> f32` reading from the storage array named `w`. */
export function weightReader(s: WeightStorage): string {
  if (s === "f32") return "fn weight(i: u32) -> f32 { return w[i]; }";
  if (s === "f16") return "fn weight(i: u32) -> f32 { return unpack2x16float(w[i >> 1u])[i & 1u]; }";
  // bf16 is the top half of an f32: shift the low half up, mask the high half in place
  return `fn weight(i: u32) -> f32 {
  let word = w[i >> 1u];
  return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (i & 1u) == 1u));
}`;
}
