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
import { Params } from "../../../gpu.ts";
import { SCAN_BWD_WG, type ScanBwdGeometry, type ScanBwdInputs } from "./geometry.ts";
import { reduceDecls, reduceStep } from "./reduce.ts";

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
// bindings: 0 u [B·L, E] | 1 delta [B·L, ldD] | 2 BC [B·L, ldBC] | 3 z [B·L, ldZ] | 4 dy [B·L, E]
//           5 SX (S | X | packed [E, N + 2]) | 6 du [B·L, E] in/out | 7 dDelta [B·L, ldDD] in/out
//           8 dz [B·L, ldDZ] in/out | 9 part (dB|dC [B·L, Gp, 2N], dA_log [B·nC, E, N], dD|dbias [B·nC, 2, E]) out
//           10 params
// grid: (G, nC, B)
const N = ${N}u;
const WG = ${SCAN_BWD_WG}u;
const TS = ${TS}u;
const LN2 = 0.6931471805599453;

struct P {
  B: u32, L: u32, E: u32, nC: u32, chunkLen: u32,
  ldD: u32, offD: u32, ldBC: u32, offB: u32, offC: u32, ldZ: u32, offZ: u32, hasZ: u32, hasChunks: u32,
  oS: u32, oX: u32, oP: u32, ldDD: u32, offDD: u32, ldDZ: u32, offDZ: u32, Gp: u32, oA: u32, oDE: u32,
  hasState: u32, // S[b, 0] is the forward's initial state (else chunk 0 starts from zeros, not read)
}
@group(0) @binding(0) var<storage, read> u: array<f32>;
@group(0) @binding(1) var<storage, read> delta: array<f32>;
@group(0) @binding(2) var<storage, read> BC: array<f32>;
@group(0) @binding(3) var<storage, read> z: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read> SX: array<f32>;
@group(0) @binding(6) var<storage, read_write> du: array<f32>;
@group(0) @binding(7) var<storage, read_write> dDelta: array<f32>;
@group(0) @binding(8) var<storage, read_write> dz: array<f32>;
@group(0) @binding(9) var<storage, read_write> part: array<f32>;
@group(0) @binding(10) var<uniform> p: P;

var<workgroup> hist: array<f32, TS * N * WG>; // hist[(j · N + n) · WG + lane]: h before step j of the sub-tile
${reduceDecls(N, W)}

fn softplus(v: f32) -> f32 {
  let ev = exp(v);
  return select(select(log(1.0 + ev), ev * (1.0 - 0.5 * ev), ev < 1e-4), v, v > 20.0);
}

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
      var gy = gout;
      var gDz = 0.0;
      if (p.hasZ != 0u) {
        ${sum2(N, "cy", (n) => `h_${n} * C_${n}`)}
        let y = fma(skip, uv, cy);
        let sig = 1.0 / (1.0 + exp(-zv));
        gy = gout * zv * sig;
        gDz = gout * y * sig * (1.0 + zv * (1.0 - sig));
      }
      dDacc = fma(gy, uv, dDacc);
      let dtuL = dt * uv * lm;
      let gyL = gy * lm;
      let hb = (t - s0) * N * WG + lane;
      ${each(N, (n) => `let G_${n} = fma(gy, C_${n}, x_${n});
      let a_${n} = exp2(dt * A2_${n});
      let q_${n} = G_${n} * a_${n} * hist[hb + ${n * SCAN_BWD_WG}u];
      dA_${n} = fma(dt, q_${n}, dA_${n});
      x_${n} = G_${n} * a_${n};
      let rB_${n} = dtuL * G_${n};
      let rC_${n} = gyL * h_${n};
      h_${n} = hist[hb + ${n * SCAN_BWD_WG}u];`, "\n      ")}
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

export interface ScanBwdOutputs {
  du: Buf;
  dDelta: Buf; ldDD: number; offDD: number;
  dz: Buf | null; ldDZ: number; offDZ: number;
}

/** The kernel's WGSL (exported for inspection). */
export const scanBwdChunkWgsl = wgsl;

export function scanBwdChunk(gpu: Gpu, g: ScanBwdGeometry, a: ScanBwdInputs, dy: Buf, SX: Buf, o: ScanBwdOutputs, part: Buf): void {
  const k = gpu.kernel(`bwd_scan_chunk_${g.N}_${g.subTile}_${g.W}`, () => wgsl(g.N, g.subTile, g.W));
  const p = new Params().u32(g.B).u32(g.L).u32(g.E).u32(g.nC).u32(g.chunkLen)
    .u32(a.ldD).u32(a.offD).u32(a.ldBC).u32(a.offB).u32(a.offC).u32(a.ldZ).u32(a.offZ).bool(!!a.z).bool(g.nC > 1 || g.hasState)
    .u32(g.oS).u32(g.oX).u32(g.oP).u32(o.ldDD).u32(o.offDD).u32(o.ldDZ).u32(o.offDZ).u32(g.Gp).u32(g.oA).u32(g.oDE)
    .bool(g.hasState);
  gpu.dispatch(k, [a.u, a.delta, a.BC, a.z ?? gpu.dummy, dy, SX, o.du, o.dDelta, o.dz ?? gpu.dummyOut, part],
    p, [g.G, g.nC, g.B]);
}
