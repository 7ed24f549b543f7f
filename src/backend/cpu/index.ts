/**
 * The CPU reference backend: plain TypeScript over Float32Array, one file per op family. Every other backend is
 * tested against it.
 */
import type { Backend, SampleRequest, SelectiveScanArgs, SeqShape, SsdScanArgs, Tensor, TensorOrCols } from "../backend.ts";
import { type HostTensor, numel, toFloat32 } from "../../io/tensor.ts";
import { check } from "../../errors.ts";
import { CpuTensor, cpu, strided } from "./tensor.ts";
import { matmulF32 } from "./matmul.ts";
import { addRmsNormF32, embeddingF32 } from "./norm.ts";
import { causalConv1dSiluF32 } from "./conv.ts";
import { selectiveScanF32 } from "./scan.ts";
import { ssdChunkedF32, ssdData } from "./ssd.ts";
import { gatedRmsNormF32, segmentRmsNormF32 } from "./gated-norm.ts";
import { sampleRow } from "../../generate/sampling.ts";
import type { TrainingOps } from "../training.ts";
import { cpuTrainingOps } from "./training.ts";

const f32 = (shape: readonly number[]) => new CpuTensor(shape, "f32", new Float32Array(numel(shape)));

export class CpuBackend implements Backend {
  readonly name = "cpu" as const;

  upload(t: HostTensor): Tensor {
    // every stored type is widened to f32 here; quantized blocks (Q8_0, Q4_0) are dequantized exactly, so each
    // op on them is "dequantize, then the f32 op"
    const data = toFloat32(t);
    return new CpuTensor([...t.shape], "f32", t.dtype === "F32" ? data.slice() : data);
  }
  fromF32(data: Float32Array, shape: readonly number[]): Tensor {
    check(data.length === numel(shape), `data has ${data.length} values, shape [${shape}] needs ${numel(shape)}`);
    return new CpuTensor([...shape], "f32", data.slice());
  }
  fromI32(data: Int32Array, shape: readonly number[]): Tensor {
    check(data.length === numel(shape), `data has ${data.length} values, shape [${shape}] needs ${numel(shape)}`);
    return new CpuTensor([...shape], "i32", data.slice());
  }
  zeros(shape: readonly number[]): Tensor {
    return f32(shape);
  }
  async readF32(t: Tensor): Promise<Float32Array> {
    return cpu(t).f32.slice();
  }
  async readI32(t: Tensor): Promise<Int32Array> {
    return cpu(t).i32.slice();
  }
  dispose(): void {
    // host arrays are freed by the garbage collector
  }
  concat0(ts: Tensor[]): Tensor {
    const parts = ts.map(cpu);
    const rest = parts[0]!.shape.slice(1);
    const n = parts.reduce((a, p) => a + p.shape[0]!, 0);
    const out = new CpuTensor([n, ...rest], parts[0]!.dtype, parts[0]!.dtype === "f32"
      ? new Float32Array(n * numel(rest)) : new Int32Array(n * numel(rest)));
    let o = 0;
    for (const p of parts) { out.data.set(p.data, o); o += p.data.length; }
    return out;
  }
  takeRows(x: Tensor, rows: readonly number[]): Tensor {
    const t = cpu(x);
    const w = t.shape[t.shape.length - 1]!;
    const out = f32([rows.length, w]);
    rows.forEach((r, i) => out.f32.set(t.f32.subarray(r * w, (r + 1) * w), i * w));
    return out;
  }
  copyInto(dst: Tensor, src: Tensor): void {
    cpu(dst).data.set(cpu(src).data);
  }
  async destroy(): Promise<void> {}

  embedding(table: Tensor, ids: Tensor): Tensor {
    const tb = cpu(table);
    const D = tb.shape[1]!;
    const idv = cpu(ids).i32;
    const out = f32([idv.length, D]);
    embeddingF32(tb.f32, D, idv, out.f32);
    return out;
  }
  addRmsNorm(x: Tensor, residual: Tensor | null, weight: Tensor, eps: number): { out: Tensor; residual: Tensor } {
    const xt = cpu(x);
    const D = xt.shape[xt.shape.length - 1]!;
    const res = f32(xt.shape);
    const out = f32(xt.shape);
    addRmsNormF32(xt.f32, residual ? cpu(residual).f32 : null, cpu(weight).f32, eps, D, res.f32, out.f32);
    return { out, residual: res };
  }
  matmul(x: TensorOrCols, w: Tensor, bias: Tensor | null): Tensor {
    const xs = strided(x);
    const wt = cpu(w);
    const nOut = wt.shape[0]!;
    check(numel(wt.shape) === nOut * xs.width, `matmul: weight [${wt.shape}] does not take ${xs.width} inputs`);
    const y = f32([xs.rows, nOut]);
    matmulF32(xs, wt.f32, nOut, bias ? cpu(bias).f32 : null, y.f32);
    return y;
  }
  causalConv1dSilu(x: TensorOrCols, weight: Tensor, bias: Tensor | null, state: Tensor | null, s: SeqShape): Tensor {
    const xs = strided(x);
    const wt = cpu(weight);
    const K = wt.shape[wt.shape.length - 1]!;
    const y = f32([s.batch, s.seqLen, xs.width]);
    causalConv1dSiluF32(xs, wt.f32, bias ? cpu(bias).f32 : null, state ? cpu(state).f32 : null, s.batch, s.seqLen, K, y.f32);
    return y;
  }
  selectiveScan(a: SelectiveScanArgs): Tensor {
    const [E, N] = cpu(a.A_log).shape as [number, number];
    const y = f32([a.batch, a.seqLen, E]);
    selectiveScanF32({
      u: cpu(a.u).f32, delta: strided(a.delta), deltaBias: cpu(a.deltaBias).f32, A_log: cpu(a.A_log).f32,
      Bm: strided(a.B), Cm: strided(a.C), D: cpu(a.D).f32, z: a.z ? strided(a.z) : null,
      state: a.state ? cpu(a.state).f32 : null,
    }, a.batch, a.seqLen, E, N, y.f32);
    return y;
  }
  ssdScan(a: SsdScanArgs): Tensor {
    const { data, dims } = ssdData(a);
    const y = f32([a.batch, a.seqLen, dims.H * dims.P]);
    ssdChunkedF32(data, dims, a.chunkSize, y.f32);
    return y;
  }
  gatedRmsNorm(y: Tensor, z: TensorOrCols, weight: Tensor, eps: number, groupSize: number, normBeforeGate: boolean): Tensor {
    const yt = cpu(y), zs = strided(z);
    check(zs.width === yt.shape[yt.shape.length - 1] && zs.rows * zs.width === yt.data.length && zs.width % groupSize === 0,
      `gatedRmsNorm: y [${yt.shape}], gate of width ${zs.width} and groups of ${groupSize} do not fit`);
    const out = f32(yt.shape);
    gatedRmsNormF32(yt.f32, zs, cpu(weight).f32, eps, groupSize, normBeforeGate, out.f32);
    return out;
  }
  segmentRmsNorm(x: Tensor, widths: readonly number[], eps: number): Tensor {
    const xt = cpu(x);
    check(widths.reduce((a, b) => a + b, 0) === xt.shape[xt.shape.length - 1], `segmentRmsNorm: windows ${widths} do not cover [${xt.shape}]`);
    const out = f32(xt.shape);
    segmentRmsNormF32(xt.f32, widths, eps, out.f32);
    return out;
  }
  sample(logits: Tensor, req: SampleRequest): Tensor {
    const lt = cpu(logits);
    const V = lt.shape[lt.shape.length - 1]!;
    const rows = lt.f32.length / V;
    const ids = new Int32Array(rows);
    for (let r = 0; r < rows; r++) {
      ids[r] = sampleRow(lt.f32.subarray(r * V, (r + 1) * V), req, req.history?.[r] ?? null, req.uniforms[r]!);
    }
    return new CpuTensor([rows], "i32", ids);
  }
}

// The training ops (backward ops, loss, optimizer) live in ./training.ts: CpuBackend is a TrainingBackend.
export interface CpuBackend extends TrainingOps {}
Object.assign(CpuBackend.prototype, cpuTrainingOps);
