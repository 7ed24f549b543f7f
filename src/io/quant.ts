/**
 * Block-quantized weights in GGUF's (ggml's) exact layouts, so that a file's bytes are used as they are:
 *
 *   Q8_0: 34-byte blocks of 32 values: an f16 scale d, then 32 int8 q;          value = q * d
 *   Q4_0: 18-byte blocks of 32 values: an f16 scale d, then 16 bytes of nibbles;  value = (nibble - 8) * d,
 *         byte j holding element j in its low nibble and element j + 16 in its high nibble.
 *
 * Blocks run over the flattened tensor (a matrix's rows are a whole number of blocks, as ggml requires).
 * The quantizers round to nearest as llama.cpp's reference ones do (quantize_row_q8_0_ref, quantize_row_q4_0_ref),
 * so their output is byte-for-byte that of llama.cpp's; dequantization is exact in float32 (an f16 times a small
 * integer).
 */
import { check } from "../errors.ts";
import { f16ToF32, toF16Bits } from "./tensor.ts";

export type QuantType = "Q8_0" | "Q4_0";

/** values per block */
export const QK = 32;
export const BLOCK_BYTES: Record<QuantType, number> = { Q8_0: 34, Q4_0: 18 };

/** Bytes that n values take in a quantized type (n a multiple of 32). */
export function quantBytes(type: QuantType, n: number): number {
  check(n % QK === 0, `${type}: ${n} values are not a whole number of ${QK}-value blocks`);
  return (n / QK) * BLOCK_BYTES[type];
}

// a single f16 rounding, as ggml's GGML_FP32_TO_FP16 (round to nearest even)
const scratch = new Float32Array(1);
function f16Bits(x: number): number {
  scratch[0] = x;
  return toF16Bits(scratch)[0]!;
}

/** Quantizes float32 values (a multiple of 32) to Q8_0 blocks: d = absmax / 127, q = round(x / d). */
export function quantizeQ8_0(src: Float32Array): Uint8Array {
  const out = new Uint8Array(quantBytes("Q8_0", src.length));
  const view = new DataView(out.buffer);
  const f = new Float32Array(1); // the scale's reciprocal in float32, as the C code computes it
  for (let b = 0, o = 0; b < src.length; b += QK, o += 34) {
    let amax = 0;
    for (let j = 0; j < QK; j++) amax = Math.max(amax, Math.abs(src[b + j]!));
    const d = Math.fround(amax / 127);
    f[0] = d !== 0 ? 1 / d : 0;
    const id = f[0];
    view.setUint16(o, f16Bits(d), true);
    for (let j = 0; j < QK; j++) {
      // roundf: halves away from zero; the product in float32 as in C
      const x = Math.fround(src[b + j]! * id);
      out[o + 2 + j] = (Math.sign(x) * Math.round(Math.abs(x))) & 0xff;
    }
  }
  return out;
}

/**
 * Quantizes float32 values (a multiple of 32) to Q4_0 blocks. As llama.cpp: the value of largest magnitude, with
 * its sign, is max; d = max / -8, so that max maps to nibble 0 (-8) exactly and the other end to at most 15;
 * q = min(15, trunc(x * (1 / d) + 8.5)).
 */
export function quantizeQ4_0(src: Float32Array): Uint8Array {
  const out = new Uint8Array(quantBytes("Q4_0", src.length));
  const view = new DataView(out.buffer);
  const f = new Float32Array(1);
  for (let b = 0, o = 0; b < src.length; b += QK, o += 18) {
    let amax = 0;
    let max = 0;
    for (let j = 0; j < QK; j++) {
      const v = src[b + j]!;
      if (amax < Math.abs(v)) { amax = Math.abs(v); max = v; }
    }
    const d = Math.fround(max / -8);
    f[0] = d !== 0 ? 1 / d : 0;
    const id = f[0];
    view.setUint16(o, f16Bits(d), true);
    for (let j = 0; j < QK / 2; j++) {
      // x * id + 8.5 rounded once (a fused multiply-add, as llama.cpp's builds compute it, and as its Python
      // quantizer emulates in float64)
      const q0 = Math.min(15, Math.trunc(src[b + j]! * id + 8.5));
      const q1 = Math.min(15, Math.trunc(src[b + QK / 2 + j]! * id + 8.5));
      out[o + 2 + j] = q0 | (q1 << 4);
    }
  }
  return out;
}

/** Dequantizes whole blocks to float32 (exact: each value is an f16 scale times a small integer). */
export function dequantize(type: QuantType, blocks: Uint8Array, n: number): Float32Array {
  check(blocks.length === quantBytes(type, n), `${type}: ${blocks.length} bytes do not hold ${n} values`);
  const out = new Float32Array(n);
  const view = new DataView(blocks.buffer, blocks.byteOffset, blocks.byteLength);
  if (type === "Q8_0") {
    const q = new Int8Array(blocks.buffer, blocks.byteOffset, blocks.byteLength);
    for (let b = 0, o = 0; b < n; b += QK, o += 34) {
      const d = f16ToF32(view.getUint16(o, true));
      for (let j = 0; j < QK; j++) out[b + j] = q[o + 2 + j]! * d;
    }
  } else {
    for (let b = 0, o = 0; b < n; b += QK, o += 18) {
      const d = f16ToF32(view.getUint16(o, true));
      for (let j = 0; j < QK / 2; j++) {
        const byte = blocks[o + 2 + j]!;
        out[b + j] = ((byte & 0x0f) - 8) * d;
        out[b + j + QK / 2] = ((byte >> 4) - 8) * d;
      }
    }
  }
  return out;
}
