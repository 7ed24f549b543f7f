/**
 * Selective scan backward, phase 3 of 3 (the only phase when the sequence is one chunk): every gradient, one
 * thread per channel e of one chunk c of batch row b, 32 channels a workgroup. The thread starts from the chunk's
 * saved start state S[c] (for chunk 0 zeros, or the forward's initial state) and the gradient X[c] arriving from
 * the right, and walks the chunk's sub-tiles from the last: it recomputes the states from the chunk start
 * (keeping the states before each step of the sub-tile in workgroup memory), then steps back through the sub-tile
 * (scan-backward.ts of the CPU backend, per step):
 *   y = C·h + D·u;  gy = dy · silu(z);  dz += dy · y · silu'(z)
 *   G = X + gy · C;  dC += gy · h;  q = G · a · h[t-1];  dA += delta · q;  gu = Σ_n G · B
 *   ddelta += Σ_n A · q + u · gu;  dB += delta · u · G;  du += gy · D + delta · gu;  X = G · a
 * dB and dC sum over channels: each step the workgroup sums its channels' terms (reduce.ts: a subgroup
 * reduce-scatter, or workgroup memory without subgroups) and writes partials per (row, lane block); dA, dD and
 * the dt bias sum over time and batch: one partial per (b, c, e). reduce-groups.ts adds the partials in order.
 * No float atomics, no [B, L, E, N] buffer.
 *
 * The per-state work is generated unrolled over n (N is a constant of the kernel), so the N states, carries
 * and dA sums live in registers with no dynamically indexed private array; each step's per-channel inputs (and
 * the gradients it adds to) are loaded one step ahead, so their latency hides behind the step before.
 */
import type { Buf, Gpu } from "../../../gpu.ts";
import { chunkIoWgsl, dispatchChunk, gateWgsl, stateStepWgsl, type ScanBwdOutputs } from "./chunk-io.ts";
import { SCAN_BWD_WG, type ScanBwdGeometry, type ScanBwdInputs } from "./geometry.ts";
import { reduceDecls, reduceStep } from "./reduce.ts";
import { SOFTPLUS_WGSL } from "../../wgsl-common.ts";
import { defineKernel } from "../../../kernel-def.ts";

/** The N lines of `f(n)`, joined for a WGSL block. */
const each = (N: number, f: (n: number) => string, sep = "\n    ") => Array.from({ length: N }, (_, n) => f(n)).join(sep);

/** Σ_n f(n) as two interleaved chains (shorter dependency chains than one). */
function sum2(N: number, acc: string, f: (n: number) => string): string {
  const a = [`var ${acc}0 = 0.0;`, `var ${acc}1 = 0.0;`];
  for (let n = 0; n < N; n++) a.push(`${acc}${n % 2} += ${f(n)};`);
  a.push(`let ${acc} = ${acc}0 + ${acc}1;`);
  return a.join("\n      ");
}

const wgsl = (N: number, TS: number, W: number) => /* wgsl */ `
${W > 0 ? "enable subgroups;" : ""}
${chunkIoWgsl()}
const N = ${N}u;
const WG = ${SCAN_BWD_WG}u;
const TS = ${TS}u;
const LN2 = 0.6931471805599453;


var<workgroup> hist: array<f32, TS * N * WG>; // hist[(j · N + n) · WG + lane]: h before step j of the sub-tile
${reduceDecls(N, W)}

${SOFTPLUS_WGSL}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>${W > 0 ? ", @builtin(subgroup_invocation_id) sgl: u32" : ""}) {
  let lane = lid.x;
  let e = wg.x * WG + lane;
  let c = wg.y;
  let b = wg.z;
  let live = e < p.E;
  let ec = min(e, p.E - 1u); // lanes past E compute on a real channel and contribute nothing
  let lm = select(0.0, 1.0, live);
  let t0 = c * p.chunkLen;
  let t1 = min(t0 + p.chunkLen, p.L);
  let pb = p.oP + ec * (N + 2u);
  ${each(N, (n) => `let A2_${n} = SX[pb + ${n}u]; // A · log2(e)`, "\n  ")}
  let bias = SX[pb + N];
  let skip = SX[pb + N + 1u];
  let sBase = (b * p.nC + c) * N * p.E + ec;
  let fromS = p.hasChunks != 0u && (c > 0u || p.hasState != 0u);
  ${each(N, (n) => `var x_${n} = 0.0; var dA_${n} = 0.0; var h_${n} = 0.0;`, "\n  ")}
  if (p.hasChunks != 0u && c + 1u < p.nC) {
    ${each(N, (n) => `x_${n} = SX[p.oX + sBase + ${n}u * p.E];`)}
  }
  var dDacc = 0.0;
  var dBiasAcc = 0.0;
  var s1 = t1;
  loop {
    if (s1 <= t0) { break; }
    let s0 = t0 + ((s1 - 1u - t0) / TS) * TS;
    // forward from the chunk start to s1, keeping the states before the steps of [s0, s1)
    if (fromS) {
      ${each(N, (n) => `h_${n} = SX[p.oS + sBase + ${n}u * p.E];`, "\n      ")}
    } else {
      ${each(N, (n) => `h_${n} = 0.0;`, " ")}
    }
    var nd = delta[(b * p.L + t0) * p.ldD + p.offD + ec];
    var nu = u[(b * p.L + t0) * p.E + ec];
    for (var t = t0; t < s1; t++) {
      let dt = softplus(nd + bias);
      let dtu = dt * nu;
      if (t + 1u < s1) { // the next step's inputs, ahead of this step's arithmetic
        let rn = b * p.L + t + 1u;
        nd = delta[rn * p.ldD + p.offD + ec];
        nu = u[rn * p.E + ec];
      }
      if (t >= s0) {
        let hb = (t - s0) * N * WG + lane;
        ${each(N, (n) => `hist[hb + ${n * SCAN_BWD_WG}u] = h_${n};`, "\n        ")}
      }
      let bo = (b * p.L + t) * p.ldBC + p.offB;
      ${each(N, (n) => `h_${n} = fma(exp2(dt * A2_${n}), h_${n}, dtu * BC[bo + ${n}u]);`, "\n      ")}
    }
    // back through [s0, s1), h holding the state after the step; the step's inputs and the gradients it adds to
    // are loaded during the step after it
    var r0 = b * p.L + s1 - 1u;
    var pv = delta[r0 * p.ldD + p.offD + ec];
    var pu = u[r0 * p.E + ec];
    var pg = dy[r0 * p.E + ec];
    var pz = 0.0;
    var pdz = 0.0;
    if (p.hasZ != 0u) {
      pz = z[r0 * p.ldZ + p.offZ + ec];
      pdz = dz[r0 * p.ldDZ + p.offDZ + ec];
    }
    var pdu = du[r0 * p.E + ec];
    var pdd = dDelta[r0 * p.ldDD + p.offDD + ec];
    for (var t = s1; t > s0; ) {
      t--;
      let row = b * p.L + t;
      let v = pv + bias;
      let uv = pu;
      let gout = pg;
      let zv = pz;
      let odz = pdz;
      let odu = pdu;
      let odd = pdd;
      if (t > s0) {
        let rn = row - 1u;
        pv = delta[rn * p.ldD + p.offD + ec];
        pu = u[rn * p.E + ec];
        pg = dy[rn * p.E + ec];
        if (p.hasZ != 0u) {
          pz = z[rn * p.ldZ + p.offZ + ec];
          pdz = dz[rn * p.ldDZ + p.offDZ + ec];
        }
        pdu = du[rn * p.E + ec];
        pdd = dDelta[rn * p.ldDD + p.offDD + ec];
      }
      let dt = softplus(v);
      let bo = row * p.ldBC + p.offB;
      let co = row * p.ldBC + p.offC;
      ${each(N, (n) => `let B_${n} = BC[bo + ${n}u]; let C_${n} = BC[co + ${n}u];`, "\n      ")}
      ${gateWgsl(sum2(N, "cy", (n) => `h_${n} * C_${n}`), "      ")}
      let hb = (t - s0) * N * WG + lane;
      ${each(N, (n) => stateStepWgsl(n, `hist[hb + ${n * SCAN_BWD_WG}u]`, "      "), "\n      ")}
      ${sum2(N, "gu", (n) => `G_${n} * B_${n}`)}
      ${sum2(N, "gq", (n) => `A2_${n} * q_${n}`)}
      let gdt = fma(gq, LN2, uv * gu);
      let graw = select(gdt / (1.0 + exp(-v)), gdt, v > 20.0);
      dBiasAcc += graw;
      ${reduceStep(N, W, [...Array.from({ length: N }, (_, n) => `rB_${n}`), ...Array.from({ length: N }, (_, n) => `rC_${n}`)])}
      if (live) {
        du[row * p.E + e] = odu + fma(gy, skip, dt * gu);
        dDelta[row * p.ldDD + p.offDD + e] = odd + graw;
        if (p.hasZ != 0u) { dz[row * p.ldDZ + p.offDZ + e] = odz + gDz; }
      }
    }
    s1 = s0;
  }
  if (live) {
    let ao = p.oA + ((b * p.nC + c) * p.E + e) * N;
    ${each(N, (n) => `part[ao + ${n}u] = dA_${n} * A2_${n} * LN2; // dA_log = dA · A`)}
    let o = p.oDE + (b * p.nC + c) * 2u * p.E + e;
    part[o] = dDacc;
    part[o + p.E] = dBiasAcc;
  }
}
`;


/** The kernel's WGSL (exported for inspection). */
export const scanBwdChunkWgsl = wgsl;

/** N states, TS time steps recomputed at once, W lanes a subgroup sum (0: workgroup memory). */
const chunkKernel = defineKernel({
  name: "bwd_scan_chunk", wgsl: (s: { N: number; TS: number; W: number }) => wgsl(s.N, s.TS, s.W),
  label: (s) => `bwd_scan_chunk_${s.N}_${s.TS}_${s.W}`, example: { N: 16, TS: 8, W: 0 },
});

export function scanBwdChunk(gpu: Gpu, g: ScanBwdGeometry, a: ScanBwdInputs, dy: Buf, SX: Buf, o: ScanBwdOutputs, part: Buf): void {
  const k = gpu.kernel(chunkKernel, { N: g.N, TS: g.subTile, W: g.W });
  dispatchChunk(gpu, k, g, a, dy, SX, o, part);
}
