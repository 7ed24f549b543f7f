/**
 * Prints the final WGSL of any WebGPU kernel, for a shape of one's choosing; needs no GPU.
 *
 *   node --import tsx scripts/print-wgsl.ts                   # every kernel's name and example shape
 *   node --import tsx scripts/print-wgsl.ts matmul            # matmul's WGSL for its example shape
 *   node --import tsx scripts/print-wgsl.ts matmul ws=bf16 cfg.BN=64 cfg.TN=4 v4=false
 *   node --import tsx scripts/print-wgsl.ts decode_layer '{"ins":{"RB":4},"scan":{"RB":4,"SL":8}}'
 *   node --import tsx scripts/print-wgsl.ts scan_chunk 64
 *
 * A kernel's shape is the plain data its WGSL is generated from (sizes, weight storage, variant flags): the
 * example shape its definition gives (src/backend/webgpu/kernel-def.ts), with the fields named on the command line
 * replaced: `path=value` (a dotted path into the shape; the value read as JSON, else as a string) or a JSON object
 * merged into it; a shape that is one value (scan_chunk's state size) is given as that value. The WGSL printed is exactly what Gpu.kernel compiles for that shape, and the text the pipeline
 * cache keys the pipeline by. Every module under src/backend/webgpu/kernels/ is loaded, so new kernels are listed
 * without changes here.
 */
import { readdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { type KernelDef, declaredKernels } from "../src/backend/webgpu/kernel-def.ts";

const KERNELS_DIR = fileURLToPath(new URL("../src/backend/webgpu/kernels/", import.meta.url));

/** Imports every kernel module (each declares its kernels as it loads) and returns the kernels by name. */
export async function loadKernels(dir = KERNELS_DIR): Promise<ReadonlyMap<string, KernelDef<unknown>>> {
  const files = readdirSync(dir, { recursive: true, encoding: "utf8" }).filter((f) => f.endsWith(".ts")).sort();
  for (const f of files) await import(pathToFileURL(path.join(dir, f)).href);
  return declaredKernels();
}

/** `shape` with `patch` laid over it: objects field by field, anything else replaced. */
function merge(shape: unknown, patch: unknown): unknown {
  if (!isRecord(shape) || !isRecord(patch)) return patch;
  const out: Record<string, unknown> = { ...shape };
  for (const [k, v] of Object.entries(patch)) out[k] = merge(shape[k], v);
  return out;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

/** A command-line value: JSON where it parses (numbers, true, false), else the text itself. */
function parseValue(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

/** The shape an argument list asks for: the example, with each `path=value` or JSON object laid over it. */
export function shapeFrom(example: unknown, args: readonly string[]): unknown {
  let shape = example;
  for (const arg of args) {
    if (arg.trimStart().startsWith("{")) {
      shape = merge(shape, JSON.parse(arg) as unknown);
      continue;
    }
    const eq = arg.indexOf("=");
    if (eq <= 0) { // a shape that is one value (a state size, a weight storage) is given whole
      if (isRecord(shape)) throw new Error(`'${arg}' is neither path=value nor a JSON object`);
      shape = parseValue(arg);
      continue;
    }
    const patch = arg.slice(0, eq).split(".").reduceRight<unknown>((inner, k) => ({ [k]: inner }), parseValue(arg.slice(eq + 1)));
    shape = merge(shape, patch);
  }
  return shape;
}

/** The WGSL of kernel `name` for the shape `args` ask for. */
export function kernelWgsl(kernels: ReadonlyMap<string, KernelDef<unknown>>, name: string, args: readonly string[] = []): string {
  const def = kernels.get(name);
  if (!def) throw new Error(`no kernel named '${name}'; kernels: ${[...kernels.keys()].join(", ")}`);
  return def.wgsl(shapeFrom(def.example, args));
}

async function main(argv: string[]): Promise<void> {
  const kernels = await loadKernels();
  const [name, ...rest] = argv;
  if (!name || name === "--list") {
    const width = Math.max(...[...kernels.keys()].map((n) => n.length));
    for (const [n, def] of [...kernels].sort(([a], [b]) => a.localeCompare(b))) {
      console.log(`${n.padEnd(width)}  ${JSON.stringify(def.example)}`);
    }
    return;
  }
  process.stdout.write(`${kernelWgsl(kernels, name, rest).trim()}\n`);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).catch((err: Error) => {
    console.error(`print-wgsl: ${err.message}`);
    process.exit(1);
  });
}
