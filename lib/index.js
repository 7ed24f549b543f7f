/**
 * The package entry for plain Node.js (`import { loadModel } from "mamba-ts"`): registers tsx's TypeScript loader
 * with the package's own tsconfig, then re-exports the public API of src/index.ts. No build step is needed.
 * TypeScript users get the types from src/index.ts (package.json "types").
 */
import { existsSync, realpathSync } from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { register } from "tsx/esm/api";

const root = path.resolve(path.dirname(realpathSync(fileURLToPath(import.meta.url))), "..");
const tsconfig = path.join(root, "tsconfig.json");
register(existsSync(tsconfig) ? { tsconfig } : {});
const api = await import(pathToFileURL(path.join(root, "src", "index.ts")).href);

export const {
  loadModel, loadTokenizer, createModel, modelFromTensors, makeConfig, MambaModel, MambaError, TextStreamer,
  SelectionRecorder, defaultModelFolder,
} = api;
