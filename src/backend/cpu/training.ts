/**
 * The CPU backend's training ops (TrainingOps of ../training.ts): the backward ops of the *-backward.ts files
 * unpacked from tensors, the cross-entropy loss, and the optimizer's elementwise work. Mixed into CpuBackend.
 * Sums run in float64; results are stored in float32. Everything is deterministic: the same inputs give the
 * same bits.
 */
import type { SelectiveScanArgs, SeqShape, SsdScanArgs, Tensor, TensorOrCols } from "../backend.ts";
import type { AdamWParams, ConvGrads, CrossEntropyResult, MatmulGrads, ScanGrads, SsdGrads, TrainingOps } from "../training.ts";
import { MambaError, check } from "../../errors.ts";
import { numel } from "../../io/tensor.ts";
import { CpuTensor, cpu, strided } from "./tensor.ts";
import { matmulBackwardF32 } from "./matmul-backward.ts";
import { addRmsNormBackwardF32, embeddingBackwardF32 } from "./norm-backward.ts";
import { causalConv1dSiluBackwardF32 } from "./conv-backward.ts";
import { selectiveScanBackwardF32 } from "./scan-backward.ts";
import { ssdData } from "./ssd.ts";
import { ssdBackwardF32 } from "./ssd-backward.ts";
import { gatedRmsNormBackwardF32, segmentRmsNormBackwardF32 } from "./gated-norm.ts";

const scalar = (v: number) => new CpuTensor([1], "f32", Float32Array.of(v));

function sameSize(a: Tensor, b: Tensor, what: string): void {
  check(numel(a.shape) === numel(b.shape), `${what}: shapes [${a.shape}] and [${b.shape}] differ`);
}

export const cpuTrainingOps: TrainingOps = {
  zeroFill(t: Tensor): void {
    cpu(t).data.fill(0);
  },

  addScaled(dst: Tensor, src: Tensor, alpha: number): void {
    sameSize(dst, src, "addScaled");
    const d = cpu(dst).f32, s = cpu(src).f32;
    for (let i = 0; i < d.length; i++) d[i] = d[i]! + alpha * s[i]!;
  },

  sumSquares(ts: Tensor[]): Tensor {
    let s = 0;
    for (const t of ts) {
      const d = cpu(t).f32;
      for (let i = 0; i < d.length; i++) s += d[i]! * d[i]!;
    }
    return scalar(s);
  },

  adamwStep(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, o: AdamWParams): void {
    sameSize(param, grad, "adamwStep");
    sameSize(param, m, "adamwStep");
    sameSize(param, v, "adamwStep");
    const p = cpu(param).f32, g = cpu(grad).f32, md = cpu(m).f32, vd = cpu(v).f32;
    const { beta1: b1, beta2: b2, lr, eps, gradScale } = o;
    const bc1 = 1 - b1 ** o.step;
    const bc2 = 1 - b2 ** o.step;
    const decay = 1 - lr * o.weightDecay;
    for (let i = 0; i < p.length; i++) {
      const gi = g[i]! * gradScale;
      const mi = b1 * md[i]! + (1 - b1) * gi;
      const vi = b2 * vd[i]! + (1 - b2) * gi * gi;
      md[i] = mi;
      vd[i] = vi;
      p[i] = p[i]! * decay - lr * (mi / bc1) / (Math.sqrt(vi / bc2) + eps);
    }
  },

  crossEntropy(logits: Tensor, targets: Tensor, scale: number): CrossEntropyResult {
    const lt = cpu(logits);
    const V = lt.shape[lt.shape.length - 1]!;
    const x = lt.f32;
    const tg = cpu(targets).i32;
    const T = x.length / V;
    check(tg.length === T, `crossEntropy: ${tg.length} targets for ${T} rows of logits`);
    const d = new Float32Array(x.length);
    let count = 0;
    for (let r = 0; r < T; r++) {
      const y = tg[r]!;
      if (y < -1 || y >= V) throw new MambaError(`crossEntropy: target ${y} at row ${r} is outside [0, ${V}) (or -1 to skip)`);
      if (y >= 0) count++;
    }
    let loss = 0;
    let correct = 0;
    const p = new Float64Array(V);
    for (let r = 0; r < T; r++) {
      const y = tg[r]!;
      if (y < 0) continue;
      const o = r * V;
      let mx = -Infinity, arg = 0;
      for (let j = 0; j < V; j++) if (x[o + j]! > mx) { mx = x[o + j]!; arg = j; }
      let sum = 0;
      for (let j = 0; j < V; j++) { p[j] = Math.exp(x[o + j]! - mx); sum += p[j]!; }
      loss += Math.log(sum) + mx - x[o + y]!;
      if (arg === y) correct++;
      const k = scale / count;
      for (let j = 0; j < V; j++) d[o + j] = k * (p[j]! / sum - (j === y ? 1 : 0));
    }
    return {
      loss: scalar(count > 0 ? loss / count : 0),
      correct: scalar(correct),
      dLogits: new CpuTensor([...lt.shape], "f32", d),
    };
  },

  matmulBackward(x: TensorOrCols, w: Tensor, dy: TensorOrCols, g: MatmulGrads): void {
    const xs = strided(x);
    const wt = cpu(w);
    const nOut = wt.shape[0]!;
    const dys = strided(dy);
    check(dys.width === nOut && dys.rows === xs.rows, `matmulBackward: dy [${dys.rows}, ${dys.width}] does not match x rows ${xs.rows} and ${nOut} outputs`);
    const dx = g.dx ? strided(g.dx) : null;
    check(!dx || (dx.width === xs.width && dx.rows === xs.rows), "matmulBackward: dx does not have the shape of x");
    matmulBackwardF32(xs, wt.f32, nOut, dys, dx, g.dw ? cpu(g.dw).f32 : null, g.dBias ? cpu(g.dBias).f32 : null);
  },

  addRmsNormBackward(residualOut: Tensor, weight: Tensor, eps: number, dOut: Tensor, dResidual: Tensor, dWeight: Tensor): void {
    const r = cpu(residualOut);
    const D = r.shape[r.shape.length - 1]!;
    addRmsNormBackwardF32(r.f32, cpu(weight).f32, eps, D, cpu(dOut).f32, cpu(dResidual).f32, cpu(dWeight).f32);
  },

  embeddingBackward(ids: Tensor, dOut: Tensor, dTable: Tensor): void {
    const t = cpu(dTable);
    embeddingBackwardF32(cpu(ids).i32, cpu(dOut).f32, t.shape[1]!, t.f32);
  },

  causalConv1dSiluBackward(x: TensorOrCols, weight: Tensor, bias: Tensor | null, dy: Tensor, s: SeqShape, g: ConvGrads): void {
    const wt = cpu(weight);
    const K = wt.shape[wt.shape.length - 1]!;
    causalConv1dSiluBackwardF32(strided(x), wt.f32, bias ? cpu(bias).f32 : null, cpu(dy).f32, s.batch, s.seqLen, K,
      g.dx ? strided(g.dx) : null, g.dWeight ? cpu(g.dWeight).f32 : null, g.dBias ? cpu(g.dBias).f32 : null);
  },

  selectiveScanBackward(a: SelectiveScanArgs, dy: Tensor, g: ScanGrads): void {
    check((a.z === null) === (g.dz === null), "selectiveScanBackward: dz must be given exactly when the forward had a gate z");
    const [E, N] = cpu(a.A_log).shape as [number, number];
    const state = a.state ? cpu(a.state).f32 : null;
    check(!state || state.length === a.batch * E * N, `selectiveScanBackward: the initial state needs [${a.batch}, ${E}, ${N}]`);
    selectiveScanBackwardF32({
      u: cpu(a.u).f32, delta: strided(a.delta), deltaBias: cpu(a.deltaBias).f32, A_log: cpu(a.A_log).f32,
      Bm: strided(a.B), Cm: strided(a.C), D: cpu(a.D).f32, z: a.z ? strided(a.z) : null, state,
    }, cpu(dy).f32, {
      du: cpu(g.du).f32, dDelta: strided(g.dDelta), dDeltaBias: cpu(g.dDeltaBias).f32, dA_log: cpu(g.dA_log).f32,
      dB: strided(g.dB), dC: strided(g.dC), dD: cpu(g.dD).f32, dz: g.dz ? strided(g.dz) : null,
    }, a.batch, a.seqLen, E, N);
  },

  ssdScanBackward(a: SsdScanArgs, dy: Tensor, g: SsdGrads): void {
    check((a.z === null) === (g.dz === null), "ssdScanBackward: dz must be given exactly when the forward had a gate z");
    const { data, dims } = ssdData(a);
    check(numel(dy.shape) === dims.B * dims.L * dims.H * dims.P, `ssdScanBackward: dy [${dy.shape}] does not match the scan`);
    ssdBackwardF32(data, cpu(dy).f32, {
      dx: strided(g.dx), dDt: strided(g.dDt), dDtBias: cpu(g.dDtBias).f32, dA_log: cpu(g.dA_log).f32,
      dB: strided(g.dB), dC: strided(g.dC), dD: cpu(g.dD).f32, dz: g.dz ? strided(g.dz) : null,
    }, dims);
  },

  gatedRmsNormBackward(
    y: Tensor, z: TensorOrCols, weight: Tensor, eps: number, groupSize: number, normBeforeGate: boolean, dOut: Tensor,
    g: { dy: Tensor; dz: TensorOrCols; dWeight: Tensor },
  ): void {
    sameSize(y, dOut, "gatedRmsNormBackward");
    sameSize(y, g.dy, "gatedRmsNormBackward");
    gatedRmsNormBackwardF32(cpu(y).f32, strided(z), cpu(weight).f32, eps, groupSize, normBeforeGate, cpu(dOut).f32,
      cpu(g.dy).f32, strided(g.dz), cpu(g.dWeight).f32);
  },

  segmentRmsNormBackward(x: Tensor, widths: readonly number[], eps: number, dOut: Tensor, dx: Tensor): void {
    sameSize(x, dOut, "segmentRmsNormBackward");
    sameSize(x, dx, "segmentRmsNormBackward");
    segmentRmsNormBackwardF32(cpu(x).f32, widths, eps, cpu(dOut).f32, cpu(dx).f32);
  },
};
