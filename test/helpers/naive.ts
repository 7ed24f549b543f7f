/**
 * An independent naive Mamba LM for tests, written straight from docs/mamba.md in float64: one token at a time,
 * one channel at a time, with the recurrence h[t] = exp(Δ·A)·h[t-1] + Δ·B[t]·x[t] and the conv as an explicit
 * window over the last K inputs. Shares no code with src/model or src/backend; reads parameters by their
 * Hugging Face names.
 */
import type { MambaConfig } from "../../src/config.ts";
import { type HostTensor, toFloat32 } from "../../src/io/tensor.ts";

const silu = (v: number) => v / (1 + Math.exp(-v));
const softplus = (v: number) => (v > 20 ? v : Math.log(1 + Math.exp(v)));

/** y[o] = sum_i W[o, i] x[i] + b[o], W row-major [out, in] */
function linear(W: Float32Array, b: Float32Array | null, x: Float64Array, out: number): Float64Array {
  const inn = x.length;
  const y = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    let s = b ? b[o]! : 0;
    for (let i = 0; i < inn; i++) s += W[o * inn + i]! * x[i]!;
    y[o] = s;
  }
  return y;
}

function rmsnorm(x: Float64Array, w: Float32Array, eps: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * inv * w[i]!);
}

export interface NaiveResult {
  logits: Float64Array; // [B, L, paddedVocab]
  hidden: Float64Array; // [B, L, D] after norm_f
  conv: Float64Array[]; // per layer [B, K-1, E]: the last K-1 conv inputs (zeros before the first token)
  ssm: Float64Array[]; // per layer [B, E, N]
}

/** ids: [B, L] row-major. */
export function naiveForward(cfg: MambaConfig, params: Map<string, HostTensor>, ids: Int32Array, B: number, L: number): NaiveResult {
  const P = (n: string) => toFloat32(params.get(n)!);
  const opt = (n: string) => (params.has(n) ? toFloat32(params.get(n)!) : null);
  const { hiddenSize: D, intermediateSize: E, stateSize: N, timeStepRank: R, convKernel: K, paddedVocabSize: V } = cfg;
  const emb = P("backbone.embeddings.weight");
  const head = cfg.tieEmbeddings ? emb : P("lm_head.weight");
  const normF = P("backbone.norm_f.weight");
  const layers = Array.from({ length: cfg.numLayers }, (_, i) => {
    const p = `backbone.layers.${i}.`;
    return {
      norm: P(p + "norm.weight"), inW: P(p + "mixer.in_proj.weight"), inB: cfg.useBias ? P(p + "mixer.in_proj.bias") : null,
      convW: P(p + "mixer.conv1d.weight"), convB: cfg.useConvBias ? opt(p + "mixer.conv1d.bias") : null,
      xW: P(p + "mixer.x_proj.weight"), dtW: P(p + "mixer.dt_proj.weight"), dtB: P(p + "mixer.dt_proj.bias"),
      Alog: P(p + "mixer.A_log"), Dskip: P(p + "mixer.D"), outW: P(p + "mixer.out_proj.weight"),
      outB: cfg.useBias ? P(p + "mixer.out_proj.bias") : null,
    };
  });
  const logits = new Float64Array(B * L * V);
  const hiddenOut = new Float64Array(B * L * D);
  const convOut = layers.map(() => new Float64Array(B * (K - 1) * E));
  const ssmOut = layers.map(() => new Float64Array(B * E * N));
  for (let b = 0; b < B; b++) {
    // per layer: the window of conv inputs (oldest first, K-1 of them) and h[E, N]
    const win = layers.map(() => Array.from({ length: K - 1 }, () => new Float64Array(E)));
    const hs = layers.map(() => new Float64Array(E * N));
    for (let t = 0; t < L; t++) {
      const id = ids[b * L + t]!;
      let resid = Float64Array.from(emb.subarray(id * D, (id + 1) * D));
      layers.forEach((ly, li) => {
        const u = rmsnorm(resid, ly.norm, cfg.layerNormEpsilon);
        const xz = linear(ly.inW, ly.inB, u, 2 * E);
        const xin = xz.subarray(0, E), z = xz.subarray(E, 2 * E);
        const w = win[li]!;
        const x = new Float64Array(E);
        for (let e = 0; e < E; e++) {
          // taps k = 0..K-1 over [w[0], ..., w[K-2], xin]: weight [E, 1, K], the last tap on the newest input
          let s = ly.convB ? ly.convB[e]! : 0;
          for (let k = 0; k < K - 1; k++) s += ly.convW[e * K + k]! * w[k]![e]!;
          s += ly.convW[e * K + K - 1]! * xin[e]!;
          x[e] = silu(s);
        }
        w.shift();
        w.push(Float64Array.from(xin));
        const dbc = linear(ly.xW, null, x, R + 2 * N);
        const delta = linear(ly.dtW, ly.dtB, dbc.subarray(0, R), E).map(softplus);
        const Bm = dbc.subarray(R, R + N), Cm = dbc.subarray(R + N, R + 2 * N);
        const h = hs[li]!;
        const y = new Float64Array(E);
        for (let e = 0; e < E; e++) {
          let acc = 0;
          for (let n = 0; n < N; n++) {
            const A = -Math.exp(ly.Alog[e * N + n]!);
            h[e * N + n] = Math.exp(delta[e]! * A) * h[e * N + n]! + delta[e]! * Bm[n]! * x[e]!;
            acc += h[e * N + n]! * Cm[n]!;
          }
          y[e] = (acc + ly.Dskip[e]! * x[e]!) * silu(z[e]!);
        }
        const out = linear(ly.outW, ly.outB, y, D);
        resid = resid.map((v, i) => v + out[i]!);
      });
      const hf = rmsnorm(resid, normF, cfg.layerNormEpsilon);
      hiddenOut.set(hf, (b * L + t) * D);
      logits.set(linear(head, null, hf, V), (b * L + t) * V);
    }
    layers.forEach((_, li) => {
      for (let k = 0; k < K - 1; k++) convOut[li]!.set(win[li]![k]!, (b * (K - 1) + k) * E);
      ssmOut[li]!.set(hs[li]!, b * E * N);
    });
  }
  return { logits, hidden: hiddenOut, conv: convOut, ssm: ssmOut };
}

/** Greedy decoding by full recomputation each step (argmax over the real vocabulary only). */
export function naiveGreedy(cfg: MambaConfig, params: Map<string, HostTensor>, prompt: Int32Array, newTokens: number): number[] {
  const seq = Array.from(prompt);
  for (let s = 0; s < newTokens; s++) {
    const r = naiveForward(cfg, params, Int32Array.from(seq), 1, seq.length);
    const row = r.logits.subarray((seq.length - 1) * cfg.paddedVocabSize, (seq.length - 1) * cfg.paddedVocabSize + cfg.vocabSize);
    let best = 0;
    for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
    seq.push(best);
  }
  return seq;
}
