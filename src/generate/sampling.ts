/**
 * Choosing the next token from one row of logits, in the order Hugging Face applies its processors:
 * repetition penalty, temperature, top-k, top-p, min-p, then one draw by inverse CDF with the given uniform u.
 * temperature 0 means greedy (argmax after the repetition penalty). Ids >= vocabSize are never chosen.
 */
import type { SampleRequest } from "../backend/backend.ts";

export type SamplingParams = Omit<SampleRequest, "history" | "uniforms">;

// logits: [>= vocabSize] for one row
export function sampleRow(logits: Float32Array, p: SamplingParams, history: Int32Array | null, u: number): number {
  const V = p.vocabSize;
  const x = new Float64Array(V);
  for (let i = 0; i < V; i++) x[i] = logits[i]!;
  if (history && p.repetitionPenalty !== 1) {
    const seen = new Uint8Array(V);
    for (const id of history) {
      if (id < 0 || id >= V || seen[id]) continue;
      seen[id] = 1;
      x[id] = x[id]! > 0 ? x[id]! / p.repetitionPenalty : x[id]! * p.repetitionPenalty;
    }
  }
  if (p.temperature === 0) return argmax(x);

  for (let i = 0; i < V; i++) x[i] = x[i]! / p.temperature;
  // candidate ids, best first. Tokens more than 40 nats below the best carry under e^-40 of the mass each;
  // leaving them out keeps the sort small without changing any draw measurably.
  let top = -Infinity;
  for (let i = 0; i < V; i++) if (x[i]! > top) top = x[i]!;
  let ids: number[] = [];
  for (let i = 0; i < V; i++) if (x[i]! >= top - 40) ids.push(i);
  ids.sort((a, b) => x[b]! - x[a]! || a - b);
  if (p.topK > 0 && p.topK < ids.length) ids = ids.slice(0, p.topK);
  const max = x[ids[0]!]!;
  const probs = ids.map((i) => Math.exp(x[i]! - max));
  let total = probs.reduce((a, b) => a + b, 0);
  let keep = ids.length;
  if (p.topP < 1) {
    // smallest prefix whose mass reaches topP (at least one token)
    let acc = 0;
    for (let j = 0; j < ids.length; j++) {
      acc += probs[j]! / total;
      if (acc >= p.topP) { keep = j + 1; break; }
    }
  }
  if (p.minP > 0) {
    // tokens below minP times the best token's probability go (probs[0] is the best, exp(0) = 1)
    let j = 1;
    while (j < keep && probs[j]! >= p.minP) j++;
    keep = j;
  }
  total = 0;
  for (let j = 0; j < keep; j++) total += probs[j]!;
  let target = u * total;
  for (let j = 0; j < keep; j++) {
    target -= probs[j]!;
    if (target < 0) return ids[j]!;
  }
  return ids[keep - 1]!;
}

function argmax(x: Float64Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i]! > x[best]!) best = i;
  return best;
}
