import { madd, hsum } from "./simd";

/** Sum of k f32 values at byte offset src (a probe that the module builds and runs). */
export function sumF32(src: usize, k: i32): f32 {
  let acc = f32x4.splat(0);
  let i = 0;
  for (; i + 4 <= k; i += 4) acc = madd(v128.load(src + (<usize>i << 2)), f32x4.splat(1), acc);
  let s = hsum(acc);
  for (; i < k; i++) s += load<f32>(src + (<usize>i << 2));
  return s;
}
