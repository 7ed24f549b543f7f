/**
 * createCpuBackend: the CPU engine of `backend: "cpu"`. The WebAssembly SIMD engine with a pool of threads
 * (./index.ts) by default; the plain TypeScript reference engine (../cpu) when asked for, or where the runtime has
 * no shared memory (a page served without cross-origin isolation), which `onNotice` then says.
 */
import type { Backend } from "../backend.ts";
import { CpuBackend } from "../cpu/index.ts";
import { MambaError, check, checkKeys, optionKeys } from "../../errors.ts";
import { WasmCpuBackend, createWasmCpuBackend, defaultThreads } from "./index.ts";
import { type SimdPath, sharedMemoryAvailable } from "./runtime.ts";

export interface CpuBackendOptions {
  /** threads, the calling one included (default: the available cores) */
  threads?: number;
  /** true: the plain TypeScript reference engine */
  reference?: boolean;
  /** "plain" forces the plain SIMD build of the kernels (default "auto": relaxed SIMD where the runtime has it) */
  simd?: SimdPath | "auto";
  /** told when the fast engine cannot run here and the reference engine runs instead */
  onNotice?: (message: string) => void;
}

/** CpuBackendOptions' keys (checkKeys). */
export const CPU_BACKEND_OPTION_KEYS = optionKeys<CpuBackendOptions>({ threads: true, reference: true, simd: true, onNotice: true });

/** A CPU backend: the fast WebAssembly engine, or the reference one (see CpuBackendOptions). */
export async function createCpuBackend(options: CpuBackendOptions = {}): Promise<Backend> {
  check(options !== null && typeof options === "object", "createCpuBackend: options must be an object");
  checkKeys("createCpuBackend", options, CPU_BACKEND_OPTION_KEYS);
  const { threads, reference = false, simd = "auto", onNotice } = options;
  if (threads !== undefined) {
    check(Number.isInteger(threads) && threads >= 1 && threads <= 256, `threads must be an integer from 1 to 256, got ${String(threads)}`);
  }
  check(simd === "auto" || simd === "relaxed" || simd === "plain", `simd must be auto, relaxed or plain, got ${String(simd)}`);
  if (reference) return new CpuBackend();
  if (!sharedMemoryAvailable()) {
    onNotice?.("backend: cpu (reference: no shared memory here; a page needs cross-origin isolation for the wasm engine)");
    return new CpuBackend();
  }
  try {
    const b = await createWasmCpuBackend({ threads: threads ?? defaultThreads(), simd });
    if (b.referenceOps.length > 0) onNotice?.(`cpu: ${b.referenceOps.join(", ")} run the reference code (no kernel in this build)`);
    return b;
  } catch (err) {
    if (typeof WebAssembly === "undefined") {
      onNotice?.("backend: cpu (reference: no WebAssembly here)");
      return new CpuBackend();
    }
    throw err instanceof MambaError ? err : new MambaError(`the wasm cpu engine did not start: ${String((err as Error)?.message ?? err)}`);
  }
}

/** Which engine a backend runs, for messages: "cpu (wasm simd relaxed, 2 threads)", "cpu (reference)", "webgpu".
 *  `detailed` adds how the SIMD build was chosen ("relaxed SIMD (enabled by V8 flag)", ...). */
export function describeBackend(b: Backend, detailed = false): string {
  if (b instanceof WasmCpuBackend) return detailed ? `${b.engine}: ${b.rt.pathNote}` : b.engine;
  if (b.name === "cpu") return "cpu (reference)";
  return b.precision === "f16" ? `${b.name} (f16 products)` : b.name;
}

