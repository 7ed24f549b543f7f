/**
 * The accuracy of precision f16 on this machine's WebGPU device: each PyTorch fixture's logits with precision f16
 * against its fp32 logits (max abs and relative to the largest logit), and the embedded model's bits per byte
 * with precision f32 and f16 on a text (by default the held-out split if given, else the first 8 KiB of LICENSE).
 * Says which kernels ran the products (tensor cores or the shader-f16 kernel).
 *
 *   node --import tsx scripts/half-accuracy.ts [heldout.txt]
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createWebGpuBackend, defaultModelFolder, loadModel } from "../src/index.ts";
import type { WebGpuBackend } from "../src/backend/webgpu/index.ts";
import { bitsPerByte } from "../src/train/tasks/text.ts";
import { expected, fixture, maxAbsDiff } from "../test/helpers/fixtures.ts";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const FIXTURES = ["hf-mamba/tiny", "hf-mamba/tiny-f16", "hf-mamba/tiny-bf16-sharded", "mamba-ssm/tiny", "hf-falcon-mamba/tiny", "hf-mamba2/tiny"];

/** The product kernels a backend compiled, in short. */
const productKernels = (b: WebGpuBackend) => [...new Set(b.gpu.kernelNames.filter((n) => /^matmul_(tc|f16)/.test(n)).map((n) => n.split("_").slice(0, 2).join("_")))].join(", ") || "none";

for (const name of FIXTURES) {
  const folder = fixture(...name.split("/"));
  const exp = await expected(folder);
  const b = (await createWebGpuBackend()) as WebGpuBackend;
  const model = await loadModel(folder, { backend: b, precision: "f16" });
  const ids = exp.get("input_ids")!;
  const [batch, seqLen] = ids.shape as [number, number];
  const out = await model.forward(ids.i32, { batch, seqLen });
  const want = exp.get("logits")!.f32;
  const d = maxAbsDiff(out.logits, want);
  const scale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  console.log(`${name}: max abs ${d.toExponential(3)}, max |logit| ${scale.toFixed(3)}, relative ${(d / scale).toExponential(3)} (${productKernels(b)})`);
  await model.dispose();
}

const file = process.argv[2];
const text = file ? new Uint8Array(readFileSync(file)) : new Uint8Array(readFileSync(path.join(ROOT, "LICENSE"))).subarray(0, 8192);
const bpb: Record<string, number> = {};
for (const precision of ["f32", "f16"] as const) {
  const model = await loadModel(defaultModelFolder(), { backend: "webgpu", precision });
  const t0 = performance.now();
  bpb[precision] = await bitsPerByte(model.lm, text);
  console.log(`embedded model, precision ${precision}: ${bpb[precision]!.toFixed(6)} bits per byte on ${text.length} bytes of ` +
    `${file ?? "LICENSE"} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
  await model.dispose();
}
console.log(`f16 against f32: ${(100 * (bpb.f16! / bpb.f32! - 1)).toFixed(4)}%`);
