/** The WebGPU backend (not built yet). */
import type { Backend } from "../backend.ts";
import { MambaError } from "../../errors.ts";

export async function createWebGpuBackend(): Promise<Backend> {
  throw new MambaError("the WebGPU backend is not available in this build");
}
