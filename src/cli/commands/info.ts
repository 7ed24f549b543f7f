/**
 * `mamba-ts info`: what a checkpoint holds, without building a model. Prints the normalized config (one
 * `key: value` per line, names as in MambaConfig), the parameter count (the checkpoint's tensors; a tied
 * embedding counts once), the storage dtype, the weight file format, the folder, and the CPU engine that
 * `--backend cpu` runs here (with --threads N, with N threads).
 */
import { existsSync, readdirSync } from "node:fs";
import path from "node:path";
import { Command } from "commander";
import { loadCheckpoint } from "../../io/checkpoint.ts";
import { FAMILY_NAMES } from "../../config.ts";
import { numel } from "../../io/tensor.ts";
import { modelOption, modelSource, resolveWithProgress, threadsOption } from "../common.ts";
import { createCpuBackend, describeBackend } from "../../backend/wasm/create.ts";

export function infoCommand(): Command {
  return new Command("info")
    .description("print a model's config, parameter count, storage dtype, format and folder")
    .addOption(modelOption())
    .addOption(threadsOption())
    .action(async (opts: { model?: string; threads?: number }) => {
      const folder = await resolveWithProgress(modelSource(opts.model));
      const ckpt = await loadCheckpoint(folder);
      const lines: string[] = [];
      lines.push(`model: ${FAMILY_NAMES[ckpt.config.family]}`);
      for (const [key, value] of Object.entries(ckpt.config)) {
        // the family's own fields (Mamba-2's heads, groups, ...) one per line, as mamba2.numHeads: 24
        if (value !== null && typeof value === "object" && !Array.isArray(value)) {
          for (const [k, v] of Object.entries(value)) lines.push(`${key}.${k}: ${String(v)}`);
        } else if (value !== null || (key !== "mamba2" && key !== "mixerRmsEps")) lines.push(`${key}: ${String(value)}`);
      }
      // loadCheckpoint drops a tied lm_head, so each parameter is counted once
      let params = 0;
      for (const t of ckpt.tensors.values()) params += numel(t.shape);
      lines.push(`parameters: ${params} (${humanCount(params)})`);
      lines.push(`dtype: ${ckpt.dtype}`);
      lines.push(`weights: ${weightFormat(folder)}`);
      lines.push(`folder: ${path.resolve(folder)}`);
      // the engine that `--backend cpu` runs here
      const cpu = await createCpuBackend(opts.threads !== undefined ? { threads: opts.threads } : {});
      lines.push(`cpu engine: ${describeBackend(cpu, true)}`);
      await cpu.destroy();
      process.stdout.write(lines.join("\n") + "\n");
    });
}

/** Which weight files were read, in loadCheckpoint's order of preference. */
function weightFormat(folder: string): string {
  if (folder.toLowerCase().endsWith(".gguf")) return `GGUF (${path.basename(folder)})`;
  if (existsSync(path.join(folder, "model.safetensors"))) return "safetensors (model.safetensors)";
  if (existsSync(path.join(folder, "model.safetensors.index.json"))) return "sharded safetensors (model.safetensors.index.json)";
  if (existsSync(path.join(folder, "pytorch_model.bin"))) return "torch.save (pytorch_model.bin)";
  const gguf = readdirSync(folder).filter((f) => f.toLowerCase().endsWith(".gguf"));
  return gguf.length === 1 ? `GGUF (${gguf[0]})` : "unknown";
}

function humanCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
  return String(n);
}
