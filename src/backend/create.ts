/**
 * Choosing a backend by name. "auto" takes WebGPU when an adapter exists, else the CPU, and says which through
 * `onNotice` ("backend: webgpu", or "backend: cpu (no WebGPU: <why>)"). The WebGPU backend is loaded lazily, so
 * CPU-only use never touches a GPU library; in Node, that library (the `webgpu` package) is an optional dependency,
 * and asking for "webgpu" without it is an error that says how to install it.
 */
import type { Backend } from "./backend.ts";
import { type CpuBackendOptions, createCpuBackend } from "./wasm/create.ts";
import { MambaError } from "../errors.ts";

export type BackendName = "cpu" | "webgpu" | "auto";

/** `webgpu`: options and tunings for a WebGPU backend, where one is made (createWebGpuBackend's). `cpu`: options of
 *  the CPU engine, where one is made (createCpuBackend's: the wasm engine, with the available cores by default). */
export async function createBackend(
  name: BackendName = "auto", onNotice?: (msg: string) => void, webgpu: object = {}, cpu: CpuBackendOptions = {},
): Promise<Backend> {
  const cpuBackend = () => createCpuBackend({ ...cpu, ...(onNotice ? { onNotice } : {}) });
  if (name === "cpu") return cpuBackend();
  if (name === "webgpu" || name === "auto") {
    let mod: { createWebGpuBackend?: (o?: { allowFallbackAdapter?: boolean }) => Promise<Backend> } | null = null;
    let loadError = "";
    try {
      mod = await import("./webgpu/index.ts");
    } catch (err) {
      mod = null;
      loadError = `: ${String((err as Error)?.message ?? err).split("\n")[0]}`;
    }
    if (!mod?.createWebGpuBackend) {
      if (name === "webgpu") throw new MambaError(`the WebGPU backend did not load${loadError}`);
      onNotice?.(`backend: cpu (no WebGPU: the WebGPU backend did not load${loadError})`);
      return cpuBackend();
    }
    if (name === "webgpu") return mod.createWebGpuBackend(webgpu);
    try {
      const b = await mod.createWebGpuBackend({ ...webgpu, allowFallbackAdapter: false }); // software GPUs lose to the CPU backend
      onNotice?.("backend: webgpu");
      return b;
    } catch (err) {
      // "WebGPU: no GPU adapter found" reads as "no WebGPU: no GPU adapter found"
      onNotice?.(`backend: cpu (no WebGPU: ${String((err as Error)?.message ?? err).replace(/^WebGPU( in Node)?: /, "")})`);
      return cpuBackend();
    }
  }
  throw new MambaError(`unknown backend '${String(name)}' (use cpu, webgpu or auto)`);
}
