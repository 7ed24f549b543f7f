/**
 * The WebGPU SSD backward (the op ssdScanBackward: kernels/ssd/backward.ts, chunks as matrix products) against the
 * CPU reference's (src/backend/cpu/ssd-backward.ts) on shapes across its boundaries, with chunks of 64 (the default)
 * and 128, a group's heads in parts for dB and dC and not, the products' other tiles (8 × 4 and 4 × 8 outputs a
 * thread, K steps of 32): one position, one whole chunk, several chunks with a ragged last one; head dims and state
 * sizes past one 64-wide product tile or not multiples of 4; the heads in pieces of one (a scratch budget of one head's), a group's
 * dB and dC summed over pieces; 1 or 2 groups, batch 3, with and without a gate z and an initial state, a dt clamp,
 * every gradient a column window of a wider matrix (added into, as training does).
 *
 * Tolerance: the CPU keeps its states in float64, the GPU in float32; both sum the same terms in other orders. Each
 * gradient is a sum over time of products whose float32 rounding is a relative 1e-7 each, growing at most with the
 * number of terms (L·N or L·P, a few thousand here) — a few 1e-5 at worst of the largest terms' scale. The check is
 * |gpu − cpu| ≤ 1e-4 · max(1e-6, max |cpu|) per gradient, that scale.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { CpuBackend } from "../../src/backend/cpu/index.ts";
import { type Backend, cols } from "../../src/backend/backend.ts";
import type { TrainingOps } from "../../src/backend/training.ts";
import { TestRng } from "../helpers/random.ts";
import { maxAbsDiff } from "../helpers/fixtures.ts";
import { releaseWebgpu, unavailable, webgpuBackend } from "../helpers/backends.ts";
import { ssdBackwardLayout, ssdBackwardPlan, ssdBackwardTuning } from "../../src/backend/webgpu/kernels/ssd/backward.ts";

after(releaseWebgpu);

type TB = Backend & TrainingOps;
const cpu = new CpuBackend() as unknown as TB;

interface Case {
  B: number; L: number; H: number; P: number; G: number; N: number;
  gate: boolean; state: boolean; limit: readonly [number, number];
  /** the heads in pieces of one: a scratch budget of one head's */
  pieces?: boolean;
}

async function compare(g: TB, c: Case, seed: number): Promise<void> {
  const r = new TestRng(seed);
  const T = c.B * c.L, E = c.H * c.P, GN = c.G * c.N;
  // x | B | C after one column, z | dt beside each other after two: windows at odd offsets, as training's
  const wX = 1 + E + 2 * GN + 1, wZ = 2 + E + c.H;
  const d = {
    xBC: r.f32(T * wX), zdt: r.f32(T * wZ), dtBias: r.f32(c.H, 1), D: r.f32(c.H), h0: r.f32(c.B * c.H * c.P * c.N),
    A_log: Float32Array.from({ length: c.H }, () => Math.log(r.uniform(0.5, 8))), dy: r.f32(T * E),
    // gradients already holding values: the backward adds into them
    gx: r.f32(T * wX), gz: r.f32(T * wZ), gp: r.f32(3 * c.H),
  };
  const run = async (b: TB) => {
    const xBC = b.fromF32(d.xBC, [T, wX]), zdt = b.fromF32(d.zdt, [T, wZ]);
    const gxBC = b.fromF32(d.gx, [T, wX]), gzdt = b.fromF32(d.gz, [T, wZ]);
    const gA = b.fromF32(d.gp.subarray(0, c.H), [c.H]), gD = b.fromF32(d.gp.subarray(c.H, 2 * c.H), [c.H]);
    const gBias = b.fromF32(d.gp.subarray(2 * c.H), [c.H]);
    b.ssdScanBackward!({
      batch: c.B, seqLen: c.L, x: cols(xBC, 1, E), B: cols(xBC, 1 + E, GN), C: cols(xBC, 1 + E + GN, GN), dt: cols(zdt, 2 + E, c.H),
      dtBias: b.fromF32(d.dtBias, [c.H]), A_log: b.fromF32(d.A_log, [c.H]), D: b.fromF32(d.D, [c.H]),
      z: c.gate ? cols(zdt, 2, E) : null, headDim: c.P, nGroups: c.G, dtLimit: c.limit, chunkSize: 16,
      state: c.state ? b.fromF32(d.h0, [c.B, c.H, c.P, c.N]) : null,
    }, b.fromF32(d.dy, [T, E]), {
      dx: cols(gxBC, 1, E), dB: cols(gxBC, 1 + E, GN), dC: cols(gxBC, 1 + E + GN, GN), dDt: cols(gzdt, 2 + E, c.H),
      dz: c.gate ? cols(gzdt, 2, E) : null, dA_log: gA, dD: gD, dDtBias: gBias,
    });
    return Promise.all([gxBC, gzdt, gA, gD, gBias].map((x) => b.readF32(x)));
  };
  const want = await run(cpu);
  const saved = ssdBackwardTuning.bufferBytes;
  if (c.pieces) ssdBackwardTuning.bufferBytes = ssdBackwardLayout({ ...c, hasState: c.state, lo: 0, hi: 1 }, ssdBackwardTuning.Q, 1).size * 4;
  let got: Float32Array[];
  try {
    got = await run(g);
  } finally {
    ssdBackwardTuning.bufferBytes = saved;
  }
  const names = ["x | B | C", "z | dt", "dA_log", "dD", "dDtBias"];
  want.forEach((w, i) => {
    // the change the backward made, against the CPU's (the starting values cancel out of the scale)
    const start = [d.gx, d.gz, d.gp.subarray(0, c.H), d.gp.subarray(c.H, 2 * c.H), d.gp.subarray(2 * c.H)][i]!;
    const scale = Math.max(1e-6, ...Array.from(w, (v, j) => Math.abs(v - start[j]!)));
    const diff = maxAbsDiff(got[i]!, w);
    assert.ok(diff <= 1e-4 * scale, `${JSON.stringify(c)}: the gradients of ${names[i]} differ by ${diff} (scale ${scale})`);
  });
}

const none = [0, Infinity] as const;

// chunks of 64; of 128 with the gradients reaching the states in a buffer of their own; a group's heads for dB and
// dC in parts (as few workgroups bring), never in parts, and in 4 parts of K where 5 heads' P columns and the
// chunk's positions split unevenly (the positions start inside a part; the last part is shorter)
for (const [Q, groupWorkgroups] of [[64, 1024], [128, 1024], [64, 1], [64, 8], [128, 8]] as const) {
  const parts = groupWorkgroups === 1 ? ", a group's heads never in parts" : groupWorkgroups === 8 ? ", a group's K in uneven parts" : "";
  test(`ssdScanBackward on WebGPU (chunks of ${Q}${parts}) matches the CPU across chunks, pieces of heads, groups and batch rows`, { timeout: 900_000 }, async (t) => {
    const g = await webgpuBackend() as TB | null;
    if (!g) return unavailable(t, "no WebGPU adapter");
    const cases: Case[] = [
      // batch 3, 2 groups, a gate and a state, a dt clamp; one chunk shorter than the kernels'
      { B: 3, L: 37, H: 4, P: 6, G: 2, N: 5, gate: true, state: true, limit: [0.02, 0.7] },
      // the heads in pieces of 1, 2 groups: a group's dB and dC summed over pieces
      { B: 2, L: 45, H: 4, P: 8, G: 2, N: 12, gate: true, state: false, limit: none, pieces: true },
      // pieces of 1 head, several chunks, one group
      { B: 1, L: 300, H: 5, P: 4, G: 1, N: 8, gate: false, state: true, limit: [0, 0.5], pieces: true },
      // batch 3, several chunks and a ragged last one, pieces of 1
      { B: 3, L: 200, H: 4, P: 16, G: 2, N: 16, gate: true, state: true, limit: none, pieces: true },
      // head dims and state sizes past one 64-wide tile and not multiples of 4
      { B: 1, L: 20, H: 2, P: 67, G: 1, N: 66, gate: true, state: true, limit: none },
      // the model's head (P 64, N 128), two groups, two chunks of 64
      { B: 1, L: 70, H: 4, P: 64, G: 2, N: 128, gate: true, state: true, limit: none },
      // one position; exactly one chunk of 64, P and N past one tile, 2 heads a group
      { B: 2, L: 1, H: 2, P: 5, G: 1, N: 3, gate: false, state: true, limit: none },
      { B: 1, L: 64, H: 4, P: 72, G: 2, N: 80, gate: true, state: false, limit: [0.05, 2] },
      // 5 heads in one group, two chunks
      { B: 1, L: 100, H: 5, P: 8, G: 1, N: 16, gate: false, state: true, limit: none },
    ];
    const saved = { ...ssdBackwardTuning };
    Object.assign(ssdBackwardTuning, { Q, groupWorkgroups });
    try {
      for (const [i, c] of cases.entries()) await compare(g, c, 500 + i);
    } finally {
      Object.assign(ssdBackwardTuning, saved);
    }
  });
}

test("the SSD backward's plan: the most heads a piece whose scratch fits, pieces of even size, none where one head does not fit", () => {
  const d = { B: 2, L: 300, H: 6, P: 16, G: 2, N: 8, hasState: false, lo: 0, hi: Infinity };
  const one = ssdBackwardLayout(d, 64, 1).size * 4, all = ssdBackwardLayout(d, 64, 6).size * 4;
  assert.equal(ssdBackwardPlan(d, all, 64)!.hp, 6);
  assert.equal(ssdBackwardPlan(d, one, 64)!.hp, 1);
  // room for 4 heads: pieces of 3 and 3 rather than 4 and 2
  assert.equal(ssdBackwardPlan(d, ssdBackwardLayout(d, 64, 4).size * 4, 64)!.hp, 3);
  assert.equal(ssdBackwardPlan(d, one - 4, 64), null);
});
