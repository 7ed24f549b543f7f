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
import type { SeqShape, Tensor } from "../backend/backend.ts";
import { check } from "../errors.ts";
import type { MambaLM, MixerWeights } from "./mamba.ts";

/** Shown every mixer's Δ as it is computed. */
export interface MixerObserver {
  /**
   * w: the mixer's weights (which layer it is: lm.weights.layers[i].mixer === w); deltaRaw: [T, E], T = B·L rows
   * (batch-major), dt_proj(dt) before dt_proj.bias and softplus. The model frees deltaRaw after the call: an
   * observer that needs it later copies it (backend.copyInto) before returning.
   */
  onMixer(w: MixerWeights, deltaRaw: Tensor, shape: SeqShape): void;
}

/** What a SelectionRecorder saw, per layer, rows in the order the model read them (for one sequence: its tokens). */
export interface SelectionTrace {
  layers: number;
  channels: number; // E
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
  bias: Float32Array; // [E]
  A: Float32Array; // [E, N], A = -exp(A_log)
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
    // Mamba-2's mixer has a Δ per head, not per channel, and does not show it to observers (yet)
    check(lm.config.family !== "mamba2", "the selection recorder follows Mamba-1's and Falcon-Mamba's Δ; Mamba-2 models are not supported yet");
    const b = lm.backend;
    const info = new Map<MixerWeights, LayerInfo>();
    for (const [index, layer] of lm.weights.layers.entries()) {
      const bias = await b.readF32(layer.mixer.dtBias);
      const A = (await b.readF32(layer.mixer.A_log)).map((v) => -Math.exp(v));
      info.set(layer.mixer, { index, bias, A });
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

  onMixer(w: MixerWeights, deltaRaw: Tensor, _shape: SeqShape): void {
    const layer = this.info.get(w);
    if (!layer) return; // not one of this model's mixers
    const b = this.lm.backend;
    const copy = b.zeros(deltaRaw.shape);
    b.copyInto(copy, deltaRaw);
    const part = b.readF32(copy).finally(() => b.dispose(copy)).then((raw) => this.derive(layer, raw));
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
        const d = softplus(raw[t * E + e]! + layer.bias[e]!);
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
    const E = this.lm.config.intermediateSize;
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
