/**
 * What the CLI's commands share: the usage-error type, strict parsers for option values (reusing the API's own
 * validation, so the CLI and the library reject the same values with the same words), the --model option with its
 * default, and resolving a model source with a download progress bar.
 */
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { InvalidArgumentError, Option } from "commander";
import { MambaError } from "../errors.ts";
import { type GenerateOptions, resolveOptions } from "../generate/options.ts";
import { isRepoId, progressBarReporter, resolveModelFolder } from "../io/hub.ts";
import { defaultModelFolder } from "./default-model.ts";

/** A mistake in the command line itself (exit code 2, like commander's own usage errors). */
export class UsageError extends MambaError {
  override name = "UsageError";
}

/** The folder holding package.json, src/ and dist/ (this module is src/cli/common.ts, or dist/cli/common.js built). */
export const PACKAGE_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

const NUMBER = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;
const INTEGER = /^[+-]?\d+$/;

/** A finite number written in full (no "", "0x10", "1e", "Infinity"). */
export function parseNumber(text: string): number {
  const t = text.trim();
  if (!NUMBER.test(t)) throw new InvalidArgumentError("expected a number.");
  const v = Number(t);
  if (!Number.isFinite(v)) throw new InvalidArgumentError("the number is out of range.");
  return v;
}

/** An integer written in full, within the safe integer range. */
export function parseInteger(text: string): number {
  const t = text.trim();
  if (!INTEGER.test(t)) throw new InvalidArgumentError("expected an integer.");
  const v = Number(t);
  if (!Number.isSafeInteger(v)) throw new InvalidArgumentError("the integer is out of range.");
  return v;
}

/** A comma-separated list of integers ("1,2,3"; spaces allowed). */
export function parseIntegerList(text: string): number[] {
  const parts = text.split(",").map((s) => s.trim());
  if (parts.length === 1 && parts[0] === "") return [];
  return parts.map((p) => {
    if (!INTEGER.test(p)) throw new InvalidArgumentError(`expected comma-separated integers, '${p}' is not one.`);
    return Number(p);
  });
}

type NumericGenerateKey = "maxNewTokens" | "temperature" | "topK" | "topP" | "minP" | "repetitionPenalty" | "seed";

/** A parser for one numeric generate option: parses strictly, then checks the value as the API does. */
export function generateOptionParser(key: NumericGenerateKey, integer: boolean): (text: string) => number {
  return (text) => {
    const v = integer ? parseInteger(text) : parseNumber(text);
    try {
      resolveOptions({ [key]: v } as GenerateOptions, null, 1);
    } catch (err) {
      if (err instanceof MambaError) throw new InvalidArgumentError(err.message.endsWith(".") ? err.message : `${err.message}.`);
      throw err;
    }
    return v;
  };
}

/** `--model`; when absent, commands use the model shipped with the package (see modelSource). */
export function modelOption(): Option {
  return new Option("-m, --model <folder|repo>",
    "model folder, or Hugging Face repo id such as state-spaces/mamba-130m-hf (default: the model shipped with the package)");
}

/** The model source a command should load: --model, else the shipped default model when it is installed. */
/** --threads: the CPU engine's threads (generate, eval, info, serve). */
export function threadsOption(): Option {
  return new Option("--threads <n>", "threads of the CPU engine (default: the available cores)").argParser((text: string) => {
    const v = parseInteger(text);
    if (v < 1 || v > 256) throw new InvalidArgumentError("expected a thread count from 1 to 256.");
    return v;
  });
}

/** --precision: the matrix products' precision on WebGPU (generate, eval, serve); loadModel's `precision`. */
export function precisionOption(): Option {
  return new Option("--precision <p>", "matrix products on WebGPU: f32, f16 (f16 inputs, f32 sums; needs shader-f16), " +
    "or auto (f16 for f16/bf16 weights where the GPU offers it)").choices(["f32", "f16", "auto"]).default("f32");
}

/** loadModel's `cpu` option from --threads (nothing when it was not given: the engine's default). */
export function cpuOptions(threads: number | undefined): { cpu?: { threads: number } } {
  return threads !== undefined ? { cpu: { threads } } : {};
}

export function modelSource(model: string | undefined): string {
  if (model !== undefined) {
    if (model.length === 0) throw new UsageError("--model is empty");
    return model;
  }
  const folder = defaultModelFolder();
  if (!existsSync(folder)) throw new UsageError(`--model is required (no default model is installed at ${folder})`);
  return folder;
}

/** Resolves a model source to a local folder; downloads from the hub show a progress bar on stderr. */
export async function resolveWithProgress(source: string): Promise<string> {
  if (!isRepoId(source)) return resolveModelFolder(source);
  const bar = progressBarReporter();
  try {
    return await resolveModelFolder(source, { onProgress: bar.onProgress });
  } finally {
    bar.stop();
  }
}
