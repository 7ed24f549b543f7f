/**
 * Selective scan, phase 3 of 3 (the only phase when the sequence is one chunk, as in decode): each thread runs
 * the recurrence of one channel over one chunk from that chunk's start state, all in one pass:
 *   delta = softplus(delta_raw + bias);  h = exp(delta·A) ∘ h + delta·u·B[t];  y = C[t]·h + D·u;  y *= silu(z)
 * with its N states in registers (never a [B, L, E, N] buffer) and the B, C rows of the chunk staged in
 * workgroup memory for all channels of the workgroup. The last chunk writes the final state to stateOut.
 * Start states come from `start` read with strides, so one binding serves both layouts: the combine's
 * S [B, nC, N, E] or the caller's state [B, E, N].
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params } from "../../gpu.ts";
import { SCAN_WG, type ScanGeometry } from "./geometry.ts";
import type { ScanInputs } from "./chunk.ts";
import { SOFTPLUS_WGSL } from "../wgsl-common.ts";
import { defineKernel } from "../../kernel-def.ts";

const TS = 32; // time steps of B and C staged in workgroup memory at once

const wgsl = (N: number) => /* wgsl */ `
// bindings: 0 u [B·L, E] | 1 delta [B·L, ldD] | 2 packed [E, N + 2] (A·log2e, dt bias, D) | 3 BC [B·L, ldBC]
//           4 z [B·L, ldZ] | 5 start | 6 y [B·L, E] out | 7 stateOut [B, E, N] out | 8 params
// grid: (E / WG, nC, B)
const N = ${N}u;
const WG = ${SCAN_WG}u;
const TS = ${TS}u;
const SUB = 8u; // steps whose delta, u (, z) a thread loads together, into registers

struct P {
  B: u32, L: u32, E: u32, nC: u32, chunkLen: u32,
  ldD: u32, offD: u32, ldBC: u32, offB: u32, offC: u32, ldZ: u32, offZ: u32,
  hasZ: u32, hasStart: u32, writeState: u32,
  // start state of (b, c, e, n) = start[b * sB + c * sC + e * sE + n * sN]
  sB: u32, sC: u32, sE: u32, sN: u32,
}
@group(0) @binding(0) var<storage, read> u: array<f32>;
@group(0) @binding(1) var<storage, read> delta: array<f32>;
@group(0) @binding(2) var<storage, read> packed: array<f32>;
@group(0) @binding(3) var<storage, read> BC: array<f32>;
@group(0) @binding(4) var<storage, read> z: array<f32>;
@group(0) @binding(5) var<storage, read> start: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;
@group(0) @binding(7) var<storage, read_write> stateOut: array<f32>;
@group(0) @binding(8) var<uniform> p: P;

var<workgroup> Bsh: array<f32, TS * N>;
var<workgroup> Csh: array<f32, TS * N>;

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
  var A2: array<f32, N>; // A · log2(e), so that exp(delta · A) = exp2(delta · A2)
  var bias = 0.0;
  var skip = 0.0;
  if (live) {
    for (var n = 0u; n < N; n++) { A2[n] = packed[e * (N + 2u) + n]; }
    bias = packed[e * (N + 2u) + N];
    skip = packed[e * (N + 2u) + N + 1u];
    if (p.hasStart != 0u) {
      let s0 = b * p.sB + c * p.sC + e * p.sE;
      for (var n = 0u; n < N; n++) { h[n] = start[s0 + n * p.sN]; }
    }
  }
  for (var ts = t0; ts < t1; ts += TS) {
    let cnt = min(TS, t1 - ts);
    workgroupBarrier();
    for (var i = lid.x; i < cnt * N; i += WG) {
      let row = b * p.L + ts + i / N;
      Bsh[i] = BC[row * p.ldBC + p.offB + i % N];
      Csh[i] = BC[row * p.ldBC + p.offC + i % N];
    }
    workgroupBarrier();
    if (live) {
      for (var j0 = 0u; j0 < cnt; j0 += SUB) {
        // SUB steps' loads issued together (a fixed trip count the compiler unrolls into registers)
        var dts: array<f32, SUB>;
        var uvs: array<f32, SUB>;
        var zvs: array<f32, SUB>;
        for (var k = 0u; k < SUB; k++) {
          if (j0 + k < cnt) {
            let row = b * p.L + ts + j0 + k;
            dts[k] = delta[row * p.ldD + p.offD + e];
            uvs[k] = u[row * p.E + e];
            if (p.hasZ != 0u) { zvs[k] = z[row * p.ldZ + p.offZ + e]; }
          }
        }
        for (var k = 0u; k < SUB; k++) {
          if (j0 + k < cnt) {
            let j = j0 + k;
            let dt = softplus(dts[k] + bias);
            let uv = uvs[k];
            let du = dt * uv;
            var acc = 0.0;
            for (var n = 0u; n < N; n++) {
              h[n] = fma(exp2(dt * A2[n]), h[n], du * Bsh[j * N + n]);
              acc = fma(h[n], Csh[j * N + n], acc);
            }
            var out = fma(skip, uv, acc);
            if (p.hasZ != 0u) {
              let zv = zvs[k];
              out *= zv / (1.0 + exp(-zv));
            }
            y[(b * p.L + ts + j) * p.E + e] = out;
          }
        }
      }
    }
  }
  if (live && p.writeState != 0u && c == p.nC - 1u) {
    for (var n = 0u; n < N; n++) { stateOut[(b * p.E + e) * N + n] = h[n]; }
  }
}
`;

export interface ScanStart {
  buf: Buf;
  sB: number;
  sC: number;
  sE: number;
  sN: number;
}

const scanOutputKernel = defineKernel({ name: "scan_output", wgsl, label: (N) => `scan_output_${N}`, example: 16 });

export function scanOutput(gpu: Gpu, g: ScanGeometry, a: ScanInputs, start: ScanStart | null, y: Buf, stateOut: Buf | null): void {
  const k = gpu.kernel(scanOutputKernel, g.N);
  const s = start ?? { buf: gpu.dummy, sB: 0, sC: 0, sE: 0, sN: 0 };
  const p = new Params().u32(g.B).u32(g.L).u32(g.E).u32(g.nC).u32(g.chunkLen)
    .u32(a.ldD).u32(a.offD).u32(a.ldBC).u32(a.offB).u32(a.offC).u32(a.ldZ).u32(a.offZ)
    .bool(!!a.z).bool(!!start).bool(!!stateOut)
    .u32(s.sB).u32(s.sC).u32(s.sE).u32(s.sN);
  gpu.dispatch(k, [a.u, a.delta, a.packed, a.BC, a.z ?? gpu.dummy, s.buf, y, stateOut ?? gpu.dummyOut],
    p, [Math.ceil(g.E / SCAN_WG), g.nC, g.B]);
}
