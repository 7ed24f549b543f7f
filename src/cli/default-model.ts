/**
 * The model a command uses when --model is not given: the one shipped inside the package, at
 * `<package root>/models/default`. Commands check that the folder exists and otherwise ask for --model.
 */
import path from "node:path";
import { fileURLToPath } from "node:url";

/** The embedded model's folder; MAMBA_TS_DEFAULT_MODEL points commands at another one. */
export function defaultModelFolder(): string {
  if (process.env.MAMBA_TS_DEFAULT_MODEL) return path.resolve(process.env.MAMBA_TS_DEFAULT_MODEL);
  // this file is <package root>/src/cli/default-model.ts, or <package root>/dist/cli/default-model.js once built
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "models", "default");
}
