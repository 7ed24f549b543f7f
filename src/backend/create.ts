/**
 * Choosing a backend by name. "auto" takes WebGPU when an adapter exists, else the CPU, and says which through
 * `onNotice`. The WebGPU backend is loaded lazily, so CPU-only use never touches a GPU library.
 */
import type { Backend } from "./backend.ts";
import { CpuBackend } from "./cpu/index.ts";
import { MambaError } from "../errors.ts";

export type BackendName = "cpu" | "webgpu" | "auto";

/** `webgpu`: options and tunings for a WebGPU backend, where one is made (createWebGpuBackend's). */
export async function createBackend(name: BackendName = "auto", onNotice?: (msg: string) => void, webgpu: object = {}): Promise<Backend> {
  if (name === "cpu") return new CpuBackend();
  if (name === "webgpu" || name === "auto") {
    let mod: { createWebGpuBackend?: (o?: { allowFallbackAdapter?: boolean }) => Promise<Backend> } | null = null;
    try {
      mod = await import("./webgpu/index.ts");
    } catch {
      mod = null;
    }
    if (!mod?.createWebGpuBackend) {
      if (name === "webgpu") throw new MambaError("the WebGPU backend is not available in this build");
      onNotice?.("backend: cpu (WebGPU is not available in this build)");
      return new CpuBackend();
    }
    if (name === "webgpu") return mod.createWebGpuBackend(webgpu);
    try {
      const b = await mod.createWebGpuBackend({ ...webgpu, allowFallbackAdapter: false }); // software GPUs lose to the CPU backend
      onNotice?.("backend: webgpu");
      return b;
    } catch (err) {
      onNotice?.(`backend: cpu (no WebGPU: ${(err as Error).message})`);
      return new CpuBackend();
    }
  }
  throw new MambaError(`unknown backend '${String(name)}' (use cpu, webgpu or auto)`);
}
