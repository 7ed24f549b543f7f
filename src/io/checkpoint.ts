/**
 * Reading a model folder: config.json (either format), weights (model.safetensors, sharded safetensors with
 * model.safetensors.index.json, or mamba_ssm's pytorch_model.bin) and generation_config.json. Tensor names are
 * normalized to the Hugging Face names (`backbone.embedding.` -> `backbone.embeddings.`) and every tensor the
 * config needs is checked for presence and shape before anything is built from it.
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import { MambaError, check } from "../errors.ts";
import { type MambaConfig, normalizeConfig, parameterShapes } from "../config.ts";
import type { HostTensor } from "./tensor.ts";
import { readSafetensors } from "./safetensors.ts";
import { readTorchStateDict } from "./torch.ts";

export interface Checkpoint {
  folder: string;
  config: MambaConfig;
  /** parameters under Hugging Face names, validated against the config */
  tensors: Map<string, HostTensor>;
  /** storage dtype of the bulk of the weights (that of the embedding) */
  dtype: HostTensor["dtype"];
}

async function exists(p: string): Promise<boolean> {
  return fs.stat(p).then(() => true, () => false);
}

async function readJson(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await fs.readFile(file, "utf8");
  } catch (err) {
    throw new MambaError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new MambaError(`${file} is not valid JSON`);
  }
}

/**
 * Reads the config of a folder. generation_config.json's token ids take precedence; a config with no eos id
 * (mamba_ssm's never has one) takes it from tokenizer.json's end-of-text token when the folder has one.
 */
export async function readConfig(folder: string): Promise<MambaConfig> {
  const file = path.join(folder, "config.json");
  check(await exists(file), `no config.json in ${folder}`);
  const config = normalizeConfig(await readJson(file), file);
  const genFile = path.join(folder, "generation_config.json");
  if (await exists(genFile)) {
    const gen = await readJson(genFile);
    check(gen !== null && typeof gen === "object" && !Array.isArray(gen), `${genFile}: not a JSON object`);
    const g = gen as Record<string, unknown>;
    config.eosTokenId = tokenId(g.eos_token_id, config, genFile, "eos_token_id") ?? config.eosTokenId;
    config.bosTokenId = tokenId(g.bos_token_id, config, genFile, "bos_token_id") ?? config.bosTokenId;
    config.padTokenId = tokenId(g.pad_token_id, config, genFile, "pad_token_id") ?? config.padTokenId;
  }
  const tokFile = path.join(folder, "tokenizer.json");
  if (config.eosTokenId === null && await exists(tokFile)) {
    const tok = await readJson(tokFile) as { added_tokens?: { id: number; content: string }[] };
    const eos = tok?.added_tokens?.find((t) => t.content === "<|endoftext|>" || t.content === "</s>");
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

/** Loads every weight file of a folder into one name -> tensor map (names as stored). */
export async function readWeights(folder: string): Promise<Map<string, HostTensor>> {
  const single = path.join(folder, "model.safetensors");
  if (await exists(single)) return readSafetensors(single);
  const index = path.join(folder, "model.safetensors.index.json");
  if (await exists(index)) return readShards(folder, index);
  const bin = path.join(folder, "pytorch_model.bin");
  if (await exists(bin)) {
    let bytes: Uint8Array;
    try {
      bytes = await fs.readFile(bin);
    } catch (err) {
      throw new MambaError(`cannot read ${bin}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
    return readTorchStateDict(bytes, bin);
  }
  throw new MambaError(`no weights in ${folder} (looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin)`);
}

async function readShards(folder: string, index: string): Promise<Map<string, HostTensor>> {
  const idx = await readJson(index) as { weight_map?: unknown };
  check(idx && typeof idx === "object" && idx.weight_map && typeof idx.weight_map === "object",
    `${index}: missing 'weight_map'`);
  const weightMap = idx.weight_map as Record<string, unknown>;
  const files = new Set<string>();
  for (const [name, file] of Object.entries(weightMap)) {
    check(typeof file === "string" && file.length > 0 && !file.includes("/") && !file.includes("\\") && file !== ".." ,
      `${index}: tensor '${name}' maps to an invalid file name ${JSON.stringify(file)}`);
    files.add(file);
  }
  const out = new Map<string, HostTensor>();
  for (const file of files) {
    const p = path.join(folder, file);
    check(await exists(p), `${index} names ${file}, which is missing from ${folder}`);
    for (const [name, t] of await readSafetensors(p)) {
      check(!out.has(name), `tensor '${name}' appears in more than one shard of ${folder}`);
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

export async function loadCheckpoint(folder: string): Promise<Checkpoint> {
  const stat = await fs.stat(folder).catch(() => null);
  check(stat, `model folder not found: ${folder}`);
  check(stat.isDirectory(), `not a folder: ${folder}`);
  const config = await readConfig(folder);
  const tensors = normalizeNames(await readWeights(folder), config);
  validateTensors(tensors, config, folder);
  return { folder, config, tensors, dtype: tensors.get("backbone.embeddings.weight")!.dtype };
}
