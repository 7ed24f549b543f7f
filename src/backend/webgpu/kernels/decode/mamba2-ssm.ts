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
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";
import { defineKernel } from "../../kernel-def.ts";

export type M2GateMode = "after" | "before" | "none";

/** Rows a workgroup takes at most (more rows: more workgroups along y). */
export const M2_SSM_ROWS = 8;

/** Bytes of workgroup memory for RB rows a workgroup and state size N. */
export const m2SsmBytes = (RB: number, N: number) => 4 * RB * (2 * N + 256);

export interface M2SsmShape { N: number; P: number; H: number; G: number; E: number; C: number; RB: number; mode: M2GateMode }

/** Channels a workgroup: 256 threads of N / 4 states each, at most the head, and at most 32 so that the gate's
 *  phase has a thread for each of its rows and channels (M2_SSM_ROWS · 32 = 256). */
export function m2SsmChannels(N: number, P: number): number {
  return Math.min(P, Math.floor(256 / (N / 4)), 256 / M2_SSM_ROWS);
}

/** Workgroups along x: ceil(P / PB) a head. */
export function m2SsmGroups(N: number, P: number, H: number): number {
  return H * Math.ceil(P / m2SsmChannels(N, P));
}

function parts(s: M2SsmShape): WgslParts {
  const { N, P, H, G, E, C, RB, mode } = s;
  const PB = m2SsmChannels(N, P);
  const norm = mode !== "none";
  return {
    consts: [["N4", `${N / 4}u`], ["HP", `${P}u`], ["H", `${H}u`], ["HG", `${H / G}u`], ["E", `${E}u`], ["CW", `${C}u`],
      ["NIN", `${E + C + H}u`], ["GN", `${(C - E) / 2}u`], ["RB", `${RB}u`], ["PB", `${PB}u`], ["PBLK", `${Math.ceil(P / PB)}u`],
      ["NWG", `${H * Math.ceil(P / PB)}u`]],
    params: [["B", "u32"], ["oA", "u32"], ["oD", "u32"], ["oGate", "u32"]],
    bindings: [
      ["zxbcdt", "var<storage, read> zxbcdt: array<f32>"], // [B, E + C + H]: z | x B C (after the conv) | dt (after softplus)
      ["lp", "var<storage, read> lp: array<f32>"], // the layer's constants: A_log [H], D [H], the norm's weight [E]
      ["ssm", "var<storage, read_write> ssm: array<vec4<f32>>"], // [B, H, P, N] in/out
      ["out", "var<storage, read_write> out: array<f32>"], // [B, E]
      ...(norm ? [["ss", "var<storage, read_write> ss: array<f32>"] as [string, string]] : []), // [B, NWG]
    ],
    decls: /* wgsl */ `
var<workgroup> bcs: array<vec4<f32>, RB * 2u * N4>; // B | C of each row of the block, 4 states a value
var<workgroup> red: array<f32, RB * 256u>;          // the products s·C of each thread, then the sums of squares
fn silu(v: f32) -> f32 { return v / (1.0 + exp(-v)); }`,
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
  for (var i = t; i < RB * 2u * N4; i += 256u) {
    let r = i / (2u * N4);
    let j = i % (2u * N4); // quad j of B, or quad j - N4 of C
    let o = min(b0 + r, p.B - 1u) * NIN + E + E + g * N4 * 4u + select(4u * j, GN + 4u * (j - N4), j >= N4);
    bcs[i] = vec4<f32>(zxbcdt[o], zxbcdt[o + 1u], zxbcdt[o + 2u], zxbcdt[o + 3u]);
  }
  var xv: array<f32, RB>;
  var dt: array<f32, RB>;
  for (var r = 0u; r < RB; r++) {
    let o = min(b0 + r, p.B - 1u) * NIN;
    xv[r] = zxbcdt[o + E + ch];
    dt[r] = zxbcdt[o + E + CW + h];
  }
  let gr = t / PB; // the gate's phase: a thread per (row, channel)
  let gc = t % PB;
  let gb = b0 + gr;
  let gch = h * HP + min(p0 + gc, HP - 1u);
  let go = min(gb, p.B - 1u) * NIN;
  let gx = zxbcdt[go + E + gch];
  let gz = zxbcdt[go + gch];
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
  if (ok) { out[gb * E + gch] = outv; }
${norm ? `  workgroupBarrier(); // red is read by all before it takes the sums of squares
  red[t] = select(0.0, sqv, ok);
  workgroupBarrier();
  if (t < RB && b0 + t < p.B) {
    var s = 0.0;
    for (var k = 0u; k < PB; k++) { s += red[t * PB + k]; }
    ss[(b0 + t) * NWG + wg.x] = s;
  }` : ""}
}`,
  };
}

const partsCache = new Map<string, WgslParts>();
function cached(s: M2SsmShape): WgslParts {
  const key = JSON.stringify(s);
  let made = partsCache.get(key);
  if (!made) partsCache.set(key, made = parts(s));
  return made;
}

const ssmKernel = defineKernel({
  name: "decode_m2_ssm",
  wgsl: (s: M2SsmShape) => standaloneWgsl(cached(s), "256", "m2Ssm(lid.x, wg)"),
  label: (s) => `decode_m2_ssm_${s.N}_${s.P}_${s.H}_${s.G}_${s.E}_${s.C}_r${s.RB}_${s.mode}`,
  example: { N: 128, P: 64, H: 24, G: 1, E: 1536, C: 1792, RB: 1, mode: "after" },
});

export interface M2SsmArgs {
  B: number; N: number; P: number; H: number; G: number; E: number; C: number; mode: M2GateMode;
  zxbcdt: Buf; lp: Buf; oA: number; oD: number; oGate: number;
  ssm: Buf; out: Buf; ss: Buf | null; // ss: [B, m2SsmGroups(N, P, H)], where mode is not "none"
}

// zxbcdt: [B, E + C + H] -> out: [B, E] (gated, times the norm's weight), ss: [B, workgroups]; ssm: [B, H, P, N] in place
export function decodeM2Ssm(gpu: Gpu, a: M2SsmArgs): void {
  if (a.N % 4 !== 0 || a.N > 1024) throw new Error(`decodeM2Ssm: state size ${a.N} is not a multiple of 4 up to 1024`);
  // rows a workgroup: up to 8, as many as the device's workgroup memory holds
  let RB = Math.min(a.B, M2_SSM_ROWS);
  while (RB > 1 && m2SsmBytes(RB, a.N) > gpu.limits.maxComputeWorkgroupStorageSize) RB = Math.ceil(RB / 2);
  const shape: M2SsmShape = { N: a.N, P: a.P, H: a.H, G: a.G, E: a.E, C: a.C, RB, mode: a.mode };
  const k = gpu.kernel(ssmKernel, shape);
  const kp = cached(shape);
  const bufs: Record<string, Buf> = { zxbcdt: a.zxbcdt, lp: a.lp, ssm: a.ssm, out: a.out };
  if (a.mode !== "none") bufs.ss = a.ss!;
  gpu.dispatch(k, bindingsByName(kp, bufs), paramBlock(kp.params, { B: a.B, oA: a.oA, oD: a.oD, oGate: a.oGate }),
    [m2SsmGroups(a.N, a.P, a.H), Math.ceil(a.B / RB)]);
}
