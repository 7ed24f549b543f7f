/**
 * Fused decode, the end of a step: the last layer's output (residual + the partial sums of its out_proj), norm_f
 * and the LM head in one dispatch (a separate norm would cost a dependent dispatch of its own).
 * Every workgroup rebuilds and normalizes the B rows in workgroup memory (./input.ts), then each group of 32
 * threads streams RPW rows of the head as 4-wide loads (vec4 of f32, or 2 u32 words of packed halves), applying
 * each to all B rows. A workgroup covers 8 · RPW head rows so that the redundant rebuild (G · B · D reads from L2)
 * stays small next to its weights; the first weights are loaded before the rebuild, which does not feed them.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params, grid } from "../../gpu.ts";
import { type WeightStorage, weight4Binding, weight4Reader } from "../weights.ts";
import { DECODE_MAX_BD } from "./mixer-in.ts";
import { normRowsWgsl, sumInputWgsl } from "./input.ts";

const wgsl = (B: number, ws: WeightStorage, RPW: number) => /* wgsl */ `
// bindings: 0 parts [G, B, D] | 1 res [2, B, D] (the half from word resOff) | 2 norm_f weight [D] | 3 head [V, D]
//           4 logits [B, V] out | 5 params
// grid: ceil(V / RPG) workgroups, folded into y past the per-dimension limit
const WG = 256u;
const B = ${B}u;
const MAXB = B;
const MAXU = ${DECODE_MAX_BD}u;
const RPW = ${RPW}u;
const RPG = 8u * RPW;
const BATCH = ${ws === "f32" ? 4 : 8}u; // loads issued together: 64 bytes a lane (f32 vec4s or packed-half pairs)

struct P { D: u32, V: u32, G: u32, resOff: u32, eps: f32, groupsX: u32 }
@group(0) @binding(0) var<storage, read> parts: array<f32>;
@group(0) @binding(1) var<storage, read> res: array<f32>;
@group(0) @binding(2) var<storage, read> normW: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<${weight4Binding(ws)}>;
@group(0) @binding(4) var<storage, read_write> logits: array<f32>;
@group(0) @binding(5) var<uniform> p: P;

var<workgroup> us: array<f32, MAXU>;        // normalized rows [B, D]
var<workgroup> red: array<f32, WG * MAXB>;  // partial sums

${weight4Reader(ws)}
fn normWeight(d: u32) -> f32 { return normW[d]; }
${sumInputWgsl(false)}
${normRowsWgsl}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let t = lid.x;
  let lane = t % 32u;
  let warp = t / 32u;
  let D = p.D;
  let D4 = D / 4u;
  let n0 = (wg.y * p.groupsX + wg.x) * RPG + warp * RPW;

  // the first row's first weights, then the input rows
  var wv: array<vec4<f32>, BATCH>;
  if (n0 < p.V) {
    for (var k = 0u; k < BATCH; k++) {
      if (lane + 32u * k < D4) { wv[k] = weight4(n0 * D4 + lane + 32u * k); }
    }
  }
  sumInput(t, B * D, p.G, true, p.resOff, false, 0u);
  normRows(t, B, D, p.eps);

  for (var r = 0u; r < RPW; r++) {
    let n = n0 + r;
    var s = array<f32, B>(); // an explicit zero: a var in a loop is not reliably re-zeroed on every trip
    if (n < p.V) {
      for (var k0 = lane; k0 < D4; k0 += 32u * BATCH) {
        if (r != 0u || k0 != lane) {
          for (var k = 0u; k < BATCH; k++) {
            if (k0 + 32u * k < D4) { wv[k] = weight4(n * D4 + k0 + 32u * k); }
          }
        }
        for (var k = 0u; k < BATCH; k++) {
          let k4 = k0 + 32u * k;
          if (k4 < D4) {
            for (var b = 0u; b < B; b++) {
              let o = b * D + 4u * k4;
              s[b] = fma(wv[k].x, us[o], fma(wv[k].y, us[o + 1u], fma(wv[k].z, us[o + 2u], fma(wv[k].w, us[o + 3u], s[b]))));
            }
          }
        }
      }
    }
    for (var b = 0u; b < B; b++) { red[b * WG + t] = s[b]; }
    workgroupBarrier();
    if (lane < B && n < p.V) {
      var v = 0.0;
      for (var j = 0u; j < 32u; j++) { v += red[lane * WG + warp * 32u + j]; }
      logits[lane * p.V + n] = v;
    }
    workgroupBarrier();
  }
}
`;

export interface DecodeHeadArgs {
  B: number; D: number; V: number; eps: number;
  /** the last layer's output: its partial sums [G, B, D] over its residual (word resOff of res) */
  parts: Buf; G: number; res: Buf; resOff: number;
  normW: Buf; head: Buf; ws: WeightStorage;
  logits: Buf;
  /** head rows per 32 threads (./geometry.ts) */
  RPW: number;
}

// -> logits [B, V] = rmsnorm(res + Σ parts) · headᵀ
export function decodeHead(gpu: Gpu, a: DecodeHeadArgs): void {
  const k = gpu.kernel(`decode_head_${a.B}_${a.ws}_${a.RPW}`, () => wgsl(a.B, a.ws, a.RPW));
  const [gx, gy] = grid(Math.ceil(a.V / (8 * a.RPW)), gpu.limits.maxComputeWorkgroupsPerDimension);
  const p = new Params().u32(a.D).u32(a.V).u32(a.G).u32(a.resOff).f32(a.eps).u32(gx);
  gpu.dispatch(k, [a.parts, a.res, a.normW, a.head, a.logits], p, [gx, gy]);
}
