/**
 * Building a MambaModel from parameters held on the host: checked against the config, uploaded to the chosen
 * backend. Shared by the Node entry (../index.ts) and the browser entry (../browser.ts); no file system here.
 */
import type { WebGpuOptions } from "../backend/webgpu/device.ts";
import type { WebGpuTuning } from "../backend/webgpu/tuning.ts";
import type { Backend } from "../backend/backend.ts";
import { type BackendName, createBackend } from "../backend/create.ts";
import type { CpuBackendOptions } from "../backend/wasm/create.ts";
import type { MambaConfig } from "../config.ts";
import { validateTensors } from "../io/model-files.ts";
import type { HostTensor } from "../io/tensor.ts";
import { initParameters, makeConfig } from "./init.ts";
import { MambaLM, uploadWeights } from "./mamba.ts";
import { MambaModel } from "./model.ts";

export interface BuildOptions {
  /** "cpu", "webgpu", or "auto" (the default: WebGPU when an adapter exists, else the CPU); or a backend made
   *  beforehand (e.g. `createWebGpuBackend({ ...tuning })`), which the model then owns and destroys with itself
   *  (if building fails, it stays the caller's) */
  backend?: BackendName | Backend;
  /** told which backend "auto" chose */
  onNotice?: (message: string) => void;
  /** options and tunings of the WebGPU backend that "webgpu" or "auto" makes (createWebGpuBackend's), e.g.
   *  `{ decodePersistent: false }` */
  webgpu?: WebGpuOptions & WebGpuTuning;
  /** options of the CPU engine that "cpu" or "auto" makes (createCpuBackend's), e.g. `{ threads: 2 }` */
  cpu?: CpuBackendOptions;
}

/** Builds a model on a backend from validated parameters (Hugging Face names). */
export async function modelFromTensors(
  config: MambaConfig, tensors: Map<string, HostTensor>, options: BuildOptions = {},
  info: { source: string; folder: string; dtype: string } = { source: "memory", folder: "", dtype: "F32" },
): Promise<MambaModel> {
  validateTensors(tensors, config, info.source);
  const choice = options.backend;
  const given = typeof choice === "object";
  const backend = typeof choice === "object" ? choice : await createBackend(choice ?? "auto", options.onNotice, options.webgpu, options.cpu);
  try {
    const lm = new MambaLM(config, backend, uploadWeights(backend, config, tensors));
    return new MambaModel(lm, info);
  } catch (err) {
    if (!given) await backend.destroy(); // a backend the caller made stays theirs when no model takes it
    throw err;
  }
}

/** Sizes of a new model: makeConfig's argument (Mamba-2's fields may be given in part). */
export type ModelSizes = Parameters<typeof makeConfig>[0];

/** A new model with fresh parameters, initialized as mamba_ssm does (seeded). */
export async function createModel(config: ModelSizes, options: BuildOptions & { seed?: number } = {}): Promise<MambaModel> {
  const cfg = makeConfig(config);
  return modelFromTensors(cfg, initParameters(cfg, { seed: options.seed ?? 0 }), options,
    { source: "createModel", folder: "", dtype: "F32" });
}
