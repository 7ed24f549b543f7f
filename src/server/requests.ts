/**
 * Checking the bodies of OpenAI-style requests: each field's type and range, one ApiError (an HTTP status and an
 * OpenAI error object) for the first thing wrong. Fields of OpenAI's API that the server does not implement are
 * refused when they ask for something (logprobs, n > 1, echo, penalties), never silently ignored.
 */

/** An error answered as {"error": {message, type, param, code}} with an HTTP status. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly type = status === 404 && code === "model_not_found" ? "invalid_request_error" : status >= 500 ? "server_error" : "invalid_request_error",
  ) {
    super(message);
  }

  toJSON(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

const bad = (message: string, param: string, code = "invalid_value") => new ApiError(400, message, param, code);

export interface Limits {
  vocabSize: number;
  maxPromptTokens: number;
  maxTokensCap: number;
}

/** What the sampler takes from a request, with OpenAI's defaults (temperature 1, top_p 1), and mamba-ts's own
 *  fields: top_k, min_p, repetition_penalty, ignore_eos. */
export interface SamplingFields {
  maxTokens: number;
  temperature: number;
  topP: number;
  topK: number;
  minP: number;
  repetitionPenalty: number;
  seed: number | null;
  stop: string[];
  stream: boolean;
  includeUsage: boolean;
  /** generate past the eos token (vLLM's ignore_eos; for benchmarks) */
  ignoreEos: boolean;
}

type Body = Record<string, unknown>;

export function parseJsonBody(text: string): Body {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (err) {
    throw new ApiError(400, `the body is not valid JSON: ${(err as Error).message}`, null, "invalid_json");
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) throw new ApiError(400, "the body must be a JSON object", null, "invalid_json");
  return body as Body;
}

function num(body: Body, key: string, fallback: number, ok: (x: number) => boolean, what: string, integer = false): number {
  const v = body[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== "number" || !Number.isFinite(v) || (integer && !Number.isInteger(v))) {
    throw bad(`'${key}' must be ${integer ? "an integer" : "a number"}, got ${JSON.stringify(v)}`, key, "invalid_type");
  }
  if (!ok(v)) throw bad(`'${key}' must be ${what}, got ${v}`, key);
  return v;
}

function bool(body: Body, key: string, fallback: boolean): boolean {
  const v = body[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== "boolean") throw bad(`'${key}' must be true or false, got ${JSON.stringify(v)}`, key, "invalid_type");
  return v;
}

/** Checks `model` against the served one. */
export function checkModel(body: Body, served: string): void {
  const m = body.model;
  if (m === undefined || m === null) throw bad("'model' is required", "model", "missing_required_parameter");
  if (typeof m !== "string") throw bad(`'model' must be a string, got ${JSON.stringify(m)}`, "model", "invalid_type");
  if (m !== served) throw new ApiError(404, `the model '${m}' does not exist; this server serves '${served}'`, "model", "model_not_found");
}

/** The sampling fields shared by completions and chat completions. */
export function parseSampling(body: Body, limits: Limits, maxTokensKey: "max_tokens" | "max_completion_tokens", defaultMax: number): SamplingFields {
  const cap = limits.maxTokensCap;
  let maxTokens = num(body, "max_tokens", defaultMax, (x) => x >= 1 && x <= cap, `between 1 and ${cap}`, true);
  if (maxTokensKey === "max_completion_tokens" && body.max_completion_tokens != null) {
    maxTokens = num(body, "max_completion_tokens", defaultMax, (x) => x >= 1 && x <= cap, `between 1 and ${cap}`, true);
  }
  const n = num(body, "n", 1, (x) => x === 1, "1 (one choice per request)", true);
  void n;
  for (const key of ["frequency_penalty", "presence_penalty"]) num(body, key, 0, (x) => x === 0, "0 (use repetition_penalty)");
  if (body.logprobs !== undefined && body.logprobs !== null && body.logprobs !== false) throw bad("'logprobs' is not supported", "logprobs", "unsupported_parameter");
  if (body.best_of !== undefined && body.best_of !== null && body.best_of !== 1) throw bad("'best_of' must be 1", "best_of", "unsupported_parameter");
  if (body.logit_bias !== undefined && body.logit_bias !== null &&
    !(typeof body.logit_bias === "object" && Object.keys(body.logit_bias as object).length === 0)) {
    throw bad("'logit_bias' is not supported", "logit_bias", "unsupported_parameter");
  }
  let stop: string[] = [];
  const s = body.stop;
  if (typeof s === "string") stop = [s];
  else if (Array.isArray(s)) {
    if (!s.every((x) => typeof x === "string")) throw bad("'stop' must be a string or a list of strings", "stop", "invalid_type");
    stop = s as string[];
  } else if (s !== undefined && s !== null) throw bad("'stop' must be a string or a list of strings", "stop", "invalid_type");
  if (stop.length > 4) throw bad("'stop' holds at most 4 strings", "stop");
  if (stop.some((x) => x.length === 0)) throw bad("'stop' strings must not be empty", "stop");
  const so = body.stream_options;
  let includeUsage = false;
  if (so !== undefined && so !== null) {
    if (typeof so !== "object" || Array.isArray(so)) throw bad("'stream_options' must be an object", "stream_options", "invalid_type");
    includeUsage = bool(so as Body, "include_usage", false);
  }
  const seedV = body.seed;
  const seed = seedV === undefined || seedV === null ? null : num(body, "seed", 0, (x) => Number.isSafeInteger(x), "a safe integer", true);
  return {
    maxTokens,
    temperature: num(body, "temperature", 1, (x) => x >= 0 && x <= 2, "between 0 and 2"),
    topP: num(body, "top_p", 1, (x) => x > 0 && x <= 1, "in (0, 1]"),
    topK: num(body, "top_k", 0, (x) => x >= 0, "an integer >= 0 (0 = off)", true),
    minP: num(body, "min_p", 0, (x) => x >= 0 && x < 1, "in [0, 1)"),
    repetitionPenalty: num(body, "repetition_penalty", 1, (x) => x > 0 && x <= 10, "in (0, 10]"),
    seed,
    stop,
    stream: bool(body, "stream", false),
    includeUsage,
    ignoreEos: bool(body, "ignore_eos", false),
  };
}

/** A completion's prompt: a string, a list of token ids, or a list of one of either. */
export function parsePrompt(body: Body, limits: Limits, encode: (text: string) => Int32Array): Int32Array {
  let p = body.prompt;
  if (p === undefined || p === null) throw bad("'prompt' is required", "prompt", "missing_required_parameter");
  if (Array.isArray(p) && p.length === 1 && (typeof p[0] === "string" || Array.isArray(p[0]))) p = p[0];
  let ids: Int32Array;
  if (typeof p === "string") {
    ids = encode(p);
  } else if (Array.isArray(p)) {
    if (p.some((x) => typeof x === "string" || Array.isArray(x))) throw bad("one prompt per request", "prompt", "unsupported_parameter");
    for (let i = 0; i < p.length; i++) {
      const id = p[i];
      if (typeof id !== "number" || !Number.isInteger(id)) throw bad(`'prompt' must be a string or a list of token ids; item ${i} is ${JSON.stringify(id)}`, "prompt", "invalid_type");
      if (id < 0 || id >= limits.vocabSize) throw bad(`token id ${id} at position ${i} is outside the vocabulary [0, ${limits.vocabSize})`, "prompt");
    }
    ids = Int32Array.from(p as number[]);
  } else throw bad("'prompt' must be a string or a list of token ids", "prompt", "invalid_type");
  if (ids.length > limits.maxPromptTokens) {
    throw bad(`the prompt has ${ids.length} tokens; this server takes at most ${limits.maxPromptTokens}`, "prompt", "context_length_exceeded");
  }
  return ids;
}

/** The fields of /v1/completions this server only takes at OpenAI's defaults. */
export function checkCompletionExtras(body: Body): void {
  if (body.echo !== undefined && body.echo !== null && body.echo !== false) throw bad("'echo' must be false", "echo", "unsupported_parameter");
  if (body.suffix !== undefined && body.suffix !== null) throw bad("'suffix' is not supported", "suffix", "unsupported_parameter");
}

export interface ChatMessage {
  role: string;
  content: string;
}

/** Chat messages: a non-empty list of {role, content} with text content (or a list of text parts). */
export function parseMessages(body: Body): ChatMessage[] {
  const m = body.messages;
  if (m === undefined || m === null) throw bad("'messages' is required", "messages", "missing_required_parameter");
  if (!Array.isArray(m) || m.length === 0) throw bad("'messages' must be a non-empty list", "messages", "invalid_type");
  return m.map((x, i) => {
    if (x === null || typeof x !== "object" || Array.isArray(x)) throw bad(`message ${i} must be an object`, `messages[${i}]`, "invalid_type");
    const { role, content } = x as Body;
    if (typeof role !== "string" || !["system", "user", "assistant", "developer"].includes(role)) {
      throw bad(`message ${i}: 'role' must be system, user, assistant or developer`, `messages[${i}].role`);
    }
    let text: string;
    if (typeof content === "string") text = content;
    else if (Array.isArray(content) && content.every((c) => c && typeof c === "object" && (c as Body).type === "text" && typeof (c as Body).text === "string")) {
      text = content.map((c) => (c as Body).text as string).join("");
    } else throw bad(`message ${i}: 'content' must be a string or a list of text parts`, `messages[${i}].content`, "invalid_type");
    return { role: role === "developer" ? "system" : role, content: text };
  });
}
