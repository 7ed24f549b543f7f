/**
 * Mamba-2's fused decode, the first kernel of a layer: in_proj of one token a row, and what follows it column by
 * column, so that the scan kernel (./mamba2-ssm.ts) reads its inputs ready:
 *   zxbcdt = in_proj(u) (+ bias)        [T, E + C + H]: z | xBC | dt (C = E + 2·G·N conv channels)
 *   z stays as it is; xBC = silu(conv step over the channel's history, which advances in place);
 *   dt = clamp(softplus(dt + dt_bias), lo, hi)
 * Each conv channel and dt column is one output of in_proj, computed by one thread, so that thread alone reads and
 * writes the channel's history (the conv state [T, K-1, C]) and no other workgroup sees it half updated.
 *
 * Two kernels share that epilogue:
 *  - decode_m2_in: the product itself for up to 8 rows (a matvec: each group of LPR lanes streams one row of the
 *    weights as 4-wide loads and applies it to every row of x), optionally with the RMSNorm of h + residual in
 *    front (every workgroup normalizes the rows for itself; workgroup 0 writes the new residual), as the fused
 *    head's matvec does (../matvec.ts);
 *  - decode_m2_in_finish: the batch step's, a thread per (row, column) summing matmulTiled's K-split partials.
 * The layer's constants come from one packed buffer (lp: in_proj bias, conv weights [C, K] and bias, dt_bias).
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { grid } from "../../gpu.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";
import { type WeightStorage, weight4Binding, weight4Reader } from "../weights.ts";
import { SOFTPLUS_WGSL, treeSumWgsl } from "../wgsl-common.ts";
import { matvecRowLanes } from "../matvec.ts";
import { defineKernel } from "../../kernel-def.ts";

/** Rows the matvec kernel takes at most. */
export const M2_IN_MAX_ROWS = 8;
/** Bytes of workgroup memory the matvec kernel needs for T rows of D (with the norm, which holds the rows, or
 *  without): the norm is taken where the device's workgroup memory holds them (130m's 8 rows: 32 KiB). */
export const m2InBytes = (T: number, D: number, norm: boolean) => 4 * ((norm ? T * D : 0) + 256 * T);
/** The most workgroups each decode matvec (in_proj here, out_proj in ./mamba2-out.ts) launches as a kernel of its
 *  own by default (WebGpuInternalTuning.decodeM2Workgroups); each loops over groups of rows (rowGroupsWgsl). A few
 *  more than the read ceiling's best, 264 – 528 workgroups of 256 on the H100, so that the last groups do not
 *  leave one workgroup working alone. */
const M2_WORKGROUPS = 512;
/** Conv kernel sizes taken (the history is held in registers). */
export const M2_MAX_K = 9;
/** vec4s of a weight row a lane loads at once before using any (as ../matvec.ts). */
const WHOLE_ROW_VEC4S = 16;
/** Lanes a row of weights the decode matvecs may take (m2Lanes): a power of 2 from 8 to 256. */
export const M2_LANE_CHOICES = [8, 16, 32, 64, 128, 256];

/** Lanes a row of weights of `width` for the decode matvecs (in_proj here, out_proj in ./mamba2-out.ts): `lanes`
 *  where given (M2_LANE_CHOICES), else half as many as the head's matvec takes, at least 32 (fewer lanes: more rows
 *  a workgroup, each lane streaming more of its row; measured in WebGpuInternalTuning.decodeM2InLanes); and the
 *  vec4s a lane loads at once (a whole row's share up to 16, else batches of loadBytes evened out over the share). */
export function m2Lanes(width: number, lanes: number | undefined, loadBytes: number, ws: WeightStorage) {
  const LPR = lanes || Math.max(32, matvecRowLanes(width) / 2);
  const perLane = Math.ceil(width / 4 / LPR);
  const most = perLane <= WHOLE_ROW_VEC4S ? perLane : loadBytes / (ws === "f32" ? 16 : 8);
  const NIT = Math.ceil(perLane / most);
  return { LPR, RPW: 256 / LPR, BATCH: Math.ceil(perLane / NIT), NIT };
}

/** The grid of a decode matvec over `groups` groups of rows, at most `workgroups` (0 or absent: M2_WORKGROUPS)
 *  workgroups each doing as many groups as the others, and the `stride` parameter of rowGroupsWgsl's loop (every
 *  workgroup of the grid, so that the groups from `first` on, a stride apart, cover them all). */
export function rowGroupsGrid(gpu: Gpu, groups: number, workgroups: number | undefined): { groups: [number, number]; stride: number } {
  const [gx, gy] = grid(rowGroupsCount(groups, workgroups), gpu.limits.maxComputeWorkgroupsPerDimension);
  return { groups: [gx, gy], stride: gx * gy };
}

/** Workgroups for `groups` groups of rows, at most `workgroups` (0 or absent: M2_WORKGROUPS), each doing as many
 *  groups as the others (the last perhaps fewer). */
export function rowGroupsCount(groups: number, workgroups: number | undefined): number {
  return Math.ceil(groups / Math.ceil(groups / (workgroups || M2_WORKGROUPS)));
}

/**
 * The decode matvecs' loop (in_proj here, out_proj in ./mamba2-out.ts) over a workgroup's groups of RPW rows:
 * `first`, then one `step` on at a time. A kernel of its own launches fewer workgroups than groups, so that each
 * makes its norm once and has the next group's weights in flight (wv0) while it sums this one's; so do the items
 * of the one-dispatch layer's phases (./mamba2-layer.ts). Each lane sums its share of row n (LPR lanes a row, NIT
 * batches of BATCH vec4s, `load`, `xAt`); the row's sums meet in workgroup memory (red), times `scale`; lane 0
 * runs `store` (with the sum at red[t * 256u + t0], for rows below `rows`) and, where another group follows,
 * `next` (ncNext: its row, clamped). W4: the row's width in vec4s.
 */
export function rowGroupsWgsl(o: { W4: string; rows: string; groups: string; step: string; scale: string; store: string; next?: string }): string {
  return /* wgsl */ `  for (var gi = first; gi < ${o.groups}; gi += ${o.step}) {
    let n = gi * RPW + t0 / LPR;
    var s: array<f32, T>;
    for (var t = 0u; t < T; t++) { s[t] = 0.0; }
    for (var i = 0u; i < NIT; i++) {
      var wv = wv0;
      if (i > 0u) { wv = load(nc, lane, i); }
      for (var k = 0u; k < BATCH; k++) {
        let k4 = lane + LPR * (i * BATCH + k);
        if (k4 < ${o.W4}) {
          for (var t = 0u; t < T; t++) {
            let o = k4 * 4u;
            s[t] = fma(wv[k].x, xAt(t, o), fma(wv[k].y, xAt(t, o + 1u), fma(wv[k].z, xAt(t, o + 2u), fma(wv[k].w, xAt(t, o + 3u), s[t]))));
          }
        }
      }
    }
    let more = gi + ${o.step} < ${o.groups};
    let ncNext = min((gi + ${o.step}) * RPW + t0 / LPR, ${o.rows} - 1u);
    if (more) { wv0 = load(ncNext, lane, 0u); }
    for (var t = 0u; t < T; t++) { red[t * 256u + t0] = s[t]${o.scale}; }
    workgroupBarrier();
    for (var st = LPR / 2u; st > 0u; st >>= 1u) {
      if (lane < st) {
        for (var t = 0u; t < T; t++) { red[t * 256u + t0] += red[t * 256u + t0 + st]; }
      }
      workgroupBarrier();
    }
    // a lane 0 reads back only the slot it wrote, so the next group's stores need no barrier before them
    if (lane == 0u && n < ${o.rows}) {
      ${o.store}
    }${o.next ? `
    if (more && lane == 0u) {
      ${o.next}
    }` : ""}
    nc = ncNext;
  }
`;
}

const EPILOGUE_PARAMS: [string, "u32" | "f32"][] = [["hasBias", "u32"], ["oInBias", "u32"], ["oConvW", "u32"], ["oConvB", "u32"],
  ["oDtBias", "u32"], ["lo", "f32"], ["hi", "f32"]];

/** Column n's epilogue: the tap of a conv column (history, weights, bias), loaded apart from its use so that a
 *  kernel can issue the loads early; `finish(t, n, tap, v)` stores the column's value from in_proj's sum v (into
 *  `out`, or with `shared` through atomics into `zxbcdt`: see m2InParts). */
const epilogueWgsl = (K: number, shared = false) => /* wgsl */ `
${SOFTPLUS_WGSL}
struct Tap { hist: array<f32, ${Math.max(1, K - 1)}>, w: array<f32, ${K}>, bias: f32, inBias: f32 }
// the constants of column n (clamped by the caller), and the history of row t where n is a conv column
fn loadTap(t: u32, n: u32) -> Tap {
  var tap: Tap;
  tap.inBias = select(0.0, lp[p.oInBias + n], p.hasBias != 0u);
  let c = min(max(n, E) - E, CW - 1u); // the conv channel (clamped: other columns load and drop it)
  for (var j = 0u; j + 1u < CK; j++) { tap.hist[j] = convState[(t * (CK - 1u) + j) * CW + c]; }
  for (var j = 0u; j < CK; j++) { tap.w[j] = lp[p.oConvW + c * CK + j]; }
  tap.bias = lp[select(p.oConvB + c, p.oDtBias + min(max(n, E + CW) - E - CW, H - 1u), n >= E + CW)];
  return tap;
}
fn finish(t: u32, n: u32, tap: Tap, sum: f32) {
  let v = sum + tap.inBias;
  var o = v; // z as it is
  if (n >= E + CW) {
    o = clamp(softplus(v + tap.bias), p.lo, p.hi); // dt
  } else if (n >= E) {
    // the conv step: the history shifts by one in place (this thread alone owns channel c of row t)
    let c = n - E;
    var s = tap.bias;
    for (var j = 0u; j + 1u < CK; j++) { s = fma(tap.w[j], tap.hist[j], s); }
    s = fma(tap.w[CK - 1u], v, s);
    for (var j = 0u; j + 2u < CK; j++) { convState[(t * (CK - 1u) + j) * CW + c] = tap.hist[j + 1u]; }
    if (CK > 1u) { convState[(t * (CK - 1u) + CK - 2u) * CW + c] = v; }
    o = s / (1.0 + exp(-s));
  }
  ${shared ? "atomicStore(&zxbcdt[t * NIN + n], bitcast<u32>(o));" : "out[t * NIN + n] = o;"}
}`;

/** The matvec kernel's shape: T rows, D inputs, E + C + H outputs. */
export interface M2InShape {
  T: number; D: number; E: number; C: number; H: number; K: number; ws: WeightStorage; loadBytes: number; norm: boolean;
  /** lanes a row (m2Lanes; 0: by D) */
  lanes: number;
}

/**
 * The matvec kernel as parts (../compose.ts): the phase function `m2In(t0, wg)` does workgroup wg's rows.
 * `shared` (the one-dispatch layer, ./mamba2-layer.ts; with the norm): the input is h [T, D], bound writable as
 * the layer's last phase writes it; zxbcdt is stored through atomics, so that the scan's phase, in other
 * workgroups of the same dispatch, reads it from the device's cache rather than a stale copy in its own; and the
 * workgroup arrays (us, red) are the layer's, which every phase shares (a workgroup does one item of one phase).
 */
export function m2InParts(s: M2InShape, shared = false): WgslParts {
  const { T, D, E, C, H, K, ws, loadBytes, norm } = s;
  if (shared && !norm) throw new Error("m2InParts: the shared variant takes the norm");
  const x = shared ? "h" : "x"; // the input's binding
  const D4 = D / 4;
  const { LPR, RPW, BATCH, NIT } = m2Lanes(D, s.lanes, loadBytes, ws);
  return {
    consts: [["T", `${T}u`], ["D4", `${D4}u`], ["E", `${E}u`], ["CW", `${C}u`], ["H", `${H}u`], ["NIN", `${E + C + H}u`],
      ["CK", `${K}u`], ["NPT", `${Math.ceil(D / 256)}u`], ["NG", `${Math.ceil((E + C + H) / RPW)}u`], ["LPR", `${LPR}u`], ["RPW", `${RPW}u`], ["BATCH", `${BATCH}u`], ["NIT", `${NIT}u`]],
    params: [["hasRes", "u32"], ["par", "u32"], ["eps", "f32"], ["oNorm", "u32"], ["groupsX", "u32"], ["stride", "u32"],
      ...EPILOGUE_PARAMS],
    bindings: [
      [x, `var<storage, ${shared ? "read_write" : "read"}> ${x}: array<f32>`], // [T, D]: h (with the norm) or the normalized input
      // [2, T, D]: half par in, half 1 - par out (only with the norm: a binding no code uses is not in the layout)
      ...(norm ? [["res", "var<storage, read_write> res: array<f32>"] as [string, string]] : []),
      ["lp", "var<storage, read> lp: array<f32>"], // the layer's constants
      ["w", `var<storage, read> w: array<${weight4Binding(ws)}>`], // [E + C + H, D]
      ["convState", "var<storage, read_write> convState: array<f32>"], // [T, K-1, C]
      shared ? ["zxbcdt", "var<storage, read_write> zxbcdt: array<atomic<u32>>"] : ["out", "var<storage, read_write> out: array<f32>"], // [T, E + C + H]
    ],
    decls: /* wgsl */ `
${norm && !shared ? "var<workgroup> us: array<f32, T * D4 * 4u>; // (h + res) · g; the norm's scale is applied to the sums" : ""}
${shared ? "" : "var<workgroup> red: array<f32, 256u * T>;"}
${weight4Reader(ws)}
${epilogueWgsl(K, shared)}
fn xAt(t: u32, k: u32) -> f32 { return ${norm ? "us[t * D4 * 4u + k]" : "x[t * D4 * 4u + k]"}; }
// batch i of this lane's share of row n, loaded unconditionally (clamped) so that all loads are in flight at once
fn load(n: u32, lane: u32, i: u32) -> array<vec4<f32>, BATCH> {
  var wv: array<vec4<f32>, BATCH>;
  for (var k = 0u; k < BATCH; k++) { wv[k] = weight4(n * D4 + min(lane + LPR * (i * BATCH + k), D4 - 1u)); }
  return wv;
}`,
    fn: /* wgsl */ `
fn m2In(t0: u32, wg: vec3<u32>) {
  let lane = t0 % LPR;
  let first = wg.y * p.groupsX + wg.x;
  // rows past the last load the last one and store nothing
  var nc = min(first * RPW + t0 / LPR, NIN - 1u);
  // the first batch of weights (with rows of up to 16 vec4s a lane: all of them) and the epilogue's constants go
  // out before the norm, so that their latency hides the norm's
  var wv0 = load(nc, lane, 0u);
  var taps: array<Tap, T>;
  if (lane == 0u) {
    for (var t = 0u; t < T; t++) { taps[t] = loadTap(t, nc); }
  }
${norm ? `  // RMSNorm of h + res, each workgroup for itself; workgroup 0 writes the new residual
  var inv: array<f32, T>;
  // a row's values are all loaded before any is used, so that their loads are in flight together (a loop that
  // used each as it came waited for the cache once per value)
  var gv: array<f32, NPT>; // the norm's weights, the same for every row
  for (var j = 0u; j < NPT; j++) { gv[j] = lp[p.oNorm + min(t0 + 256u * j, D4 * 4u - 1u)]; }
  for (var t = 0u; t < T; t++) {
    var hv: array<f32, NPT>;
    var rv: array<f32, NPT>;
    for (var j = 0u; j < NPT; j++) {
      let k = min(t0 + 256u * j, D4 * 4u - 1u);
      hv[j] = ${x}[t * D4 * 4u + k];
      rv[j] = select(0.0, res[p.par * T * D4 * 4u + t * D4 * 4u + k], p.hasRes != 0u);
    }
    var ss = 0.0;
    for (var j = 0u; j < NPT; j++) {
      let k = t0 + 256u * j;
      if (k < D4 * 4u) {
        let v = hv[j] + rv[j];
        if (first == 0u) { res[(1u - p.par) * T * D4 * 4u + t * D4 * 4u + k] = v; }
        us[t * D4 * 4u + k] = v * gv[j];
        ss = fma(v, v, ss);
      }
    }
    red[t * 256u + t0] = ss;
  }
  workgroupBarrier();
  ${treeSumWgsl("red", "t0", "T")}
  for (var t = 0u; t < T; t++) { inv[t] = inverseSqrt(red[t * 256u] / f32(D4 * 4u) + p.eps); }
  workgroupBarrier(); // red is reused below
` : ""}${rowGroupsWgsl({ W4: "D4", rows: "NIN", groups: "NG", step: "p.stride", scale: norm ? " * inv[t]" : "",
    store: "for (var t = 0u; t < T; t++) { finish(t, n, taps[t], red[t * 256u + t0]); }",
    next: "for (var t = 0u; t < T; t++) { taps[t] = loadTap(t, ncNext); }" })}
}`,
  };
}

const partsCache = new Map<string, WgslParts>();
function cached(key: string, make: () => WgslParts): WgslParts {
  let parts = partsCache.get(key);
  if (!parts) partsCache.set(key, parts = make());
  return parts;
}

const inKernel = defineKernel({
  name: "decode_m2_in",
  wgsl: (s: M2InShape) => standaloneWgsl(cached(JSON.stringify(s), () => m2InParts(s)), "256", "m2In(lid.x, wg)"),
  label: (s) => `decode_m2_in_${s.T}_${s.D}_${s.E}_${s.C}_${s.H}_${s.K}_${s.ws}_${s.loadBytes}${s.norm ? "_norm" : ""}${s.lanes ? `_l${s.lanes}` : ""}`,
  example: { T: 1, D: 768, E: 1536, C: 1792, H: 24, K: 4, ws: "f32", loadBytes: 256, norm: true, lanes: 0 },
});

/** The layer constants' offsets (floats) in the packed buffer lp. */
export interface M2Offsets { oNorm: number; oInBias: number; oConvW: number; oConvB: number; oDtBias: number }

export interface M2InArgs extends M2Offsets {
  T: number; D: number; E: number; C: number; H: number; K: number;
  x: Buf; // [T, D]: h where `norm` is given (normalized here), else the normalized input
  norm: { res: Buf; hasRes: boolean; par: number; eps: number } | null;
  lp: Buf; hasBias: boolean;
  w: Buf; ws: WeightStorage; loadBytes: number;
  /** lanes a row (m2Lanes; 0 or absent: by D) */
  lanes?: number;
  /** the most workgroups launched (0 or absent: M2_WORKGROUPS) */
  workgroups?: number;
  convState: Buf; out: Buf;
  lo: number; hi: number;
}

function epilogueParams(a: M2Offsets & { hasBias: boolean; lo: number; hi: number }) {
  return { hasBias: a.hasBias, oInBias: a.oInBias, oConvW: a.oConvW, oConvB: a.oConvB, oDtBias: a.oDtBias, lo: a.lo, hi: Math.min(a.hi, 3e38) };
}

/** The matvec kernel's compiled shape for these arguments. */
export function m2InShape(a: M2InArgs): M2InShape {
  return { T: a.T, D: a.D, E: a.E, C: a.C, H: a.H, K: a.K, ws: a.ws, loadBytes: a.loadBytes, norm: !!a.norm, lanes: a.lanes ?? 0 };
}

/** The matvec kernel's workgroups: RPW rows of in_proj each. */
export const m2InGroups = (s: M2InShape) => Math.ceil((s.E + s.C + s.H) / m2Lanes(s.D, s.lanes, s.loadBytes, s.ws).RPW);

/** The matvec kernel's parameter values, by name (groupsX: the grid's workgroups along x; stride: from a
 *  workgroup's group of rows to its next, the workgroups of the grid or the items of the layer's phase). */
export function m2InParams(a: M2InArgs, groupsX: number, stride: number): Record<string, number | boolean> {
  return { hasRes: a.norm?.hasRes ?? false, par: a.norm?.par ?? 0, eps: a.norm?.eps ?? 0, oNorm: a.oNorm, groupsX, stride, ...epilogueParams(a) };
}

// x: [T <= 8, D] (h, normalized here with `norm`), w: [E + C + H, D] -> out: [T, E + C + H] (z | silu(conv) | dt)
export function decodeM2In(gpu: Gpu, a: M2InArgs): void {
  if (a.T < 1 || a.T > M2_IN_MAX_ROWS) throw new Error(`decodeM2In: ${a.T} rows, expected 1 to ${M2_IN_MAX_ROWS}`);
  if (a.D % 4 !== 0) throw new Error(`decodeM2In: hidden size ${a.D} is not a multiple of 4`);
  const bytes = m2InBytes(a.T, a.D, !!a.norm);
  if (bytes > gpu.limits.maxComputeWorkgroupStorageSize) {
    throw new Error(`decodeM2In: ${a.T} rows of ${a.D} need ${bytes} bytes of workgroup memory, over the device's ${gpu.limits.maxComputeWorkgroupStorageSize}`);
  }
  const shape = m2InShape(a);
  const k = gpu.kernel(inKernel, shape);
  const parts = cached(JSON.stringify(shape), () => m2InParts(shape));
  const { groups, stride } = rowGroupsGrid(gpu, m2InGroups(shape), a.workgroups);
  const p = paramBlock(parts.params, m2InParams(a, groups[0], stride));
  gpu.dispatch(k, bindingsByName(parts, { x: a.x, ...(a.norm ? { res: a.norm.res } : {}), lp: a.lp, w: a.w, convState: a.convState, out: a.out }), p, groups);
}

/** The batch step's kernel: S K-split partials [S, B, E + C + H] summed, then the same epilogue. */
export interface M2FinishShape { S: number; E: number; C: number; H: number; K: number }

function finishParts(s: M2FinishShape): WgslParts {
  return {
    consts: [["S", `${s.S}u`], ["E", `${s.E}u`], ["CW", `${s.C}u`], ["H", `${s.H}u`], ["NIN", `${s.E + s.C + s.H}u`], ["CK", `${s.K}u`]],
    params: [["B", "u32"], ["groupsX", "u32"], ...EPILOGUE_PARAMS],
    bindings: [
      ["part", "var<storage, read> part: array<f32>"], // [S, B, E + C + H]
      ["lp", "var<storage, read> lp: array<f32>"],
      ["convState", "var<storage, read_write> convState: array<f32>"], // [B, K-1, C]
      ["out", "var<storage, read_write> out: array<f32>"], // [B, E + C + H]
    ],
    decls: epilogueWgsl(s.K),
    fn: /* wgsl */ `
fn m2Finish(lid: vec3<u32>, wg: vec3<u32>) {
  let i = (wg.y * p.groupsX + wg.x) * 256u + lid.x;
  let total = p.B * NIN;
  let ic = min(i, total - 1u);
  let t = ic / NIN;
  let n = ic % NIN;
  let tap = loadTap(t, n);
  var v: array<f32, S>;
  for (var s = 0u; s < S; s++) { v[s] = part[s * total + ic]; }
  var sum = 0.0;
  for (var s = 0u; s < S; s++) { sum += v[s]; }
  if (i < total) { finish(t, n, tap, sum); }
}`,
  };
}

const finishKernel = defineKernel({
  name: "decode_m2_in_finish",
  wgsl: (s: M2FinishShape) => standaloneWgsl(cached(`f${JSON.stringify(s)}`, () => finishParts(s)), "256", "m2Finish(lid, wg)"),
  label: (s) => `decode_m2_in_finish_${s.S}_${s.E}_${s.C}_${s.H}_${s.K}`,
  example: { S: 4, E: 1536, C: 1792, H: 24, K: 4 },
});

export interface M2FinishArgs extends M2Offsets {
  B: number; S: number; E: number; C: number; H: number; K: number;
  part: Buf; lp: Buf; hasBias: boolean; convState: Buf; out: Buf; lo: number; hi: number;
}

// part: [S, B, E + C + H] (in_proj's K-split partials) -> out: [B, E + C + H] (z | silu(conv) | dt)
export function decodeM2InFinish(gpu: Gpu, a: M2FinishArgs): void {
  const shape: M2FinishShape = { S: a.S, E: a.E, C: a.C, H: a.H, K: a.K };
  const k = gpu.kernel(finishKernel, shape);
  const parts = cached(`f${JSON.stringify(shape)}`, () => finishParts(shape));
  const [gx, gy] = grid(Math.ceil((a.B * (a.E + a.C + a.H)) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  const p = paramBlock(parts.params, { B: a.B, groupsX: gx, ...epilogueParams(a) });
  gpu.dispatch(k, bindingsByName(parts, { part: a.part, lp: a.lp, convState: a.convState, out: a.out }), p, [gx, gy]);
}
