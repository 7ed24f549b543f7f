/**
 * Mamba-2's fused decode, the third kernel of a layer: out_proj of up to 8 rows with the gated norm's scale.
 * The scan kernel (./mamba2-ssm.ts) leaves v = gated y times the norm's weight [T, E] and, per row, the sums of
 * squares of its workgroups (ss [T, NWG], WPG consecutive workgroups a group of GS channels); each workgroup here
 * first makes every (row, group)'s r = 1 / sqrt(Σ ss / GS + eps), then streams rows of out_proj as ../matvec.ts
 * does (LPR lanes a row, 4-wide loads, every row of v at once):
 *   y[t, n] = Σ_k w[n, k] · v[t, k] · r[t, group(k)] (+ bias[n])
 * With one group r is a factor of the whole sum, applied once at the end. Without the norm (norm false) r is 1.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";
import { type WeightStorage, weight4Binding, weight4Reader } from "../weights.ts";
import { m2Lanes, rowGroupsGrid, rowGroupsWgsl } from "./mamba2-in.ts";
import { defineKernel } from "../../kernel-def.ts";
import { treeSumWgsl } from "../wgsl-common.ts";

export const M2_OUT_MAX_ROWS = 8;

export interface M2OutShape {
  T: number; K: number; ws: WeightStorage; loadBytes: number;
  /** the norm: groups, channels a group, the scan's workgroups a row and a group (0 groups: no norm) */
  G: number; GS: number; NWG: number; WPG: number;
  /** lanes a row (m2Lanes; 0: by K) */
  lanes: number;
}

/**
 * The matvec kernel as parts (../compose.ts): the phase function `m2Out(t0, wg)` does workgroup wg's rows.
 * `shared` (the one-dispatch layer, ./mamba2-layer.ts): v and ss, which the scan's phase stores in other workgroups
 * of the same dispatch, are loaded through atomics (a plain load may read a stale copy in the workgroup's own
 * cache), v once into workgroup memory (us, times its group's r where there are several groups), as each of the
 * workgroup's rows reads all of it; the output is h, which in_proj's phase reads; `wait` (WGSL) runs once the first
 * weights' loads are out (the layer waits there for the scan's phase); and the workgroup arrays (us, red) are the
 * layer's.
 */
export function m2OutParts(s: M2OutShape, shared = false, wait = ""): WgslParts {
  const { T, K, ws, loadBytes, G, GS, NWG, WPG } = s;
  const K4 = K / 4;
  const { LPR, RPW, BATCH, NIT } = m2Lanes(K, s.lanes, loadBytes, ws);
  const norm = G > 0;
  const y = shared ? "h" : "y"; // the output's binding
  // the input at (row t, column k): scaled by its group's r where there are several groups
  const xAt = shared ? "us[t * K4 * 4u + k]" : !norm || G === 1 ? "v[t * K4 * 4u + k]" : "v[t * K4 * 4u + k] * rs[t * G + k / GS]";
  return {
    consts: [["T", `${T}u`], ["K4", `${K4}u`], ["LPR", `${LPR}u`], ["RPW", `${RPW}u`], ["BATCH", `${BATCH}u`],
      ["NIT", `${NIT}u`], ["G", `${Math.max(G, 1)}u`], ["GS", `${GS}u`], ["NWG", `${NWG}u`], ["WPG", `${WPG}u`]],
    params: [["N", "u32"], ["hasBias", "u32"], ["groupsX", "u32"], ["eps", "f32"], ["stride", "u32"]],
    bindings: [
      ["v", shared ? "var<storage, read_write> v: array<atomic<u32>>" : "var<storage, read> v: array<f32>"], // [T, K]
      // [T, NWG]
      ...(norm ? [["ss", shared ? "var<storage, read_write> ss: array<atomic<u32>>" : "var<storage, read> ss: array<f32>"] as [string, string]] : []),
      ["w", `var<storage, read> w: array<${weight4Binding(ws)}>`], // [N, K]
      ["bias", "var<storage, read> bias: array<f32>"], // [N]
      [y, `var<storage, read_write> ${y}: array<f32>`], // [T, N]
    ],
    decls: /* wgsl */ `
${shared ? "" : "var<workgroup> red: array<f32, 256u * T>;"}
var<workgroup> rs: array<f32, T * G>; // r of each (row, group)
${weight4Reader(ws)}
fn xAt(t: u32, k: u32) -> f32 { return ${xAt}; }
fn load(n: u32, lane: u32, i: u32) -> array<vec4<f32>, BATCH> {
  var wv: array<vec4<f32>, BATCH>;
  for (var k = 0u; k < BATCH; k++) { wv[k] = weight4(n * K4 + min(lane + LPR * (i * BATCH + k), K4 - 1u)); }
  return wv;
}`,
    fn: /* wgsl */ `
fn m2Out(t0: u32, wg: vec3<u32>) {
  let lane = t0 % LPR;
  let first = wg.y * p.groupsX + wg.x;
  let groups = (p.N + RPW - 1u) / RPW; // of RPW rows
  var nc = min(first * RPW + t0 / LPR, p.N - 1u);
  var wv0 = load(nc, lane, 0u); // the first weights go out before the norm's sums
${wait}${norm ? `  // r of each (row, group), 8 at a time: 32 threads sum a group's WPG partial sums of squares, each loading all of
  // its share before adding any (so that the loads are in flight together)
  for (var j = 0u; j < T * G; j += 8u) {
    let slot = t0 / 32u;
    let l = t0 % 32u;
    let pair = min(j + slot, T * G - 1u);
    let base = (pair / G) * NWG + (pair % G) * WPG;
    var part: array<f32, (WPG + 31u) / 32u>;
    for (var i = 0u; i < (WPG + 31u) / 32u; i++) {
      let at = base + min(l + 32u * i, WPG - 1u);
      part[i] = select(0.0, ${shared ? "bitcast<f32>(atomicLoad(&ss[at]))" : "ss[at]"}, l + 32u * i < WPG);
    }
    var s = 0.0;
    for (var i = 0u; i < (WPG + 31u) / 32u; i++) { s += part[i]; }
    red[t0] = s;
    workgroupBarrier();
    for (var st = 16u; st > 0u; st >>= 1u) {
      if (l < st) { red[t0] += red[t0 + st]; }
      workgroupBarrier();
    }
    if (l == 0u && j + slot < T * G) { rs[j + slot] = inverseSqrt(red[t0] / f32(GS) + p.eps); }
    workgroupBarrier();
  }
` : ""}${shared ? `  for (var i = t0; i < T * K4 * 4u; i += 256u) {
    us[i] = bitcast<f32>(atomicLoad(&v[i]))${norm && G > 1 ? " * rs[(i / (K4 * 4u)) * G + (i % (K4 * 4u)) / GS]" : ""};
  }
  workgroupBarrier();
` : ""}${rowGroupsWgsl({ W4: "K4", rows: "p.N", groups: "groups", step: "p.stride", scale: norm && G === 1 ? " * rs[t]" : "",
    store: `var b = 0.0;
      if (p.hasBias != 0u) { b = bias[n]; }
      for (var t = 0u; t < T; t++) { ${y}[t * p.N + n] = red[t * 256u + t0] + b; }` })}
}`,
  };
}

const partsCache = new Map<string, WgslParts>();
function cached(s: M2OutShape): WgslParts {
  const key = JSON.stringify(s);
  let made = partsCache.get(key);
  if (!made) partsCache.set(key, made = m2OutParts(s));
  return made;
}

const outKernel = defineKernel({
  name: "decode_m2_out",
  wgsl: (s: M2OutShape) => standaloneWgsl(cached(s), "256", "m2Out(lid.x, wg)"),
  label: (s) => `decode_m2_out_${s.T}_${s.K}_${s.ws}_${s.loadBytes}_g${s.G}_${s.GS}_${s.NWG}_${s.WPG}${s.lanes ? `_l${s.lanes}` : ""}`,
  example: { T: 1, K: 1536, ws: "f32", loadBytes: 64, G: 1, GS: 1536, NWG: 192, WPG: 192, lanes: 0 },
});

export interface M2OutArgs {
  T: number; K: number; N: number;
  v: Buf; w: Buf; ws: WeightStorage; bias: Buf | null; y: Buf; loadBytes: number;
  /** lanes a row (m2Lanes; 0 or absent: by K) */
  lanes?: number;
  /** the most workgroups launched (0 or absent: ./mamba2-in.ts's M2_WORKGROUPS) */
  workgroups?: number;
  // the gated norm's scale: groups of GS channels, the scan's sums of squares ss [T, NWG] (WPG a group); null: none
  norm: { ss: Buf; G: number; GS: number; NWG: number; eps: number } | null;
}

/** The matvec kernel's compiled shape for these arguments. */
export function m2OutShape(a: M2OutArgs): M2OutShape {
  const nm = a.norm;
  return { T: a.T, K: a.K, ws: a.ws, loadBytes: a.loadBytes, G: nm?.G ?? 0, GS: nm?.GS ?? 0, NWG: nm?.NWG ?? 0, WPG: nm ? nm.NWG / nm.G : 0, lanes: a.lanes ?? 0 };
}

/** The matvec kernel's workgroups for N outputs: RPW rows of W each. */
export const m2OutGroups = (s: M2OutShape, N: number) => Math.ceil(N / m2Lanes(s.K, s.lanes, s.loadBytes, s.ws).RPW);

/** The matvec kernel's parameter values, by name (groupsX and stride as ./mamba2-in.ts's m2InParams). */
export function m2OutParams(a: M2OutArgs, groupsX: number, stride: number): Record<string, number | boolean> {
  return { N: a.N, hasBias: !!a.bias, groupsX, eps: a.norm?.eps ?? 0, stride };
}

// v: [T <= 8, K], w: [N, K], bias: [N] -> y: [T, N]
export function decodeM2Out(gpu: Gpu, a: M2OutArgs): void {
  if (a.T < 1 || a.T > M2_OUT_MAX_ROWS) throw new Error(`decodeM2Out: ${a.T} rows, expected 1 to ${M2_OUT_MAX_ROWS}`);
  if (a.K % 4 !== 0) throw new Error(`decodeM2Out: K ${a.K} is not a multiple of 4`);
  const shape = m2OutShape(a);
  const k = gpu.kernel(outKernel, shape);
  const kp = cached(shape);
  const { groups, stride } = rowGroupsGrid(gpu, m2OutGroups(shape, a.N), a.workgroups);
  const bufs: Record<string, Buf> = { v: a.v, w: a.w, bias: a.bias ?? gpu.dummy, y: a.y };
  if (a.norm) bufs.ss = a.norm.ss;
  gpu.dispatch(k, bindingsByName(kp, bufs), paramBlock(kp.params, m2OutParams(a, groups[0], stride)), groups);
}

/** The batch step's gated-norm scale, where out_proj is a plain matmul: v[t, k] *= r[t, group(k)], a workgroup a row. */
export interface M2ScaleShape { K: number; G: number; GS: number; NWG: number; WPG: number }

function scaleParts(s: M2ScaleShape): WgslParts {
  return {
    consts: [["K", `${s.K}u`], ["G", `${s.G}u`], ["GS", `${s.GS}u`], ["NWG", `${s.NWG}u`], ["WPG", `${s.WPG}u`]],
    params: [["eps", "f32"]],
    bindings: [
      ["ss", "var<storage, read> ss: array<f32>"], // [B, NWG]
      ["v", "var<storage, read_write> v: array<f32>"], // [B, K]
    ],
    decls: `var<workgroup> red: array<f32, 256u>;
var<workgroup> rs: array<f32, G>;`,
    fn: /* wgsl */ `
fn m2Scale(t: u32, b: u32) {
  for (var g = 0u; g < G; g++) {
    var s = 0.0;
    for (var i = t; i < WPG; i += 256u) { s += ss[b * NWG + g * WPG + i]; }
    red[t] = s;
    workgroupBarrier();
    ${treeSumWgsl("red", "t")}
    if (t == 0u) { rs[g] = inverseSqrt(red[0] / f32(GS) + p.eps); }
    workgroupBarrier();
  }
  for (var k = t; k < K; k += 256u) { v[b * K + k] *= rs[k / GS]; }
}`,
  };
}

const scaleCache = new Map<string, WgslParts>();
function scaleCached(s: M2ScaleShape): WgslParts {
  const key = JSON.stringify(s);
  let made = scaleCache.get(key);
  if (!made) scaleCache.set(key, made = scaleParts(s));
  return made;
}

const scaleKernel = defineKernel({
  name: "decode_m2_scale",
  wgsl: (s: M2ScaleShape) => standaloneWgsl(scaleCached(s), "256", "m2Scale(lid.x, wg.x)"),
  label: (s) => `decode_m2_scale_${s.K}_${s.G}_${s.NWG}`,
  example: { K: 1536, G: 1, GS: 1536, NWG: 192, WPG: 192 },
});

// v: [B, K] scaled in place by the gated norm's r of each (row, group of GS channels), from ss [B, NWG]
export function decodeM2Scale(gpu: Gpu, a: { B: number; K: number; v: Buf; ss: Buf; G: number; GS: number; NWG: number; eps: number }): void {
  const shape: M2ScaleShape = { K: a.K, G: a.G, GS: a.GS, NWG: a.NWG, WPG: a.NWG / a.G };
  const k = gpu.kernel(scaleKernel, shape);
  const kp = scaleCached(shape);
  gpu.dispatch(k, bindingsByName(kp, { ss: a.ss, v: a.v }), paramBlock(kp.params, { eps: a.eps }), [a.B]);
}
