/**
 * The WebGPU backend's ops of Mamba-2 and Falcon-Mamba (the optional Backend ops ssdScan, gatedRmsNorm and
 * segmentRmsNorm), assigned onto WebGpuBackend's prototype, as the CPU backend's training ops are. Kernels in
 * ./kernels/ssd. The scan runs in chunks (state space duality: chunk states, state passing, outputs within and
 * from the states, as register-tiled products; chunks of the kernels' own length) and, for one position (decode),
 * as the plain recurrence (a thread per (b, h, p), the state row in registers). Both are tested against the CPU's.
 * The training ops: Falcon's windowed norm's backward, the gated norm's, and the SSD's (kernels/ssd/backward.ts:
 * in chunks as matrix products, the states passed forward and the gradients back between chunks; the gate's
 * backward first from a forward scan without the gate; heads in pieces where the scratch would not fit a buffer).
 */
import type { SsdScanArgs, Tensor, TensorOrCols } from "../backend.ts";
import { MambaError, check } from "../../errors.ts";
import { numel } from "../../io/tensor.ts";
import type { Buf } from "./gpu.ts";
import { WebGpuBackend } from "./backend.ts";
import { GpuTensor, gpuTensor, windowOf } from "./tensor.ts";
import { widen } from "./kernels/widen.ts";
import { ssdScanSequential } from "./kernels/ssd/scan.ts";
import { gatherConsts } from "./kernels/ssd/common.ts";
import { ssdScanChunked } from "./kernels/ssd/chunked.ts";
import { MAX_SEGMENTS, gatedRmsNorm, gatedRmsNormBackward, segmentRmsNorm, segmentRmsNormBackward } from "./kernels/ssd/norms.ts";
import { ssdBackward, ssdBackwardLayout, ssdBackwardPlan, ssdBackwardTuning, ssdGateBackward } from "./kernels/ssd/backward.ts";
import { copyWindow } from "./kernels/copy.ts";
import type { SsdGrads } from "../training.ts";

function make(b: WebGpuBackend, shape: readonly number[], what: string): GpuTensor {
  return new GpuTensor([...shape], "f32", b.gpu.alloc(Math.max(4, numel(shape) * 4), what), "f32", b);
}

/** A float32 buffer of a tensor (half-precision parameters are widened once, on first use, as the backend does). */
function f32(b: WebGpuBackend, t: GpuTensor): Buf {
  if (t.storage === "f32" || t.storage === "i32") return t.buf;
  if (!t.widened) {
    const out = make(b, t.shape, "a widened parameter");
    widen(b.gpu, t.buf, t.storage, t.numel, out.buf);
    t.widened = out;
  }
  return t.widened.buf;
}

/** The scan's windows and sizes, checked against each other. */
function ssdWindows(b: WebGpuBackend, a: SsdScanArgs, what: string) {
  const win = (x: TensorOrCols) => {
    const w = windowOf(x, b, what);
    return { t: w.t, buf: f32(b, w.t), ld: w.ld, off: w.off, width: w.width, rows: w.rows };
  };
  const x = win(a.x), dt = win(a.dt), Bm = win(a.B), Cm = win(a.C), z = a.z ? win(a.z) : null;
  const H = dt.width, P = a.headDim, G = a.nGroups, T = a.batch * a.seqLen, N = Bm.width / G;
  check(x.width === H * P && Number.isInteger(N) && N > 0 && Cm.width === Bm.width && H % G === 0 && x.rows === T
    && dt.rows === T && Bm.rows === T && Cm.rows === T && (!z || (z.width === H * P && z.rows === T)),
    `${what}: x [${x.rows}, ${x.width}], dt [${dt.rows}, ${dt.width}], B/C [${Bm.rows}, ${Bm.width}] do not fit ` +
    `${a.batch}×${a.seqLen} rows of ${H} heads × ${P} in ${G} groups`);
  return { x, dt, Bm, Cm, z, H, P, G, T, N };
}

/** The float32 buffers of dtBias, A_log and D ([H] each), checked. */
function headParams(b: WebGpuBackend, a: SsdScanArgs, H: number, what: string): { dtBias: Buf; A_log: Buf; D: Buf } {
  const [dtBias, A_log, D] = [a.dtBias, a.A_log, a.D].map((t) => {
    const g = gpuTensor(t, b, what);
    check(g.numel === H, `${what}: dtBias, A_log and D need ${H} values, got [${g.shape}]`);
    return f32(b, g);
  }) as [Buf, Buf, Buf];
  return { dtBias, A_log, D };
}

/** dtBias | A_log | D side by side ([3H]), in a buffer the caller releases. */
function scanConsts(b: WebGpuBackend, a: SsdScanArgs, H: number, what: string): Buf {
  const { dtBias, A_log, D } = headParams(b, a, H, what);
  const consts = b.gpu.alloc(3 * H * 4, "the scan's constants");
  gatherConsts(b.gpu, dtBias, A_log, D, H, consts);
  return consts;
}

export const webgpuMamba2Ops = {
  ssdScan(this: WebGpuBackend, a: SsdScanArgs): Tensor {
    const what = "ssdScan";
    const { x, dt, Bm, Cm, z, H, P, G, N } = ssdWindows(this, a, what);
    const st = a.state ? gpuTensor(a.state, this, what) : null;
    check(!st || st.numel === a.batch * H * P * N, `${what}: the state needs [${a.batch}, ${H}, ${P}, ${N}]`);
    const heads = headParams(this, a, H, what);
    const y = make(this, [a.batch, a.seqLen, H * P], "the scan output");
    const args = {
      x: x.buf, ldx: x.ld, offx: x.off, dt: dt.buf, lddt: dt.ld, offdt: dt.off, Bm: Bm.buf, ldb: Bm.ld, offb: Bm.off,
      Cm: Cm.buf, ldc: Cm.ld, offc: Cm.off, z: z?.buf ?? null, ldz: z?.ld ?? 0, offz: z?.off ?? 0,
      state: st?.buf ?? null, y: y.buf, B: a.batch, L: a.seqLen, H, P, G, N, lo: a.dtLimit[0], hi: a.dtLimit[1],
    };
    // one position (decode): the recurrence. Otherwise the chunks, of the kernels' own length: the model's
    // chunk_size does not change the result (see kernels/ssd/chunked.ts)
    if (a.seqLen === 1) {
      const consts = this.gpu.alloc(3 * H * 4, "the scan's constants");
      gatherConsts(this.gpu, heads.dtBias, heads.A_log, heads.D, H, consts);
      ssdScanSequential(this.gpu, { ...args, consts });
      this.gpu.release(consts);
    } else {
      ssdScanChunked(this.gpu, { ...args, ...heads });
    }
    if (st) st.version++;
    return y;
  },

  gatedRmsNorm(this: WebGpuBackend, y: Tensor, z: TensorOrCols, weight: Tensor, eps: number, groupSize: number, normBeforeGate: boolean): Tensor {
    const yt = gpuTensor(y, this, "gatedRmsNorm"), zw = windowOf(z, this, "gatedRmsNorm"), wt = gpuTensor(weight, this, "gatedRmsNorm");
    const E = zw.width;
    check(yt.cols === E && yt.numel === zw.rows * E && wt.numel === E && E % groupSize === 0,
      `gatedRmsNorm: y [${yt.shape}], gate of width ${E}, weight [${wt.shape}] and groups of ${groupSize} do not fit`);
    const out = make(this, yt.shape, "the gated norm's output");
    gatedRmsNorm(this.gpu, {
      y: f32(this, yt), z: f32(this, zw.t), ldz: zw.ld, offz: zw.off, weight: f32(this, wt), out: out.buf,
      T: zw.rows, E, gs: groupSize, before: normBeforeGate, eps,
    });
    return out;
  },

  segmentRmsNorm(this: WebGpuBackend, x: Tensor, widths: readonly number[], eps: number): Tensor {
    const xt = gpuTensor(x, this, "segmentRmsNorm");
    check(widths.length >= 1 && widths.length <= MAX_SEGMENTS && widths.every((w) => Number.isInteger(w) && w > 0)
      && widths.reduce((s, v) => s + v, 0) === xt.cols, `segmentRmsNorm: windows ${widths} do not cover [${xt.shape}] (at most ${MAX_SEGMENTS})`);
    const out = make(this, xt.shape, "the windowed norm's output");
    segmentRmsNorm(this.gpu, f32(this, xt), out.buf, xt.numel / xt.cols, widths, eps);
    return out;
  },

  /** TrainingOps.ssdScanBackward: every gradient added into (windows included). */
  ssdScanBackward(this: WebGpuBackend, a: SsdScanArgs, dy: Tensor, g: SsdGrads): void {
    const what = "ssdScanBackward";
    check((a.z === null) === (g.dz === null), `${what}: dz must be given exactly when the forward had a gate z`);
    const { x, dt, Bm, Cm, z, H, P, G, T, N } = ssdWindows(this, a, what);
    const dyt = gpuTensor(dy, this, what);
    check(dyt.numel === T * H * P, `${what}: dy [${dyt.shape}] does not match the scan`);
    const st = a.state ? gpuTensor(a.state, this, what) : null;
    check(!st || st.numel === a.batch * H * P * N, `${what}: the initial state needs [${a.batch}, ${H}, ${P}, ${N}]`);
    const GN = G * N, HP = H * P;
    const dims = { B: a.batch, L: a.seqLen, H, P, G, N, hasState: !!st, lo: a.dtLimit[0], hi: a.dtLimit[1] };
    const limit = this.gpu.limits.maxStorageBufferBindingSize;
    if (T * HP * 4 > limit) throw new MambaError(`${what}: the scan's output needs ${T * HP * 4} bytes, over this device's ${limit} a buffer; use a smaller batch or the cpu backend`);
    // heads in pieces such that the scratch fits a buffer
    const plan = ssdBackwardPlan(dims, Math.min(ssdBackwardTuning.bufferBytes, limit)) ?? ssdBackwardPlan(dims, limit);
    if (!plan) throw new MambaError(`${what}: the backward's scratch for one head needs more than this device's ${limit} bytes a buffer; use a smaller batch or sequence, or the cpu backend`);
    const target = (t: TensorOrCols, width: number, name: string) => {
      const w = windowOf(t, this, `${what} (${name})`);
      check(w.width === width && w.rows === T, `${what}: ${name} is ${w.rows} x ${w.width}, expected ${T} x ${width}`);
      w.t.version++;
      return { buf: w.t.buf, ld: w.ld, off: w.off };
    };
    const dense = (t: Tensor, n: number, name: string) => {
      const gt = gpuTensor(t, this, what);
      check(gt.numel === n, `${what}: ${name} needs ${n} values, got [${gt.shape}]`);
      gt.version++;
      return gt.buf;
    };
    // gy = dy·silu(z): y before the gate from a forward scan without z (from a copy of the initial state, which the
    // scan advances), then the gate's backward, which also adds dz
    let gy = dyt.buf;
    let ypre: Tensor | null = null;
    if (z) {
      const gdz = target(g.dz!, HP, "dz");
      let state0: GpuTensor | null = null;
      if (st) {
        state0 = make(this, st.shape, "a copy of the initial state");
        copyWindow(this.gpu, f32(this, st), st.numel, 0, state0.buf, st.numel, 0, 1, st.numel);
      }
      ypre = webgpuMamba2Ops.ssdScan.call(this, { ...a, z: null, state: state0 });
      if (state0) this.dispose(state0);
      gy = gpuTensor(ypre, this, what).buf;
      ssdGateBackward(this.gpu, gy, dyt.buf, z.buf, z.ld, z.off, gdz.buf, gdz.ld, gdz.off, T, HP);
    }
    const args = {
      x, dt, Bm, Cm, consts: scanConsts(this, a, H, what), gy, state0: st ? f32(this, st) : null,
      dx: target(g.dx, HP, "dx"), dDt: target(g.dDt, H, "dDt"), dB: target(g.dB, GN, "dB"), dC: target(g.dC, GN, "dC"),
      dA_log: dense(g.dA_log, H, "dA_log"), dD: dense(g.dD, H, "dD"), dDtBias: dense(g.dDtBias, H, "dDtBias"),
    };
    const work = this.gpu.alloc(Math.max(4, plan.size * 4), "the SSD backward's scratch");
    for (let h0 = 0; h0 < H; h0 += plan.hp) {
      const hp = Math.min(plan.hp, H - h0);
      ssdBackward(this.gpu, dims, hp === plan.hp ? plan : ssdBackwardLayout(dims, plan.Q, hp), h0, args, work);
    }
    this.gpu.release(work);
    this.gpu.release(args.consts);
    if (ypre) this.dispose(ypre);
  },

  /** TrainingOps.gatedRmsNormBackward: dy, dz and dWeight added into. */
  gatedRmsNormBackward(
    this: WebGpuBackend, y: Tensor, z: TensorOrCols, weight: Tensor, eps: number, groupSize: number, normBeforeGate: boolean,
    dOut: Tensor, g: { dy: Tensor; dz: TensorOrCols; dWeight: Tensor },
  ): void {
    const what = "gatedRmsNormBackward";
    const yt = gpuTensor(y, this, what), zw = windowOf(z, this, what), wt = gpuTensor(weight, this, what);
    const gt = gpuTensor(dOut, this, what), dyt = gpuTensor(g.dy, this, what), dzw = windowOf(g.dz, this, what);
    const dwt = gpuTensor(g.dWeight, this, what);
    const E = zw.width, T = zw.rows;
    check(yt.numel === T * E && gt.numel === T * E && dyt.numel === T * E && wt.numel === E && dwt.numel === E && E % groupSize === 0
      && dzw.width === E && dzw.rows === T, `${what}: y [${yt.shape}], gate of width ${E}, groups of ${groupSize} and the gradients do not fit`);
    const outs = [dyt.buf, dzw.t.buf, dwt.buf];
    check(new Set(outs).size === 3 && ![yt.buf, zw.t.buf, wt.buf, gt.buf].some((b) => outs.includes(b)),
      `${what}: the gradients must be apart from each other and from the inputs`);
    const part = this.gpu.alloc(T * E * 4, "the gated norm's weight gradient by row");
    gatedRmsNormBackward(this.gpu, {
      y: f32(this, yt), z: f32(this, zw.t), ldz: zw.ld, offz: zw.off, weight: f32(this, wt), dOut: gt.buf, dy: dyt.buf,
      dz: dzw.t.buf, ldDz: dzw.ld, offDz: dzw.off, dWeight: dwt.buf, part, T, E, gs: groupSize, before: normBeforeGate, eps,
    });
    this.gpu.release(part);
    dyt.version++;
    dzw.t.version++;
    dwt.version++;
  },

  /** Falcon-Mamba's training op (TrainingOps.segmentRmsNormBackward): dx += the gradient through the norms. */
  segmentRmsNormBackward(this: WebGpuBackend, x: Tensor, widths: readonly number[], eps: number, dOut: Tensor, dx: Tensor): void {
    const what = "segmentRmsNormBackward";
    const xt = gpuTensor(x, this, what), gt = gpuTensor(dOut, this, what), dt = gpuTensor(dx, this, what);
    check(widths.length >= 1 && widths.length <= MAX_SEGMENTS && widths.reduce((s, v) => s + v, 0) === xt.cols
      && gt.numel === xt.numel && dt.numel === xt.numel, `${what}: windows ${widths}, x [${xt.shape}], dOut [${gt.shape}], dx [${dt.shape}] do not fit`);
    check(dt.buf !== xt.buf && dt.buf !== gt.buf, `${what}: dx must not share a buffer with x or dOut`);
    segmentRmsNormBackward(this.gpu, f32(this, xt), gt.buf, dt.buf, xt.numel / xt.cols, widths, eps);
    dt.version++;
  },
};

Object.assign(WebGpuBackend.prototype, webgpuMamba2Ops);
