/**
 * mamba-ts: Mamba (Gu & Dao, "Linear-Time Sequence Modeling with Selective State Spaces") in TypeScript.
 *
 *   const model = await loadModel("state-spaces/mamba-130m-hf");        // a folder or a Hugging Face repo id
 *   const tok = await loadTokenizer(model.info.folder);
 *   const ids = await model.generate(tok.encode("Mamba is"), { maxNewTokens: 20 });
 *   console.log(tok.decode(ids));
 */
import { loadCheckpoint } from "./io/checkpoint.ts";
import { type ResolveOptions, resolveModelFolder } from "./io/hub.ts";
import { type BuildOptions, buildModel, checkBuildOptions } from "./model/build.ts";
import type { MambaModel } from "./model/model.ts";
import type { Backend } from "./backend/backend.ts";
import type { WebGpuOptions } from "./backend/webgpu/device.ts";
import type { WebGpuTuning } from "./backend/webgpu/tuning.ts";
import { check, optionKeys } from "./errors.ts";

export { MambaModel } from "./model/model.ts";
export { createModel, modelFromTensors } from "./model/build.ts";
export type { ModelSizes } from "./model/build.ts";
export { makeConfig } from "./model/init.ts";
export { SelectionRecorder } from "./model/observer.ts";
export type { MixerObserver, SelectionTrace } from "./model/observer.ts";
export type { ForwardOptions, ForwardResult } from "./model/model.ts";
export type { PrefillOptions } from "./model/model.ts";
export type { MambaState, SamplerPosition } from "./model/state.ts";
export type { MambaConfig } from "./config.ts";
export type { GenerateOptions } from "./generate/options.ts";
export { loadTokenizer, TextStreamer } from "./tokenizer.ts";
export type { Tokenizer } from "./tokenizer.ts";
export { MambaError } from "./errors.ts";
/** The folder of the embedded default model (a byte-level Mamba shipped in the package). */
export { defaultModelFolder } from "./cli/default-model.ts";
export type { Backend } from "./backend/backend.ts";
export type { BackendName } from "./backend/create.ts";
/** The CPU engines: the WebAssembly SIMD engine with threads, or `{ reference: true }` the plain TypeScript one. */
export { createCpuBackend, describeBackend } from "./backend/wasm/create.ts";
export type { CpuBackendOptions } from "./backend/wasm/create.ts";
export type { DownloadProgress } from "./io/hub.ts";
export type { WebGpuOptions } from "./backend/webgpu/device.ts";
export type { WebGpuTuning } from "./backend/webgpu/tuning.ts";

/**
 * A WebGPU backend with options (adapter choice, buffer pool size, decodePersistent), to pass as `backend` to
 * loadModel or createModel; the model then owns it. Rejects with a MambaError when there is no adapter.
 */
export async function createWebGpuBackend(options: WebGpuOptions & WebGpuTuning = {}): Promise<Backend> {
  const webgpu = await import("./backend/webgpu/index.ts"); // loaded on demand: CPU-only use never touches a GPU library
  return webgpu.createWebGpuBackend(options);
}

export interface LoadOptions extends BuildOptions {
  /** download progress, when the model comes from the hub */
  onProgress?: ResolveOptions["onProgress"];
}
const LOAD_OPTION_KEYS = optionKeys<Omit<LoadOptions, keyof BuildOptions>>({ onProgress: true });

/** Loads a model from a local folder or a Hugging Face repo id ("state-spaces/mamba-130m-hf"). */
export async function loadModel(source: string, options: LoadOptions = {}): Promise<MambaModel> {
  check(typeof source === "string" && source.length > 0, "loadModel: source must be a folder or a repo id");
  await checkBuildOptions("loadModel", options, LOAD_OPTION_KEYS); // before any download
  const folder = await resolveModelFolder(source, options.onProgress ? { onProgress: options.onProgress } : {});
  const ckpt = await loadCheckpoint(folder);
  return buildModel(ckpt.config, ckpt.tensors, options, { source, folder, dtype: ckpt.dtype });
}
