/**
 * Selective scan backward, phase 1 of 3 (only when the sequence is split into chunks): the gradient that each
 * chunk c ≥ 1 sends to the state before it, from a zero gradient at its end. With G[t] = ∂loss/∂h[t],
 *   G[t] = gy[t] · C[t] + a[t+1] · G[t+1],   a[t] = exp(delta[t] · A),   gy = dy · silu(z) (dy without a gate)
 * the carry into chunk c − 1 is a[t0] · G[t0] = Y[c] + P[c] · X[c], where Y[c] is what this kernel computes (the
 * chunk walked backwards from zero), P[c] = exp(A · Σ_chunk delta) and X[c] the carry into chunk c from the right.
 * combine.ts then solves that recurrence over chunks. Needs no state h at all: only delta, C, z and dy.
 * One thread per channel with its N carries in registers (the per-state work generated unrolled over n, so no
 * private array is indexed at run time); C rows staged in workgroup memory, each step's delta, dy and z loaded
 * during the step after it (the walk goes backwards in time).
 */
import type { Buf, Gpu } from "../../../gpu.ts";
import type { ScanBwdGeometry, ScanBwdInputs } from "./geometry.ts";
import { SOFTPLUS_WGSL } from "../../wgsl-common.ts";
import { defineKernel } from "../../../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../../compose.ts";

const WG = 64; // channels per workgroup
const TS = 16; // time steps of C staged, and of delta, dy, z loaded, at once

/** The N lines of `f(n)`, joined for a WGSL block. */
const each = (N: number, f: (n: number) => string, sep = "\n      ") => Array.from({ length: N }, (_, n) => f(n)).join(sep);

// delta [B·L, ldD] | BC [B·L, ldBC] | z [B·L, ldZ] | dy [B·L, E] | SX (S | X | packed [E, N + 2]) in/out: writes
// Y[c] into X; grid: (ceil(E / WG), nC - 1, B): chunk c = 1 + workgroup y
const parts = (N: number): WgslParts => ({
  consts: [["N", `${N}u`], ["WG", `${WG}u`], ["TS", `${TS}u`]],
  params: [
    ["B", "u32"], ["L", "u32"], ["E", "u32"], ["nC", "u32"], ["chunkLen", "u32"], ["ldD", "u32"], ["offD", "u32"], ["ldBC", "u32"],
    ["offC", "u32"], ["ldZ", "u32"], ["offZ", "u32"], ["hasZ", "u32"], ["oX", "u32"], ["oP", "u32"],
  ],
  bindings: [
    ["delta", "var<storage, read> delta: array<f32>"],
    ["BC", "var<storage, read> BC: array<f32>"],
    ["z", "var<storage, read> z: array<f32>"],
    ["dy", "var<storage, read> dy: array<f32>"],
    ["SX", "var<storage, read_write> SX: array<f32>"],
  ],
  decls: `var<workgroup> Csh: array<f32, TS * N>;\n${SOFTPLUS_WGSL}`,
  fn: /* wgsl */ `
fn scanBwdCarry(lid: vec3<u32>, wg: vec3<u32>) {
  let e = wg.x * WG + lid.x;
  let c = wg.y + 1u;
  let b = wg.z;
  let live = e < p.E;
  let ec = min(e, p.E - 1u);
  let t0 = c * p.chunkLen;
  let t1 = min(t0 + p.chunkLen, p.L);
  let pb = p.oP + ec * (N + 2u);
  ${each(N, (n) => `let A2_${n} = SX[pb + ${n}u];`, "\n  ")}
  let bias = SX[pb + N];
  ${each(N, (n) => `var x_${n} = 0.0;`, " ")}
  // the last step's inputs; each step then loads the one before it
  var pv = delta[(b * p.L + t1 - 1u) * p.ldD + p.offD + ec];
  var pg = dy[(b * p.L + t1 - 1u) * p.E + ec];
  var pz = 0.0;
  if (p.hasZ != 0u) { pz = z[(b * p.L + t1 - 1u) * p.ldZ + p.offZ + ec]; }
  var ts1 = t1;
  loop {
    if (ts1 <= t0) { break; }
    let ts0 = select(t0, ts1 - TS, ts1 - t0 > TS);
    let cnt = ts1 - ts0;
    workgroupBarrier();
    for (var i = lid.x; i < cnt * N; i += WG) {
      Csh[i] = BC[(b * p.L + ts0 + i / N) * p.ldBC + p.offC + i % N];
    }
    workgroupBarrier();
    for (var t = ts1; t > ts0; ) {
      t--;
      let dt = softplus(pv + bias);
      var g = pg;
      if (p.hasZ != 0u) { g *= pz / (1.0 + exp(-pz)); }
      if (t > t0) {
        let rn = b * p.L + t - 1u;
        pv = delta[rn * p.ldD + p.offD + ec];
        pg = dy[rn * p.E + ec];
        if (p.hasZ != 0u) { pz = z[rn * p.ldZ + p.offZ + ec]; }
      }
      let cb = (t - ts0) * N;
      ${each(N, (n) => `x_${n} = (x_${n} + g * Csh[cb + ${n}u]) * exp2(dt * A2_${n});`)}
    }
    ts1 = ts0;
  }
  if (live) {
    let base = p.oX + (b * p.nC + c) * N * p.E + e;
    ${each(N, (n) => `SX[base + ${n}u * p.E] = x_${n};`, "\n    ")}
  }
}`,
});
const partsByN = new Map<number, WgslParts>();
/** The kernel's parts for state size N, made once. */
function partsFor(N: number): WgslParts {
  let made = partsByN.get(N);
  if (!made) partsByN.set(N, made = parts(N));
  return made;
}

const carryKernel = defineKernel({
  name: "bwd_scan_carry", wgsl: (N: number) => standaloneWgsl(partsFor(N), `${WG}`, "scanBwdCarry(lid, wg)"), label: (N) => `bwd_scan_carry_${N}`,
  example: 16,
});

export function scanBwdCarry(gpu: Gpu, g: ScanBwdGeometry, a: ScanBwdInputs, dy: Buf, SX: Buf): void {
  const k = gpu.kernel(carryKernel, g.N);
  const kp = partsFor(g.N);
  const p = paramBlock(kp.params, {
    B: g.B, L: g.L, E: g.E, nC: g.nC, chunkLen: g.chunkLen, ldD: a.ldD, offD: a.offD, ldBC: a.ldBC, offC: a.offC,
    ldZ: a.ldZ, offZ: a.offZ, hasZ: !!a.z, oX: g.oX, oP: g.oP,
  });
  gpu.dispatch(k, bindingsByName(kp, { delta: a.delta, BC: a.BC, z: a.z ?? gpu.dummy, dy, SX }), p, [Math.ceil(g.E / WG), g.nC - 1, g.B]);
}
