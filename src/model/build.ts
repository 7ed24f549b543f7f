/**
 * Building a MambaModel from parameters held on the host: checked against the config, uploaded to the chosen
 * backend. Shared by the Node entry (../index.ts) and the browser entry (../browser.ts); no file system here.
 */
import type { WebGpuOptions } from "../backend/webgpu/device.ts";
import type { WebGpuTuning } from "../backend/webgpu/tuning.ts";
import type { Backend, Precision, Tensor } from "../backend/backend.ts";
import { MambaError, checkChoice, checkKeys, optionKeys } from "../errors.ts";
import { type BackendName, createBackend } from "../backend/create.ts";
import { CPU_BACKEND_OPTION_KEYS, type CpuBackendOptions } from "../backend/wasm/create.ts";
import type { MambaConfig } from "../config.ts";
import { validateTensors } from "../io/model-files.ts";
import type { HostTensor } from "../io/tensor.ts";
import { initParameters, makeConfig } from "./init.ts";
import { type LMWeights, MambaLM, uploadWeights } from "./mamba.ts";
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
  /** the matrix products' precision: "f32" (the default), "f16" (WebGPU with shader-f16: the projections' and
   *  head's weights stored in f16, their inputs rounded to f16, sums in f32; an error elsewhere), or "auto" (f16
   *  where the device offers it and the checkpoint's weights are f16 or bf16, else f32). A backend passed in keeps
   *  its own precision unless this is given. */
  precision?: Precision | "auto";
}

/** BuildOptions' keys (checkKeys). */
export const BUILD_OPTION_KEYS = optionKeys<BuildOptions>({ backend: true, onNotice: true, webgpu: true, cpu: true, precision: true });

/**
 * Throws, naming `what` (the entry point the user called), on an unknown key of build options (BUILD_OPTION_KEYS
 * and the entry point's own `extra` ones) or of their `webgpu` and `cpu` objects. Checked where the user passes
 * them, so that the error names the call they made, and before a backend is made or a file read.
 */
export async function checkBuildOptions(what: string, options: unknown, extra: readonly string[] = []): Promise<void> {
  checkKeys(what, options, [...BUILD_OPTION_KEYS, ...extra]);
  const o = (options ?? {}) as BuildOptions;
  checkKeys(what, o.cpu, CPU_BACKEND_OPTION_KEYS, "cpu.");
  if (o.webgpu !== undefined) {
    // the WebGPU backend's module, loaded only by those who pass its options
    const { checkWebGpuOptions } = await import("../backend/webgpu/tuning.ts");
    checkWebGpuOptions(what, o.webgpu, "webgpu.");
  }
}

/** The matrices whose products run in the model's precision: every projection and the head. */
function productMatrices(w: LMWeights): Tensor[] {
  const out: Tensor[] = [w.head];
  for (const { mixer: m } of w.layers) {
    for (const t of [m.inProj, m.xProj, m.dtProj, m.outProj]) if (t) out.push(t);
  }
  return out;
}

/** The precision a model runs in on `backend` (BuildOptions.precision), for weights stored as `dtype`. */
export function choosePrecision(backend: Backend, asked: Precision | "auto", dtype: string): Precision {
  const offered = backend.precisions ?? ["f32"];
  if (asked === "auto") return offered.includes("f16") && (dtype === "F16" || dtype === "BF16") ? "f16" : "f32";
  if (asked === "f16" && !offered.includes("f16")) {
    throw new MambaError(backend.name === "cpu"
      ? "precision f16 is for the WebGPU backend; the CPU backend computes in f32 (use precision f32 or auto)"
      : `precision f16 needs the WebGPU feature shader-f16, which this device does not offer (use precision f32 or auto)`);
  }
  return asked;
}

/** Builds a model on a backend from validated parameters (Hugging Face names). */
export async function modelFromTensors(
  config: MambaConfig, tensors: Map<string, HostTensor>, options: BuildOptions = {},
  info: { source: string; folder: string; dtype: string } = { source: "memory", folder: "", dtype: "F32" },
): Promise<MambaModel> {
  await checkBuildOptions("modelFromTensors", options);
  return buildModel(config, tensors, options, info);
}

/** modelFromTensors for the entry points that checked their options themselves (loadModel, createModel, ...). */
export async function buildModel(
  config: MambaConfig, tensors: Map<string, HostTensor>, options: BuildOptions,
  info: { source: string; folder: string; dtype: string },
): Promise<MambaModel> {
  validateTensors(tensors, config, info.source);
  checkChoice("precision", options.precision, ["f32", "f16", "auto"]);
  if (options.precision === "f16" && options.backend === "cpu") {
    throw new MambaError("precision f16 is for the WebGPU backend; the CPU backend computes in f32 (use precision f32 or auto)");
  }
  const choice = options.backend;
  const given = typeof choice === "object";
  const backend = typeof choice === "object" ? choice : await createBackend(choice ?? "auto", options.onNotice, options.webgpu, options.cpu);
  try {
    const precision = choosePrecision(backend, options.precision ?? backend.precision ?? "f32", info.dtype);
    const weights = uploadWeights(backend, config, tensors);
    if (backend.usePrecision) backend.usePrecision(precision, precision === "f16" ? productMatrices(weights) : []);
    const lm = new MambaLM(config, backend, weights);
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
  await checkBuildOptions("createModel", options, ["seed"]);
  const cfg = makeConfig(config);
  return buildModel(cfg, initParameters(cfg, { seed: options.seed ?? 0 }), options,
    { source: "createModel", folder: "", dtype: "F32" });
}
