/**
 * The backends a parameterized test runs on: the CPU always, WebGPU when an adapter exists. A GPU test that
 * cannot get an adapter is skipped with the reason, except under CI=true, where it fails: CI must have one
 * (scripts/install-lavapipe.sh gives CPU-only machines a software Vulkan driver).
 */
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import type { Backend } from "../../src/backend/backend.ts";
import type { WebGpuBackend } from "../../src/backend/webgpu/index.ts";
import { CpuBackend } from "../../src/backend/cpu/index.ts";

export interface BackendCase {
  name: "cpu" | "webgpu";
  /** the backend, or null with the reason it is unavailable */
  get(): Promise<Backend | null>;
  reason: () => string;
}

let gpu: Promise<Backend | null> | null = null;
let gpuReason = "";

/** One WebGPU backend per test file (adapters are slow to create on software Vulkan). */
export function webgpuBackend(): Promise<Backend | null> {
  gpu ??= (async () => {
    try {
      const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
      return await createWebGpuBackend();
    } catch (err) {
      gpuReason = `no WebGPU adapter: ${(err as Error).message}`;
      return null;
    }
  })();
  return gpu;
}

export const backendCases: BackendCase[] = [
  { name: "cpu", get: async () => new CpuBackend(), reason: () => "" },
  { name: "webgpu", get: webgpuBackend, reason: () => gpuReason },
];

/** Skips the test with the reason, or fails it when CI=true. */
export function unavailable(t: TestContext, reason: string): void {
  if (process.env.CI === "true") assert.fail(`CI=true requires a WebGPU adapter: ${reason}`);
  t.skip(reason);
}

/** Destroys the shared WebGPU backend (call from an `after` hook). */
export async function releaseWebgpu(): Promise<void> {
  const b = await gpu;
  await b?.destroy();
  gpu = null;
}

let probe: Promise<string | null> | null = null;

/** null when a WebGPU adapter exists, else the reason there is none (for tests that make their own backends). */
export function noWebgpu(): Promise<string | null> {
  probe ??= (async () => {
    try {
      const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
      await (await createWebGpuBackend()).destroy();
      return null;
    } catch (err) {
      return `no WebGPU adapter: ${(err as Error).message}`;
    }
  })();
  return probe;
}

/**
 * Runs fn with a WebGPU backend of its own (not the file's shared one), destroyed afterwards; without an adapter the
 * test is skipped as gpuTest does (failed under CI=true).
 */
export async function withOwnWebgpu(t: TestContext, fn: (b: WebGpuBackend) => Promise<void>): Promise<void> {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  const b = (await createWebGpuBackend()) as WebGpuBackend;
  try {
    await fn(b);
  } finally {
    await b.destroy();
  }
}

/** true when a WebGPU adapter exists; otherwise skips the test with the reason (fails it under CI=true). */
export async function gpuTest(t: TestContext): Promise<boolean> {
  const reason = await noWebgpu();
  if (reason) unavailable(t, reason);
  return reason === null;
}
