/**
 * The backward ops of every TrainingBackend against central finite differences of their own forward ops, on tiny
 * random shapes (float32 forward, so the comparison is loose: relative error 1e-2 of the gradient's norm), plus
 * the column-window rules (gradients add into the window of a wider tensor, other columns untouched), the loss
 * against a float64 computation, and AdamW against its formula. Written against the interface, run per backend.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { cols, type Tensor } from "../../src/backend/backend.ts";
import type { TrainingBackend } from "../../src/backend/training.ts";
import { CpuBackend } from "../../src/backend/cpu/index.ts";
import { TestRng } from "../helpers/random.ts";

const BACKENDS: [string, () => Promise<TrainingBackend>][] = [["cpu", async () => new CpuBackend()]];

type Inputs = Record<string, { data: Float32Array; shape: number[] }>;

/**
 * Checks analytic gradients of loss = Σ out · R against central differences. `run` builds the forward from host
 * inputs; `grads` runs the backward with dy = R and returns the gradient of each named input.
 */
async function fdCheck(
  b: TrainingBackend, inputs: Inputs, run: (t: Record<string, Tensor>) => Tensor,
  grads: (t: Record<string, Tensor>, dy: Tensor) => Promise<Record<string, Float32Array>>, seed: number, h = 1e-2,
): Promise<void> {
  const up = (over?: [string, number, number]) => {
    const t: Record<string, Tensor> = {};
    for (const [k, v] of Object.entries(inputs)) {
      let d = v.data;
      if (over && over[0] === k) { d = d.slice(); d[over[1]] = d[over[1]]! + over[2]; }
      t[k] = b.fromF32(d, v.shape);
    }
    return t;
  };
  const out0 = run(up());
  const R = new TestRng(seed).f32(out0.shape.reduce((a, c) => a * c, 1));
  const lossOf = async (t: Record<string, Tensor>) => {
    const o = await b.readF32(run(t));
    let s = 0;
    for (let i = 0; i < o.length; i++) s += o[i]! * R[i]!;
    return s;
  };
  const analytic = await grads(up(), b.fromF32(R, out0.shape));
  for (const [name, g] of Object.entries(analytic)) {
    const n = inputs[name]!.data.length;
    assert.equal(g.length, n, `${name}: gradient size`);
    const num = new Float64Array(n);
    for (let i = 0; i < n; i++) num[i] = ((await lossOf(up([name, i, h]))) - (await lossOf(up([name, i, -h])))) / (2 * h);
    let diff = 0, norm = 0;
    for (let i = 0; i < n; i++) { diff += (num[i]! - g[i]!) ** 2; norm += num[i]! ** 2; }
    const rel = Math.sqrt(diff) / Math.max(Math.sqrt(norm), 1e-6);
    assert.ok(norm > 1e-8, `${name}: the numerical gradient is zero, the check would prove nothing`);
    assert.ok(rel < 1e-2, `${name}: relative error ${rel.toExponential(2)} against finite differences`);
  }
}

const rnd = (r: TestRng, shape: number[], scale = 1) => ({ data: r.f32(shape.reduce((a, c) => a * c, 1), scale), shape });

for (const [bname, make] of BACKENDS) {
  test(`${bname}: matmulBackward, dense and column windows, with bias`, async () => {
    const b = await make();
    const r = new TestRng(1);
    const T = 5, K = 3, Nout = 6, W = 7, col0 = 2; // x = columns [2, 5) of a [T, 7] matrix
    const inputs = { xw: rnd(r, [T, W]), w: rnd(r, [Nout, K]), bias: rnd(r, [Nout]) };
    await fdCheck(b, inputs, (t) => b.matmul(cols(t.xw!, col0, K), t.w!, t.bias!), async (t, dy) => {
      const pre = r.f32(T * W); // the wider gradient already holds values: they must be added to, not replaced
      const dxw = b.fromF32(pre, [T, W]);
      const dw = b.zeros([Nout, K]);
      const dBias = b.zeros([Nout]);
      b.matmulBackward(cols(t.xw!, col0, K), t.w!, dy, { dx: cols(dxw, col0, K), dw, dBias });
      const got = await b.readF32(dxw);
      for (let i = 0; i < T; i++) for (let c = 0; c < W; c++) {
        if (c < col0 || c >= col0 + K) assert.equal(got[i * W + c], pre[i * W + c], "columns outside the window changed");
      }
      const dx = got.map((v, i) => v - pre[i]!);
      return { xw: dx, w: await b.readF32(dw), bias: await b.readF32(dBias) };
    }, 11);
  });

  test(`${bname}: matmulBackward accumulates (twice = double)`, async () => {
    const b = await make();
    const r = new TestRng(2);
    const x = b.fromF32(r.f32(9 * 4), [9, 4]), w = b.fromF32(r.f32(5 * 4), [5, 4]), dy = b.fromF32(r.f32(9 * 5), [9, 5]);
    const once = { dx: b.zeros([9, 4]), dw: b.zeros([5, 4]), dBias: b.zeros([5]) };
    const twice = { dx: b.zeros([9, 4]), dw: b.zeros([5, 4]), dBias: b.zeros([5]) };
    b.matmulBackward(x, w, dy, once);
    b.matmulBackward(x, w, dy, twice);
    b.matmulBackward(x, w, dy, twice);
    for (const k of ["dx", "dw", "dBias"] as const) {
      const a = await b.readF32(once[k]), c = await b.readF32(twice[k]);
      a.forEach((v, i) => assert.ok(Math.abs(2 * v - c[i]!) <= 1e-5 * (1 + Math.abs(v)), `${k} does not accumulate`));
    }
  });

  test(`${bname}: addRmsNormBackward`, async () => {
    const b = await make();
    const r = new TestRng(3);
    const T = 4, D = 6, eps = 1e-5;
    const inputs = { x: rnd(r, [T, D]), res: rnd(r, [T, D]), w: { data: r.f32(D).map((v) => 1 + 0.3 * v), shape: [D] } };
    await fdCheck(b, inputs, (t) => b.addRmsNorm(t.x!, t.res!, t.w!, eps).out, async (t, dy) => {
      const { residual } = b.addRmsNorm(t.x!, t.res!, t.w!, eps);
      const dRes = b.zeros([T, D]);
      const dW = b.zeros([D]);
      b.addRmsNormBackward(residual, t.w!, eps, dy, dRes, dW);
      const g = await b.readF32(dRes);
      return { x: g, res: g, w: await b.readF32(dW) };
    }, 12);
  });

  test(`${bname}: embeddingBackward scatter-adds repeated ids`, async () => {
    const b = await make();
    const r = new TestRng(4);
    const V = 5, D = 3;
    const idv = Int32Array.from([1, 3, 1, 0, 1]);
    const ids = b.fromI32(idv, [idv.length]);
    await fdCheck(b, { table: rnd(r, [V, D]) }, (t) => b.embedding(t.table!, ids), async (_t, dy) => {
      const dT = b.zeros([V, D]);
      b.embeddingBackward(ids, dy, dT);
      return { table: await b.readF32(dT) };
    }, 13);
  });

  test(`${bname}: causalConv1dSiluBackward, input a column window`, async () => {
    const b = await make();
    const r = new TestRng(5);
    const Bsz = 2, L = 6, E = 3, K = 4, W = 2 * E;
    const shape = { batch: Bsz, seqLen: L };
    const inputs = { xz: rnd(r, [Bsz, L, W]), w: rnd(r, [E, 1, K], 0.5), bias: rnd(r, [E], 0.3) };
    await fdCheck(b, inputs, (t) => b.causalConv1dSilu(cols(t.xz!, E, E), t.w!, t.bias!, null, shape), async (t, dy) => {
      const dxz = b.zeros([Bsz, L, W]);
      const dW = b.zeros([E, 1, K]);
      const dB = b.zeros([E]);
      b.causalConv1dSiluBackward(cols(t.xz!, E, E), t.w!, t.bias!, dy, shape, { dx: cols(dxz, E, E), dWeight: dW, dBias: dB });
      const g = await b.readF32(dxz);
      for (let i = 0; i < Bsz * L; i++) for (let c = 0; c < E; c++) assert.equal(g[i * W + c], 0, "x half of dxz touched");
      return { xz: g, w: await b.readF32(dW), bias: await b.readF32(dB) };
    }, 14);
  });

  for (const [gated, withState] of [[true, false], [false, false], [true, true]] as const) {
    const what = `${gated ? "gated" : "no gate"}${withState ? ", from a given initial state" : ""}`;
    test(`${bname}: selectiveScanBackward (${what}), delta/B/C as column windows`, async () => {
      const b = await make();
      const r = new TestRng(withState ? 16 : gated ? 6 : 7);
      const Bsz = 2, L = 5, E = 3, N = 4, R = 2, P = R + 2 * N;
      const shape = { batch: Bsz, seqLen: L };
      const inputs: Inputs = {
        u: rnd(r, [Bsz, L, E]),
        delta: { data: r.f32(Bsz * L * E, 0.5), shape: [Bsz, L, E] },
        dbias: { data: r.f32(E, 0.3), shape: [E] },
        A_log: { data: r.f32(E * N).map((v, i) => Math.log((i % N) + 1) + 0.2 * v), shape: [E, N] },
        xdbl: rnd(r, [Bsz, L, P]),
        D: rnd(r, [E]),
        z: rnd(r, [Bsz, L, E]),
      };
      if (!gated) delete inputs.z;
      // the forward overwrites its state with the final one: every call gets a fresh copy of the initial state
      const h0 = r.f32(Bsz * E * N, 1);
      const args = (t: Record<string, Tensor>) => ({
        ...shape, u: t.u!, delta: t.delta!, deltaBias: t.dbias!, A_log: t.A_log!, B: cols(t.xdbl!, R, N),
        C: cols(t.xdbl!, R + N, N), D: t.D!, z: gated ? t.z! : null, state: withState ? b.fromF32(h0, [Bsz, E, N]) : null,
      });
      await fdCheck(b, inputs, (t) => b.selectiveScan(args(t)), async (t, dy) => {
        const g = {
          du: b.zeros([Bsz, L, E]), dDelta: b.zeros([Bsz, L, E]), dDeltaBias: b.zeros([E]), dA_log: b.zeros([E, N]),
          dxdbl: b.zeros([Bsz, L, P]), dD: b.zeros([E]), dz: gated ? b.zeros([Bsz, L, E]) : null,
        };
        b.selectiveScanBackward(args(t), dy, {
          du: g.du, dDelta: g.dDelta, dDeltaBias: g.dDeltaBias, dA_log: g.dA_log, dB: cols(g.dxdbl, R, N),
          dC: cols(g.dxdbl, R + N, N), dD: g.dD, dz: g.dz,
        });
        const dx = await b.readF32(g.dxdbl);
        for (let i = 0; i < Bsz * L; i++) for (let c = 0; c < R; c++) assert.equal(dx[i * P + c], 0, "dt columns of dxdbl touched");
        const out: Record<string, Float32Array> = {
          u: await b.readF32(g.du), delta: await b.readF32(g.dDelta), dbias: await b.readF32(g.dDeltaBias),
          A_log: await b.readF32(g.dA_log), xdbl: dx, D: await b.readF32(g.dD),
        };
        if (g.dz) out.z = await b.readF32(g.dz);
        return out;
      }, 15, 5e-3);
    });
  }

  test(`${bname}: crossEntropy: loss, argmax count and dLogits against float64 and finite differences`, async () => {
    const b = await make();
    const r = new TestRng(8);
    const T = 6, V = 5;
    const x = r.f32(T * V, 2);
    const tg = Int32Array.from([2, -1, 0, 4, -1, 1]);
    const targets = b.fromI32(tg, [T]);
    const res = b.crossEntropy(b.fromF32(x, [T, V]), targets, 0.5);
    let want = 0, count = 0, correct = 0;
    for (let t = 0; t < T; t++) {
      if (tg[t]! < 0) continue;
      const row = Array.from(x.subarray(t * V, (t + 1) * V));
      const m = Math.max(...row);
      want += Math.log(row.reduce((a, v) => a + Math.exp(v - m), 0)) + m - row[tg[t]!]!;
      if (row.indexOf(m) === tg[t]) correct++;
      count++;
    }
    want /= count;
    assert.ok(Math.abs((await b.readF32(res.loss))[0]! - want) < 1e-5, "loss");
    assert.equal((await b.readF32(res.correct))[0], correct);
    const d = await b.readF32(res.dLogits);
    const h = 1e-2;
    for (let i = 0; i < T * V; i++) {
      const p = x.slice(), m = x.slice();
      p[i] = p[i]! + h; m[i] = m[i]! - h;
      const lp = (await b.readF32(b.crossEntropy(b.fromF32(p, [T, V]), targets, 1).loss))[0]!;
      const lm = (await b.readF32(b.crossEntropy(b.fromF32(m, [T, V]), targets, 1).loss))[0]!;
      const num = (0.5 * (lp - lm)) / (2 * h);
      assert.ok(Math.abs(num - d[i]!) < 1e-3, `dLogits[${i}] ${d[i]} vs ${num}`);
    }
  });

  test(`${bname}: adamwStep, sumSquares, addScaled, zeroFill against their formulas`, async () => {
    const b = await make();
    const r = new TestRng(9);
    const n = 7;
    const p0 = r.f32(n), g = r.f32(n), m0 = r.f32(n, 0.1), v0 = r.f32(n).map((v) => v * v * 0.01);
    const o = { lr: 0.01, beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0.1, step: 3, gradScale: 0.5 };
    const p = b.fromF32(p0, [n]), m = b.fromF32(m0, [n]), v = b.fromF32(v0, [n]);
    b.adamwStep(p, b.fromF32(g, [n]), m, v, o);
    const pg = await b.readF32(p);
    for (let i = 0; i < n; i++) {
      const gi = g[i]! * o.gradScale;
      const mi = o.beta1 * m0[i]! + (1 - o.beta1) * gi;
      const vi = o.beta2 * v0[i]! + (1 - o.beta2) * gi * gi;
      const want = p0[i]! * (1 - o.lr * o.weightDecay) - o.lr * (mi / (1 - o.beta1 ** 3)) / (Math.sqrt(vi / (1 - o.beta2 ** 3)) + o.eps);
      assert.ok(Math.abs(pg[i]! - want) < 1e-6, `param ${i}`);
    }
    const a = b.fromF32(p0, [n]), c = b.fromF32(g, [n]);
    const ss = (await b.readF32(b.sumSquares([a, c])))[0]!;
    const want = [...p0, ...g].reduce((s, x) => s + x * x, 0);
    assert.ok(Math.abs(ss - want) < 1e-4 * want);
    b.addScaled(a, c, -2);
    (await b.readF32(a)).forEach((x, i) => assert.ok(Math.abs(x - (p0[i]! - 2 * g[i]!)) < 1e-6));
    b.zeroFill(a);
    assert.deepEqual(Array.from(await b.readF32(a)), new Array(n).fill(0));
  });
}
