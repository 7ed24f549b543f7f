/**
 * Watching selection: what each token does to the SSM state of every layer.
 *
 * A MixerObserver set on MambaLM.observer is shown each mixer's Δ as the model computes it (prefill chunks, step
 * mode and full forwards alike). With no observer (the default) the model does nothing extra. The observer here,
 * SelectionRecorder, copies Δ (dt_proj(dt) before its bias and softplus, [T, E]) on the backend, reads the copy
 * back, and computes on the host:
 *   delta[t, e] = softplus(Δ_raw[t, e] + dt_proj.bias[e])           the step size of token t in channel e
 *   keepE[t, e] = mean_n exp(delta[t, e] · A[e, n]),  A = -exp(A_log)  how much of channel e's state survives t
 *   keep[t]     = mean_e keepE[t, e]                                 1 - keep[t] is how much token t writes
 * A large Δ resets the state toward the current input (the token is written, the past forgotten); a small Δ keeps
 * the state and lets the token pass almost unseen (paper section 3.5.2, "selection mechanism").
 * The recorder uses only Backend ops (copyInto, readF32), so it works on every backend; reading back costs a
 * device-to-host copy per layer per call, which only observed runs pay.
 */
import type { SeqShape, TensorOrCols } from "../backend/backend.ts";
import { asCols } from "../backend/backend.ts";
import { check } from "../errors.ts";
import type { MambaLM, MixerWeights } from "./mamba.ts";

/** Shown every mixer's Δ as it is computed. */
export interface MixerObserver {
  /**
   * w: the mixer's weights (which layer it is: lm.weights.layers[i].mixer === w); deltaRaw: [T, E], T = B·L rows
   * (batch-major), dt_proj(dt) before dt_proj.bias and softplus; for Mamba-2, [T, H]: one Δ per head, before
   * dt_bias and softplus (a column window of in_proj's output). The model frees deltaRaw after the call: an
   * observer that needs it later copies it (backend.copyInto) before returning.
   */
  onMixer(w: MixerWeights, deltaRaw: TensorOrCols, shape: SeqShape): void;
}

/** What a SelectionRecorder saw, per layer, rows in the order the model read them (for one sequence: its tokens). */
export interface SelectionTrace {
  layers: number;
  channels: number; // E (Mamba-2: H, a Δ per head)
  /** rows recorded (the same for every layer) */
  tokens: number;
  /** per layer [tokens, E]: softplus(dt_proj(dt) + bias) */
  delta: Float32Array[];
  /** per layer [tokens, E]: mean over n of exp(delta · A) */
  keepChannel: Float32Array[];
  /** per layer [tokens]: mean over channels of keepChannel */
  keep: Float32Array[];
}

const softplus = (v: number) => (v > 20 ? v : Math.log1p(Math.exp(v)));

interface LayerInfo {
  index: number;
  bias: Float32Array; // [E] (Mamba-2: [H])
  A: Float32Array; // [E, N], A = -exp(A_log) (Mamba-2: [H], N = 1)
  limit: readonly [number, number]; // Mamba-2's clamp of Δ after softplus
}

interface Part {
  rows: number;
  delta: Float32Array;
  keepChannel: Float32Array;
  keep: Float32Array;
}

/** Records Δ and how much state each token keeps, for every layer, while attached to a model. */
export class SelectionRecorder implements MixerObserver {
  private parts: Promise<Part>[][];
  private constructor(
    private readonly lm: MambaLM,
    private readonly info: Map<MixerWeights, LayerInfo>,
  ) {
    this.parts = lm.weights.layers.map(() => []);
  }

  /** Reads every layer's dt_proj.bias and A_log once and sets the recorder as lm.observer. */
  static async attach(lm: MambaLM): Promise<SelectionRecorder> {
    check(lm.observer === null, "a model observer is already attached; detach it first");
    const b = lm.backend;
    const info = new Map<MixerWeights, LayerInfo>();
    for (const [index, layer] of lm.weights.layers.entries()) {
      const bias = await b.readF32(layer.mixer.dtBias);
      const A = (await b.readF32(layer.mixer.A_log)).map((v) => -Math.exp(v));
      info.set(layer.mixer, { index, bias, A, limit: lm.config.mamba2?.timeStepLimit ?? [0, Infinity] });
    }
    const rec = new SelectionRecorder(lm, info);
    lm.observer = rec;
    return rec;
  }

  /** Stops recording (what was recorded stays readable). */
  detach(): void {
    if (this.lm.observer === this) this.lm.observer = null;
  }

  /** Forgets what was recorded so far. */
  clear(): void {
    this.parts = this.lm.weights.layers.map(() => []);
  }

  onMixer(w: MixerWeights, deltaRaw: TensorOrCols, _shape: SeqShape): void {
    const layer = this.info.get(w);
    if (!layer) return; // not one of this model's mixers
    const b = this.lm.backend;
    // a column window (Mamba-2's dt inside in_proj's output) is cut out on the host
    const { tensor, col0, width } = asCols(deltaRaw);
    const ld = tensor.shape[tensor.shape.length - 1]!;
    const copy = b.zeros(tensor.shape);
    b.copyInto(copy, tensor);
    const part = b.readF32(copy).finally(() => b.dispose(copy)).then((all) => {
      if (col0 === 0 && width === ld) return this.derive(layer, all);
      const rows = all.length / ld;
      const raw = new Float32Array(rows * width);
      for (let r = 0; r < rows; r++) raw.set(all.subarray(r * ld + col0, r * ld + col0 + width), r * width);
      return this.derive(layer, raw);
    });
    part.catch(() => {}); // a failed read surfaces from trace(), not as an unhandled rejection
    this.parts[layer.index]!.push(part);
  }

  private derive(layer: LayerInfo, raw: Float32Array): Part {
    const E = layer.bias.length;
    const N = layer.A.length / E;
    const rows = raw.length / E;
    const delta = new Float32Array(raw.length);
    const keepChannel = new Float32Array(raw.length);
    const keep = new Float32Array(rows);
    for (let t = 0; t < rows; t++) {
      let sumE = 0;
      for (let e = 0; e < E; e++) {
        const d = Math.min(Math.max(softplus(raw[t * E + e]! + layer.bias[e]!), layer.limit[0]), layer.limit[1]);
        let s = 0;
        for (let n = 0; n < N; n++) s += Math.exp(d * layer.A[e * N + n]!);
        delta[t * E + e] = d;
        keepChannel[t * E + e] = s / N;
        sumE += s / N;
      }
      keep[t] = sumE / E;
    }
    return { rows, delta, keepChannel, keep };
  }

  /** Waits for every pending read and returns all rows recorded so far. */
  async trace(): Promise<SelectionTrace> {
    const E = this.info.values().next().value?.bias.length ?? this.lm.config.intermediateSize;
    const layers = await Promise.all(this.parts.map((ps) => Promise.all(ps)));
    const cat = (ps: Part[], key: "delta" | "keepChannel" | "keep") => {
      const out = new Float32Array(ps.reduce((a, p) => a + p[key].length, 0));
      let o = 0;
      for (const p of ps) { out.set(p[key], o); o += p[key].length; }
      return out;
    };
    return {
      layers: layers.length,
      channels: E,
      tokens: layers[0]?.reduce((a, p) => a + p.rows, 0) ?? 0,
      delta: layers.map((ps) => cat(ps, "delta")),
      keepChannel: layers.map((ps) => cat(ps, "keepChannel")),
      keep: layers.map((ps) => cat(ps, "keep")),
    };
  }
}
