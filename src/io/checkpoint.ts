/**
 * Reading a model folder on disk (Node): config.json (either format), weights (model.safetensors, sharded
 * safetensors with model.safetensors.index.json, or mamba_ssm's pytorch_model.bin) and generation_config.json;
 * or a GGUF file (./gguf.ts), given itself or as the one .gguf of a folder without config.json.
 * The reading itself, over any source of files, is ./model-files.ts (usable in browsers); this module gives it a
 * folder's files.
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import { MambaError, check } from "../errors.ts";
import type { MambaConfig } from "../config.ts";
import type { HostTensor } from "./tensor.ts";
import { readSafetensorsLazy } from "./safetensors.ts";
import { type ModelFiles, readCheckpointFrom, readConfigFrom, readWeightsFrom } from "./model-files.ts";
import { ggufInFolder, isGgufPath, readGgufFile } from "./gguf.ts";

export { normalizeNames, validateTensors } from "./model-files.ts";

export interface Checkpoint {
  folder: string;
  config: MambaConfig;
  /** parameters under Hugging Face names, validated against the config */
  tensors: Map<string, HostTensor>;
  /** storage dtype of the bulk of the weights (that of the embedding) */
  dtype: HostTensor["dtype"];
}

/** The files of a folder on disk: a missing file reads as null, a file that cannot be read is an error. */
export function folderFiles(folder: string): ModelFiles {
  return {
    where: folder,
    path: (name) => path.join(folder, name),
    read: async (name) => {
      const file = path.join(folder, name);
      if (!(await fs.stat(file).then(() => true, () => false))) return null;
      try {
        return await fs.readFile(file);
      } catch (err) {
        throw new MambaError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
      }
    },
    safetensors: async (name) => {
      const file = path.join(folder, name);
      if (!(await fs.stat(file).then((st) => st.isFile(), () => false))) return null;
      return readSafetensorsLazy(file);
    },
  };
}

/**
 * Reads the config of a folder. generation_config.json's token ids take precedence; a config with no eos id
 * (mamba_ssm's never has one) takes it from tokenizer.json's end-of-text token when the folder has one.
 */
export function readConfig(folder: string): Promise<MambaConfig> {
  return readConfigFrom(folderFiles(folder));
}

/** Loads every weight file of a folder into one name -> tensor map (names as stored). */
export function readWeights(folder: string): Promise<Map<string, HostTensor>> {
  return readWeightsFrom(folderFiles(folder));
}

/**
 * Loads a model folder, a GGUF file, or a folder holding one GGUF file and no config.json (a GGUF's weights may
 * be quantized: Q8_0 and Q4_0 tensors stay in their blocks until a backend uploads them).
 */
export async function loadCheckpoint(folder: string): Promise<Checkpoint> {
  const stat = await fs.stat(folder).catch(() => null);
  check(stat, `model folder not found: ${folder}`);
  const gguf = stat.isFile() && isGgufPath(folder) ? folder
    : stat.isDirectory() && !(await fs.stat(path.join(folder, "config.json")).catch(() => null)) ? await ggufInFolder(folder) : null;
  if (gguf !== null) {
    const { config, tensors, dtype } = await readGgufFile(gguf);
    return { folder, config, tensors, dtype };
  }
  check(stat.isDirectory(), `not a folder: ${folder}`);
  return { folder, ...(await readCheckpointFrom(folderFiles(folder))) };
}
