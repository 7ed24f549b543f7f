/**
 * The wasm CPU engine's backward of Mamba-2's SSD scan (assembly/ssd-backward.ts) against the reference CPU
 * backend's (src/backend/cpu/ssd-backward.ts): every gradient (dx, dDt, dDtBias, dA_log, dB, dC, dD, dz) on random and
 * edge shapes: L = 1, L odd, P and N not multiples of 4, 1 to 4 groups, batch 2, a gate or none, an initial state or
 * none, a clamp of dt (positions outside it get no dt gradient), inputs and gradients as column windows of wider
 * tensors, gradients added into nonzero values. Both SIMD builds, 1, 2 and 3 threads, and the same bits whatever the
 * thread count.
 *
 * Tolerance: the engine sums in f32 where the reference sums in f64. The sums are over P·N products a position and
 * over L positions (dA_log, dD, dt_bias), and the state gradient carries rounding along time: on these cases the
 * gradients agree within 1e-6 of their largest magnitude (dA_log the farthest). 5e-5 of it (or of 1) leaves room for
 * longer sums without hiding a wrong or missing term, which would be off by a whole term.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { CpuBackend } from "../../src/backend/cpu/index.ts";
import { cols, type Backend, type Tensor } from "../../src/backend/backend.ts";
import type { SsdGrads } from "../../src/backend/training.ts";
import { TestRng } from "../helpers/random.ts";
import { bits, maxAbs, wasmEngines } from "../helpers/wasm-engines.ts";
import { type SsdCase, ssdArgs } from "../helpers/ssd-cases.ts";
import { maxAbsDiff } from "../helpers/fixtures.ts";

const ref = new CpuBackend();
const engines = wasmEngines();

type Case = SsdCase;
const cases: Case[] = [
  { B: 1, L: 1, H: 2, P: 4, G: 1, N: 4, state: true, gate: false, limit: [0, Infinity] },
  { B: 2, L: 1, H: 4, P: 6, G: 2, N: 5, state: true, gate: true, limit: [0, Infinity] },
  { B: 2, L: 13, H: 4, P: 3, G: 2, N: 5, state: true, gate: false, limit: [0, Infinity] },
  { B: 1, L: 8, H: 2, P: 2, G: 1, N: 3, state: false, gate: true, limit: [0, Infinity] },
  { B: 2, L: 20, H: 6, P: 4, G: 3, N: 6, state: true, gate: true, limit: [0.05, 0.6] },
  { B: 1, L: 37, H: 8, P: 16, G: 2, N: 16, state: false, gate: false, limit: [0.001, 0.1] },
  { B: 2, L: 23, H: 4, P: 37, G: 4, N: 9, state: true, gate: true, limit: [0, Infinity] },
  { B: 1, L: 70, H: 3, P: 64, G: 1, N: 32, state: true, gate: true, limit: [0, Infinity] },
  { B: 2, L: 17, H: 4, P: 5, G: 1, N: 7, state: false, gate: true, limit: [0.2, 1.5] },
];

/** dy and the gradients, prefilled with random values (the op adds into them): dx, dB, dC windows of one tensor,
 *  dDt and dz of another (as the model's backward passes them). */
function gradArgs(b: Backend, c: Case, seed: number): { dy: Tensor; g: SsdGrads; whole: Tensor[] } {
  const r = new TestRng(seed + 1000);
  const T = c.B * c.L, E = c.H * c.P, GN = c.G * c.N;
  const dy = b.fromF32(r.f32(T * E), [c.B, c.L, E]);
  const dxBC = b.fromF32(r.f32(T * (E + 2 * GN + 2)), [T, E + 2 * GN + 2]);
  const dzdt = b.fromF32(r.f32(T * (E + c.H + 2)), [T, E + c.H + 2]);
  const dDtBias = b.fromF32(r.f32(c.H), [c.H]), dA_log = b.fromF32(r.f32(c.H), [c.H]), dD = b.fromF32(r.f32(c.H), [c.H]);
  return {
    dy,
    g: { dx: cols(dxBC, 2, E), dB: cols(dxBC, 2 + E, GN), dC: cols(dxBC, 2 + E + GN, GN), dDt: cols(dzdt, E + 1, c.H),
      dz: c.gate ? cols(dzdt, 0, E) : null, dDtBias, dA_log, dD },
    whole: [dxBC, dzdt, dDtBias, dA_log, dD],
  };
}

const NAMES = ["dx, dB, dC (and the columns around them)", "dDt, dz (and the columns around them)", "dDtBias", "dA_log", "dD"];

describe("wasm engine: ssdScanBackward against the reference", { timeout: 300_000 }, () => {
  test("the engines run the SSD backward kernels", () => {
    for (const e of engines) {
      assert.ok(e.b.rt.has("ssdBackward") && e.b.rt.has("ssdDtGate") && e.b.rt.has("ssdBackwardGroups"), e.name);
      assert.ok(!e.b.referenceOps.includes("ssdScanBackward"), e.name);
    }
  });

  test("every gradient within rounding of the reference; bitwise the same for 1-3 threads", async () => {
    for (const [i, c] of cases.entries()) {
      const seed = 300 + i;
      const want = gradArgs(ref, c, seed);
      ref.ssdScanBackward!(ssdArgs(ref, c, seed), want.dy, want.g);
      const wantAll = await Promise.all(want.whole.map((t) => ref.readF32(t)));
      const first: Record<string, Float32Array[]> = {};
      for (const e of engines) {
        const got = gradArgs(e.b, c, seed);
        e.b.ssdScanBackward(ssdArgs(e.b, c, seed), got.dy, got.g);
        const gotAll = await Promise.all(got.whole.map((t) => e.b.readF32(t)));
        const what = `${JSON.stringify(c)} (${e.name})`;
        gotAll.forEach((v, k) => {
          const tol = 5e-5 * Math.max(1, maxAbs(wantAll[k]!));
          const diff = maxAbsDiff(v, wantAll[k]!);
          assert.ok(diff <= tol, `${what}: ${NAMES[k]} differ from the reference by ${diff} (tolerance ${tol})`);
        });
        const build = e.name.split(",")[0]!;
        const f = first[build];
        if (!f) first[build] = gotAll;
        else gotAll.forEach((v, k) => assert.deepEqual(bits(v), bits(f[k]!), `${what}: ${NAMES[k]} bitwise against 1 thread`));
      }
    }
  });

  test("outside dt's clamp the raw dt and dt_bias get no gradient", async () => {
    // every position clamped (dt_bias far above the upper limit): the engine and the reference give exact zeros
    const c: Case = { B: 1, L: 6, H: 2, P: 4, G: 1, N: 4, state: false, gate: false, limit: [0, 0.5] };
    const e = engines[0]!;
    const a = { ...ssdArgs(e.b, c, 9), dtBias: e.b.fromF32(new Float32Array([8, 9]), [2]) };
    const g = gradArgs(e.b, c, 9);
    const before = await e.b.readF32(g.whole[1]!);
    const biasBefore = await e.b.readF32(g.g.dDtBias);
    e.b.ssdScanBackward(a, g.dy, g.g);
    assert.deepEqual(bits(await e.b.readF32(g.whole[1]!)), bits(before));
    assert.deepEqual(bits(await e.b.readF32(g.g.dDtBias)), bits(biasBefore));
  });

  test("shapes that do not fit are one clear error", () => {
    const c = cases[2]!;
    const b = engines[0]!.b;
    const a = ssdArgs(b, c, 3);
    const { dy, g } = gradArgs(b, c, 3);
    assert.throws(() => b.ssdScanBackward({ ...a, headDim: c.P + 1 }, dy, g), /ssdScan: .* do not fit/);
    assert.throws(() => b.ssdScanBackward({ ...a, state: b.zeros([1, 2, 3]) }, dy, g), /ssdScan: the state needs/);
    assert.throws(() => b.ssdScanBackward(a, b.zeros([2, 3]), g), /ssdScanBackward: dy .* does not match the scan/);
    assert.throws(() => b.ssdScanBackward(a, dy, { ...g, dz: g.dx }), /dz must be given exactly when/);
    assert.throws(() => b.ssdScanBackward(a, dy, { ...g, dB: cols(b.zeros([c.B * c.L, 64]), 0, 3) }), /ssdScanBackward: dB .* does not match/);
    assert.throws(() => b.ssdScanBackward(a, dy, { ...g, dD: b.zeros([c.H + 1]) }), /dA_log, dD and dDtBias need/);
  });

  test("gradients held by another backend's tensors are written back", async () => {
    const c = cases[4]!;
    const want = gradArgs(ref, c, 11);
    ref.ssdScanBackward!(ssdArgs(ref, c, 11), want.dy, want.g);
    const got = gradArgs(ref, c, 11);
    engines[1]!.b.ssdScanBackward(ssdArgs(ref, c, 11), got.dy, got.g);
    for (let k = 0; k < want.whole.length; k++) {
      const w = await ref.readF32(want.whole[k]!);
      const diff = maxAbsDiff(await ref.readF32(got.whole[k]!), w);
      assert.ok(diff <= 5e-5 * Math.max(1, maxAbs(w)), `${NAMES[k]}: ${diff}`);
    }
  });
});
