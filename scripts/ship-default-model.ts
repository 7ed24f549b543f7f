/**
 * Turns a checkpoint of `mamba-ts train --task text` into the embedded default model: config.json,
 * tokenizer.json and the weights rounded to BF16 (half the size; the loaders widen them back to f32).
 * Usage: node --import tsx scripts/ship-default-model.ts <run folder or checkpoint folder> [out = models/default]
 */
import { existsSync, promises as fs } from "node:fs";
import path from "node:path";
import { latestCheckpoint } from "../src/train/checkpoint.ts";
import { readSafetensors, writeFileAtomic, writeSafetensors } from "../src/io/safetensors.ts";
import { type HostTensor, toBF16Bits, toFloat32 } from "../src/io/tensor.ts";

const [src, out = "models/default"] = process.argv.slice(2);
if (!src) {
  console.error("usage: node --import tsx scripts/ship-default-model.ts <run or checkpoint folder> [out]");
  process.exit(2);
}
const folder = existsSync(path.join(src, "latest")) ? (await latestCheckpoint(src))! : src;
const weights = await readSafetensors(path.join(folder, "model.safetensors"));
const bf16 = new Map<string, HostTensor>();
for (const [name, t] of weights) bf16.set(name, { dtype: "BF16", shape: t.shape, data: toBF16Bits(toFloat32(t)) });
await fs.mkdir(out, { recursive: true });
await writeSafetensors(path.join(out, "model.safetensors"), bf16, { format: "pt" });
for (const f of ["config.json", "tokenizer.json"]) await writeFileAtomic(path.join(out, f), await fs.readFile(path.join(folder, f)));
const bytes = (await fs.stat(path.join(out, "model.safetensors"))).size;
console.log(`ship-default-model: ${folder} -> ${out} (${(bytes / 1e6).toFixed(1)} MB of BF16 weights)`);
