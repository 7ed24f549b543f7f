/**
 * Host-side tensors as checkpoints store them. F32 data is a Float32Array; F16 and BF16 keep their raw 16-bit
 * patterns in a Uint16Array so that a backend can keep half-precision weights at their size (the WebGPU backend
 * widens them inside its kernels); `toFloat32` widens on the host. Q8_0 and Q4_0 (GGUF files) keep their raw
 * blocks in a Uint8Array (layouts in ./quant.ts); `toFloat32` dequantizes them exactly.
 */
import { check } from "../errors.ts";
import { type QuantType, dequantize } from "./quant.ts";

/** the element types of safetensors and PyTorch files */
export type StorageDType = "F32" | "F16" | "BF16";
export type HostDType = StorageDType | QuantType;

export interface HostTensor {
  dtype: HostDType;
  shape: number[];
  /** Float32Array for F32, Uint16Array for F16 / BF16, Uint8Array (whole blocks) for Q8_0 / Q4_0 */
  data: Float32Array | Uint16Array | Uint8Array;
  /** Present on tensors read lazily from a file (readSafetensorsLazy): copies the stored bytes (data's bytes) into
   *  dst, so that a backend fills its own memory without a host copy. `data` then reads the file when asked. */
  readInto?(dst: Uint8Array): void;
}

export function isQuantized(dtype: HostDType): dtype is QuantType {
  return dtype === "Q8_0" || dtype === "Q4_0";
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Bytes per element of an element type (quantized blocks have none: see quantBytes in ./quant.ts). */
export function bytesPerElement(dtype: HostDType): number {
  check(!isQuantized(dtype), `${dtype} weights are stored in blocks, not elements; dequantize them first`);
  return dtype === "F32" ? 4 : 2;
}

const f16Table = (() => {
  // all 65536 half-precision values, built once: widening is then a table lookup
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) t[h] = sign * frac * 2 ** -24;
    else if (exp === 31) t[h] = frac ? NaN : sign * Infinity;
    else t[h] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return t;
})();

/** One half-precision bit pattern as a number. */
export function f16ToF32(h: number): number {
  return f16Table[h & 0xffff]!;
}

/** Widens (or dequantizes) any host tensor's data to float32 (F32 is returned as is, not copied). */
export function toFloat32(t: HostTensor): Float32Array {
  if (t.dtype === "F32") return t.data as Float32Array;
  if (isQuantized(t.dtype)) return dequantize(t.dtype, t.data as Uint8Array, numel(t.shape));
  const src = t.data as Uint16Array;
  const out = new Float32Array(src.length);
  if (t.dtype === "F16") {
    for (let i = 0; i < src.length; i++) out[i] = f16Table[src[i]!]!;
  } else {
    const u = new Uint32Array(out.buffer);
    for (let i = 0; i < src.length; i++) u[i] = src[i]! << 16;
  }
  return out;
}

/** Rounds float32 values to bfloat16 bit patterns (round to nearest even). */
export function toBF16Bits(src: Float32Array): Uint16Array {
  const u = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const x = u[i]!;
    if ((x & 0x7f800000) === 0x7f800000 && x & 0x7fffff) { out[i] = (x >>> 16) | 0x40; continue; }
    out[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** Rounds float32 values to IEEE half bit patterns (round to nearest even). */
export function toF16Bits(src: Float32Array): Uint16Array {
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    f[0] = src[i]!;
    const x = u[0]!;
    const sign = (x >>> 16) & 0x8000;
    const exp = (x >>> 23) & 0xff;
    let mant = x & 0x7fffff;
    if (exp === 0xff) { out[i] = sign | 0x7c00 | (mant ? 0x200 : 0); continue; }
    let e = exp - 127 + 15;
    if (e >= 31) { out[i] = sign | 0x7c00; continue; }
    if (e <= 0) {
      if (e < -10) { out[i] = sign; continue; }
      mant |= 0x800000;
      const shift = 14 - e;
      let h = mant >>> shift;
      const rem = mant & ((1 << shift) - 1);
      const half = 1 << (shift - 1);
      if (rem > half || (rem === half && h & 1)) h++;
      out[i] = sign | h;
      continue;
    }
    let h = (e << 10) | (mant >>> 13);
    const rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
    out[i] = sign | h; // a carry into the exponent is the right rounding, up to infinity
  }
  return out;
}
