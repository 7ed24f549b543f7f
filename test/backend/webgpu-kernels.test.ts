/**
 * The kernels as declared (src/backend/webgpu/kernel-def.ts) and printed (scripts/print-wgsl.ts): every module
 * under kernels/ declares its kernels under names no other takes; print-wgsl prints a kernel for its example
 * shape and for fields replaced on its command line; every kernel's example shape compiles on the device without
 * an error; and Gpu.kernel caches pipelines by their WGSL text, so shapes that make the same text share one and
 * shapes that differ in the text do not. The compile checks run when a WebGPU adapter exists (skipped otherwise,
 * failed under CI=true).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { defineKernel, repeatedKernelNames } from "../../src/backend/webgpu/kernel-def.ts";
import { kernelWgsl, loadKernels, shapeFrom } from "../../scripts/print-wgsl.ts";
import { withOwnWebgpu } from "../helpers/backends.ts";

const run = promisify(execFile);

test("kernels: every module under kernels/ declares its kernels, each under a name of its own", async () => {
  const kernels = await loadKernels();
  assert.deepEqual(repeatedKernelNames(), []);
  for (const name of ["matmul", "matvec", "decode_layer", "decode_in", "bwd_scan_lanes", "sample", "copy_words"]) {
    assert.ok(kernels.has(name), `${name} is declared`);
  }
  for (const [name, def] of kernels) assert.equal(def.name, name);
});

test("print-wgsl: a shape is the example with fields replaced by path=value or a JSON object", async () => {
  const example = { cfg: { BM: 128, BN: 128, TN: 8 }, ws: "f32", v4: true };
  assert.deepEqual(shapeFrom(example, ["cfg.BN=64", "ws=bf16", "v4=false"]), { cfg: { BM: 128, BN: 64, TN: 8 }, ws: "bf16", v4: false });
  assert.deepEqual(shapeFrom(example, ['{"cfg":{"TN":4}}']), { cfg: { BM: 128, BN: 128, TN: 4 }, ws: "f32", v4: true });
  assert.equal(shapeFrom(16, ["64"]), 64, "a shape of one value, given whole");
  assert.equal(shapeFrom("f32", ["bf16"]), "bf16");
  assert.throws(() => shapeFrom(example, ["nonsense"]), /neither path=value nor a JSON object/);
  const kernels = await loadKernels();
  const wgsl = kernelWgsl(kernels, "matmul", ["cfg.BN=64", "cfg.TN=4", "ws=bf16"]);
  assert.match(wgsl, /const BN = 64u;/);
  assert.match(wgsl, /var<storage, read> w: array<vec2<u32>>|var<storage, read> w: array<u32>/);
  assert.throws(() => kernelWgsl(kernels, "no_such_kernel"), /no kernel named 'no_such_kernel'; kernels: .*matmul/);
});

test("print-wgsl: the script lists the kernels and prints one, and refuses an unknown name", { timeout: 120_000 }, async () => {
  const script = ["--import", "tsx", "scripts/print-wgsl.ts"];
  const list = await run(process.execPath, script);
  assert.match(list.stdout, /^matmul +\{"cfg":/m);
  assert.match(list.stdout, /^decode_layer +\{"ins":/m);
  const one = await run(process.execPath, [...script, "scan_chunk", "64"]);
  assert.match(one.stdout, /const N = 64u;/);
  await assert.rejects(run(process.execPath, [...script, "no_such_kernel"]), (e: { code: number; stderr: string }) =>
    e.code === 1 && /print-wgsl: no kernel named 'no_such_kernel'/.test(e.stderr));
});

test("WebGPU kernels: every kernel's example shape compiles without an error", { timeout: 600_000 }, async (t) => {
  const kernels = await loadKernels();
  await withOwnWebgpu(t, async (b) => {
    const device = b.gpu.device;
    const lacking: string[] = [];
    for (const [name, def] of kernels) {
      if (name === "bwd_scan_lanes" && !b.gpu.hasSubgroups) continue; // its subgroup sums need the feature
      const missing = (def.features ?? []).filter((f) => !device.features.has(f));
      if (missing.length) {
        lacking.push(`${name} (needs ${missing.join(", ")})`);
        continue;
      }
      const code = def.wgsl(def.example);
      device.pushErrorScope("validation");
      const module = device.createShaderModule({ code, label: name });
      const info = await module.getCompilationInfo();
      const errors = info.messages.filter((m) => m.type === "error").map((m) => `${m.lineNum}:${m.linePos} ${m.message}`);
      assert.deepEqual(errors, [], `${name}: compile errors`);
      device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" }, label: name });
      const err = await device.popErrorScope();
      assert.equal(err, null, `${name}: ${err?.message}`);
    }
    // such kernels compile and run in test/gpu (npm run test:gpu) on a device that has the features
    if (lacking.length) t.diagnostic(`not compiled on ${b.device}, which lacks their features: ${lacking.join("; ")}`);
  });
});

test("WebGPU kernels: pipelines are cached by their WGSL text, shapes by value", { timeout: 120_000 }, async (t) => {
  // two shapes, one text: the parity of n decides the text
  const parity = defineKernel({
    name: "test_parity",
    wgsl: (n: number) => `@group(0) @binding(0) var<storage, read_write> a: array<u32>;
@compute @workgroup_size(1) fn main() { a[0] = ${n % 2}u; }`,
    label: (n) => `test_parity_${n}`,
    example: 1,
  });
  await withOwnWebgpu(t, async (b) => {
    const gpu = b.gpu;
    const before = gpu.bookkeeping.kernels;
    const one = gpu.kernel(parity, 1), three = gpu.kernel(parity, 3), two = gpu.kernel(parity, 2);
    assert.equal(three, one, "shapes 1 and 3 make the same text: one pipeline");
    assert.notEqual(two, one, "shape 2 makes another text");
    assert.equal(gpu.kernel(parity, 2), two, "shape 2 again: the memo");
    assert.equal(gpu.bookkeeping.kernels - before, 2);
    assert.equal(one.name, "test_parity_1", "a pipeline is labelled by the shape that compiled it first");
    assert.ok(gpu.kernelNames.includes("test_parity_2"));
  });
});
