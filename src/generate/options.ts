/** Generation options: their defaults and their validation (one clear error per bad option). */
import { check, checkKeys, optionKeys } from "../errors.ts";
import type { MambaState } from "../model/state.ts";

export interface GenerateOptions {
  /** new tokens to generate at most (default 64) */
  maxNewTokens?: number;
  /** 0 = greedy (the default); otherwise logits are divided by it before sampling */
  temperature?: number;
  /** keep only the k most likely tokens (0 = off) */
  topK?: number;
  /** keep the smallest set of tokens whose probability reaches p (1 = off) */
  topP?: number;
  /** drop tokens less likely than minP times the most likely one (0 = off) */
  minP?: number;
  /** > 1 discourages tokens already in the prompt or output (1 = off) */
  repetitionPenalty?: number;
  /** seed of the sampler (default 0): the same seed gives the same output */
  seed?: number;
  /** ids that end a row (default: the model's eos id); the stop token is kept in the output */
  stopTokens?: number[];
  /** aborts generation; the promise rejects (or the stream throws) with the signal's reason */
  signal?: AbortSignal;
  /**
   * Continue from a state (MambaModel.prefill, loadState), or one state per prompt of a list: the prompt is read
   * after the state. Generation works on a copy unless advanceState is set.
   */
  state?: MambaState | MambaState[];
  /** advance the given state(s) past the prompt and the new ids (default false: the states are left as they were) */
  advanceState?: boolean;
}

/** The sampler's settings of one request, resolved (the library's generate and the server's scheduler). */
export interface SamplingParams {
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  repetitionPenalty: number;
  seed: number;
}

export interface ResolvedOptions extends SamplingParams {
  maxNewTokens: number;
  stopTokens: Set<number>;
  signal: AbortSignal | null;
  advanceState: boolean;
}

/** GenerateOptions' keys (checkKeys). */
const GENERATE_OPTION_KEYS = optionKeys<GenerateOptions>({
  maxNewTokens: true, temperature: true, topK: true, topP: true, minP: true, repetitionPenalty: true, seed: true,
  stopTokens: true, signal: true, state: true, advanceState: true,
});

export function resolveOptions(o: GenerateOptions | undefined, defaultStop: number | null, vocabSize: number): ResolvedOptions {
  const opts = o ?? {};
  checkKeys("generate", opts, GENERATE_OPTION_KEYS);
  const num = (v: unknown, name: string, fallback: number, ok: (x: number) => boolean, what: string): number => {
    if (v === undefined) return fallback;
    check(typeof v === "number" && Number.isFinite(v) && ok(v), `${name} must be ${what}, got ${JSON.stringify(v)}`);
    return v;
  };
  const stop = opts.stopTokens ?? (defaultStop === null ? [] : [defaultStop]);
  check(Array.isArray(stop) && stop.every((t) => Number.isInteger(t) && t >= 0 && t < vocabSize),
    `stopTokens must be a list of token ids below ${vocabSize}`);
  if (opts.signal !== undefined) check(opts.signal instanceof AbortSignal, "signal must be an AbortSignal");
  check(opts.advanceState === undefined || typeof opts.advanceState === "boolean", "advanceState must be true or false");
  return {
    maxNewTokens: num(opts.maxNewTokens, "maxNewTokens", 64, (x) => Number.isInteger(x) && x >= 0, "an integer >= 0"),
    temperature: num(opts.temperature, "temperature", 0, (x) => x >= 0, "a number >= 0"),
    topK: num(opts.topK, "topK", 0, (x) => Number.isInteger(x) && x >= 0, "an integer >= 0"),
    topP: num(opts.topP, "topP", 1, (x) => x > 0 && x <= 1, "in (0, 1]"),
    minP: num(opts.minP, "minP", 0, (x) => x >= 0 && x < 1, "in [0, 1)"),
    repetitionPenalty: num(opts.repetitionPenalty, "repetitionPenalty", 1, (x) => x > 0, "a number > 0"),
    seed: num(opts.seed, "seed", 0, (x) => Number.isInteger(x), "an integer"),
    stopTokens: new Set(stop),
    signal: opts.signal ?? null,
    advanceState: opts.advanceState ?? false,
  };
}
