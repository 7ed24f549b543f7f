/**
 * Fused decode, kernel 2 of 3 per layer: from kernel 1's partial x_proj to the gated scan output, one dispatch.
 * Every workgroup first sums the partials into dt | B | C of each row (workgroup memory); then one thread per
 * (row b, channel e) computes delta = softplus(dt_proj[e] · dt + bias), advances its N states in place
 * (h = exp(delta·A)·h + delta·u·B), and writes y = (C·h + D·u) · silu(z).
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params } from "../../gpu.ts";
import { type WeightStorage, weightBinding, weightReader } from "../weights.ts";

/** B · (R + 2N) values of x_proj that fit workgroup memory. */
export const DECODE_MAX_BJ = 2048;

const wgsl = (ws: WeightStorage) => /* wgsl */ `
// bindings: 0 Q [groups, B, J] | 1 lp (layer constants) | 2 Wdt [E, R] | 3 xz [B, 2E] | 4 ssm [B, E, N] in/out
//           5 y [B, E] out | 6 params
// grid: (ceil(E / floor(WG / B)))
const WG = 256u;

struct P { B: u32, E: u32, N: u32, R: u32, J: u32, G: u32, oPack: u32 }
@group(0) @binding(0) var<storage, read> Q: array<f32>;
@group(0) @binding(1) var<storage, read> lp: array<f32>;
@group(0) @binding(2) var<storage, read> wDt: array<${weightBinding(ws)}>;
@group(0) @binding(3) var<storage, read> xz: array<f32>;
@group(0) @binding(4) var<storage, read_write> ssm: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<uniform> p: P;

var<workgroup> xd: array<f32, ${DECODE_MAX_BJ}u>; // x_proj output [B, J]: dt | B | C

${weightReader(ws, "wdt", "wDt")}

fn softplus(v: f32) -> f32 {
  let ev = exp(v);
  // log(1 + e) loses e when e is tiny; its series keeps it (PyTorch passes v > 20 through)
  return select(select(log(1.0 + ev), ev * (1.0 - 0.5 * ev), ev < 1e-4), v, v > 20.0);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let t = lid.x;
  let B = p.B;
  let J = p.J;
  for (var i = t; i < B * J; i += WG) {
    var s = 0.0;
    for (var g = 0u; g < p.G; g++) { s += Q[g * B * J + i]; }
    xd[i] = s;
  }
  workgroupBarrier();

  let per = WG / B; // channels per workgroup
  let b = t / per;
  let e = wg.x * per + t % per;
  if (b >= B || e >= p.E) { return; }
  let E = p.E;
  let N = p.N;
  let pk = p.oPack + e * (N + 2u); // A·log2(e) [N], dt bias, D
  var dt = lp[pk + N];
  for (var r = 0u; r < p.R; r++) { dt = fma(wdt(e * p.R + r), xd[b * J + r], dt); }
  dt = softplus(dt);
  let uv = xz[b * 2u * E + e];
  let zv = xz[b * 2u * E + E + e];
  let du = dt * uv;
  var acc = 0.0;
  for (var n = 0u; n < N; n++) {
    let si = (b * E + e) * N + n;
    let hn = fma(exp2(dt * lp[pk + n]), ssm[si], du * xd[b * J + p.R + n]);
    ssm[si] = hn;
    acc = fma(hn, xd[b * J + p.R + N + n], acc);
  }
  let out = fma(lp[pk + N + 1u], uv, acc);
  y[b * E + e] = out * zv / (1.0 + exp(-zv));
}
`;

export interface MixerScanArgs {
  B: number; E: number; N: number; R: number; J: number; G: number;
  Q: Buf; lp: Buf; oPack: number; wDt: Buf; wsDt: WeightStorage; xz: Buf; ssm: Buf; y: Buf;
}

export function decodeMixerScan(gpu: Gpu, a: MixerScanArgs): void {
  const k = gpu.kernel(`decode_scan_${a.wsDt}`, () => wgsl(a.wsDt));
  const per = Math.floor(256 / a.B);
  const p = new Params().u32(a.B).u32(a.E).u32(a.N).u32(a.R).u32(a.J).u32(a.G).u32(a.oPack);
  gpu.dispatch(k, [a.Q, a.lp, a.wDt, a.xz, a.ssm, a.y], p, [Math.ceil(a.E / per)]);
}
