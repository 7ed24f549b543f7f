/**
 * Selective scan backward, phase 3 of 3 (the only phase when the sequence is one chunk): every gradient, one
 * thread per channel e of one chunk c of batch row b, 32 channels a workgroup. The thread starts from the chunk's
 * saved start state S[c] and the gradient X[c] arriving from the right, and walks the chunk's sub-tiles from the
 * last: it recomputes the states from the chunk start (keeping the states before each step of the sub-tile in
 * workgroup memory), then steps back through the sub-tile (scan-backward.ts of the CPU backend, per step):
 *   y = C·h + D·u;  gy = dy · silu(z);  dz += dy · y · silu'(z)
 *   G = X + gy · C;  dC += gy · h;  q = G · a · h[t-1];  ddelta += A · q + B · G · u;  dA += delta · q
 *   dB += delta · u · G;  du += gy · D + delta · Σ_n G · B;  X = G · a
 * dB and dC sum over channels: each step the workgroup adds its 32 channels' terms (a fixed-order sum in workgroup
 * memory) and writes one partial per (row, channel group); dA, dD and the dt bias sum over time and batch: one
 * partial per (b, c, e). reduce-groups.ts adds the partials in order. No float atomics, no [B, L, E, N] buffer.
 */
import type { Buf, Gpu } from "../../../gpu.ts";
import { Params } from "../../../gpu.ts";
import { SCAN_BWD_WG, type ScanBwdGeometry, type ScanBwdInputs } from "./geometry.ts";

const wgsl = (N: number, TS: number) => /* wgsl */ `
// bindings: 0 u [B·L, E] | 1 delta [B·L, ldD] | 2 BC [B·L, ldBC] | 3 z [B·L, ldZ] | 4 dy [B·L, E]
//           5 SX (S | X | packed [E, N + 2]) | 6 du [B·L, E] in/out | 7 dDelta [B·L, ldDD] in/out
//           8 dz [B·L, ldDZ] in/out | 9 part (dB|dC [B·L, G, 2N], dA_log [B·nC, E, N], dD|dbias [B·nC, 2, E]) out
//           10 params
// grid: (G, nC, B)
const N = ${N}u;
const WG = ${SCAN_BWD_WG}u;
const TS = ${TS}u;
const LN2 = 0.6931471805599453;
const RS = WG + 1u; // row stride of red (padded against bank conflicts)

struct P {
  B: u32, L: u32, E: u32, nC: u32, chunkLen: u32,
  ldD: u32, offD: u32, ldBC: u32, offB: u32, offC: u32, ldZ: u32, offZ: u32, hasZ: u32, hasChunks: u32,
  oS: u32, oX: u32, oP: u32, ldDD: u32, offDD: u32, ldDZ: u32, offDZ: u32, G: u32, oA: u32, oDE: u32,
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
var<workgroup> red: array<f32, 2u * N * RS>;  // red[k · RS + lane]: this step's dB (k < N) and dC (k >= N) terms

fn softplus(v: f32) -> f32 {
  let ev = exp(v);
  return select(select(log(1.0 + ev), ev * (1.0 - 0.5 * ev), ev < 1e-4), v, v > 20.0);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let lane = lid.x;
  let e = wg.x * WG + lane;
  let c = wg.y;
  let b = wg.z;
  let live = e < p.E;
  let ec = min(e, p.E - 1u); // lanes past E compute on a real channel and contribute nothing
  let t0 = c * p.chunkLen;
  let t1 = min(t0 + p.chunkLen, p.L);
  var A2: array<f32, N>; // A · log2(e)
  for (var n = 0u; n < N; n++) { A2[n] = SX[p.oP + ec * (N + 2u) + n]; }
  let bias = SX[p.oP + ec * (N + 2u) + N];
  let skip = SX[p.oP + ec * (N + 2u) + N + 1u];
  let sBase = (b * p.nC + c) * N * p.E + ec;
  var carry: array<f32, N>;
  if (p.hasChunks != 0u && c + 1u < p.nC) {
    for (var n = 0u; n < N; n++) { carry[n] = SX[p.oX + sBase + n * p.E]; }
  }
  var dA: array<f32, N>;
  var dDacc = 0.0;
  var dBiasAcc = 0.0;
  var s1 = t1;
  loop {
    if (s1 <= t0) { break; }
    let s0 = t0 + ((s1 - 1u - t0) / TS) * TS;
    let cnt = s1 - s0;
    // forward from the chunk start to s1, keeping the states before the steps of [s0, s1); each block of TS
    // steps loads its delta and u first, then runs the dependent arithmetic
    var h: array<f32, N>;
    let fromS = p.hasChunks != 0u && c > 0u;
    for (var n = 0u; n < N; n++) { h[n] = select(0.0, SX[p.oS + sBase + n * p.E], fromS); }
    for (var tb = t0; tb < s1; tb += TS) {
      let m = min(TS, s1 - tb);
      var dts: array<f32, TS>;
      var dus: array<f32, TS>;
      for (var j = 0u; j < TS; j++) {
        if (j < m) {
          let row = b * p.L + tb + j;
          let dt = softplus(delta[row * p.ldD + p.offD + ec] + bias);
          dts[j] = dt;
          dus[j] = dt * u[row * p.E + ec];
        }
      }
      for (var j = 0u; j < m; j++) {
        let t = tb + j;
        if (t >= s0) {
          let hb = (t - s0) * N * WG + lane;
          for (var n = 0u; n < N; n++) { hist[hb + n * WG] = h[n]; }
        }
        let bo = (b * p.L + t) * p.ldBC + p.offB;
        for (var n = 0u; n < N; n++) { h[n] = fma(exp2(dts[j] * A2[n]), h[n], dus[j] * BC[bo + n]); }
      }
    }
    // back through [s0, s1), h holding the state after the step: the sub-tile's inputs loaded first, its
    // per-channel gradients added in one pass at the end
    var vs: array<f32, TS>;
    var us: array<f32, TS>;
    var gouts: array<f32, TS>;
    var zs: array<f32, TS>;
    for (var j = 0u; j < TS; j++) {
      if (j < cnt) {
        let row = b * p.L + s0 + j;
        vs[j] = delta[row * p.ldD + p.offD + ec] + bias;
        us[j] = u[row * p.E + ec];
        gouts[j] = dy[row * p.E + ec];
        if (p.hasZ != 0u) { zs[j] = z[row * p.ldZ + p.offZ + ec]; }
      }
    }
    var gDu: array<f32, TS>;
    var gDd: array<f32, TS>;
    var gDz: array<f32, TS>;
    for (var jj = cnt; jj > 0u; jj--) {
      let j = jj - 1u;
      let row = b * p.L + s0 + j;
      let v = vs[j];
      let dt = softplus(v);
      let uv = us[j];
      let gout = gouts[j];
      let bo = row * p.ldBC + p.offB;
      let co = row * p.ldBC + p.offC;
      var gy = gout;
      if (p.hasZ != 0u) {
        var y = skip * uv;
        for (var n = 0u; n < N; n++) { y = fma(h[n], BC[co + n], y); }
        let zv = zs[j];
        let sig = 1.0 / (1.0 + exp(-zv));
        gy = gout * zv * sig;
        gDz[j] = gout * y * sig * (1.0 + zv * (1.0 - sig));
      }
      dDacc = fma(gy, uv, dDacc);
      var gu = 0.0;
      var gdt = 0.0;
      let dtu = dt * uv;
      let hb = j * N * WG + lane;
      workgroupBarrier(); // the previous step's sums have read red
      for (var n = 0u; n < N; n++) {
        let Bn = BC[bo + n];
        let G = fma(gy, BC[co + n], carry[n]);
        let hp = hist[hb + n * WG];
        let a = exp2(dt * A2[n]);
        let q = G * a * hp;
        gdt += A2[n] * LN2 * q + Bn * G * uv;
        dA[n] = fma(dt, q, dA[n]);
        red[n * RS + lane] = select(0.0, dtu * G, live);
        red[(N + n) * RS + lane] = select(0.0, gy * h[n], live);
        gu = fma(G, Bn, gu);
        carry[n] = G * a;
        h[n] = hp;
      }
      let graw = select(gdt / (1.0 + exp(-v)), gdt, v > 20.0);
      gDu[j] = gy * skip + dt * gu;
      gDd[j] = graw;
      dBiasAcc += graw;
      workgroupBarrier();
      for (var k = lane; k < 2u * N; k += WG) {
        var s = 0.0;
        for (var l = 0u; l < WG; l++) { s += red[k * RS + l]; }
        part[(row * p.G + wg.x) * 2u * N + k] = s;
      }
    }
    if (live) {
      for (var j = 0u; j < TS; j++) {
        if (j < cnt) {
          let row = b * p.L + s0 + j;
          du[row * p.E + e] += gDu[j];
          dDelta[row * p.ldDD + p.offDD + e] += gDd[j];
          if (p.hasZ != 0u) { dz[row * p.ldDZ + p.offDZ + e] += gDz[j]; }
        }
      }
    }
    s1 = s0;
  }
  if (live) {
    let ao = p.oA + ((b * p.nC + c) * p.E + e) * N;
    for (var n = 0u; n < N; n++) { part[ao + n] = dA[n] * A2[n] * LN2; } // dA_log = dA · A
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

export function scanBwdChunk(gpu: Gpu, g: ScanBwdGeometry, a: ScanBwdInputs, dy: Buf, SX: Buf, o: ScanBwdOutputs, part: Buf): void {
  const k = gpu.kernel(`bwd_scan_chunk_${g.N}_${g.subTile}`, () => wgsl(g.N, g.subTile));
  const p = new Params().u32(g.B).u32(g.L).u32(g.E).u32(g.nC).u32(g.chunkLen)
    .u32(a.ldD).u32(a.offD).u32(a.ldBC).u32(a.offB).u32(a.offC).u32(a.ldZ).u32(a.offZ).bool(!!a.z).bool(g.nC > 1)
    .u32(g.oS).u32(g.oX).u32(g.oP).u32(o.ldDD).u32(o.offDD).u32(o.ldDZ).u32(o.offDZ).u32(g.G).u32(g.oA).u32(g.oDE);
  gpu.dispatch(k, [a.u, a.delta, a.BC, a.z ?? gpu.dummy, dy, SX, o.du, o.dDelta, o.dz ?? gpu.dummyOut, part],
    p, [g.G, g.nC, g.B]);
}
