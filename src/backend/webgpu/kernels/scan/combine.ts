/**
 * Selective scan, phase 2 of 3: the associative combine of the chunks' pairs, (a1, b1) ∘ (a2, b2) =
 * (a1·a2, a2·b1 + b2), run as a sequential sweep over chunks for every (b, n, e), which is B · N · E
 * independent sweeps of nC steps. It turns S in place from chunk-local end states into chunk start states:
 *   start[0] = the initial state (or zeros), start[c+1] = exp(A · dsum[c]) · start[c] + S[c].
 * Loads are issued 8 chunks at a time, ahead of the dependent arithmetic.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { grid } from "../../gpu.ts";
import type { ScanGeometry } from "./geometry.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";

// bindings: 0 packed [E, N + 2] (A·log2e, ...) | 1 dsum [B, nC, E] | 2 stateIn [B, E, N] | 3 S [B, nC, N, E] in/out | 4 params
const scanCombineParts: WgslParts = {
  consts: [],
  params: [["B", "u32"], ["E", "u32"], ["N", "u32"], ["nC", "u32"], ["hasState", "u32"], ["groupsX", "u32"]],
  bindings: [
    ["packed", "var<storage, read> packed: array<f32>"],
    ["dsum", "var<storage, read> dsum: array<f32>"],
    ["stateIn", "var<storage, read> stateIn: array<f32>"],
    ["S", "var<storage, read_write> S: array<f32>"],
  ],
  decls: /* wgsl */ `
const AHEAD = 8u;`,
  fn: /* wgsl */ `
fn scanCombine(gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x; // (b, n, e), e fastest
  if (i >= p.B * p.N * p.E) { return; }
  let e = i % p.E;
  let n = (i / p.E) % p.N;
  let b = i / (p.E * p.N);
  let A2 = packed[e * (p.N + 2u) + n];
  var h = 0.0;
  if (p.hasState != 0u) { h = stateIn[(b * p.E + e) * p.N + n]; }
  let stride = p.N * p.E;
  let s0 = b * p.nC * stride + n * p.E + e;
  let d0 = b * p.nC * p.E + e;
  let last = p.nC - 1u;
  for (var c = 0u; c < last; c += AHEAD) {
    var loc: array<f32, AHEAD>;
    var ds: array<f32, AHEAD>;
    for (var j = 0u; j < AHEAD; j++) {
      if (c + j < last) {
        loc[j] = S[s0 + (c + j) * stride];
        ds[j] = dsum[d0 + (c + j) * p.E];
      }
    }
    for (var j = 0u; j < AHEAD; j++) {
      if (c + j < last) {
        S[s0 + (c + j) * stride] = h;
        h = fma(exp2(A2 * ds[j]), h, loc[j]);
      }
    }
  }
  S[s0 + last * stride] = h;
}`,
};

const scanCombineKernel = defineKernel({
  name: "scan_combine", wgsl: () => standaloneWgsl(scanCombineParts, "256", "scanCombine(gid)"), example: null,
});

export function scanCombine(gpu: Gpu, g: ScanGeometry, packed: Buf, dsum: Buf, stateIn: Buf | null, S: Buf): void {
  const k = gpu.kernel(scanCombineKernel, null);
  const [gx, gy] = grid(Math.ceil((g.B * g.N * g.E) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(scanCombineParts, { packed, dsum, stateIn: stateIn ?? gpu.dummy, S }),
    paramBlock(scanCombineParts.params, { B: g.B, E: g.E, N: g.N, nC: g.nC, hasState: !!stateIn, groupsX: gx }), [gx, gy]);
}
