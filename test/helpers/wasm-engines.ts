/**
 * The CPU engine in the builds and thread counts the kernel tests compare: both SIMD builds, 1 to 3 threads. Call
 * at a test file's top level: the engines are made before its tests and destroyed after them.
 */
import { after, before } from "node:test";
import { type WasmCpuBackend, createWasmCpuBackend } from "../../src/backend/wasm/index.ts";

export interface NamedEngine { name: string; b: WasmCpuBackend }

export function wasmEngines(): NamedEngine[] {
  const engines: NamedEngine[] = [];
  before(async () => {
    engines.push({ name: "relaxed, 1 thread", b: await createWasmCpuBackend({ threads: 1 }) });
    engines.push({ name: "relaxed, 2 threads", b: await createWasmCpuBackend({ threads: 2 }) });
    engines.push({ name: "relaxed, 3 threads", b: await createWasmCpuBackend({ threads: 3 }) });
    engines.push({ name: "plain, 1 thread", b: await createWasmCpuBackend({ threads: 1, simd: "plain" }) });
    engines.push({ name: "plain, 3 threads", b: await createWasmCpuBackend({ threads: 3, simd: "plain" }) });
  });
  after(async () => {
    for (const e of engines) await e.b.destroy();
  });
  return engines;
}

/** A float array's bits, to compare results for bitwise equality. */
export const bits = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);
/** The largest magnitude in a float array. */
export const maxAbs = (a: Float32Array) => a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
