/**
 * The Backend interface: the ops the Mamba model is written against, once, for every backend.
 *
 * Tensors are opaque handles owned by a backend (host arrays on the CPU, GPU buffers on WebGPU); the model never
 * sees their data except through `readF32` / `readI32`. All tensors are row-major. An op allocates its outputs;
 * the caller frees what it no longer needs with `dispose` (a no-op for the CPU backend, a return to the buffer pool
 * on WebGPU). Ops that take a `state` tensor read it as the history before the first position and overwrite it
 * with the history after the last one, so that step mode (L = 1) and chunked prefill are the same op.
 *
 * Shapes: B batch, L sequence length, T = B·L rows, D hidden, E inner, N state, K conv kernel, V vocabulary rows;
 * Mamba-2: H heads of size P (E = H·P), G groups of B and C (H / G heads a group).
 *
 * The ops of Mamba-2 and Falcon-Mamba (ssdScan, gatedRmsNorm, segmentRmsNorm) are optional: a backend without
 * them runs Mamba-1 only, and building another family on it is a MambaError.
 */
import type { HostTensor } from "../io/tensor.ts";

export interface Tensor {
  readonly shape: readonly number[];
  readonly dtype: "f32" | "i32";
}

/**
 * Columns [col0, col0 + width) of a tensor seen as a matrix [rows, cols] (cols = its last dimension). Lets an op
 * read one part of a projection's output (x or z of in_proj, dt / B / C of x_proj) without a copy.
 */
export interface Cols {
  tensor: Tensor;
  col0: number;
  width: number;
}

export type TensorOrCols = Tensor | Cols;

export interface SeqShape {
  batch: number;
  seqLen: number;
}

export interface SelectiveScanArgs extends SeqShape {
  u: Tensor; // [B, L, E] conv output (the scan's input x)
  delta: TensorOrCols; // [B, L, E] dt_proj(dt) before the bias and softplus
  deltaBias: Tensor; // [E] dt_proj.bias, added inside the softplus
  A_log: Tensor; // [E, N]; A = -exp(A_log)
  B: TensorOrCols; // [B, L, N]
  C: TensorOrCols; // [B, L, N]
  D: Tensor; // [E] skip connection
  z: TensorOrCols | null; // [B, L, E] gate: y *= silu(z)
  state: Tensor | null; // [B, E, N] SSM state, read then overwritten; null = zeros, not returned
}

/**
 * Mamba-2's SSM (state space duality, SSD), per head h with the B and C of its group g = floor(h / (H / G)):
 *   dt = clamp(softplus(dt_raw + dtBias[h]), dtLimit);  A = -exp(A_log[h])  (one scalar per head)
 *   state_t = exp(dt·A)·state_{t-1} + dt · x_t ⊗ B_t[g]      state: [P, N]
 *   y_t = state_t · C_t[g] + D[h] · x_t;  y *= silu(z) when z is given
 */
export interface SsdScanArgs extends SeqShape {
  x: TensorOrCols; // [B, L, H·P] (conv output)
  dt: TensorOrCols; // [B, L, H] before the bias and softplus
  dtBias: Tensor; // [H]
  A_log: Tensor; // [H]
  B: TensorOrCols; // [B, L, G·N]
  C: TensorOrCols; // [B, L, G·N]
  D: Tensor; // [H]
  z: TensorOrCols | null; // [B, L, H·P] gate (only when the model has no gated norm after the scan)
  headDim: number; // P
  nGroups: number; // G
  /** dt after softplus is clamped to [lo, hi] ((0, Infinity): no clamp) */
  dtLimit: readonly [number, number];
  /** the chunk length of a chunked algorithm (results must not depend on it beyond rounding) */
  chunkSize: number;
  state: Tensor | null; // [B, H, P, N] read then overwritten; null = zeros, not returned
}

/** What the sampler needs for one step of a batch; `uniforms` come from the caller's seeded generator. */
export interface SampleRequest {
  vocabSize: number; // ids >= vocabSize (padding rows of the head) are never drawn
  temperature: number; // 0 = greedy
  topK: number; // 0 = off
  topP: number; // 1 = off
  minP: number; // 0 = off
  repetitionPenalty: number; // 1 = off
  history: Int32Array[] | null; // per row, the ids seen so far (for the repetition penalty)
  uniforms: Float32Array; // [B] in [0, 1), one draw per row
}

/** What a fused decode step reads of a model: the shape of MambaLM's config and weights (src/model/mamba.ts). */
export interface StepModel {
  config: {
    numLayers: number; hiddenSize: number; intermediateSize: number; stateSize: number; timeStepRank: number;
    convKernel: number; layerNormEpsilon: number; mixer: string; vocabSize: number;
    /** the model family (config.ts ModelFamily): a fused step of Mamba-1's layer must refuse the others */
    family?: string;
    /** Mamba-2's mixer (config.ts Mamba2Fields), for a fused step of Mamba-2's layer */
    mamba2?: {
      numHeads: number; headDim: number; nGroups: number; timeStepLimit: readonly [number, number]; gatedNorm: boolean; normBeforeGate: boolean;
    } | null;
  };
  weights: {
    embeddings: Tensor; normF: Tensor; head: Tensor;
    layers: {
      norm: Tensor;
      mixer: {
        inProj: Tensor; inProjBias: Tensor | null; conv: Tensor; convBias: Tensor | null;
        xProj: Tensor | null; dtProj: Tensor | null; dtBias: Tensor; A_log: Tensor; D: Tensor;
        outProj: Tensor; outProjBias: Tensor | null;
        /** Mamba-2's gated norm weight [E] */
        gateNorm?: Tensor | null;
      };
    }[];
  };
}

/** The precision of a backend's matrix products (Backend.precision). */
export type Precision = "f32" | "f16";

export interface Backend {
  readonly name: "cpu" | "webgpu";
  /** True when ops are queued for a device rather than run at once: a caller gains by encoding the next decode
   *  step before it waits for this one's ids. */
  readonly queued?: boolean;
  /** The matrix products' precision: "f32" (absent: f32 only), or "f16": inputs rounded to f16, products summed
   *  in f32, outputs f32 (the WebGPU backend on a device with shader-f16). */
  readonly precision?: Precision;
  /** The precisions usePrecision accepts on this device (absent: f32 only). */
  readonly precisions?: readonly Precision[];
  /** Switches the matrix products to precision `p` (a MambaError where the device cannot); with "f16", the given
   *  weight matrices (an inference model's projections and head) are stored in f16 from now on, converted once. */
  usePrecision?(p: Precision, matrices?: readonly Tensor[]): void;

  // ---- data movement ----
  /** A parameter tensor. Half-precision data may stay half precision on the device. */
  upload(t: HostTensor): Tensor;
  fromF32(data: Float32Array, shape: readonly number[]): Tensor;
  fromI32(data: Int32Array, shape: readonly number[]): Tensor;
  zeros(shape: readonly number[]): Tensor;
  readF32(t: Tensor): Promise<Float32Array>;
  readI32(t: Tensor): Promise<Int32Array>;
  dispose(...ts: (Tensor | null | undefined)[]): void;
  /** Stacks tensors along their first dimension: [a, ...] + [b, ...] -> [a + b, ...]. */
  concat0(ts: Tensor[]): Tensor;
  /** Rows of a matrix view [rows, cols] of x: out[i] = x[rows[i]]. */
  takeRows(x: Tensor, rows: readonly number[]): Tensor;
  /** Overwrites dst with src (same shape). */
  copyInto(dst: Tensor, src: Tensor): void;
  /** Frees every resource; the backend is unusable afterwards. */
  destroy(): Promise<void>;

  // ---- model ops ----
  /** table: [V, D], ids: i32 [T] -> [T, D] */
  embedding(table: Tensor, ids: Tensor): Tensor;
  /** Fused residual add + RMSNorm. x: [T, D]; residual: [T, D] or null; weight: [D].
   *  residualOut = x + residual; out = residualOut / sqrt(mean(residualOut²) + eps) * weight. */
  addRmsNorm(x: Tensor, residual: Tensor | null, weight: Tensor, eps: number): { out: Tensor; residual: Tensor };
  /** x: [T, K] (or K columns of a wider matrix), w: [Nout, K] (PyTorch Linear layout), bias: [Nout] -> [T, Nout] */
  matmul(x: TensorOrCols, w: Tensor, bias: Tensor | null): Tensor;
  /** Causal depthwise conv1d (left padding from `state`, zeros when null) followed by SiLU.
   *  x: [B, L, E] (or E columns), weight: [E, 1, K], bias: [E] or null, state: [B, K-1, E] -> [B, L, E] */
  causalConv1dSilu(x: TensorOrCols, weight: Tensor, bias: Tensor | null, state: Tensor | null, shape: SeqShape): Tensor;
  /** The fused selective scan: discretize, recur, y = C·h + D·u, gate with silu(z). -> y: [B, L, E] */
  selectiveScan(args: SelectiveScanArgs): Tensor;
  /** Mamba-2's scan (SsdScanArgs). -> y: [B, L, H·P] */
  ssdScan?(args: SsdScanArgs): Tensor;
  /**
   * Mamba-2's gated RMSNorm (mamba_ssm's RMSNormGated), per row and per group of `groupSize` channels:
   *   normBeforeGate false: v = y · silu(z); out = v / sqrt(mean_group(v²) + eps) · weight
   *   normBeforeGate true:  out = y / sqrt(mean_group(y²) + eps) · weight · silu(z)
   * y: [T, E], z: [T, E] (or E columns), weight: [E] -> [T, E]
   */
  gatedRmsNorm?(y: Tensor, z: TensorOrCols, weight: Tensor, eps: number, groupSize: number, normBeforeGate: boolean): Tensor;
  /**
   * RMS normalization without weights over consecutive column windows (Falcon-Mamba's dt | B | C):
   * x: [T, Σ widths] -> out: same shape, each window divided by sqrt(mean(window²) + eps) on its own.
   */
  segmentRmsNorm?(x: Tensor, widths: readonly number[], eps: number): Tensor;
  /** Draws the next id of each row. logits: [B, V] -> i32 [B] */
  sample(logits: Tensor, req: SampleRequest): Tensor;
  /** Optional fused decode: one token per row through the whole LM (embedding, every layer, norm_f, head) in a few
   *  dispatches, advancing the state tensors (conv[i]: [B, K-1, E], ssm[i]: [B, E, N]; Mamba-2: [B, K-1, E + 2GN],
   *  [B, H, P, N]) as step mode does. ids: i32
   *  [B] -> logits [B, V]; null when this backend cannot fuse this model or batch (then run the ops one by one),
   *  e.g. a family (config.family other than "mamba") whose layer it does not know. */
  decodeStep?(model: StepModel, ids: Tensor, conv: readonly Tensor[], ssm: readonly Tensor[]): Tensor | null;
  /** Optional: records the ops `fn` runs so that `run()` repeats them without the host encoding them again (as
   *  CUDA graphs replay mamba_ssm's decode step). Every run uses the same buffers: fn's inputs must be tensors
   *  whose contents the caller changes between runs (copyInto), and fn must not read back. The returned tensor is
   *  fn's result, rewritten by each run and owned by the capture until dispose(). */
  capture?(fn: () => Tensor): Captured;
}

/** Ops recorded once and run again (Backend.capture). */
export interface Captured {
  /** fn's result: each run() writes it again */
  readonly output: Tensor;
  run(): void;
  /** Frees what the recording holds, output included. */
  dispose(): void;
}

export function isCols(x: TensorOrCols): x is Cols {
  return (x as Cols).tensor !== undefined;
}

/** A Cols view of a whole tensor. */
export function asCols(x: TensorOrCols): Cols {
  if (isCols(x)) return x;
  const width = x.shape[x.shape.length - 1]!;
  return { tensor: x, col0: 0, width };
}

export function cols(tensor: Tensor, col0: number, width: number): Cols {
  return { tensor, col0, width };
}
