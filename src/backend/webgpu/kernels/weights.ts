/**
 * How kernels read a weight matrix stored as f32, as f16 / bf16 packed two per u32 (element i is half i & 1
 * of word i >> 1), or as GGUF's Q8_0 / Q4_0 blocks (below): the WGSL element type of the binding and a function
 * returning element i (or the 4-element group i) as f32. A weight type is so just part of a kernel's shape.
 */
import type { Storage } from "../tensor.ts";

export type WeightStorage = Exclude<Storage, "i32">;

export function weightBinding(s: WeightStorage): string {
  return s === "f32" ? "f32" : "u32";
}

/** WGSL of `fn <fn>(i: u32) -> f32` reading element i of the storage array `<arr>`. */
export function weightReader(s: WeightStorage, fn = "weight", arr = "w"): string {
  if (s === "q8_0" || s === "q4_0") return quantReader(s, fn, arr);
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
  if (s === "q8_0" || s === "q4_0") return "u32"; // blocks are not word-aligned: read as bytes of the u32 array
  return s === "f32" ? "vec4<f32>" : "vec2<u32>";
}

/** WGSL of `fn <fn>(i: u32) -> vec4<f32>` reading elements 4i .. 4i + 3 of the array `<arr>`. */
export function weight4Reader(s: WeightStorage, fn = "weight4", arr = "w"): string {
  if (s === "q8_0" || s === "q4_0") return quant4Reader(s, fn, arr);
  if (s === "f32") return `fn ${fn}(i: u32) -> vec4<f32> { return ${arr}[i]; }`;
  if (s === "f16") return `fn ${fn}(i: u32) -> vec4<f32> { let v = ${arr}[i]; return vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y)); }`;
  return `fn ${fn}(i: u32) -> vec4<f32> {
  let v = ${arr}[i];
  return bitcast<vec4<f32>>(vec4<u32>(v.x << 16u, v.x & 0xffff0000u, v.y << 16u, v.y & 0xffff0000u));
}`;
}

/**
 * GGUF's quantized blocks (../../../io/quant.ts) read in place from an `array<u32>` holding the file's bytes:
 * Q8_0 blocks of 34 bytes (an f16 scale d, 32 int8 q; value q·d), Q4_0 blocks of 18 bytes (d, 16 bytes of nibbles:
 * byte j holds element j low and element j + 16 high; value (nibble − 8)·d). A block starts at an even byte, so
 * its scale lies within one word; its values may straddle words. The values equal the host's dequantization
 * exactly (an f16 times a small integer is exact in f32).
 * The index is the element's place in the whole tensor (row-major), so a matrix whose rows are whole blocks reads
 * as any other: weightReader / weight4Reader return these for quantized storage.
 */
export type QuantStorage = Extract<Storage, "q8_0" | "q4_0">;

const blockBytes = (q: QuantStorage) => (q === "q8_0" ? 34 : 18);

/** WGSL of the scale of block `blk` as f32 (`<fn>_scale`), shared by both readers. */
function quantScale(q: QuantStorage, fn: string, arr: string): string {
  return `fn ${fn}_scale(blk: u32) -> f32 {
  let base = blk * ${blockBytes(q)}u;
  let word = ${arr}[base >> 2u];
  return unpack2x16float(select(word, word >> 16u, (base & 2u) != 0u)).x;
}
// the 4 bytes from byte b on (b even), as one little-endian word
fn ${fn}_bytes4(b: u32) -> u32 {
  let lo = ${arr}[b >> 2u];
  if ((b & 2u) == 0u) { return lo; }
  return (lo >> 16u) | (${arr}[(b >> 2u) + 1u] << 16u);
}`;
}

/** WGSL of `fn <fn>(i: u32) -> f32` reading element i of quantized blocks in the u32 array `<arr>`. */
export function quantReader(q: QuantStorage, fn = "weight", arr = "w"): string {
  const B = blockBytes(q);
  if (q === "q8_0") {
    return `${quantScale(q, fn, arr)}
fn ${fn}(i: u32) -> f32 {
  let blk = i >> 5u;
  let b = blk * ${B}u + 2u + (i & 31u);
  let byte = (${arr}[b >> 2u] >> ((b & 3u) * 8u)) & 0xffu;
  return f32(bitcast<i32>(byte << 24u) >> 24u) * ${fn}_scale(blk);
}`;
  }
  return `${quantScale(q, fn, arr)}
fn ${fn}(i: u32) -> f32 {
  let blk = i >> 5u;
  let j = i & 31u;
  let b = blk * ${B}u + 2u + (j & 15u);
  let byte = (${arr}[b >> 2u] >> ((b & 3u) * 8u)) & 0xffu;
  let nibble = select(byte & 15u, byte >> 4u, j >= 16u);
  return (f32(nibble) - 8.0) * ${fn}_scale(blk);
}`;
}

/** WGSL of `fn <fn>(i: u32) -> vec4<f32>` reading elements 4i .. 4i + 3 (always within one block). */
export function quant4Reader(q: QuantStorage, fn = "weight4", arr = "w"): string {
  const B = blockBytes(q);
  if (q === "q8_0") {
    return `${quantScale(q, fn, arr)}
fn ${fn}(i: u32) -> vec4<f32> {
  let blk = i >> 3u;
  let v = ${fn}_bytes4(blk * ${B}u + 2u + (i & 7u) * 4u);
  let q = vec4<i32>(bitcast<i32>(v << 24u), bitcast<i32>(v << 16u), bitcast<i32>(v << 8u), bitcast<i32>(v)) >> vec4<u32>(24u);
  return vec4<f32>(q) * ${fn}_scale(blk);
}`;
  }
  return `${quantScale(q, fn, arr)}
fn ${fn}(i: u32) -> vec4<f32> {
  let blk = i >> 3u;
  let j = (i & 7u) * 4u; // the first element's place in the block
  let v = ${fn}_bytes4(blk * ${B}u + 2u + (j & 15u));
  let shift = select(0u, 4u, j >= 16u);
  let n = (vec4<u32>(v, v >> 8u, v >> 16u, v >> 24u) >> vec4<u32>(shift)) & vec4<u32>(15u);
  return (vec4<f32>(n) - 8.0) * ${fn}_scale(blk);
}`;
}
