/**
 * Mamba-2's fused decode, the second kernel of a layer: one step of the SSD recurrence and the gate, from the
 * first kernel's z | xBC | dt (./mamba2-in.ts: conv and softplus applied). A workgroup owns PB channels p of one
 * head h for a block of up to RB rows; a thread owns 4 states n of one channel (a vec4, so that a workgroup's loads
 * and stores of the state [B, H, P, N] are side by side), reading and writing them in place:
 *   a = exp(dt·A[h]);  s[p, n] = a·s[p, n] + dt·x[p]·B[g, n];  y[p] = Σ_n s[p, n]·C[g, n] + D[h]·x[p]
 * (g = h / (H / G)). Then the gate, as mamba_ssm's RMSNormGated (mode):
 *   "after":  v = y·silu(z), out = v · w, and Σ v² of the workgroup's channels a row;
 *   "before": out = y · w · silu(z), and Σ y²;
 *   "none" (no gated norm): out = y·silu(z).
 * The norm's scale 1/sqrt(mean + eps) of each group spans many workgroups: they leave their sums of squares, a
 * slot each (ss [B, workgroups]), and the next kernel (out_proj, ./mamba2-out.ts, or the batch step's scale)
 * applies it. Workgroups go head by head, so those of group g are the (H / G) · ceil(P / PB) from g's first.
 * With `out` (a few rows, one block of them) the dispatch also does out_proj: the last of a head's workgroups to
 * finish (a counter a head) multiplies the head's outputs by its P columns of W [D, E] into part[h] [B, D], and the
 * last head to finish (one more counter) makes each group's r from the sums of squares and adds the parts up:
 * h = Σ_heads r(group) · part[h] (+ bias). Nothing waits (the last to arrive does the work, as the head's argmax in
 * ../matvec.ts does), and what passes between workgroups goes through atomics; each counter's last arrival sets
 * it back to zero for the next dispatch.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type WeightStorage, weight4Binding, weight4Reader } from "../weights.ts";

export type M2GateMode = "after" | "before" | "none";

/** Rows a workgroup takes at most (more rows: more workgroups along y). */
export const M2_SSM_ROWS = 8;

/** Bytes of workgroup memory for RB rows a workgroup and state size N. */
export const m2SsmBytes = (RB: number, N: number) => 4 * RB * (2 * N + 256);

/** out_proj in the same dispatch (M2SsmArgs.out): D outputs, the weights' storage. */
export interface M2SsmOutShape { D: number; ws: WeightStorage }

export interface M2SsmShape {
  N: number; P: number; H: number; G: number; E: number; C: number; RB: number; mode: M2GateMode; out: M2SsmOutShape | null;
}

/** Channels a workgroup: 256 threads of N / 4 states each, at most the head, and at most 32 so that the gate's
 *  phase has a thread for each of its rows and channels (M2_SSM_ROWS · 32 = 256). */
export function m2SsmChannels(N: number, P: number): number {
  return Math.min(P, Math.floor(256 / (N / 4)), 256 / M2_SSM_ROWS);
}

/** Workgroups along x: ceil(P / PB) a head. */
export function m2SsmGroups(N: number, P: number, H: number): number {
  return H * Math.ceil(P / m2SsmChannels(N, P));
}

/**
 * The scan kernel as parts (../compose.ts): the phase function `m2Ssm(t, wg)` does workgroup wg's channels and rows.
 * `shared` (the one-dispatch layer, ./mamba2-layer.ts; without `out`): zxbcdt is loaded, and the gated output (then
 * named v, as out_proj's phase reads it) and the sums of squares are stored, through atomics, as other workgroups
 * of the same dispatch write and read them; `wait` (WGSL) runs once the states' loads, which need nothing computed,
 * are out (the layer waits there for in_proj's phase); and the workgroup array red is the layer's.
 */
export function m2SsmParts(s: M2SsmShape, shared = false, wait = ""): WgslParts {
  const { N, P, H, G, E, C, RB, mode, out } = s;
  if (shared && out) throw new Error("m2SsmParts: the shared variant has no out_proj of its own");
  const PB = m2SsmChannels(N, P);
  const norm = mode !== "none";
  // with out_proj in the dispatch (or the layer's phase after), the gated output and the sums of squares pass to
  // other workgroups of it: through atomics, which are served from the device's cache (a plain load may read a
  // stale copy in the workgroup's own)
  const passed = out || shared ? "atomic<u32>" : "f32";
  const vName = shared ? "v" : "out";
  const zx = (i: string) => (shared ? `bitcast<f32>(atomicLoad(&zxbcdt[${i}]))` : `zxbcdt[${i}]`);
  // x into element i of a buffer of the gated output or the sums of squares
  const store = (buf: string) => (passed === "f32" ? `${buf}[i] = x;` : `atomicStore(&${buf}[i], bitcast<u32>(x));`);
  return {
    consts: [["N4", `${N / 4}u`], ["HP", `${P}u`], ["H", `${H}u`], ["HG", `${H / G}u`], ["G", `${G}u`], ["E", `${E}u`], ["CW", `${C}u`],
      ["NIN", `${E + C + H}u`], ["GN", `${(C - E) / 2}u`], ["RB", `${RB}u`], ["PB", `${PB}u`], ["PBLK", `${Math.ceil(P / PB)}u`],
      ["NWG", `${H * Math.ceil(P / PB)}u`],
      ...(out ? [["OD", `${out.D}u`], ["HP4", `${P / 4}u`], ["E4", `${E / 4}u`]] as [string, string][] : [])],
    params: [["B", "u32"], ["oA", "u32"], ["oD", "u32"], ["oGate", "u32"], ...(out ? [["hasOutBias", "u32"], ["gEps", "f32"]] as [string, "u32" | "f32"][] : [])],
    bindings: [
      // [B, E + C + H]: z | x B C (after the conv) | dt (after softplus)
      ["zxbcdt", shared ? "var<storage, read_write> zxbcdt: array<atomic<u32>>" : "var<storage, read> zxbcdt: array<f32>"],
      ["lp", "var<storage, read> lp: array<f32>"], // the layer's constants: A_log [H], D [H], the norm's weight [E]
      ["ssm", "var<storage, read_write> ssm: array<vec4<f32>>"], // [B, H, P, N] in/out
      [vName, `var<storage, read_write> ${vName}: array<${passed}>`], // [B, E]
      ...(norm ? [["ss", `var<storage, read_write> ss: array<${passed}>`] as [string, string]] : []), // [B, NWG]
      ...(out ? [
        ["wOut", `var<storage, read> wOut: array<${weight4Binding(out.ws)}>`], // [D, E]
        ["bOut", "var<storage, read> bOut: array<f32>"], // [D] (unread without hasOutBias)
        ["part", "var<storage, read_write> part: array<atomic<u32>>"], // [H, B, D]: each head's share of out_proj
        ["hOut", "var<storage, read_write> hOut: array<f32>"], // [B, D]
        ["ctl", "var<storage, read_write> ctl: array<atomic<u32>>"], // [H + 1]: finished workgroups of each head, heads
      ] as [string, string][] : []),
    ],
    decls: /* wgsl */ `
var<workgroup> bcs: array<vec4<f32>, RB * 2u * N4>; // B | C of each row of the block, 4 states a value
${shared ? "" : "var<workgroup> red: array<f32, RB * 256u>;          // the products s·C of each thread, then the sums of squares"}
fn silu(v: f32) -> f32 { return v / (1.0 + exp(-v)); }
${out ? `var<workgroup> vs: array<f32, RB * HP>; // the head's gated outputs
var<workgroup> rs: array<f32, RB * G>;  // the gated norm's r of each (row, group)
var<workgroup> last: u32;
${weight4Reader(out.ws, "wo4", "wOut")}` : ""}
fn vStore(i: u32, x: f32) { ${store(vName)} }
${norm ? `fn ssStore(i: u32, x: f32) { ${store("ss")} }` : ""}`,
    fn: /* wgsl */ `
fn m2Ssm(t: u32, wg: vec3<u32>) {
  let h = wg.x / PBLK;
  let p0 = (wg.x % PBLK) * PB;
  let g = h / HG;
  let b0 = wg.y * RB;
  let pr = t / N4;
  let q = t % N4;
  let ch = h * HP + min(p0 + pr, HP - 1u); // this thread's channel (clamped: threads past the block drop theirs)
  // every load first, at clamped indices, so that all are in flight together: the states, B and C of the block's
  // rows into workgroup memory (a thread's share of them), x and dt of this thread's channel, and for the threads
  // of the gate's phase their channel's x and z
  var st: array<vec4<f32>, RB>;
  for (var r = 0u; r < RB; r++) { st[r] = ssm[(min(b0 + r, p.B - 1u) * E + ch) * N4 + q]; }
${wait}  for (var i = t; i < RB * 2u * N4; i += 256u) {
    let r = i / (2u * N4);
    let j = i % (2u * N4); // quad j of B, or quad j - N4 of C
    let o = min(b0 + r, p.B - 1u) * NIN + E + E + g * N4 * 4u + select(4u * j, GN + 4u * (j - N4), j >= N4);
    bcs[i] = vec4<f32>(${zx("o")}, ${zx("o + 1u")}, ${zx("o + 2u")}, ${zx("o + 3u")});
  }
  var xv: array<f32, RB>;
  var dt: array<f32, RB>;
  for (var r = 0u; r < RB; r++) {
    let o = min(b0 + r, p.B - 1u) * NIN;
    xv[r] = ${zx("o + E + ch")};
    dt[r] = ${zx("o + E + CW + h")};
  }
  let gr = t / PB; // the gate's phase: a thread per (row, channel)
  let gc = t % PB;
  let gb = b0 + gr;
  let gch = h * HP + min(p0 + gc, HP - 1u);
  let go = min(gb, p.B - 1u) * NIN;
  let gx = ${zx("go + E + gch")};
  let gz = ${zx("go + gch")};
  let A = -exp(lp[p.oA + h]);
  let Dh = lp[p.oD + h];
  let w = lp[p.oGate + gch];
  workgroupBarrier();
  let mine = pr < PB && p0 + pr < HP;
  for (var r = 0u; r < RB; r++) {
    let s = exp(dt[r] * A) * st[r] + (dt[r] * xv[r]) * bcs[r * 2u * N4 + q];
    if (mine && b0 + r < p.B) { ssm[((b0 + r) * E + ch) * N4 + q] = s; }
    red[r * 256u + t] = dot(s, bcs[r * 2u * N4 + N4 + q]);
  }
  workgroupBarrier();
  // y, the skip and the gate
  let ok = gr < RB && gb < p.B && p0 + gc < HP;
  var y = 0.0;
  if (gr < RB) {
    for (var k = 0u; k < N4; k++) { y += red[gr * 256u + gc * N4 + k]; }
  }
  y = fma(Dh, gx, y);
  let zs = silu(gz);
${mode === "after" ? `  let v = y * zs;
  let outv = v * w;
  let sqv = v * v;`
    : mode === "before" ? `  let outv = y * w * zs;
  let sqv = y * y;`
    : "  let outv = y * zs;"}
  if (ok) { vStore(gb * E + gch, outv); }
${norm ? `  workgroupBarrier(); // red is read by all before it takes the sums of squares
  red[t] = select(0.0, sqv, ok);
  workgroupBarrier();
  if (t < RB && b0 + t < p.B) {
    var s = 0.0;
    for (var k = 0u; k < PB; k++) { s += red[t * PB + k]; }
    ssStore((b0 + t) * NWG + wg.x, s);
  }` : ""}
${out ? outProjWgsl(norm) : ""}
}`,
  };
}

/** The fused out_proj (M2SsmArgs.out), at the end of the scan's phase function (one block of rows: b0 = 0). */
const outProjWgsl = (norm: boolean) => /* wgsl */ `
  // out_proj without a dispatch of its own: the last of head h's workgroups to finish multiplies the head's gated
  // outputs by its columns of out_proj (part[h]: [B, D]); the last head to finish adds the heads' parts up, each
  // times its group's r, into hOut. Nothing waits: the last to arrive does the work (as the head's argmax does).
  storageBarrier(); // this workgroup's stores before its count
  if (t == 0u) { last = u32(atomicAdd(&ctl[h], 1u) == PBLK - 1u); }
  if (workgroupUniformLoad(&last) == 0u) { return; }
  storageBarrier();
  if (t == 0u) { atomicStore(&ctl[h], 0u); } // every workgroup of the head has counted: zero for the next dispatch
  for (var i = t; i < RB * HP; i += 256u) {
    vs[i] = bitcast<f32>(atomicLoad(&out[min(i / HP, p.B - 1u) * E + h * HP + i % HP]));
  }
  workgroupBarrier();
  // a thread per output n (constant trip counts, clamped indices: the loads of every pass can go out together)
  for (var j = 0u; j < (OD + 255u) / 256u; j++) {
    let n = min(t + j * 256u, OD - 1u);
    var wv: array<vec4<f32>, HP4>;
    for (var k = 0u; k < HP4; k++) { wv[k] = wo4(n * E4 + h * HP4 + k); }
    for (var r = 0u; r < RB; r++) {
      var s = 0.0;
      for (var k = 0u; k < HP4; k++) {
        let o = r * HP + 4u * k;
        s += dot(wv[k], vec4<f32>(vs[o], vs[o + 1u], vs[o + 2u], vs[o + 3u]));
      }
      if (t + j * 256u < OD) { atomicStore(&part[(h * RB + r) * OD + n], bitcast<u32>(s)); }
    }
  }
  storageBarrier();
  if (t == 0u) { last = u32(atomicAdd(&ctl[H], 1u) == H - 1u); }
  if (workgroupUniformLoad(&last) == 0u) { return; }
  storageBarrier();
  if (t == 0u) { atomicStore(&ctl[H], 0u); }
${norm ? `  // r of each (row, group), 8 at a time: 32 threads sum the group's NWG / G sums of squares
  for (var j = 0u; j < RB * G; j += 8u) {
    let slot = t / 32u;
    let l = t % 32u;
    let pair = min(j + slot, RB * G - 1u);
    let base = (pair / G) * NWG + (pair % G) * (NWG / G);
    var q = 0.0;
    for (var i = l; i < NWG / G; i += 32u) { q += bitcast<f32>(atomicLoad(&ss[base + i])); }
    red[t] = q;
    workgroupBarrier();
    for (var st = 16u; st > 0u; st >>= 1u) {
      if (l < st) { red[t] += red[t + st]; }
      workgroupBarrier();
    }
    if (l == 0u && j + slot < RB * G) { rs[j + slot] = inverseSqrt(red[t] / f32(E / G) + p.gEps); }
    workgroupBarrier();
  }` : `  for (var i = t; i < RB * G; i += 256u) { rs[i] = 1.0; }
  workgroupBarrier();`}
  for (var j = 0u; j < (RB * OD + 255u) / 256u; j++) {
    let i = min(t + j * 256u, RB * OD - 1u);
    let r = i / OD;
    let n = i % OD;
    var s = select(0.0, bOut[n], p.hasOutBias != 0u);
    for (var k = 0u; k < H; k++) { s = fma(rs[r * G + k / HG], bitcast<f32>(atomicLoad(&part[(k * RB + r) * OD + n])), s); }
    if (t + j * 256u < RB * OD && r < p.B) { hOut[r * OD + n] = s; }
  }`;

const partsCache = new Map<string, WgslParts>();
function cached(s: M2SsmShape): WgslParts {
  const key = JSON.stringify(s);
  let made = partsCache.get(key);
  if (!made) partsCache.set(key, made = m2SsmParts(s));
  return made;
}

const ssmKernel = defineKernel({
  name: "decode_m2_ssm",
  wgsl: (s: M2SsmShape) => standaloneWgsl(cached(s), "256", "m2Ssm(lid.x, wg)"),
  label: (s) => `decode_m2_ssm_${s.N}_${s.P}_${s.H}_${s.G}_${s.E}_${s.C}_r${s.RB}_${s.mode}${s.out ? `_out${s.out.D}_${s.out.ws}` : ""}`,
  example: { N: 128, P: 64, H: 24, G: 1, E: 1536, C: 1792, RB: 1, mode: "after", out: null },
});

/** Rows the fused out_proj takes at most: its last workgroup adds H parts of every output of every row alone. */
export const M2_SSM_OUT_MAX_ROWS = 4;

/** Whether the scan kernel can take out_proj for B rows: one block of rows, heads of whole vec4s. */
export function m2SsmOutFits(gpu: Gpu, B: number, N: number, P: number, E: number, G: number): boolean {
  return B <= M2_SSM_OUT_MAX_ROWS && P % 4 === 0 && E % 4 === 0 &&
    m2SsmBytes(B, N) + 4 * (B * P + B * G + 1) <= gpu.limits.maxComputeWorkgroupStorageSize;
}

/** Words of the fused out_proj's counters (M2SsmArgs.out.ctl), zero before the first dispatch (each leaves them so). */
export const m2SsmOutCtlWords = (H: number) => H + 1;

export interface M2SsmArgs {
  B: number; N: number; P: number; H: number; G: number; E: number; C: number; mode: M2GateMode;
  zxbcdt: Buf; lp: Buf; oA: number; oD: number; oGate: number;
  ssm: Buf; out: Buf; ss: Buf | null; // ss: [B, m2SsmGroups(N, P, H)], where mode is not "none"
  eps: number; // the gated norm's (read with `fusedOut` only)
  /** out_proj in this dispatch (where m2SsmOutFits): W [D, E], its bias, the heads' parts [H, B, D], h [B, D] out */
  fusedOut?: { D: number; w: Buf; ws: WeightStorage; bias: Buf | null; part: Buf; h: Buf; ctl: Buf } | null;
}

// zxbcdt: [B, E + C + H] -> out: [B, E] (gated, times the norm's weight), ss: [B, workgroups]; ssm: [B, H, P, N] in place
export function decodeM2Ssm(gpu: Gpu, a: M2SsmArgs): void {
  if (a.N % 4 !== 0 || a.N > 1024) throw new Error(`decodeM2Ssm: state size ${a.N} is not a multiple of 4 up to 1024`);
  // rows a workgroup: up to 8, as many as the device's workgroup memory holds
  let RB = Math.min(a.B, M2_SSM_ROWS);
  while (RB > 1 && m2SsmBytes(RB, a.N) > gpu.limits.maxComputeWorkgroupStorageSize) RB = Math.ceil(RB / 2);
  const fo = a.fusedOut ?? null;
  if (fo && !m2SsmOutFits(gpu, a.B, a.N, a.P, a.E, a.G)) throw new Error(`decodeM2Ssm: out_proj does not fit the scan's kernel at ${a.B} rows`);
  const shape: M2SsmShape = { N: a.N, P: a.P, H: a.H, G: a.G, E: a.E, C: a.C, RB, mode: a.mode, out: fo ? { D: fo.D, ws: fo.ws } : null };
  const k = gpu.kernel(ssmKernel, shape);
  const kp = cached(shape);
  const bufs: Record<string, Buf> = { zxbcdt: a.zxbcdt, lp: a.lp, ssm: a.ssm, out: a.out };
  if (a.mode !== "none") bufs.ss = a.ss!;
  if (fo) Object.assign(bufs, { wOut: fo.w, bOut: fo.bias ?? gpu.dummy, part: fo.part, hOut: fo.h, ctl: fo.ctl });
  const values = { B: a.B, oA: a.oA, oD: a.oD, oGate: a.oGate, hasOutBias: !!fo?.bias, gEps: a.eps };
  gpu.dispatch(k, bindingsByName(kp, bufs), paramBlock(kp.params, values), [m2SsmGroups(a.N, a.P, a.H), Math.ceil(a.B / RB)]);
}
