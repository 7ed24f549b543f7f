/**
 * How kernels read a weight matrix stored as f32, or as f16 / bf16 packed two per u32 (element i is half i & 1
 * of word i >> 1): the WGSL element type of the binding and a function returning element i (or the 4-element
 * group i) as f32.
 */
import type { Storage } from "../tensor.ts";

export type WeightStorage = Extract<Storage, "f32" | "f16" | "bf16">;

export function weightBinding(s: WeightStorage): string {
  return s === "f32" ? "f32" : "u32";
}

/** WGSL of `fn <fn>(i: u32) -> f32` reading element i of the storage array `<arr>`. */
export function weightReader(s: WeightStorage, fn = "weight", arr = "w"): string {
  if (s === "f32") return `fn ${fn}(i: u32) -> f32 { return ${arr}[i]; }`;
  if (s === "f16") return `fn ${fn}(i: u32) -> f32 { return unpack2x16float(${arr}[i >> 1u])[i & 1u]; }`;
  // bf16 is the top half of an f32: shift the low half up, mask the high half in place
  return `fn ${fn}(i: u32) -> f32 {
  let word = ${arr}[i >> 1u];
  return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (i & 1u) == 1u));
}`;
}

/** The element type of a binding read 4 elements at a time (the matrix's row length a multiple of 4). */
export function weight4Binding(s: WeightStorage): string {
  return s === "f32" ? "vec4<f32>" : "vec2<u32>";
}

/** WGSL of `fn <fn>(i: u32) -> vec4<f32>` reading elements 4i .. 4i + 3 of the array `<arr>`. */
export function weight4Reader(s: WeightStorage, fn = "weight4", arr = "w"): string {
  if (s === "f32") return `fn ${fn}(i: u32) -> vec4<f32> { return ${arr}[i]; }`;
  if (s === "f16") return `fn ${fn}(i: u32) -> vec4<f32> { let v = ${arr}[i]; return vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y)); }`;
  return `fn ${fn}(i: u32) -> vec4<f32> {
  let v = ${arr}[i];
  return bitcast<vec4<f32>>(vec4<u32>(v.x << 16u, v.x & 0xffff0000u, v.y << 16u, v.y & 0xffff0000u));
}`;
}
