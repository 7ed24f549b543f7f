/**
 * The WGSL readers of quantized blocks (src/backend/webgpu/kernels/weights.ts: quantReader, quant4Reader) give the
 * host's exact dequantization (src/io/quant.ts), element by element and four at a time, for Q8_0 and Q4_0 over
 * block counts odd and even (blocks start at bytes 0 and 2 mod 4, so their values straddle words both ways).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Params } from "../../src/backend/webgpu/gpu.ts";
import { defineKernel } from "../../src/backend/webgpu/kernel-def.ts";
import { type QuantStorage, quant4Reader, quantReader } from "../../src/backend/webgpu/kernels/weights.ts";
import { dequantize, quantizeQ4_0, quantizeQ8_0 } from "../../src/io/quant.ts";
import { withOwnWebgpu } from "../helpers/backends.ts";
import { TestRng } from "../helpers/random.ts";

const dequantKernel = defineKernel({
  name: "test_dequant_readers",
  example: "q8_0" as QuantStorage,
  wgsl: (q: QuantStorage) => /* wgsl */ `
// bindings: 0 blocks | 1 out f32 (one element a thread) | 2 out4 (four elements a thread) | 3 params
struct P { n: u32 }
@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> out4: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> p: P;

${quantReader(q)}
${quant4Reader(q)}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  if (i < p.n) { out[i] = weight(i); }
  if (i < p.n / 4u) { out4[i] = weight4(i); }
}
`,
});

test("quantized blocks read on the GPU equal the host's dequantization exactly", { timeout: 300_000 }, async (t) => {
  await withOwnWebgpu(t, async (b) => {
    const gpu = b.gpu;
    const rng = new TestRng(7);
    for (const q of ["q8_0", "q4_0"] as const) {
      for (const blocks of [1, 2, 7, 33]) {
        const n = blocks * 32;
        const x = new Float32Array(n);
        for (let i = 0; i < n; i++) x[i] = (rng.next() * 2 - 1) * (1 + (i >> 5)); // a scale of its own per block
        const raw = q === "q8_0" ? quantizeQ8_0(x) : quantizeQ4_0(x);
        const want = dequantize(q === "q8_0" ? "Q8_0" : "Q4_0", raw, n);
        assert.ok(want.filter((v) => v !== 0).length > n / 2, "mostly nonzero values to compare");
        const w = gpu.upload(raw, "blocks");
        const out = gpu.alloc(n * 4, "out");
        const out4 = gpu.alloc(n * 4, "out4");
        gpu.dispatch(gpu.kernel(dequantKernel, q), [w, out, out4], new Params().u32(n), [Math.ceil(n / 64)]);
        const got = new Float32Array(await gpu.read(out, n * 4));
        const got4 = new Float32Array(await gpu.read(out4, n * 4));
        assert.deepEqual(got, want, `${q}, ${blocks} blocks, one at a time`);
        assert.deepEqual(got4, want, `${q}, ${blocks} blocks, four at a time`);
      }
    }
  });
});
