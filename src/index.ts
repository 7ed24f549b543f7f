/**
 * mamba-ts: Mamba (Gu & Dao, "Linear-Time Sequence Modeling with Selective State Spaces") in TypeScript.
 *
 *   const model = await loadModel("state-spaces/mamba-130m-hf");        // a folder or a Hugging Face repo id
 *   const tok = await loadTokenizer(model.info.folder);
 *   const ids = await model.generate(tok.encode("Mamba is"), { maxNewTokens: 20 });
 *   console.log(tok.decode(ids));
 */
import { type BackendName, createBackend } from "./backend/create.ts";
import { loadCheckpoint } from "./io/checkpoint.ts";
import { type ResolveOptions, resolveModelFolder } from "./io/hub.ts";
import { MambaLM, uploadWeights } from "./model/mamba.ts";
import { MambaModel } from "./model/model.ts";
import { check } from "./errors.ts";
import type { MambaConfig } from "./config.ts";
import type { HostTensor } from "./io/tensor.ts";
import { validateTensors } from "./io/checkpoint.ts";
import { initParameters, makeConfig } from "./model/init.ts";

export { MambaModel } from "./model/model.ts";
export { makeConfig } from "./model/init.ts";
export type { ForwardOptions, ForwardResult } from "./model/model.ts";
export type { MambaConfig } from "./config.ts";
export type { GenerateOptions } from "./generate/options.ts";
export { loadTokenizer, TextStreamer } from "./tokenizer.ts";
export type { Tokenizer } from "./tokenizer.ts";
export { MambaError } from "./errors.ts";
export type { Backend } from "./backend/backend.ts";
export type { BackendName } from "./backend/create.ts";
export type { DownloadProgress } from "./io/hub.ts";

export interface LoadOptions {
  /** "cpu", "webgpu", or "auto" (the default: WebGPU when an adapter exists, else the CPU) */
  backend?: BackendName;
  /** download progress, when the model comes from the hub */
  onProgress?: ResolveOptions["onProgress"];
  /** told which backend "auto" chose */
  onNotice?: (message: string) => void;
}

/** Loads a model from a local folder or a Hugging Face repo id ("state-spaces/mamba-130m-hf"). */
export async function loadModel(source: string, options: LoadOptions = {}): Promise<MambaModel> {
  check(typeof source === "string" && source.length > 0, "loadModel: source must be a folder or a repo id");
  const folder = await resolveModelFolder(source, options.onProgress ? { onProgress: options.onProgress } : {});
  const ckpt = await loadCheckpoint(folder);
  return modelFromTensors(ckpt.config, ckpt.tensors, options, { source, folder, dtype: ckpt.dtype });
}

/** Builds a model on a backend from validated parameters (Hugging Face names). */
export async function modelFromTensors(
  config: MambaConfig, tensors: Map<string, HostTensor>, options: LoadOptions = {},
  info: { source: string; folder: string; dtype: string } = { source: "memory", folder: "", dtype: "F32" },
): Promise<MambaModel> {
  validateTensors(tensors, config, info.source);
  const backend = await createBackend(options.backend ?? "auto", options.onNotice);
  try {
    const lm = new MambaLM(config, backend, uploadWeights(backend, config, tensors));
    return new MambaModel(lm, info);
  } catch (err) {
    await backend.destroy();
    throw err;
  }
}

export type ModelSizes = Partial<MambaConfig> & { vocabSize: number; hiddenSize: number; numLayers: number };

/** A new model with fresh parameters, initialized as mamba_ssm does (seeded). */
export async function createModel(config: ModelSizes, options: LoadOptions & { seed?: number } = {}): Promise<MambaModel> {
  const cfg = makeConfig(config);
  return modelFromTensors(cfg, initParameters(cfg, { seed: options.seed ?? 0 }), options,
    { source: "createModel", folder: "", dtype: "F32" });
}
