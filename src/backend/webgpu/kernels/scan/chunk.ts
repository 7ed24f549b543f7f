/**
 * Selective scan, phase 1 of 3 (only when the sequence is split into chunks): for each chunk c but the last and
 * each (b, e), run the recurrence over the chunk from a zero state and keep
 *   S[b, c, n, e] = h at the chunk's end,   dsum[b, c, e] = Σ_t delta_t
 * The pair (a, b) of the chunk is then (exp(A · dsum), S): the product of exp(delta_t · A) over the chunk is
 * exp(A · Σ delta_t), so one number per channel stands for N decay factors.
 * One thread per channel with its N states in registers; the workgroup stages B rows in workgroup memory.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params } from "../../gpu.ts";
import { SCAN_WG, type ScanGeometry } from "./geometry.ts";
import { SOFTPLUS_WGSL } from "../wgsl-common.ts";
import { defineKernel } from "../../kernel-def.ts";

const TS = 32; // time steps of B staged in workgroup memory at once

const wgsl = (N: number) => /* wgsl */ `
// bindings: 0 u [B·L, E] | 1 delta [B·L, ldD] | 2 packed [E, N + 2] (A·log2e, dt bias, D) | 3 BC [B·L, ldBC]
//           4 S [B, nC, N, E] out | 5 dsum [B, nC, E] out | 6 params
// grid: (E / WG, nC - 1, B)
const N = ${N}u;
const WG = ${SCAN_WG}u;
const TS = ${TS}u;
const SUB = 8u; // steps whose delta, u (, z) a thread loads together, into registers

struct P { B: u32, L: u32, E: u32, nC: u32, chunkLen: u32, ldD: u32, offD: u32, ldBC: u32, offB: u32 }
@group(0) @binding(0) var<storage, read> u: array<f32>;
@group(0) @binding(1) var<storage, read> delta: array<f32>;
@group(0) @binding(2) var<storage, read> packed: array<f32>;
@group(0) @binding(3) var<storage, read> BC: array<f32>;
@group(0) @binding(4) var<storage, read_write> S: array<f32>;
@group(0) @binding(5) var<storage, read_write> dsum: array<f32>;
@group(0) @binding(6) var<uniform> p: P;

var<workgroup> Bsh: array<f32, TS * N>;

${SOFTPLUS_WGSL}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let e = wg.x * WG + lid.x;
  let c = wg.y;
  let b = wg.z;
  let live = e < p.E;
  let t0 = c * p.chunkLen;
  let t1 = min(t0 + p.chunkLen, p.L);
  var h: array<f32, N>;
  var A2: array<f32, N>;
  var bias = 0.0;
  if (live) {
    for (var n = 0u; n < N; n++) { A2[n] = packed[e * (N + 2u) + n]; }
    bias = packed[e * (N + 2u) + N];
  }
  var ds = 0.0;
  for (var ts = t0; ts < t1; ts += TS) {
    let cnt = min(TS, t1 - ts);
    workgroupBarrier();
    for (var i = lid.x; i < cnt * N; i += WG) {
      Bsh[i] = BC[(b * p.L + ts + i / N) * p.ldBC + p.offB + i % N];
    }
    workgroupBarrier();
    if (live) {
      for (var j0 = 0u; j0 < cnt; j0 += SUB) {
        // SUB steps' loads issued together (a fixed trip count the compiler unrolls into registers)
        var dts: array<f32, SUB>;
        var uvs: array<f32, SUB>;
        for (var k = 0u; k < SUB; k++) {
          if (j0 + k < cnt) {
            let row = b * p.L + ts + j0 + k;
            dts[k] = delta[row * p.ldD + p.offD + e];
            uvs[k] = u[row * p.E + e];
          }
        }
        for (var k = 0u; k < SUB; k++) {
          if (j0 + k < cnt) {
            let dt = softplus(dts[k] + bias);
            let du = dt * uvs[k];
            ds += dt;
            for (var n = 0u; n < N; n++) { h[n] = fma(exp2(dt * A2[n]), h[n], du * Bsh[(j0 + k) * N + n]); }
          }
        }
      }
    }
  }
  if (live) {
    let base = (b * p.nC + c) * N * p.E + e;
    for (var n = 0u; n < N; n++) { S[base + n * p.E] = h[n]; }
    dsum[(b * p.nC + c) * p.E + e] = ds;
  }
}
`;

/** The scan's inputs as buffers and windows: B and C are column windows of one buffer `BC`. */
export interface ScanInputs {
  u: Buf;
  delta: Buf; ldD: number; offD: number;
  packed: Buf; // [E, N + 2]
  BC: Buf; ldBC: number; offB: number; offC: number;
  z: Buf | null; ldZ: number; offZ: number;
}

const scanChunkKernel = defineKernel({ name: "scan_chunk", wgsl, label: (N) => `scan_chunk_${N}`, example: 16 });

export function scanChunk(gpu: Gpu, g: ScanGeometry, a: ScanInputs, S: Buf, dsum: Buf): void {
  const k = gpu.kernel(scanChunkKernel, g.N);
  const p = new Params().u32(g.B).u32(g.L).u32(g.E).u32(g.nC).u32(g.chunkLen).u32(a.ldD).u32(a.offD).u32(a.ldBC).u32(a.offB);
  gpu.dispatch(k, [a.u, a.delta, a.packed, a.BC, S, dsum], p, [Math.ceil(g.E / SCAN_WG), g.nC - 1, g.B]);
}
