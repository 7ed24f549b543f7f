/**
 * Random arguments of Mamba-2's SSD scan for kernel tests: x, B, C as column windows of one wider tensor (as the
 * model reads them), dt and z of another, so every kernel is exercised on windows, not only on whole tensors.
 */
import { type Backend, type SsdScanArgs, cols } from "../../src/backend/backend.ts";
import { TestRng } from "./random.ts";

/** A scan's shape: batch B, length L, H heads of P in G groups, state N; Q the chunk size (default 4). */
export interface SsdCase { B: number; L: number; H: number; P: number; G: number; N: number; Q?: number; state: boolean; gate: boolean; limit: [number, number] }

/** A case's arguments on backend b, drawn from `seed` (the same values on every backend). */
export function ssdArgs(b: Backend, c: SsdCase, seed: number): SsdScanArgs {
  const r = new TestRng(seed);
  const T = c.B * c.L, E = c.H * c.P, GN = c.G * c.N;
  const xBC = b.fromF32(r.f32(T * (E + 2 * GN + 3)), [T, E + 2 * GN + 3]);
  const zdt = b.fromF32(r.f32(T * (E + c.H + 1)), [T, E + c.H + 1]);
  return {
    batch: c.B, seqLen: c.L, x: cols(xBC, 1, E), B: cols(xBC, 1 + E, GN), C: cols(xBC, 1 + E + GN, GN),
    dt: cols(zdt, E + 1, c.H), dtBias: b.fromF32(r.f32(c.H, 1), [c.H]),
    A_log: b.fromF32(Float32Array.from({ length: c.H }, () => Math.log(r.uniform(0.5, 8))), [c.H]),
    D: b.fromF32(r.f32(c.H), [c.H]), z: c.gate ? cols(zdt, 0, E) : null, headDim: c.P, nGroups: c.G, dtLimit: c.limit,
    chunkSize: c.Q ?? 4, state: c.state ? b.fromF32(r.f32(c.B * c.H * c.P * c.N), [c.B, c.H, c.P, c.N]) : null,
  };
}
