/**
 * The fixed-point totals of the two-kernel decode layer (kernels/decode/fixed.ts) alone: many workgroups add f32
 * contributions with atomics, a second kernel reads the totals back. The reference is the exact sum of the
 * contributions truncated to multiples of 2^-32 (BigInt), so the kernels must agree with it to the final f32
 * rounding, for any order of the additions: mixed signs, tiny and large magnitudes, cancellation, zeros. A
 * contribution that is not finite or past the limit makes its total NaN.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import type { WebGpuBackend } from "../../src/backend/webgpu/backend.ts";
import { Params } from "../../src/backend/webgpu/gpu.ts";
import { defineKernel } from "../../src/backend/webgpu/kernel-def.ts";
import { FIXED_MAX_TERMS, FIXED_READ_WGSL, fixedAddWgsl, fixedLimit, fixedRegionWords } from "../../src/backend/webgpu/kernels/decode/fixed.ts";
import { withOwnWebgpu } from "../helpers/backends.ts";
import { TestRng } from "../helpers/random.ts";

const addWgsl = (limit: number) => /* wgsl */ `
struct P { n: u32, totals: u32 }
@group(0) @binding(0) var<storage, read> vals: array<f32>;
@group(0) @binding(1) var<storage, read_write> acc: array<atomic<u32>>;
@group(0) @binding(2) var<uniform> p: P;
${fixedAddWgsl("acc", limit)}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  if (i < p.n) { fixedAdd(4u * (i % p.totals), 4u * p.totals, vals[i]); }
}
`;

const readWgsl = /* wgsl */ `
struct P { n: u32, totals: u32 }
@group(0) @binding(0) var<storage, read> acc: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: P;
${FIXED_READ_WGSL}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  if (i < p.totals) { out[i] = select(fromFixed(acc[i]), fixedNan(), acc[p.totals].x != 0u); }
}
`;

const addKernel = defineKernel({ name: "test_fixed_add", wgsl: addWgsl, label: (limit) => `test_fixed_add_${limit}`, example: fixedLimit(8) });
const readKernel = defineKernel({ name: "test_fixed_read", wgsl: () => readWgsl, example: null });

/** Adds vals[i] into total i % totals on the GPU (workgroups of 64 in any order) and reads the totals back. */
async function gpuTotals(b: WebGpuBackend, vals: Float32Array, totals: number, limit: number): Promise<Float32Array> {
  const gpu = b.gpu;
  const add = gpu.kernel(addKernel, limit);
  const read = gpu.kernel(readKernel, null);
  const v = gpu.upload(vals);
  const acc = gpu.upload(new Uint32Array(fixedRegionWords(totals)));
  const out = gpu.alloc(totals * 4);
  const p = new Params().u32(vals.length).u32(totals);
  gpu.dispatch(add, [v, acc], p, [Math.ceil(vals.length / 64)]);
  gpu.dispatch(read, [acc, out], p, [Math.ceil(totals / 64)]);
  const got = new Float32Array(await gpu.read(out, totals * 4));
  for (const x of [v, acc, out]) gpu.release(x);
  return got;
}

/** The exact total of each group of contributions, each truncated toward zero to a multiple of 2^-32. */
function exactTotals(vals: Float32Array, totals: number): number[] {
  const sums = Array.from({ length: totals }, () => 0n);
  vals.forEach((x, i) => { sums[i % totals]! += BigInt(Math.trunc(x * 2 ** 32)); });
  return sums.map((s) => Number(s) / 2 ** 32);
}

test("webgpu: fixed-point totals of many workgroups' atomic adds equal the exact sums (signs, magnitudes, cancellation)", async (t) => {
  await withOwnWebgpu(t, async (b) => {
    const rng = new TestRng(5);
    const totals = 7, n = totals * 140; // 140 contributions a total
    const sign = () => (rng.next() < 0.5 ? -1 : 1);
    const kinds: (() => number)[] = [
      () => 2 * rng.next() - 1, // mixed signs of order one
      () => sign() * rng.next() * 1e-9, // tiny: a few of the 2^-32 steps
      () => sign() * rng.next() * 1e5, // large
      () => -rng.next() * 1e-3, // all negative, small: the total keeps its 24 bits through the magnitude
      () => 0, // zeros
      () => sign() * 10 ** (-6 + 10 * rng.next()), // 1e-6 .. 1e4
      () => 1 + rng.next() * 1e-6, // cancels below (every other one negated)
    ];
    const vals = new Float32Array(n);
    for (let i = 0; i < n; i++) vals[i] = kinds[i % totals]!() * (i % totals === 6 && (i / totals) % 2 >= 1 ? -1 : 1);
    const limit = fixedLimit(140);
    const got = await gpuTotals(b, vals, totals, limit);
    const want = exactTotals(vals, totals);
    for (let k = 0; k < totals; k++) {
      const ulp = Math.max(Math.abs(want[k]!) * 2 ** -23, 2 ** -32);
      assert.ok(Math.abs(got[k]! - want[k]!) <= 2 * ulp, `total ${k}: ${got[k]} against the exact ${want[k]}`);
    }
    assert.equal(got[4], 0);
    // a contribution that is not finite, or past the limit, makes the region's totals NaN
    for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, -limit]) {
      const v = Float32Array.from([0.5, 0.25, bad, 1]);
      const g = await gpuTotals(b, v, 2, limit);
      assert.ok(g.every(Number.isNaN), `a contribution of ${bad}: ${Array.from(g)}`);
    }
    assert.deepEqual(Array.from(await gpuTotals(b, Float32Array.from([0.5, 0.25, limit / 2, 1]), 2, limit)), [0.5 + limit / 2, 1.25]);
    assert.throws(() => fixedLimit(FIXED_MAX_TERMS + 1), /take 1 to 1024 contributions, got 1025/);
    assert.equal(fixedLimit(128), 2 ** 24);
  });
});
