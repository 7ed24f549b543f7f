/**
 * Getting a GPUDevice: the adapter's largest storage-buffer limits (so large models fit), the optional features
 * the kernels use (subgroups, timestamp queries, shader-f16, subgroup matrices), and clear errors when no adapter
 * exists.
 */
import { MambaError, optionKeys } from "../../errors.ts";

export interface WebGpuOptions {
  /** The GPU object (navigator.gpu in browsers); in Node the `webgpu` package's is used when absent. */
  gpu?: GPU;
  powerPreference?: GPUPowerPreference;
  /** Accept a software adapter (Mesa lavapipe, SwiftShader); default true. Choosing a backend automatically
   *  passes false: a CPU-emulated GPU is slower than the CPU backend itself. */
  allowFallbackAdapter?: boolean;
  /** In Node: ask Dawn for its unsafe (experimental, not yet validated to the web's safety standard) APIs and for
   *  f16 on NVIDIA's Vulkan driver (toggles allow_unsafe_apis and vulkan_enable_f16_on_nvidia), which the tensor
   *  cores' subgroup matrices and shader-f16 need there; default true. false keeps Dawn's safe defaults (the
   *  half-precision products may then be unavailable). Browsers decide for themselves. */
  unsafeApis?: boolean;
}

/** WebGpuOptions' keys (checkKeys). */
export const WEBGPU_OPTION_KEYS = optionKeys<WebGpuOptions>({ gpu: true, powerPreference: true, allowFallbackAdapter: true, unsafeApis: true });

/** A subgroup-matrix shape the adapter offers (chromium-experimental-subgroup-matrix): M × K by K × N products of
 *  `componentType` inputs into `resultComponentType` results. */
export interface SubgroupMatrixConfig {
  componentType: string;
  resultComponentType: string;
  M: number;
  N: number;
  K: number;
}

/** What a device offers for half-precision products. */
export interface HalfFeatures {
  /** 'shader-f16': WGSL's f16 type */
  f16: boolean;
  /** the subgroup-matrix shapes (empty without chromium-experimental-subgroup-matrix on the device) */
  subgroupMatrix: SubgroupMatrixConfig[];
}

export interface AcquiredDevice {
  gpu: GPU; // kept referenced for the device's lifetime
  adapter: GPUAdapter;
  device: GPUDevice;
  description: string;
  half: HalfFeatures;
}

export const SUBGROUP_MATRIX_FEATURE = "chromium-experimental-subgroup-matrix";
const WANTED_FEATURES: GPUFeatureName[] = ["subgroups", "timestamp-query", "shader-f16", SUBGROUP_MATRIX_FEATURE] as GPUFeatureName[];
// limits raised to the adapter's maxima: big weights and activations need the large buffer limits
const WANTED_LIMITS = [
  "maxStorageBufferBindingSize", "maxBufferSize", "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup", "maxComputeWorkgroupSizeX", "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupsPerDimension", "maxStorageBuffersPerShaderStage",
] as const;

async function findGpu(o: WebGpuOptions): Promise<GPU> {
  if (o.gpu) return o.gpu;
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu) return nav.gpu;
  const isNode = typeof process !== "undefined" && !!process.versions?.node;
  if (!isNode) throw new MambaError("WebGPU is not available: this browser has no navigator.gpu");
  let mod: typeof import("./node.ts");
  try {
    mod = await import("./node.ts");
  } catch (err) {
    throw new MambaError(`WebGPU is not available: the 'webgpu' package could not be loaded (${(err as Error).message})`);
  }
  if (o.allowFallbackAdapter === false && !mod.mayHaveGpu()) throw new MambaError("WebGPU: this machine shows no GPU device");
  return mod.nodeGpu(o.unsafeApis ?? true);
}

export async function acquireDevice(o: WebGpuOptions = {}): Promise<AcquiredDevice> {
  const gpu = await findGpu(o);
  let adapter: GPUAdapter | null = null;
  try {
    adapter = await gpu.requestAdapter(o.powerPreference ? { powerPreference: o.powerPreference } : undefined);
  } catch (err) {
    throw new MambaError(`WebGPU: requesting an adapter failed (${(err as Error).message})`);
  }
  if (!adapter) {
    throw new MambaError("WebGPU: no GPU adapter found (in Node on a machine without a GPU, install a Vulkan driver " +
      "such as Mesa lavapipe: scripts/install-lavapipe.sh)");
  }
  const fallback = (adapter.info as { isFallbackAdapter?: boolean } | undefined)?.isFallbackAdapter
    ?? (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter ?? false;
  if (fallback && o.allowFallbackAdapter === false) {
    throw new MambaError(`WebGPU: the only adapter is a software one (${adapter.info?.description || "fallback adapter"})`);
  }
  const requiredFeatures = WANTED_FEATURES.filter((f) => adapter.features.has(f));
  const requiredLimits: Record<string, number> = {};
  for (const k of WANTED_LIMITS) requiredLimits[k] = adapter.limits[k];
  let device: GPUDevice;
  try {
    device = await adapter.requestDevice({ requiredFeatures, requiredLimits });
  } catch (err) {
    throw new MambaError(`WebGPU: the adapter refused a device (${(err as Error).message})`);
  }
  const info = adapter.info;
  const description = [info?.vendor, info?.architecture, info?.device, info?.description].filter(Boolean).join(" ") || "unknown adapter";
  const matrices = device.features.has(SUBGROUP_MATRIX_FEATURE)
    ? [...((info as { subgroupMatrixConfigs?: Iterable<SubgroupMatrixConfig> } | undefined)?.subgroupMatrixConfigs ?? [])]
    : [];
  const half: HalfFeatures = {
    f16: device.features.has("shader-f16"),
    subgroupMatrix: matrices.map((c) => ({ componentType: c.componentType, resultComponentType: c.resultComponentType, M: c.M, N: c.N, K: c.K })),
  };
  return { gpu, adapter, device, description, half };
}
