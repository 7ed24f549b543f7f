/**
 * Mamba-2's and Falcon-Mamba's ops on WebGPU against the CPU reference (small shapes: lavapipe is slow), then the
 * three PyTorch fixtures on WebGPU: logits, the last hidden state and greedy output within 1e-4.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { CpuBackend } from "../../src/backend/cpu/index.ts";
import { type Backend, cols } from "../../src/backend/backend.ts";
import { TestRng } from "../helpers/random.ts";
import { checkFixtureForward, checkFixtureGrads, fixture, maxAbsDiff } from "../helpers/fixtures.ts";
import { releaseWebgpu, unavailable, webgpuBackend } from "../helpers/backends.ts";

after(releaseWebgpu);

async function gpuOrSkip(t: Parameters<typeof unavailable>[0]): Promise<Backend | null> {
  const g = await webgpuBackend();
  if (!g) unavailable(t, "no WebGPU adapter");
  return g;
}

const cpu = new CpuBackend();

test("ssdScan on WebGPU (chunked, and the recurrence for one position) matches the CPU's (groups, gate, clamp, carried state)", { timeout: 300_000 }, async (t) => {
  const g = await gpuOrSkip(t);
  if (!g) return;
  // chunks of Q crossed (L not a multiple), one chunk, one position (the recurrence), head rows wider than a
  // thread's block of the chunk scan (P 12)
  const cases = [
    { B: 2, L: 13, H: 4, P: 3, G: 2, N: 5, Q: 4, gate: false, state: true, limit: [0, Infinity] as const },
    { B: 1, L: 9, H: 6, P: 2, G: 3, N: 8, Q: 64, gate: true, state: false, limit: [0.05, 0.6] as const },
    { B: 3, L: 1, H: 2, P: 4, G: 1, N: 16, Q: 4, gate: true, state: true, limit: [0, Infinity] as const },
    { B: 1, L: 21, H: 2, P: 12, G: 1, N: 4, Q: 5, gate: true, state: true, limit: [0, Infinity] as const },
  ];
  for (const c of cases) {
    const r = new TestRng(c.L * 31 + c.N);
    const T = c.B * c.L, E = c.H * c.P, GN = c.G * c.N;
    const data = {
      xBC: r.f32(T * (E + 2 * GN + 1)), zdt: r.f32(T * (E + c.H)), dtBias: r.f32(c.H, 1),
      A_log: Float32Array.from({ length: c.H }, () => Math.log(r.uniform(0.5, 8))), D: r.f32(c.H), h0: r.f32(c.B * c.H * c.P * c.N),
    };
    const run = async (b: Backend) => {
      const xBC = b.fromF32(data.xBC, [T, E + 2 * GN + 1]), zdt = b.fromF32(data.zdt, [T, E + c.H]);
      const state = c.state ? b.fromF32(data.h0, [c.B, c.H, c.P, c.N]) : null;
      const y = b.ssdScan!({
        batch: c.B, seqLen: c.L, x: cols(xBC, 1, E), B: cols(xBC, 1 + E, GN), C: cols(xBC, 1 + E + GN, GN), dt: cols(zdt, E, c.H),
        dtBias: b.fromF32(data.dtBias, [c.H]), A_log: b.fromF32(data.A_log, [c.H]), D: b.fromF32(data.D, [c.H]),
        z: c.gate ? cols(zdt, 0, E) : null, headDim: c.P, nGroups: c.G, dtLimit: c.limit, chunkSize: c.Q, state,
      });
      return { y: await b.readF32(y), state: state ? await b.readF32(state) : null };
    };
    const want = await run(cpu), got = await run(g);
    assert.ok(maxAbsDiff(got.y, want.y) < 1e-4, `${JSON.stringify(c)}: y differs by ${maxAbsDiff(got.y, want.y)}`);
    if (c.state) assert.ok(maxAbsDiff(got.state!, want.state!) < 1e-4, `${JSON.stringify(c)}: final state`);
  }
});

test("gatedRmsNorm and segmentRmsNorm on WebGPU match the CPU", { timeout: 300_000 }, async (t) => {
  const g = await gpuOrSkip(t);
  if (!g) return;
  const r = new TestRng(3);
  // groups narrower than the kernel's 256 threads, and wider (not a multiple of them; mamba2-130m's 1536)
  for (const [T, E, gs, before] of [[5, 12, 4, false], [5, 12, 12, false], [5, 12, 6, true], [3, 600, 300, false], [3, 600, 300, true], [2, 1536, 1536, false]] as const) {
    const y = r.f32(T * E), z = r.f32(T * (E + 3)), w = r.f32(E, 1);
    const run = async (b: Backend) => b.readF32(b.gatedRmsNorm!(b.fromF32(y, [T, E]), cols(b.fromF32(z, [T, E + 3]), 3, E), b.fromF32(w, [E]), 1e-5, gs, before));
    assert.ok(maxAbsDiff(await run(g), await run(cpu)) < 1e-5, `gated norm, ${T} rows of ${E}, groups of ${gs}, before ${before}`);
  }
  const T = 5, x = r.f32(T * 10, 2);
  const seg = async (b: Backend) => b.readF32(b.segmentRmsNorm!(b.fromF32(x, [T, 10]), [2, 4, 4], 1e-6));
  assert.ok(maxAbsDiff(await seg(g), await seg(cpu)) < 1e-5, "windowed norm");
});

for (const name of ["hf-mamba2/tiny", "mamba-ssm/mamba2-tiny", "hf-falcon-mamba/tiny"]) {
  test(`${name}: logits, hidden states and greedy output match PyTorch (webgpu)`, { timeout: 300_000 }, async (t) => {
    const g = await gpuOrSkip(t);
    if (!g) return;
    const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
    await checkFixtureForward(fixture(...name.split("/")), await createWebGpuBackend(), { tol: 1e-4, backendName: "webgpu" });
  });
}

for (const name of ["hf-falcon-mamba/tiny", "hf-mamba2/tiny"]) {
  test(`${name}: loss and every gradient on WebGPU match PyTorch`, { timeout: 300_000 }, async (t) => {
    const g = await gpuOrSkip(t);
    if (!g) return;
    const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
    await checkFixtureGrads(fixture(...name.split("/")), await createWebGpuBackend(), { tol: 1e-4, backendName: "webgpu" });
  });
}

test("ssdScanBackward and gatedRmsNormBackward on WebGPU match the CPU (groups, gate, clamp, initial state, windows)", { timeout: 300_000 }, async (t) => {
  const g = await gpuOrSkip(t);
  if (!g) return;
  type TB = Backend & import("../../src/backend/training.ts").TrainingOps;
  const cases = [
    { B: 2, L: 19, H: 4, P: 3, G: 2, N: 5, gate: true, state: true, limit: [0.02, 0.7] as const },
    { B: 1, L: 7, H: 2, P: 2, G: 1, N: 4, gate: false, state: false, limit: [0, Infinity] as const },
    // more rows and state values than a backward workgroup has threads
    { B: 1, L: 5, H: 2, P: 67, G: 1, N: 66, gate: true, state: true, limit: [0, Infinity] as const },
  ];
  for (const c of cases) {
    const r = new TestRng(c.L * 13 + c.H);
    const T = c.B * c.L, E = c.H * c.P, GN = c.G * c.N;
    const d = {
      xBC: r.f32(T * (E + 2 * GN)), zdt: r.f32(T * (E + c.H)), dtBias: r.f32(c.H, 1), D: r.f32(c.H), h0: r.f32(c.B * c.H * c.P * c.N),
      A_log: Float32Array.from({ length: c.H }, () => Math.log(r.uniform(0.5, 8))), dy: r.f32(T * E),
    };
    const run = async (b: TB) => {
      const xBC = b.fromF32(d.xBC, [T, E + 2 * GN]), zdt = b.fromF32(d.zdt, [T, E + c.H]);
      const gxBC = b.zeros([T, E + 2 * GN]), gzdt = b.zeros([T, E + c.H]);
      const gA = b.zeros([c.H]), gD = b.zeros([c.H]), gBias = b.zeros([c.H]);
      b.ssdScanBackward!({
        batch: c.B, seqLen: c.L, x: cols(xBC, 0, E), B: cols(xBC, E, GN), C: cols(xBC, E + GN, GN), dt: cols(zdt, E, c.H),
        dtBias: b.fromF32(d.dtBias, [c.H]), A_log: b.fromF32(d.A_log, [c.H]), D: b.fromF32(d.D, [c.H]),
        z: c.gate ? cols(zdt, 0, E) : null, headDim: c.P, nGroups: c.G, dtLimit: c.limit, chunkSize: 4,
        state: c.state ? b.fromF32(d.h0, [c.B, c.H, c.P, c.N]) : null,
      }, b.fromF32(d.dy, [T, E]), {
        dx: cols(gxBC, 0, E), dB: cols(gxBC, E, GN), dC: cols(gxBC, E + GN, GN), dDt: cols(gzdt, E, c.H), dz: c.gate ? cols(gzdt, 0, E) : null,
        dA_log: gA, dD: gD, dDtBias: gBias,
      });
      return Promise.all([gxBC, gzdt, gA, gD, gBias].map((x) => b.readF32(x)));
    };
    const want = await run(cpu as TB), got = await run(g as TB);
    want.forEach((w, i) => {
      const scale = Math.max(1e-6, ...Array.from(w, Math.abs));
      assert.ok(maxAbsDiff(got[i]!, w) / scale < 1e-4, `${JSON.stringify(c)}: gradient ${i} differs by ${maxAbsDiff(got[i]!, w)}`);
    });
  }
  const r = new TestRng(11);
  // groups narrower than a workgroup's 256 threads and wider (a thread taking 3 channels of a group), rows past a
  // chunk of the weight gradient's column sums (64)
  for (const [T, E, gs, before] of [[4, 12, 4, false], [4, 12, 6, true], [130, 1200, 600, false], [130, 1200, 600, true]] as const) {
    const y = r.f32(T * E), z = r.f32(T * (E + 2)), w = r.f32(E, 1), dOut = r.f32(T * E);
    const run = async (b: TB) => {
      const dy = b.zeros([T, E]), dz = b.zeros([T, E + 2]), dW = b.zeros([E]);
      b.gatedRmsNormBackward!(b.fromF32(y, [T, E]), cols(b.fromF32(z, [T, E + 2]), 2, E), b.fromF32(w, [E]), 1e-5, gs, before,
        b.fromF32(dOut, [T, E]), { dy, dz: cols(dz, 2, E), dWeight: dW });
      return Promise.all([dy, dz, dW].map((x) => b.readF32(x)));
    };
    const want = await run(cpu as TB), got = await run(g as TB);
    // against the largest value of each gradient (dWeight sums 130 rows)
    want.forEach((v, i) => {
      const scale = v.reduce((m, x) => Math.max(m, Math.abs(x)), 1);
      assert.ok(maxAbsDiff(got[i]!, v) / scale < 1e-5, `gated norm backward, T ${T}, groups of ${gs}, before ${before}: part ${i} differs by ${maxAbsDiff(got[i]!, v)}`);
    });
  }
});
