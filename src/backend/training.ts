/**
 * TrainingBackend: the Backend plus what training needs — a backward for every model op, the loss, and the
 * optimizer's elementwise work. The model's backward (src/train/backprop.ts) is written once against it.
 *
 * Gradient convention: every backward op ADDS into the gradient tensors it is given (`g += ...`), never
 * overwrites. The caller zero-fills them first (`zeroFill`). This one rule covers
 *  - parameter gradients summed over micro-batches (gradient accumulation) and over uses (the tied head),
 *  - activation gradients that arrive from two places (the scan's input u gets C·h and D terms from the scan and
 *    a term from x_proj's backward),
 *  - gradients of a column window (`Cols`): an op writing dx for x = cols(xz, 0, E) adds into exactly those
 *    columns of the wider gradient tensor dxz and leaves the others alone.
 *
 * Training runs from a zero conv history. The scan may start from a given SSM state (`SelectiveScanArgs.state`,
 * e.g. random states for length generalization); it is an input, so no gradient flows into it.
 *
 * Shapes: B batch, L sequence length, T = B·L rows, D hidden, E inner, N state, K conv kernel, V vocabulary rows.
 */
import type { Backend, SelectiveScanArgs, SeqShape, SsdScanArgs, Tensor, TensorOrCols } from "./backend.ts";

export interface MatmulGrads {
  dx: TensorOrCols | null; // [T, K]      += dy · w
  dw: Tensor | null; // [Nout, K]         += dyᵀ · x
  dBias: Tensor | null; // [Nout]         += sum over rows of dy
}

export interface ConvGrads {
  dx: TensorOrCols | null; // [B, L, E]
  dWeight: Tensor | null; // [E, 1, K]
  dBias: Tensor | null; // [E]
}

export interface ScanGrads {
  du: Tensor; // [B, L, E] the scan input (conv output)
  dDelta: TensorOrCols; // [B, L, E] delta before bias and softplus
  dDeltaBias: Tensor; // [E]
  dA_log: Tensor; // [E, N]
  dB: TensorOrCols; // [B, L, N]
  dC: TensorOrCols; // [B, L, N]
  dD: Tensor; // [E]
  dz: TensorOrCols | null; // [B, L, E] the gate (null when the forward had no gate)
  /**
   * The caller promises that du, dDelta and dz hold zeros (it just made them), so a backend may write these three
   * rather than add into them, and skip reading them. The other gradients are added into as always.
   */
  zeroed?: boolean;
}

/** Gradients of Mamba-2's scan (SsdScanArgs); every one is added into. */
export interface SsdGrads {
  dx: TensorOrCols; // [B, L, H·P]
  dDt: TensorOrCols; // [B, L, H] dt before the bias and softplus
  dDtBias: Tensor; // [H]
  dA_log: Tensor; // [H]
  dB: TensorOrCols; // [B, L, G·N]
  dC: TensorOrCols; // [B, L, G·N]
  dD: Tensor; // [H]
  dz: TensorOrCols | null; // [B, L, H·P] (null when the forward had no gate)
}

export interface CrossEntropyResult {
  loss: Tensor; // [1] mean over the counted positions (0 when none counts)
  correct: Tensor; // [1] how many counted positions have the target as their argmax (ties: the lowest id)
  dLogits: Tensor; // [T, V] = scale · (softmax(logits) − onehot(target)) / count; rows not counted are zero
}

export interface AdamWParams {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number; // decoupled: p -= lr · weightDecay · p (before the Adam update, as PyTorch's AdamW)
  step: number; // 1-based, for the bias corrections
  gradScale: number; // the gradient is read as gradScale · g (gradient clipping without a separate pass)
}

export interface TrainingOps {
  // ---- helpers ----
  /** t := 0 */
  zeroFill(t: Tensor): void;
  /** dst += alpha · src (same shape) */
  addScaled(dst: Tensor, src: Tensor, alpha: number): void;
  /** -> [1] the sum of squares of every element of every tensor (for the global gradient norm) */
  sumSquares(ts: Tensor[]): Tensor;
  /** One AdamW update in place of param, m, v (all of one shape). */
  adamwStep(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, o: AdamWParams): void;

  // ---- loss ----
  /**
   * Softmax cross-entropy over the last dimension of logits [T, V] against targets i32 [T]; a target of -1 is
   * not counted (the loss is the mean over the others). Next-token training passes targets[b, t] = ids[b, t+1]
   * and -1 at t = L-1; a task passes -1 wherever it does not score.
   */
  crossEntropy(logits: Tensor, targets: Tensor, scale: number): CrossEntropyResult;

  // ---- backward ops (all accumulate, see above) ----
  /** For y = x · wᵀ + bias: dx += dy · w, dw += dyᵀ · x, dBias += Σ_rows dy. dy: [T, Nout] */
  matmulBackward(x: TensorOrCols, w: Tensor, dy: TensorOrCols, g: MatmulGrads): void;
  /**
   * For (out, residualOut) = addRmsNorm(x, residual, weight, eps), given residualOut (what the forward returned)
   * and dOut [T, D]: dResidual += ∂loss/∂residualOut through the norm, dWeight += Σ_rows dOut · normalized.
   * Both x and residual then have the gradient dResidual (the caller adds what reached residualOut directly).
   */
  addRmsNormBackward(residualOut: Tensor, weight: Tensor, eps: number, dOut: Tensor, dResidual: Tensor, dWeight: Tensor): void;
  /** For out = table[ids]: dTable[ids[t]] += dOut[t] (a scatter-add; repeated ids add up). */
  embeddingBackward(ids: Tensor, dOut: Tensor, dTable: Tensor): void;
  /** For y = silu(causal_conv1d(x) + bias) from zero history. dy: [B, L, E] */
  causalConv1dSiluBackward(x: TensorOrCols, weight: Tensor, bias: Tensor | null, dy: Tensor, shape: SeqShape, g: ConvGrads): void;
  /**
   * For y = selectiveScan(args). dy: [B, L, E]. args.state is the state the forward started from ([B, E, N], read
   * only; null = zeros): pass a copy, as the forward overwrote its own with the final state. No gradient reaches
   * the initial state (it is an input, as in training from a given or random state). The CPU version recomputes the states of one
   * batch row at a time (L·E·N numbers) and walks time backwards. A GPU version must not materialize
   * [B, L, E, N]: it recomputes the states chunk by chunk from the chunk's starting state (saved per chunk by a
   * forward pass over the chunks), as the fused CUDA kernel does (docs/mamba.md, section 3.3 of the paper).
   */
  selectiveScanBackward(args: SelectiveScanArgs, dy: Tensor, g: ScanGrads): void;

  // ---- backward ops of Mamba-2 and Falcon-Mamba (optional: a backend without them trains Mamba-1 only) ----
  /** For y = ssdScan(args). dy: [B, L, H·P]. args.state as for selectiveScanBackward (a copy of the initial state). */
  ssdScanBackward?(args: SsdScanArgs, dy: Tensor, g: SsdGrads): void;
  /** For out = gatedRmsNorm(y, z, weight, eps, groupSize, normBeforeGate). dOut: [T, E]; dy, dz, dWeight added into. */
  gatedRmsNormBackward?(
    y: Tensor, z: TensorOrCols, weight: Tensor, eps: number, groupSize: number, normBeforeGate: boolean, dOut: Tensor,
    g: { dy: Tensor; dz: TensorOrCols; dWeight: Tensor },
  ): void;
  /** For out = segmentRmsNorm(x, widths, eps). dOut: [T, W]; dx: [T, W] added into. */
  segmentRmsNormBackward?(x: Tensor, widths: readonly number[], eps: number, dOut: Tensor, dx: Tensor): void;
}

export interface TrainingBackend extends Backend, TrainingOps {}

const OPS: (keyof TrainingOps)[] = [
  "zeroFill", "addScaled", "sumSquares", "adamwStep", "crossEntropy", "matmulBackward", "addRmsNormBackward",
  "embeddingBackward", "causalConv1dSiluBackward", "selectiveScanBackward",
];

export function isTrainingBackend(b: Backend): b is TrainingBackend {
  return OPS.every((k) => typeof (b as unknown as Record<string, unknown>)[k] === "function");
}
