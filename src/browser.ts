/**
 * mamba-ts in the browser: the entry for pages, importing no Node module. A model folder (config.json, weights,
 * tokenizer.json) is read from a web server (a base URL) or from files in memory or picked by the user (a folder
 * chosen with <input type="file" webkitdirectory>), and run on WebGPU through navigator.gpu, or on the CPU when the
 * browser offers no WebGPU adapter (`onNotice` says which).
 *
 *   const { model, tokenizer } = await loadModelFromFiles(new URL("models/default/", location.href));
 *   for await (const id of model.stream(tokenizer.encode("Mamba is"), { maxNewTokens: 20 })) ...
 *
 * The files may also be a Map from names ("config.json", "model.safetensors", ...) to bytes or Blobs (File objects
 * are Blobs: they are read only when needed).
 */
import { MambaError, check, checkKeys, optionKeys } from "./errors.ts";
import { type CheckpointData, type ModelFiles, readCheckpointFrom } from "./io/model-files.ts";
import { type BuildOptions, buildModel, checkBuildOptions } from "./model/build.ts";
import type { MambaModel } from "./model/model.ts";
import { type Tokenizer, tokenizerFromJson } from "./tokenizer-core.ts";

export { MambaModel } from "./model/model.ts";
export { createModel, modelFromTensors } from "./model/build.ts";
export type { BuildOptions, ModelSizes } from "./model/build.ts";
export { makeConfig } from "./model/init.ts";
export { SelectionRecorder } from "./model/observer.ts";
export type { MixerObserver, SelectionTrace } from "./model/observer.ts";
export { TextStreamer, tokenizerFromJson } from "./tokenizer-core.ts";
export type { Tokenizer } from "./tokenizer-core.ts";
export { byteLevelTokenizerJson, BYTE_EOS_ID, BYTE_VOCAB_SIZE } from "./byte-tokenizer.ts";
export { MambaError } from "./errors.ts";
export type { MambaConfig } from "./config.ts";
export type { GenerateOptions } from "./generate/options.ts";
export type { BackendName } from "./backend/create.ts";
/** The CPU engines: the WebAssembly SIMD engine with threads, or `{ reference: true }` the plain TypeScript one. */
export { createCpuBackend, describeBackend } from "./backend/wasm/create.ts";
export type { CpuBackendOptions } from "./backend/wasm/create.ts";
export type { ModelFiles } from "./io/model-files.ts";

/** A model folder: its base URL on a server, or its files by name (bytes, or Blobs read when needed). */
export type ModelSource = URL | string | Map<string, Uint8Array | Blob>;

export interface FileProgress {
  file: string;
  loaded: number;
  /** bytes in all, when the server says */
  total: number | null;
}

export interface BrowserLoadOptions extends BuildOptions {
  /** bytes read so far of each file, as they come */
  onProgress?: (p: FileProgress) => void;
}
const BROWSER_LOAD_OPTION_KEYS = optionKeys<Omit<BrowserLoadOptions, keyof BuildOptions>>({ onProgress: true });

export interface LoadedModel {
  model: MambaModel;
  /** null when the folder has no tokenizer.json */
  tokenizer: Tokenizer | null;
  /** where the files came from */
  where: string;
}

/** The files of a model folder at a base URL (a missing file is a 404) or in a name -> bytes/Blob map. */
export function modelFiles(source: ModelSource, options: Pick<BrowserLoadOptions, "onProgress"> = {}): ModelFiles {
  checkKeys("modelFiles", options, BROWSER_LOAD_OPTION_KEYS);
  const cache = new Map<string, Promise<Uint8Array | null>>(); // each file is read at most once
  let files: ModelFiles;
  if (source instanceof Map) {
    files = {
      where: "the model files",
      path: (name) => name,
      read: async (name) => {
        const v = source.get(name);
        if (v === undefined) return null;
        if (v instanceof Uint8Array) return v;
        return new Uint8Array(await v.arrayBuffer());
      },
    };
  } else {
    const base = baseUrl(source);
    files = {
      where: base.href,
      path: (name) => new URL(name, base).href,
      read: (name) => fetchBytes(new URL(name, base), name, options.onProgress),
    };
  }
  return {
    where: files.where,
    path: files.path,
    read(name) {
      let p = cache.get(name);
      if (!p) cache.set(name, (p = files.read(name)));
      return p;
    },
  };
}

function baseUrl(source: URL | string): URL {
  const here = (globalThis as { location?: { href: string } }).location?.href;
  let url: URL;
  try {
    url = typeof source === "string" ? new URL(source, here) : new URL(source.href);
  } catch {
    throw new MambaError(`not a URL: ${String(source)}`);
  }
  if (!url.pathname.endsWith("/")) url.pathname += "/";
  return url;
}

async function fetchBytes(url: URL, name: string, onProgress?: (p: FileProgress) => void): Promise<Uint8Array | null> {
  let res: Response;
  try {
    res = await fetch(url);
  } catch (err) {
    throw new MambaError(`cannot fetch ${url.href}: ${(err as Error).message}`);
  }
  if (res.status === 404) return null;
  check(res.ok, `cannot fetch ${url.href}: HTTP ${res.status} ${res.statusText}`);
  const header = res.headers.get("content-length");
  const total = header !== null && /^\d+$/.test(header) ? Number(header) : null;
  if (!res.body || !onProgress) return new Uint8Array(await res.arrayBuffer());
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let loaded = 0;
  onProgress({ file: name, loaded, total });
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.length;
    onProgress({ file: name, loaded, total });
  }
  if (chunks.length === 1) return chunks[0]!;
  const out = new Uint8Array(loaded);
  let o = 0;
  for (const c of chunks) { out.set(c, o); o += c.length; }
  return out;
}

/** The tokenizer of a model folder, or null when it has none. */
export async function loadTokenizerFromFiles(source: ModelSource | ModelFiles): Promise<Tokenizer | null> {
  const files = isModelFiles(source) ? source : modelFiles(source);
  const bytes = await files.read("tokenizer.json");
  if (bytes === null) return null;
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new MambaError(`${files.path("tokenizer.json")} is not valid JSON`);
  }
  return tokenizerFromJson(json, files.path("tokenizer.json"));
}

/** Config and validated weights of a model folder, without building a model. */
export function readCheckpointFromFiles(source: ModelSource | ModelFiles): Promise<CheckpointData> {
  return readCheckpointFrom(isModelFiles(source) ? source : modelFiles(source));
}

/**
 * Loads a model folder (config.json, model.safetensors or its shards or pytorch_model.bin, optional
 * generation_config.json and tokenizer.json) onto WebGPU, or the CPU when there is no adapter ("auto", the
 * default; `onNotice` says which).
 */
export async function loadModelFromFiles(source: ModelSource, options: BrowserLoadOptions = {}): Promise<LoadedModel> {
  await checkBuildOptions("loadModelFromFiles", options, BROWSER_LOAD_OPTION_KEYS);
  const files = modelFiles(source, options.onProgress ? { onProgress: options.onProgress } : {});
  // the tokenizer first: it is small, and a broken one should fail before megabytes of weights are read
  const tokenizer = await loadTokenizerFromFiles(files);
  const ckpt = await readCheckpointFrom(files);
  const build: BuildOptions = {};
  if (options.backend) build.backend = options.backend;
  if (options.onNotice) build.onNotice = options.onNotice;
  if (options.precision) build.precision = options.precision;
  if (options.webgpu) build.webgpu = options.webgpu;
  if (options.cpu) build.cpu = options.cpu;
  const model = await buildModel(ckpt.config, ckpt.tensors, build, { source: files.where, folder: "", dtype: ckpt.dtype });
  return { model, tokenizer, where: files.where };
}

/** A picked folder's files (from <input type="file" webkitdirectory>) by their names inside that folder. */
export function filesFromPicked(list: Iterable<File>): Map<string, Blob> {
  const out = new Map<string, Blob>();
  for (const f of list) {
    const rel = (f as File & { webkitRelativePath?: string }).webkitRelativePath || f.name;
    const parts = rel.split("/");
    // the picked folder's own files only (its name is the first part), not those of subfolders
    if (parts.length <= 2) out.set(parts[parts.length - 1]!, f);
  }
  return out;
}

function isModelFiles(x: unknown): x is ModelFiles {
  return typeof (x as ModelFiles).read === "function" && typeof (x as ModelFiles).path === "function";
}
