/**
 * Selective scan backward, phase 3, with each channel's N states split over QT lanes (2 by default, 4 or 8 by
 * tuning; the default where the device has subgroups of at least QT lanes; chunk.ts is the one-lane-per-channel
 * kernel without them). The same per-step math as chunk.ts (chunk-io.ts; scan-backward.ts of the CPU backend);
 * what differs is where the states live:
 *   - lane (channel e, part q) owns states n = q·SP .. q·SP + SP − 1 (SP = ⌈N / QT⌉; states past N are
 *     zeros with A = 0), so a thread carries SP states, not N, and QT times as many threads share the work
 *     (fewer registers a lane, more per-channel work repeated on each of its lanes);
 *   - the sums over a channel's states (C·h, Σ G·B, Σ A·q) are the lane's own SP terms plus log2(QT) subgroup
 *     shuffles;
 *   - a workgroup walks one segment of chunkLen = KS · TS steps. A first pass runs the segment forward from its
 *     saved start state S[c] and keeps the state at the start of each sub-tile of TS steps in workgroup memory;
 *     then, sub-tile by sub-tile from the last, it recomputes the TS states into registers (the code is unrolled
 *     over the sub-tile, so they are named values, not an indexed array) and steps back through them. Each
 *     state is recomputed twice in all, never stored beyond a sub-tile. Nothing in the unrolled steps branches
 *     (steps past the end of a short last sub-tile run as identities), and each step's inputs and the gradients
 *     it adds to are loaded up front, so no step waits for its own reads;
 *   - dB and dC (sums over channels): a reduce-scatter over the channel bits of each W-lane block of a subgroup
 *     (as reduce.ts), the block sums of a sub-tile's steps staged in workgroup memory, then added over the
 *     workgroup's NB blocks in order and written as one partial per (row, workgroup): part[B·L, Gp, 2N].
 * dA_log, dD and the dt bias: one partial per (b, segment, e) as chunk.ts. No float atomics, deterministic.
 *
 * Each build is specialized (LanesVariant): with or without the gate z (no branch on it in the steps); writing
 * du, ddelta and dz when the caller says they hold zeros (ScanGrads.zeroed, as the model's backward does) instead
 * of loading them up front and adding; B and C read as vec4s where aligned. Together with the dt bias's gradient
 * taken from dt alone (softplusSlope), this took the kernel from 12.3 to 8.6 ms at B16 E2048 L4096 on the H200
 * (BENCHMARKS.md, run 43): fewer values held per lane through a sub-tile, and a quarter of the loads of B and C.
 */
import type { Buf, Gpu } from "../../../gpu.ts";
import type { ScanBwdGeometry, ScanBwdInputs } from "./geometry.ts";
import { chunkIoWgsl, dispatchChunk, gateWgsl, stateStepWgsl, type ScanBwdOutputs } from "./chunk-io.ts";
import { SOFTPLUS_WGSL } from "../../wgsl-common.ts";
import { reduceScatter } from "./reduce.ts";
import { defineKernel } from "../../../kernel-def.ts";

/** Lanes per channel, by default, and the choices. On the H200 2 lanes with segments of 32 steps ran the four
 *  anchor shapes 1.38 – 1.45x as fast as 4 lanes with 64 (BENCHMARKS.md, runs 12 and 15): twice the states a lane gives each
 *  lane more independent work a step and halves the shuffles of the per-channel sums. */
export const LANES_QT = 2;
export const LANES_CHOICES: readonly number[] = [2, 4, 8];
/** W-lane blocks per workgroup, by default, and the choices (a workgroup of NB · W ≤ 256 lanes). */
export const LANES_NB = 4;
export const BLOCKS_CHOICES: readonly number[] = [1, 2, 4, 8];

/** States per lane, and the reduce-scatter's padded term count per lane, for state size N and block width W. */
export function lanesShape(N: number, W: number, QT = LANES_QT, NB = LANES_NB): { SP: number; Vp: number; WGT: number; CW: number } {
  const SP = Math.ceil(N / QT);
  const CB = W / QT; // channels per block
  const Vp = Math.ceil((2 * SP) / CB) * CB;
  const WGT = NB * W;
  return { SP, Vp, WGT, CW: WGT / QT };
}

/** Workgroup memory of the kernel in bytes: the dB/dC block sums of a sub-tile and the KS saved sub-tile starts. */
export function lanesWorkgroupBytes(N: number, W: number, TS: number, KS: number, QT = LANES_QT, NB = LANES_NB): number {
  const { SP, Vp, WGT } = lanesShape(N, W, QT, NB);
  return 4 * (TS * NB * QT * Vp + KS * SP * WGT);
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);
/** The lines of f(s) for every state s of a lane, joined. */
const per = (SP: number, f: (s: number) => string, sep = "\n      ") => range(SP).map(f).join(sep);
/** Σ_s f(s) as one WGSL expression. */
const sumOf = (SP: number, f: (s: number) => string) => range(SP).map(f).join(" + ");

/** How one build of the kernel is specialized (each a separate pipeline). */
export interface LanesVariant {
  hasZ: boolean; // the forward had a gate z
  overwrite: boolean; // du, ddelta and dz start as zeros: written, not read and added into
  vecBC: boolean; // B and C read as vec4s (see lanesVecBC): 4 states a load, and no padding states
}

/**
 * Whether B and C can be read as vec4s: each lane's SP states are whole vec4s (SP a multiple of 4, no padding
 * state: N a multiple of QT) and every row of BC and both windows start on a multiple of 4 floats.
 */
export function lanesVecBC(N: number, QT: number, ldBC: number, offB: number, offC: number): boolean {
  return N % QT === 0 && (N / QT) % 4 === 0 && ldBC % 4 === 0 && offB % 4 === 0 && offC % 4 === 0;
}

function wgsl(N: number, W: number, TS: number, KS: number, QT: number, NB: number, v: LanesVariant): string {
  const { SP, Vp, WGT, CW } = lanesShape(N, W, QT, NB);
  const V = 2 * SP, CB = W / QT;
  // every lane's states are real ones (no padding past N): no masks
  const exact = N % QT === 0;
  const mk = (s: number) => (exact ? "" : ` * mk_${s}`);
  // the value of B (off "p.offB") or C ("p.offC") for state s of the lane at row `row`: with vecBC, from SP / 4
  // vec4 loads named <name>_<j> made by bcLoads
  const bcLoads = (name: string, row: string, off: string) =>
    v.vecBC ? range(SP / 4).map((j) => `let ${name}_${j} = BC[(${row} * p.ldBC + ${off}) / 4u + q * ${SP / 4}u + ${j}u];`).join(" ") : "";
  const bcAt = (name: string, row: string, off: string, s: number) =>
    v.vecBC ? `${name}_${s >> 2}.${"xyzw"[s & 3]}` : `BC[${row} * p.ldBC + ${off} + nc_${s}]${mk(s)}`;
  // the reduce-scatter of [rB_0 .. rB_{SP-1}, rC_0 .. rC_{SP-1}] (zeros up to Vp) over the channel bits of the block
  const { lines: scatter, terms: cur } = reduceScatter(
    range(Vp).map((k) => (k < SP ? `rB_${k}` : k < V ? `rC_${k - SP}` : "0.0")), W / 2, QT, "lane");
  const K = cur.length; // = Vp / CB terms per lane after the scatter
  const stageOut = cur.map((x, k) => `red[redBase + ${k}u] = ${x};`).join("\n        ");

  // Steps past the sequence's end (the last sub-tile may be short) run as identities: their rows are clamped
  // to the last real one (in-bounds loads), their dt and dy zeroed, their writes skipped. So the unrolled code
  // has no branch around the arithmetic, and the compiler can issue every step's loads early.
  const loads = range(TS).map((i) => `
    let ok_${i} = ${i}u < cnt;
    let row_${i} = rowBase + min(${i}u, cnt - 1u);`).join("");
  const recompute = range(TS).map((i) => `
    dt_${i} = select(0.0, softplus(delta[row_${i} * p.ldD + p.offD + ec] + bias), ok_${i});
    u_${i} = u[row_${i} * p.E + ec];
    {
      let dtu = dt_${i} * u_${i};
      ${bcLoads("rb", `row_${i}`, "p.offB")}
      ${per(SP, (s) => `hb${i}_${s} = h_${s};`, "\n      ")}
      ${per(SP, (s) => `h_${s} = fma(exp2(dt_${i} * A2_${s}), h_${s}, dtu * ${bcAt("rb", `row_${i}`, "p.offB", s)});`, "\n      ")}
    }`).join("");
  // the gradients each step adds to, loaded before the walk so that no step waits for its own read (none when
  // they start as zeros)
  const olds = v.overwrite ? "" : range(TS).map((i) => `
    let odu_${i} = du[row_${i} * p.E + ec];
    let odd_${i} = dDelta[row_${i} * p.ldDD + p.offDD + ec];
    ${v.hasZ ? `let odz_${i} = dz[row_${i} * p.ldDZ + p.offDZ + ec];` : ""}`).join("");
  const plus = (old: string) => (v.overwrite ? "" : `${old} + `);

  const backward = range(TS).reverse().map((i) => `
    {
      let row = row_${i};
      let dt = dt_${i};
      let uv = u_${i};
      let gout = select(0.0, dy[row * p.E + ec], ok_${i});
      ${bcLoads("bb", "row", "p.offB")} ${bcLoads("cc", "row", "p.offC")}
      ${per(SP, (s) => `let B_${s} = ${bcAt("bb", "row", "p.offB", s)}; let C_${s} = ${bcAt("cc", "row", "p.offC", s)};`, "\n      ")}
      ${gateWgsl(`let zv = z[row * p.ldZ + p.offZ + ec];
        let cy = quadSum(${sumOf(SP, (s) => `h_${s} * C_${s}`)});`, "      ", v.hasZ)}
      ${per(SP, (s) => stateStepWgsl(s, `hb${i}_${s}`, "      "))}
      let gu = quadSum(${sumOf(SP, (s) => `G_${s} * B_${s}`)});
      let gq = quadSum(${sumOf(SP, (s) => `A2_${s} * q_${s}`)});
      let gdt = fma(gq, LN2, uv * gu);
      let graw = gdt * softplusSlope(dt); // 0 past the sequence's end, where dt is 0
      dBiasAcc += graw;
      ${scatter.join("\n      ")}
      let redBase = (${i}u * NB + blk) * QT * VP + q * VP + cpos * ${K}u;
      ${stageOut}
      if (lead && ok_${i}) {
        du[row * p.E + e] = ${plus(`odu_${i}`)}fma(gy, skip, dt * gu);
        dDelta[row * p.ldDD + p.offDD + e] = ${plus(`odd_${i}`)}graw;
        ${v.hasZ ? `dz[row * p.ldDZ + p.offDZ + e] = ${plus(`odz_${i}`)}gDz;` : ""}
      }
    }`).join("");

  // pass 1 over a whole sub-tile, unrolled (only sub-tiles before the segment's last, which are full)
  const forwardTile = range(TS).map((i) => `
        {
          let row = rowBase + ${i}u;
          let dt = softplus(delta[row * p.ldD + p.offD + ec] + bias);
          let dtu = dt * u[row * p.E + ec];
          ${bcLoads("fb", "row", "p.offB")}
          ${per(SP, (s) => `h_${s} = fma(exp2(dt * A2_${s}), h_${s}, dtu * ${bcAt("fb", "row", "p.offB", s)});`, "\n          ")}
        }`).join("");

  return /* wgsl */ `
enable subgroups;
${chunkIoWgsl(v.vecBC)}
const N = ${N}u;
const QT = ${QT}u; // lanes per channel
const SP = ${SP}u; // states per lane
const CW = ${CW}u; // channels per workgroup
const NB = ${NB}u; // blocks of ${W} lanes per workgroup (${CB} channels each)
const VP = ${Vp}u; // dB|dC terms per lane, padded for the reduce-scatter
const TS = ${TS}u; // steps per sub-tile (unrolled)
const KS = ${KS}u; // sub-tiles per segment, at most
const LN2 = 0.6931471805599453;


var<workgroup> red: array<f32, TS * NB * QT * VP>; // a sub-tile's dB|dC block sums: [step, block, part, term]
var<workgroup> saved: array<f32, KS * SP * ${WGT}u>; // the state at each sub-tile's start: [sub-tile, s, lane]

${SOFTPLUS_WGSL}

/**
 * softplus'(v) = sigmoid(v) from dt = softplus(v) alone: 1 − exp(−dt), so the raw delta need not be kept for the
 * walk back (a register a step). Below 0.1 the series dt − dt²/2 + dt³/6 − dt⁴/24 (relative error under 1e-6),
 * where 1 − exp(−dt) would lose digits. Above softplus's cut-off (v > 20, dt = v) this is 1, as it should be.
 */
fn softplusSlope(dt: f32) -> f32 {
  let series = dt * fma(dt, fma(dt, fma(dt, -1.0 / 24.0, 1.0 / 6.0), -0.5), 1.0);
  return select(1.0 - exp(-dt), series, dt < 0.1);
}

/** The sum over a channel's QT lanes (uniform control flow only). */
fn quadSum(v: f32) -> f32 {
  var a = v;
  ${range(Math.log2(QT)).map((k) => `a += subgroupShuffleXor(a, ${1 << k}u);`).join("\n  ")}
  return a;
}

@compute @workgroup_size(${WGT})
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  ${v.hasZ ? "" : "_ = &z; _ = &dz; // bound (the layout is shared), unused without a gate"}
  let lane = lid.x;
  let q = lane % QT;
  let e = wg.x * CW + lane / QT;
  let blk = lane / ${W}u;
  let cpos = (lane % ${W}u) / QT; // the channel's place in its block
  let c = wg.y;
  let b = wg.z;
  let live = e < p.E;
  let lead = live && q == 0u; // the lane that writes the channel's du, ddelta, dz and sums
  let ec = min(e, p.E - 1u); // lanes past E compute on a real channel and contribute nothing
  let lm = select(0.0, 1.0, live);
  let t0 = c * p.chunkLen;
  let t1 = min(t0 + p.chunkLen, p.L);
  let pb = p.oP + ec * (N + 2u);
  ${per(SP, (s) => exact ? `let nc_${s} = q * SP + ${s}u;
  let A2_${s} = SX[pb + nc_${s}]; // A · log2(e)` : `let nv_${s} = q * SP + ${s}u < N; // a real state
  let nc_${s} = min(q * SP + ${s}u, N - 1u);
  let mk_${s} = select(0.0, 1.0, nv_${s});
  let A2_${s} = SX[pb + nc_${s}] * mk_${s}; // A · log2(e); 0 for padding`, "\n  ")}
  let bias = SX[pb + N];
  let skip = SX[pb + N + 1u];
  let sBase = (b * p.nC + c) * N * p.E + ec;
  ${per(SP, (s) => `var x_${s} = 0.0; var h_${s} = 0.0; var dA_${s} = 0.0;`, "\n  ")}
  if (p.hasChunks != 0u && c + 1u < p.nC) {
    ${per(SP, (s) => `x_${s} = SX[p.oX + sBase + nc_${s} * p.E]${mk(s)};`, "\n    ")}
  }
  if (p.hasChunks != 0u && (c > 0u || p.hasState != 0u)) {
    ${per(SP, (s) => `h_${s} = SX[p.oS + sBase + nc_${s} * p.E]${mk(s)};`, "\n    ")}
  }
  // pass 1: the segment forward, keeping each sub-tile's start state
  let nSub = (t1 - t0 + TS - 1u) / TS;
  for (var j = 0u; j < nSub; j++) {
    ${per(SP, (s) => `saved[(j * SP + ${s}u) * ${WGT}u + lane] = h_${s};`, "\n    ")}
    if (j + 1u < nSub) {
      let rowBase = b * p.L + t0 + j * TS;
      ${forwardTile}
    }
  }
  // pass 2: sub-tiles from the last; in each, the states recomputed into registers, then the steps backwards
  var dDacc = 0.0;
  var dBiasAcc = 0.0;
  ${range(TS).map((i) => `var dt_${i} = 0.0; var u_${i} = 0.0; ${per(SP, (s) => `var hb${i}_${s} = 0.0;`, " ")}`).join("\n  ")}
  for (var jj = nSub; jj > 0u; ) {
    jj--;
    let ts0 = t0 + jj * TS;
    let cnt = min(TS, t1 - ts0);
    let rowBase = b * p.L + ts0;
    ${per(SP, (s) => `h_${s} = saved[(jj * SP + ${s}u) * ${WGT}u + lane];`, "\n    ")}
    ${loads}
    ${recompute}
    ${olds}
    ${backward}
    workgroupBarrier();
    // the block sums of the sub-tile's steps, added over the blocks in order: one partial per (row, workgroup)
    for (var idx = lane; idx < cnt * QT * VP; idx += ${WGT}u) {
      let i = idx / (QT * VP);
      let r = idx % (QT * VP);
      let k = r % VP;
      let n = (r / VP) * SP + k % SP;
      if (k < 2u * SP && n < N) {
        var sum = 0.0;
        for (var bl = 0u; bl < NB; bl++) { sum += red[(i * NB + bl) * QT * VP + r]; }
        part[((rowBase + i) * p.Gp + wg.x) * 2u * N + (k / SP) * N + n] = sum;
      }
    }
    workgroupBarrier();
  }
  if (live) {
    let ao = p.oA + ((b * p.nC + c) * p.E + e) * N;
    ${per(SP, (s) => `${exact ? "" : `if (nv_${s}) `}{ part[ao + q * SP + ${s}u] = dA_${s} * A2_${s} * LN2; } // dA_log = dA · A`, "\n    ")}
  }
  if (lead) {
    let o = p.oDE + (b * p.nC + c) * 2u * p.E + e;
    part[o] = dDacc;
    part[o + p.E] = dBiasAcc;
  }
}
`;
}

/** The kernel's WGSL (exported for inspection). */
export const scanBwdLanesWgsl = wgsl;

/** N states, W lanes a subgroup sum, TS time steps in registers, KS sub-tiles a chunk, QT lanes a channel, NB blocks. */
const lanesKernel = defineKernel({
  name: "bwd_scan_lanes",
  wgsl: (s: { N: number; W: number; TS: number; KS: number; QT: number; NB: number; v: LanesVariant }) => wgsl(s.N, s.W, s.TS, s.KS, s.QT, s.NB, s.v),
  label: (s) => `bwd_scan_lanes_${s.N}_${s.W}_${s.TS}_${s.KS}_${s.QT}_${s.NB}_${+s.v.hasZ}${+s.v.overwrite}${+s.v.vecBC}`,
  example: { N: 16, W: 32, TS: 8, KS: 4, QT: 2, NB: 4, v: { hasZ: true, overwrite: false, vecBC: true } },
});

export function scanBwdChunkLanes(gpu: Gpu, g: ScanBwdGeometry, a: ScanBwdInputs, dy: Buf, SX: Buf, o: ScanBwdOutputs, part: Buf): void {
  const KS = Math.ceil(g.chunkLen / g.subTile);
  const v: LanesVariant = { hasZ: a.z !== null, overwrite: o.overwrite, vecBC: lanesVecBC(g.N, g.lanes, a.ldBC, a.offB, a.offC) };
  const k = gpu.kernel(lanesKernel, { N: g.N, W: g.W, TS: g.subTile, KS, QT: g.lanes, NB: g.blocks, v });
  dispatchChunk(gpu, k, g, a, dy, SX, o, part);
}
