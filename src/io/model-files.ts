/**
 * Reading a model from its files, wherever they are: a folder on disk (./checkpoint.ts, Node), a web server, or
 * files a user picked in a browser (../browser.ts). No file system here: usable in browsers.
 *
 * The files: config.json (either format), weights (model.safetensors, sharded safetensors with
 * model.safetensors.index.json, or mamba_ssm's pytorch_model.bin), generation_config.json and tokenizer.json.
 * Tensor names are normalized to the Hugging Face names (`backbone.embedding.` -> `backbone.embeddings.`) and every
 * tensor the config needs is checked for presence and shape before anything is built from it.
 */
import { MambaError, check } from "../errors.ts";
import { type MambaConfig, normalizeConfig, parameterShapes, parseConfigJson } from "../config.ts";
import type { HostTensor } from "./tensor.ts";
import { parseSafetensors } from "./safetensors-format.ts";
import { readTorchStateDict } from "./torch.ts";

/** The files of one model folder. */
export interface ModelFiles {
  /** the folder, for messages (a path, a URL, "the picked folder") */
  readonly where: string;
  /** a file's full name, for messages */
  path(name: string): string;
  /** a file's bytes, or null when the folder has no such file; read errors are MambaErrors */
  read(name: string): Promise<Uint8Array | null>;
  /** Optional: a safetensors file's tensors, read lazily (their bytes stay in the file until used), or null when
   *  the folder has no such file. Loading then never holds a whole file beside the weights. */
  safetensors?(name: string): Promise<Map<string, HostTensor> | null>;
}

/** A ModelFiles over a name -> bytes map (names relative to the folder). */
export function filesFromMap(files: Map<string, Uint8Array>, where = "the model files"): ModelFiles {
  return {
    where,
    path: (name) => `${where}/${name}`,
    read: async (name) => files.get(name) ?? null,
  };
}

/** The parsed file; undefined when the folder has no such file. */
async function readJson(files: ModelFiles, name: string): Promise<unknown> {
  const bytes = await files.read(name);
  if (bytes === null) return undefined;
  try {
    return parseConfigJson(new TextDecoder().decode(bytes)); // JSON, or Python's json with Infinity / NaN
  } catch {
    throw new MambaError(`${files.path(name)} is not valid JSON`);
  }
}

/**
 * Reads the config. generation_config.json's token ids take precedence; a config with no eos id (mamba_ssm's never
 * has one) takes it from tokenizer.json's end-of-text token when the folder has one.
 */
export async function readConfigFrom(files: ModelFiles): Promise<MambaConfig> {
  const raw = await readJson(files, "config.json");
  check(raw !== undefined, `no config.json in ${files.where}`);
  const config = normalizeConfig(raw, files.path("config.json"));
  const gen = await readJson(files, "generation_config.json");
  if (gen !== undefined) {
    const where = files.path("generation_config.json");
    check(gen !== null && typeof gen === "object" && !Array.isArray(gen), `${where}: not a JSON object`);
    const g = gen as Record<string, unknown>;
    config.eosTokenId = tokenId(g.eos_token_id, config, where, "eos_token_id") ?? config.eosTokenId;
    config.bosTokenId = tokenId(g.bos_token_id, config, where, "bos_token_id") ?? config.bosTokenId;
    config.padTokenId = tokenId(g.pad_token_id, config, where, "pad_token_id") ?? config.padTokenId;
  }
  if (config.eosTokenId === null) {
    const tok = await readJson(files, "tokenizer.json") as { added_tokens?: { id: number; content: string }[] } | undefined;
    const eos = tok?.added_tokens?.find?.((t) => t.content === "<|endoftext|>" || t.content === "</s>");
    if (eos && Number.isInteger(eos.id) && eos.id >= 0 && eos.id < config.vocabSize) config.eosTokenId = eos.id;
  }
  return config;
}

function tokenId(v: unknown, config: MambaConfig, where: string, key: string): number | null {
  if (Array.isArray(v)) v = v[0]; // several eos ids may be listed; the first is the main one
  if (v === undefined || v === null) return null;
  check(typeof v === "number" && Number.isInteger(v) && v >= 0 && v < config.paddedVocabSize,
    `${where}: '${key}' must be a token id below ${config.paddedVocabSize}, got ${JSON.stringify(v)}`);
  return v;
}

/** Loads every weight file into one name -> tensor map (names as stored). */
export async function readWeightsFrom(files: ModelFiles): Promise<Map<string, HostTensor>> {
  const lazy = files.safetensors ? await files.safetensors("model.safetensors") : null;
  if (lazy !== null) return lazy;
  const single = await files.read("model.safetensors");
  if (single !== null) return parseSafetensors(single, files.path("model.safetensors"));
  const index = await readJson(files, "model.safetensors.index.json");
  if (index !== undefined) return readShards(files, index);
  const bin = await files.read("pytorch_model.bin");
  if (bin !== null) return readTorchStateDict(bin, files.path("pytorch_model.bin"));
  throw new MambaError(`no weights in ${files.where} (looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin)`);
}

async function readShards(files: ModelFiles, idx: unknown): Promise<Map<string, HostTensor>> {
  const index = files.path("model.safetensors.index.json");
  const i = idx as { weight_map?: unknown } | null;
  check(i && typeof i === "object" && i.weight_map && typeof i.weight_map === "object", `${index}: missing 'weight_map'`);
  const weightMap = i.weight_map as Record<string, unknown>;
  const shards = new Set<string>();
  for (const [name, file] of Object.entries(weightMap)) {
    check(typeof file === "string" && file.length > 0 && !file.includes("/") && !file.includes("\\") && file !== "..",
      `${index}: tensor '${name}' maps to an invalid file name ${JSON.stringify(file)}`);
    shards.add(file);
  }
  const out = new Map<string, HostTensor>();
  for (const file of shards) {
    let tensors = files.safetensors ? await files.safetensors(file) : null;
    if (tensors === null) {
      const bytes = await files.read(file);
      check(bytes !== null, `${index} names ${file}, which is missing from ${files.where}`);
      tensors = parseSafetensors(bytes, files.path(file));
    }
    for (const [name, t] of tensors) {
      check(!out.has(name), `tensor '${name}' appears in more than one shard of ${files.where}`);
      out.set(name, t);
    }
  }
  for (const name of Object.keys(weightMap)) check(out.has(name), `${index} lists '${name}' but its shard does not hold it`);
  return out;
}

/** Renames mamba_ssm tensors to Hugging Face names and drops a tied head's duplicate. */
export function normalizeNames(raw: Map<string, HostTensor>, config: MambaConfig): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const [name, t] of raw) {
    const hf = name.startsWith("backbone.embedding.") ? "backbone.embeddings." + name.slice("backbone.embedding.".length) : name;
    out.set(hf, t);
  }
  if (config.tieEmbeddings) out.delete("lm_head.weight");
  return out;
}

/** Checks that every tensor the config needs is there with its shape (conv1d.weight may be [E, K] or [E, 1, K]). */
export function validateTensors(tensors: Map<string, HostTensor>, config: MambaConfig, where: string): void {
  for (const [name, shape] of parameterShapes(config)) {
    const t = tensors.get(name);
    check(t, `${where}: missing tensor '${name}'`);
    const same = t.shape.length === shape.length && t.shape.every((d, i) => d === shape[i]);
    const convAlt = name.endsWith("conv1d.weight") && t.shape.length === 2 && t.shape[0] === shape[0] && t.shape[1] === shape[2];
    check(same || convAlt, `${where}: tensor '${name}' has shape [${t.shape}], the config needs [${shape}]`);
    if (convAlt) t.shape = [...shape];
  }
}

export interface CheckpointData {
  config: MambaConfig;
  /** parameters under Hugging Face names, validated against the config */
  tensors: Map<string, HostTensor>;
  /** storage dtype of the bulk of the weights (that of the embedding) */
  dtype: HostTensor["dtype"];
}

/** Config and validated weights of a model folder. */
export async function readCheckpointFrom(files: ModelFiles): Promise<CheckpointData> {
  const config = await readConfigFrom(files);
  const tensors = normalizeNames(await readWeightsFrom(files), config);
  validateTensors(tensors, config, files.where);
  return { config, tensors, dtype: tensors.get("backbone.embeddings.weight")!.dtype };
}
