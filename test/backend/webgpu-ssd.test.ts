/**
 * The WebGPU SSD scan (kernels/ssd/chunked.ts: chunks of its own length, register-tiled products) against the CPU
 * reference on random shapes at the edges of its tiling: one position, fewer positions than a chunk, lengths that
 * are not multiples of the kernels' chunk or of the model's, head dims and state sizes that are not multiples of 4
 * or that need several tiles, 1, 2 or 4 groups, batch rows, with and without an initial state, a gate and a dt
 * clamp, inputs as column windows at odd offsets.
 *
 * Tolerance: both sides compute in float32 but sum in different orders (the CPU in chunks of the model's chunk
 * size, the GPU in chunks of its own length, over tiles), so they differ by rounding: each output is a sum of at
 * most (chunk + N) products, where float32 rounding gives a relative error of a few 1e-6 of the largest terms. The
 * check is |gpu − cpu| ≤ 1e-4 · max(1, max |cpu|), the scale of the outputs (that of the largest terms or above).
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { CpuBackend } from "../../src/backend/cpu/index.ts";
import { type Backend, cols } from "../../src/backend/backend.ts";
import { TestRng } from "../helpers/random.ts";
import { maxAbsDiff } from "../helpers/fixtures.ts";
import { releaseWebgpu, unavailable, webgpuBackend } from "../helpers/backends.ts";
import { chunkTuning } from "../../src/backend/webgpu/kernels/ssd/chunked.ts";

after(releaseWebgpu);

interface Case {
  B: number; L: number; H: number; P: number; G: number; N: number; Q: number;
  gate: boolean; state: boolean; limit: readonly [number, number]; aMax?: number;
  /** windows at columns and strides that are multiples of 4 (the kernels' 4-wide loads), else at odd offsets */
  aligned: boolean;
}

const cpu = new CpuBackend();
/** the tolerance's scale: the largest magnitude, at least 1 */
const scale = (a: Float32Array) => a.reduce((m, v) => Math.max(m, Math.abs(v)), 1);

async function compare(g: Backend, c: Case, seed: number): Promise<void> {
  const r = new TestRng(seed);
  const T = c.B * c.L, E = c.H * c.P, GN = c.G * c.N;
  // x | B | C at column o of a wider matrix (o = 4, or odd), z | dt beside each other; row strides multiples of 4
  // when aligned
  const o = c.aligned ? 4 : 1, round = (w: number) => c.aligned ? Math.ceil(w / 4) * 4 : w;
  const wXBC = round(o + E + 2 * GN + 1), wZdt = round(E + c.H + 1);
  const data = {
    xBC: r.f32(T * wXBC), zdt: r.f32(T * wZdt), dtBias: r.f32(c.H, 1),
    A_log: Float32Array.from({ length: c.H }, () => Math.log(r.uniform(0.5, c.aMax ?? 8))), D: r.f32(c.H),
    h0: r.f32(c.B * c.H * c.P * c.N),
  };
  const run = async (b: Backend) => {
    const xBC = b.fromF32(data.xBC, [T, wXBC]), zdt = b.fromF32(data.zdt, [T, wZdt]);
    const state = c.state ? b.fromF32(data.h0, [c.B, c.H, c.P, c.N]) : null;
    const y = b.ssdScan!({
      batch: c.B, seqLen: c.L, x: cols(xBC, o, E), B: cols(xBC, o + E, GN), C: cols(xBC, o + E + GN, GN),
      dt: cols(zdt, E + 1, c.H), dtBias: b.fromF32(data.dtBias, [c.H]), A_log: b.fromF32(data.A_log, [c.H]),
      D: b.fromF32(data.D, [c.H]), z: c.gate ? cols(zdt, 0, E) : null, headDim: c.P, nGroups: c.G, dtLimit: c.limit,
      chunkSize: c.Q, state,
    });
    return { y: await b.readF32(y), state: state ? await b.readF32(state) : null };
  };
  const want = await run(cpu), got = await run(g);
  const dy = maxAbsDiff(got.y, want.y);
  assert.ok(dy <= 1e-4 * scale(want.y), `${JSON.stringify(c)}: y differs by ${dy} (outputs up to ${scale(want.y)})`);
  if (c.state) {
    const ds = maxAbsDiff(got.state!, want.state!);
    assert.ok(ds <= 1e-4 * scale(want.state!), `${JSON.stringify(c)}: the final state differs by ${ds}`);
  }
}

const none = [0, Infinity] as const;
const cases: Case[] = [
  // one position (the recurrence), batch 3
  { B: 3, L: 1, H: 2, P: 4, G: 1, N: 8, Q: 256, gate: true, state: true, limit: none, aligned: true },
  // fewer positions than a chunk; P and N not multiples of 4; 2 groups
  { B: 1, L: 37, H: 4, P: 6, G: 2, N: 5, Q: 256, gate: false, state: true, limit: none, aligned: false },
  // a length that is neither a multiple of 64 nor of the kernels' chunk, the model's chunk small; 4 groups, batch 3
  { B: 3, L: 300, H: 4, P: 8, G: 4, N: 16, Q: 64, gate: true, state: true, limit: none, aligned: true },
  // the same, the windows at odd offsets (one float at a time)
  { B: 3, L: 300, H: 4, P: 8, G: 4, N: 16, Q: 64, gate: true, state: true, limit: none, aligned: false },
  // exactly two chunks of the kernels' length, no state, a dt clamp, one group
  { B: 2, L: 256, H: 3, P: 16, G: 1, N: 32, Q: 256, gate: false, state: false, limit: [0.05, 0.6], aligned: false },
  // chunks enough for the state pass's groups of four and a remainder (6 chunks of the kernels' 128)
  { B: 2, L: 700, H: 2, P: 8, G: 1, N: 16, Q: 256, gate: false, state: true, limit: none, aligned: true },
  // the same without a state (the last chunk's own state and the first chunk's entering state left out)
  { B: 1, L: 700, H: 2, P: 8, G: 1, N: 16, Q: 256, gate: true, state: false, limit: none, aligned: true },
  // head dims and state sizes of several tiles (P > 64, N > 128), a length past one chunk; strong decays
  { B: 1, L: 133, H: 2, P: 72, G: 1, N: 136, Q: 256, gate: true, state: true, limit: none, aMax: 40, aligned: true },
  // the model's shape of head (P 64, N 128), two groups, a chunk and a bit
  { B: 2, L: 129, H: 4, P: 64, G: 2, N: 128, Q: 256, gate: true, state: true, limit: none, aligned: true },
];

test("ssdScan on WebGPU matches the CPU reference at the edges of its chunks and tiles", { timeout: 600_000 }, async (t) => {
  const g = await webgpuBackend();
  if (!g) return unavailable(t, "no WebGPU adapter");
  for (const [i, c] of cases.entries()) await compare(g, c, 1000 + i);
});

test("ssdScan on WebGPU: the kernels' other configurations (chunks of 64, one slot a workgroup, K tiles of 16, 8 × 4 outputs a thread) match too", { timeout: 900_000 }, async (t) => {
  const g = await webgpuBackend();
  if (!g) return unavailable(t, "no WebGPU adapter");
  const saved = { ...chunkTuning };
  try {
    // each field off the default once (every configuration costs lavapipe minutes of shader compiling)
    const configs = [[64, 2, 8, 64], [128, 1, 8, 64], [128, 2, 16, 64], [128, 2, 8, 32]] as const;
    for (const [Q, SL, BK, PB] of configs) {
      Object.assign(chunkTuning, { Q, SL, BK, PB });
      const seed = Q + 10 * SL + BK + PB;
      // P and N past one tile at Q 64 (state blocks of 64), an odd number of slots, no state; then the model's head
      await compare(g, { B: 2, L: 150, H: 3, P: 72, G: 1, N: 80, Q: 256, gate: true, state: false, limit: none, aligned: true }, 3000 + seed);
      await compare(g, { B: 1, L: 200, H: 4, P: 64, G: 2, N: 128, Q: 256, gate: false, state: true, limit: none, aligned: false }, 3100 + seed);
    }
  } finally {
    Object.assign(chunkTuning, saved);
  }
});

test("ssdScan on WebGPU: runs of chunks (the chunk-state kernel walking 2 to 8 chunks, the state pass over runs)", { timeout: 600_000 }, async (t) => {
  const g = await webgpuBackend();
  if (!g) return unavailable(t, "no WebGPU adapter");
  const saved = chunkTuning.stateGroups;
  chunkTuning.stateGroups = 1; // the longest runs (8 chunks) that leave a workgroup
  try {
    const runCases: Case[] = [
      // 11 chunks: one run of 8 and one of 3 (a workgroup a run); the state pass's remainder
      { B: 1, L: 1400, H: 2, P: 8, G: 1, N: 16, Q: 256, gate: true, state: true, limit: none, aligned: true },
      // no state: the last chunk's own state left out inside a run; 2 groups, an odd number of slots a group
      { B: 2, L: 1100, H: 6, P: 4, G: 2, N: 8, Q: 256, gate: false, state: false, limit: none, aligned: false },
    ];
    for (const [i, c] of runCases.entries()) await compare(g, c, 2000 + i);
    // runs of 2 (2 workgroups a run: two pairs of heads; 8 chunks), no state: the last chunk inside a run
    chunkTuning.stateGroups = 8;
    await compare(g, { B: 1, L: 1000, H: 4, P: 8, G: 1, N: 16, Q: 256, gate: true, state: false, limit: none, aligned: true }, 2100);
  } finally {
    chunkTuning.stateGroups = saved;
  }
});

test("ssdScan on WebGPU: a scan in two pieces carrying the state equals the whole", { timeout: 300_000 }, async (t) => {
  const g = await webgpuBackend();
  if (!g) return unavailable(t, "no WebGPU adapter");
  const r = new TestRng(77);
  const [B, L, H, P, G, N, split] = [2, 200, 2, 8, 1, 16, 131];
  const E = H * P, GN = G * N;
  const xs = r.f32(B * L * E), bs = r.f32(B * L * GN), cs = r.f32(B * L * GN), dts = r.f32(B * L * H);
  const consts = { dtBias: g.fromF32(r.f32(H, 1), [H]), A_log: g.fromF32(Float32Array.from({ length: H }, () => Math.log(r.uniform(0.5, 4))), [H]), D: g.fromF32(r.f32(H), [H]) };
  // rows [t0, t1) of each batch row of a [B·L, w] matrix
  const rows = (a: Float32Array, w: number, t0: number, t1: number) => {
    const out = new Float32Array(B * (t1 - t0) * w);
    for (let b = 0; b < B; b++) out.set(a.subarray((b * L + t0) * w, (b * L + t1) * w), b * (t1 - t0) * w);
    return out;
  };
  const scan = async (t0: number, t1: number, state: ReturnType<Backend["fromF32"]>) => {
    const n = t1 - t0, T = B * n;
    const y = g.ssdScan!({
      batch: B, seqLen: n, x: g.fromF32(rows(xs, E, t0, t1), [T, E]), B: g.fromF32(rows(bs, GN, t0, t1), [T, GN]),
      C: g.fromF32(rows(cs, GN, t0, t1), [T, GN]), dt: g.fromF32(rows(dts, H, t0, t1), [T, H]), ...consts, z: null,
      headDim: P, nGroups: G, dtLimit: none, chunkSize: 256, state,
    });
    return g.readF32(y);
  };
  const whole = g.fromF32(new Float32Array(B * H * P * N), [B, H, P, N]);
  const yWhole = await scan(0, L, whole);
  const pieces = g.fromF32(new Float32Array(B * H * P * N), [B, H, P, N]);
  const y1 = await scan(0, split, pieces), y2 = await scan(split, L, pieces);
  const joined = new Float32Array(B * L * E);
  for (let b = 0; b < B; b++) {
    joined.set(y1.subarray(b * split * E, (b + 1) * split * E), b * L * E);
    joined.set(y2.subarray(b * (L - split) * E, (b + 1) * (L - split) * E), (b * L + split) * E);
  }
  const sWhole = await g.readF32(whole), sPieces = await g.readF32(pieces);
  assert.ok(maxAbsDiff(joined, yWhole) <= 1e-4 * scale(yWhole), `outputs differ by ${maxAbsDiff(joined, yWhole)} (up to ${scale(yWhole)})`);
  assert.ok(maxAbsDiff(sPieces, sWhole) <= 1e-4 * scale(sWhole), `final states differ by ${maxAbsDiff(sPieces, sWhole)}`);
});
