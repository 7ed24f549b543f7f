/**
 * `mamba-ts quantize`: writes a model as a GGUF file, llama.cpp's format, with the metadata keys and tensor names
 * llama.cpp's converter writes for Mamba. The projections, the embedding and an untied head take the chosen type
 * (f32, f16, bf16, q8_0 or q4_0; a matrix whose rows are not a whole number of 32-value blocks falls back to f16, as in
 * llama.cpp); norms, the conv, A, D and biases stay f32. The tokenizer goes into the metadata. The file is written
 * atomically (a temporary file renamed when complete).
 */
import { existsSync, promises as fs, statSync } from "node:fs";
import path from "node:path";
import cliProgress from "cli-progress";
import { Command, Option } from "commander";
import { MambaError } from "../../errors.ts";
import { loadCheckpoint } from "../../io/checkpoint.ts";
import { type GgufValue } from "../../io/gguf-format.ts";
import { type GgufFileType, ggufModelContent, tokenizerMetadata } from "../../io/gguf-model.ts";
import { ggufInFolder, isGgufPath, readGgufHeader, writeGgufFile } from "../../io/gguf.ts";
import { modelOption, modelSource, resolveWithProgress, UsageError } from "../common.ts";

const TYPES: GgufFileType[] = ["q8_0", "q4_0", "f16", "bf16", "f32"];
/** below this many bytes of tensors no progress bar is drawn */
const BAR_FROM_BYTES = 64 << 20;

interface QuantizeCliOptions {
  model?: string;
  type: GgufFileType;
  out: string;
}

export function quantizeCommand(): Command {
  return new Command("quantize")
    .description("write a model as a GGUF file (llama.cpp's format) with f32, f16, bf16, q8_0 or q4_0 weights")
    .addOption(modelOption())
    .addOption(new Option("--type <type>", "the weights' type: q8_0 and q4_0 are llama.cpp's 8- and 4-bit blocks")
      .choices(TYPES).makeOptionMandatory())
    .addOption(new Option("-o, --out <file>", "the .gguf file to write").makeOptionMandatory())
    .action(async (opts: QuantizeCliOptions) => {
      process.exitCode = await runQuantize(opts);
    });
}

async function runQuantize(opts: QuantizeCliOptions): Promise<number> {
  const out = path.resolve(opts.out);
  if (opts.out.length === 0) throw new UsageError("--out is empty");
  if (!existsSync(path.dirname(out)) || !statSync(path.dirname(out)).isDirectory()) {
    throw new UsageError(`--out: the folder ${path.dirname(out)} does not exist`);
  }
  if (existsSync(out) && statSync(out).isDirectory()) throw new UsageError(`--out: ${out} is a folder, not a file`);
  const source = await resolveWithProgress(modelSource(opts.model));
  const ckpt = await loadCheckpoint(source);
  const tokenizer = await tokenizerOf(source, ckpt.config);
  const name = path.basename(source).replace(/\.gguf$/i, "").split(/[-_]/).map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join(" ");
  const content = ggufModelContent(ckpt.config, ckpt.tensors, opts.type, { name, tokenizer, where: source });

  let total = 0;
  const bar = process.stderr.isTTY ? new cliProgress.SingleBar({
    stream: process.stderr, format: " {bar} {percentage}% | {value}/{total} tensors | {name}", hideCursor: true,
  }, cliProgress.Presets.shades_classic) : null;
  let started = false;
  await writeGgufFile(out, content.metadata, content.tensors, (done, count, _bytes, totalBytes) => {
    total = totalBytes;
    if (!bar || totalBytes < BAR_FROM_BYTES) return;
    if (!started) { bar.start(count, 0, { name: "" }); started = true; }
    bar.update(done, { name: content.tensors[done - 1]!.name });
  });
  if (started) bar!.stop();
  const size = (await fs.stat(out)).size;
  const types = new Map<string, number>();
  for (const t of content.tensors) types.set(t.dtype, (types.get(t.dtype) ?? 0) + 1);
  process.stdout.write(`wrote ${opts.out}: ${opts.type}, ${formatBytes(size)} (${content.tensors.length} tensors: ` +
    `${[...types].map(([t, n]) => `${n} ${t}`).join(", ")}; tensor data ${formatBytes(total)})` +
    `${tokenizer === null ? "; no tokenizer.json, so no tokenizer in the file" : ""}\n`);
  return 0;
}

/** The tokenizer's metadata: a GGUF source's own tokenizer keys, or the folder's tokenizer.json; null without one. */
async function tokenizerOf(source: string, config: Parameters<typeof tokenizerMetadata>[1]): Promise<Map<string, GgufValue> | null> {
  const gguf = isGgufPath(source) ? source : existsSync(path.join(source, "config.json")) ? null : await ggufInFolder(source);
  if (gguf !== null) {
    const header = await readGgufHeader(gguf);
    const keys = [...header.metadata].filter(([k]) => k.startsWith("tokenizer."));
    return keys.length > 0 ? new Map(keys) : null;
  }
  const file = path.join(source, "tokenizer.json");
  if (!existsSync(file)) return null;
  let json: unknown;
  try {
    json = JSON.parse(await fs.readFile(file, "utf8"));
  } catch {
    throw new MambaError(`${file} is not valid JSON`);
  }
  return tokenizerMetadata(json, config, file);
}

function formatBytes(n: number): string {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(2)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}
