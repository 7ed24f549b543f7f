/**
 * One normalized, validated model config from either checkpoint format:
 *  - Hugging Face config.json (hidden_size, state_size, num_hidden_layers, ...) of `MambaForCausalLM`,
 *    `Mamba2ForCausalLM` or `FalconMambaForCausalLM`
 *  - mamba_ssm config.json (d_model, n_layer, ssm_cfg, pad_vocab_size_multiple, tie_embeddings), Mamba-1 or
 *    Mamba-2 (`ssm_cfg.layer = "Mamba2"`)
 * Names follow docs: D = hiddenSize, E = intermediateSize, N = stateSize, R = timeStepRank, K = convKernel;
 * Mamba-2: H heads of headDim P (E = H·P), G groups (H / G heads share B and C).
 * Configs written by Python's json may hold `Infinity` (not JSON): parseConfigJson reads them.
 */
import { MambaError, check, optionKeys } from "./errors.ts";

export type MixerKind = "s6" | "lti";

/**
 * Which model the config describes. All three share the LM (embedding, pre-norm residual blocks, norm_f, head);
 * they differ in the mixer:
 *  - "mamba": Mamba-1 (the paper's selective SSM, S6, or its LTI ablation);
 *  - "mamba2": Mamba-2's SSD mixer (a scalar decay per head, src/model/mamba2.ts);
 *  - "falcon-mamba": Mamba-1 plus a weightless RMS norm of dt, B and C right after x_proj.
 */
export type ModelFamily = "mamba" | "mamba2" | "falcon-mamba";

export const FAMILY_NAMES: Record<ModelFamily, string> = {
  "mamba": "Mamba-1 (selective SSM)",
  "mamba2": "Mamba-2 (SSD)",
  "falcon-mamba": "Falcon-Mamba (Mamba-1 with dt, B, C normalized)",
};

/** The Mamba-2 mixer's own sizes and options (null for the other families). */
export interface Mamba2Fields {
  numHeads: number; // H
  headDim: number; // P, H·P = E
  nGroups: number; // G, divides H
  /** the chunk length of the SSD algorithm (the results do not depend on it) */
  chunkSize: number;
  /** dt after softplus is clamped to [lo, hi]; (0, Infinity) = no clamp */
  timeStepLimit: [number, number];
  /** y = rmsnorm_per_group(y · silu(z)) · norm.weight (mamba_ssm's rmsnorm = true); false: y · silu(z), no norm */
  gatedNorm: boolean;
  /** rmsnorm(y) · norm.weight · silu(z) instead (mamba_ssm's norm_before_gate) */
  normBeforeGate: boolean;
}

export interface MambaConfig {
  /** which checkpoint convention the config came from; decides tensor names when saving back */
  format: "hf" | "mamba_ssm";
  /** which mixer the layers have */
  family: ModelFamily;
  /** real vocabulary: generation never emits an id >= vocabSize */
  vocabSize: number;
  /** rows of the embedding and the output head (mamba_ssm pads vocabSize up to a multiple) */
  paddedVocabSize: number;
  hiddenSize: number; // D
  intermediateSize: number; // E = expand * D
  stateSize: number; // N
  numLayers: number;
  convKernel: number; // K
  timeStepRank: number; // R
  useBias: boolean; // in_proj / out_proj bias
  useConvBias: boolean;
  tieEmbeddings: boolean;
  layerNormEpsilon: number;
  residualInFp32: boolean;
  mixer: MixerKind;
  eosTokenId: number | null;
  bosTokenId: number | null;
  padTokenId: number | null;
  /** Mamba-2 only */
  mamba2: Mamba2Fields | null;
  /** Falcon-Mamba only: the epsilon of the weightless RMS norm of dt, B and C */
  mixerRmsEps: number | null;
}

/** MambaConfig's and Mamba2Fields' keys (checkKeys: makeConfig's sizes). */
export const CONFIG_KEYS = optionKeys<MambaConfig>({
  format: true, family: true, vocabSize: true, paddedVocabSize: true, hiddenSize: true, intermediateSize: true,
  stateSize: true, numLayers: true, convKernel: true, timeStepRank: true, useBias: true, useConvBias: true,
  tieEmbeddings: true, layerNormEpsilon: true, residualInFp32: true, mixer: true, eosTokenId: true, bosTokenId: true,
  padTokenId: true, mamba2: true, mixerRmsEps: true,
});
export const MAMBA2_KEYS = optionKeys<Mamba2Fields>({
  numHeads: true, headDim: true, nGroups: true, chunkSize: true, timeStepLimit: true, gatedNorm: true, normBeforeGate: true,
});

type Json = Record<string, unknown>;

function int(src: Json, key: string, where: string, fallback?: number): number {
  const v = src[key] ?? fallback;
  check(v !== undefined, `${where}: missing '${key}'`);
  check(typeof v === "number" && Number.isInteger(v) && v > 0,
    `${where}: '${key}' must be a positive integer, got ${JSON.stringify(v)}`);
  return v;
}

function bool(src: Json, key: string, where: string, fallback: boolean): boolean {
  const v = src[key] ?? fallback;
  check(typeof v === "boolean", `${where}: '${key}' must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

function optId(src: Json, key: string, where: string): number | null {
  let v = src[key];
  if (Array.isArray(v)) v = v[0]; // generation_config may list several eos ids; the first is the main one
  if (v === undefined || v === null) return null;
  check(typeof v === "number" && Number.isInteger(v) && v >= 0, `${where}: '${key}' must be a token id, got ${JSON.stringify(v)}`);
  return v;
}

function rank(v: unknown, hiddenSize: number, where: string): number {
  if (v === undefined || v === "auto") return Math.ceil(hiddenSize / 16);
  check(typeof v === "number" && Number.isInteger(v) && v > 0, `${where}: time step rank must be "auto" or a positive integer, got ${JSON.stringify(v)}`);
  return v;
}

function mixerKind(v: unknown, where: string): MixerKind {
  if (v === undefined) return "s6";
  check(v === "s6" || v === "lti", `${where}: 'mixer' must be "s6" or "lti", got ${JSON.stringify(v)}`);
  return v;
}

/**
 * A float from a config, in any spelling of infinity seen in real checkpoints: a number (1e30 stays 1e30),
 * Infinity (Python's json; parseConfigJson reads it as a number), the strings "Infinity" / "inf" / "-Infinity",
 * or transformers 5's {"__float__": "Infinity"}.
 */
export function configFloat(v: unknown, what: string): number {
  if (v !== null && typeof v === "object" && !Array.isArray(v) && "__float__" in v) v = (v as Json).__float__;
  if (typeof v === "string") {
    const t = v.trim().toLowerCase();
    const sign = t.startsWith("-") ? -1 : 1;
    const body = t.replace(/^[-+]/, "");
    if (body === "infinity" || body === "inf") return sign * Infinity;
    if (body === "nan") throw new MambaError(`${what} is NaN`);
    const n = Number(t);
    check(t !== "" && !Number.isNaN(n), `${what} must be a number, got ${JSON.stringify(v)}`);
    return n;
  }
  check(typeof v === "number" && !Number.isNaN(v), `${what} must be a number, got ${JSON.stringify(v)}`);
  return v;
}

/**
 * JSON.parse that also reads what Python's json writes for floats JSON lacks: bare Infinity, -Infinity and NaN
 * (outside strings) become numbers (NaN becomes the string "NaN", so that a field holding it is rejected where
 * it is read rather than taken for a number). Valid JSON parses as JSON.parse does. Throws SyntaxError.
 */
export function parseConfigJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    if (!/Infinity|NaN/.test(text)) throw err;
  }
  let out = "";
  let i = 0;
  const n = text.length;
  while (i < n) {
    const ch = text[i]!;
    if (ch === '"') {
      // copy the string literal as is, escapes included
      let j = i + 1;
      while (j < n && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      out += text.slice(i, j + 1);
      i = j + 1;
      continue;
    }
    const word = /^-?(Infinity|NaN)(?![A-Za-z0-9_])/.exec(text.slice(i, i + 10));
    const prev = /[A-Za-z0-9_.]$/.test(out);
    if (word && !prev) {
      out += word[1] === "NaN" ? '"NaN"' : word[0].startsWith("-") ? "-1e999" : "1e999"; // 1e999 parses as Infinity
      i += word[0].length;
      continue;
    }
    out += ch;
    i++;
  }
  return JSON.parse(out);
}

/** Normalizes a parsed config.json. `where` names the file in error messages. */
export function normalizeConfig(raw: unknown, where = "config.json"): MambaConfig {
  check(raw !== null && typeof raw === "object" && !Array.isArray(raw), `${where}: not a JSON object`);
  const c = raw as Json;
  const cfg = "d_model" in c ? fromMambaSsm(c, where) : fromHf(c, where);
  check(cfg.vocabSize <= cfg.paddedVocabSize, `${where}: vocab_size exceeds the padded vocabulary`);
  for (const [k, v] of [["eos_token_id", cfg.eosTokenId], ["bos_token_id", cfg.bosTokenId], ["pad_token_id", cfg.padTokenId]] as const) {
    check(v === null || v < cfg.paddedVocabSize, `${where}: '${k}' ${v} is outside the vocabulary (${cfg.paddedVocabSize})`);
  }
  check(cfg.layerNormEpsilon > 0 && Number.isFinite(cfg.layerNormEpsilon), `${where}: layer norm epsilon must be positive`);
  checkFamily(cfg, where);
  return cfg;
}

/** The family's own consistency checks (also run on configs made in code, by makeConfig). */
export function checkFamily(cfg: MambaConfig, where: string): void {
  check(cfg.family === "mamba" || cfg.family === "mamba2" || cfg.family === "falcon-mamba",
    `${where}: unknown model family ${JSON.stringify(cfg.family)}`);
  if (cfg.family === "falcon-mamba") {
    check(cfg.mixerRmsEps !== null && cfg.mixerRmsEps > 0 && Number.isFinite(cfg.mixerRmsEps),
      `${where}: Falcon-Mamba needs a positive mixer_rms_eps, got ${JSON.stringify(cfg.mixerRmsEps)}`);
    check(cfg.mixer === "s6", `${where}: Falcon-Mamba has the selective (s6) mixer only`);
  }
  if (cfg.family !== "mamba2") {
    check(cfg.mamba2 === null, `${where}: Mamba-2 fields on a ${cfg.family} config`);
    return;
  }
  const m = cfg.mamba2;
  check(m !== null, `${where}: a Mamba-2 config needs its heads, head size and groups`);
  check(cfg.mixer === "s6", `${where}: Mamba-2 has no LTI mixer`);
  for (const k of ["numHeads", "headDim", "nGroups", "chunkSize"] as const) {
    check(Number.isInteger(m[k]) && m[k] > 0, `${where}: Mamba-2 ${k} must be a positive integer, got ${JSON.stringify(m[k])}`);
  }
  check(m.numHeads * m.headDim === cfg.intermediateSize,
    `${where}: Mamba-2 heads × head size (${m.numHeads} × ${m.headDim} = ${m.numHeads * m.headDim}) must equal the inner size ${cfg.intermediateSize}`);
  check(m.numHeads % m.nGroups === 0, `${where}: Mamba-2 heads (${m.numHeads}) must be a multiple of the groups (${m.nGroups})`);
  const [lo, hi] = m.timeStepLimit;
  check(lo >= 0 && hi > lo, `${where}: time_step_limit must be (lo, hi) with 0 <= lo < hi, got (${lo}, ${hi})`);
}

function hfFamily(c: Json, where: string): ModelFamily {
  let type = c.model_type;
  if (type === undefined && Array.isArray(c.architectures)) {
    const arch = c.architectures[0];
    type = arch === "Mamba2ForCausalLM" ? "mamba2" : arch === "FalconMambaForCausalLM" ? "falcon_mamba" : arch === "MambaForCausalLM" ? "mamba" : type;
  }
  if (type === undefined || type === "mamba") return "mamba";
  if (type === "mamba2") return "mamba2";
  if (type === "falcon_mamba" || type === "falcon-mamba") return "falcon-mamba";
  throw new MambaError(`${where}: model_type '${String(type)}' is not supported (mamba, mamba2, falcon_mamba)`);
}

/** A (lo, hi) pair of floats, e.g. time_step_limit / dt_limit. */
function limitPair(v: unknown, where: string, key: string): [number, number] {
  if (v === undefined || v === null) return [0, Infinity];
  check(Array.isArray(v) && v.length === 2, `${where}: '${key}' must be a pair (lo, hi), got ${JSON.stringify(v)}`);
  return [configFloat(v[0], `${where}: ${key}[0]`), configFloat(v[1], `${where}: ${key}[1]`)];
}

function fromHf(c: Json, where: string): MambaConfig {
  const family = hfFamily(c, where);
  const hiddenSize = int(c, "hidden_size", where);
  // intermediate_size, when present, is E; `expand` only matters without it (and may be fractional, as in
  // transformers: E = int(expand * hidden_size)). Checkpoints written by toHfConfig store expand = E / D.
  let intermediate: number;
  if (c.intermediate_size != null && family !== "mamba2") intermediate = int(c, "intermediate_size", where);
  else {
    const expand = c.expand ?? 2;
    check(typeof expand === "number" && Number.isFinite(expand) && Math.floor(expand * hiddenSize) > 0,
      `${where}: 'expand' must be a positive number, got ${JSON.stringify(expand)}`);
    intermediate = Math.floor(expand * hiddenSize);
  }
  const vocabSize = int(c, "vocab_size", where);
  const eps = c.layer_norm_epsilon ?? 1e-5;
  check(typeof eps === "number", `${where}: 'layer_norm_epsilon' must be a number`);
  let mamba2: Mamba2Fields | null = null;
  if (family === "mamba2") {
    // transformers' Mamba2 always has the gated norm; norm_before_gate is read where a config carries it
    const headDim = int(c, "head_dim", where, 64);
    check(c.num_heads != null || intermediate % headDim === 0,
      `${where}: a mamba2 config without num_heads needs head_dim (${headDim}) to divide the inner size ${intermediate}`);
    mamba2 = {
      numHeads: int(c, "num_heads", where, intermediate / headDim),
      headDim,
      nGroups: int(c, "n_groups", where, 1),
      chunkSize: int(c, "chunk_size", where, 256),
      timeStepLimit: limitPair(c.time_step_limit, where, "time_step_limit"),
      gatedNorm: true,
      normBeforeGate: bool(c, "norm_before_gate", where, false),
    };
  }
  return {
    format: "hf",
    family,
    vocabSize,
    paddedVocabSize: vocabSize,
    hiddenSize,
    intermediateSize: intermediate,
    stateSize: int(c, "state_size", where, family === "mamba2" ? 128 : 16),
    numLayers: int(c, "num_hidden_layers", where),
    convKernel: int(c, "conv_kernel", where, 4),
    timeStepRank: rank(c.time_step_rank, hiddenSize, where),
    useBias: bool(c, "use_bias", where, false),
    useConvBias: bool(c, "use_conv_bias", where, true),
    tieEmbeddings: bool(c, "tie_word_embeddings", where, true),
    layerNormEpsilon: eps,
    residualInFp32: bool(c, "residual_in_fp32", where, true),
    mixer: mixerKind(c.mixer, where),
    eosTokenId: optId(c, "eos_token_id", where),
    bosTokenId: optId(c, "bos_token_id", where),
    padTokenId: optId(c, "pad_token_id", where),
    mamba2,
    mixerRmsEps: family === "falcon-mamba" ? configFloat(c.mixer_rms_eps ?? 1e-6, `${where}: mixer_rms_eps`) : null,
  };
}

function fromMambaSsm(c: Json, where: string): MambaConfig {
  const ssm = (c.ssm_cfg ?? {}) as Json;
  check(typeof ssm === "object" && ssm !== null && !Array.isArray(ssm), `${where}: 'ssm_cfg' must be an object`);
  const layer = ssm.layer ?? "Mamba1";
  if (layer !== "Mamba1" && layer !== "Mamba2") {
    throw new MambaError(`${where}: ssm_cfg.layer '${String(ssm.layer)}' is not supported (Mamba1 or Mamba2)`);
  }
  if (Array.isArray(c.attn_layer_idx) && c.attn_layer_idx.length > 0) {
    throw new MambaError(`${where}: hybrid models with attention layers (attn_layer_idx) are not supported`);
  }
  if (c.d_intermediate !== undefined && c.d_intermediate !== 0) {
    throw new MambaError(`${where}: MLP blocks (d_intermediate = ${JSON.stringify(c.d_intermediate)}) are not supported`);
  }
  if (c.rms_norm === false) throw new MambaError(`${where}: LayerNorm models (rms_norm: false) are not supported`);
  const sw = `${where} ssm_cfg`;
  const hiddenSize = int(c, "d_model", where);
  const expand = int(ssm, "expand", sw, 2);
  const vocabSize = int(c, "vocab_size", where);
  const multiple = int(c, "pad_vocab_size_multiple", where, 8);
  const padded = vocabSize % multiple === 0 ? vocabSize : vocabSize + multiple - (vocabSize % multiple);
  const E = expand * hiddenSize;
  let mamba2: Mamba2Fields | null = null;
  if (layer === "Mamba2") {
    // mamba_ssm's Mamba2 defaults: d_state 128, headdim 64, ngroups 1, chunk_size 256, rmsnorm, gate before norm
    if (ssm.d_ssm != null && ssm.d_ssm !== E) {
      throw new MambaError(`${where}: ssm_cfg.d_ssm ${JSON.stringify(ssm.d_ssm)} != d_inner ${E} (an MLP beside the SSM) is not supported`);
    }
    if (ssm.D_has_hdim === true) throw new MambaError(`${where}: ssm_cfg.D_has_hdim (D per channel) is not supported`);
    const headDim = int(ssm, "headdim", sw, 64);
    check(E % headDim === 0, `${sw}: a Mamba2 layer's d_inner ${E} is not a multiple of headdim ${headDim}`);
    mamba2 = {
      numHeads: E / headDim,
      headDim,
      nGroups: int(ssm, "ngroups", sw, 1),
      chunkSize: int(ssm, "chunk_size", sw, 256),
      timeStepLimit: limitPair(ssm.dt_limit, sw, "dt_limit"),
      gatedNorm: bool(ssm, "rmsnorm", sw, true),
      normBeforeGate: bool(ssm, "norm_before_gate", sw, false),
    };
  }
  return {
    format: "mamba_ssm",
    family: layer === "Mamba2" ? "mamba2" : "mamba",
    vocabSize,
    paddedVocabSize: padded,
    hiddenSize,
    intermediateSize: E,
    stateSize: int(ssm, "d_state", sw, layer === "Mamba2" ? 128 : 16),
    numLayers: int(c, "n_layer", where),
    convKernel: int(ssm, "d_conv", sw, 4),
    timeStepRank: rank(ssm.dt_rank, hiddenSize, sw),
    useBias: bool(ssm, "bias", sw, false),
    useConvBias: bool(ssm, "conv_bias", sw, true),
    tieEmbeddings: bool(c, "tie_embeddings", where, true),
    layerNormEpsilon: 1e-5, // mamba_ssm's norm_epsilon default; not stored in its config.json
    residualInFp32: bool(c, "residual_in_fp32", where, true),
    mixer: mixerKind(c.mixer, where),
    eosTokenId: optId(c, "eos_token_id", where),
    bosTokenId: optId(c, "bos_token_id", where),
    padTokenId: optId(c, "pad_token_id", where),
    mamba2,
    mixerRmsEps: null,
  };
}

/** Channels of the depthwise conv: x (Mamba-1), or x, B and C together (Mamba-2: E + 2·G·N). */
export function convChannels(cfg: MambaConfig): number {
  return cfg.mamba2 ? cfg.intermediateSize + 2 * cfg.mamba2.nGroups * cfg.stateSize : cfg.intermediateSize;
}

/** Shape of one layer's SSM state: [B, E, N] (Mamba-1, Falcon-Mamba) or [B, H, P, N] (Mamba-2). */
export function ssmStateShape(cfg: MambaConfig, batch: number): number[] {
  return cfg.mamba2
    ? [batch, cfg.mamba2.numHeads, cfg.mamba2.headDim, cfg.stateSize]
    : [batch, cfg.intermediateSize, cfg.stateSize];
}

/** The Hugging Face config.json for a normalized config (what checkpoints written by mamba-ts carry). */
export function toHfConfig(cfg: MambaConfig): Json {
  const arch = { "mamba": ["MambaForCausalLM", "mamba"], "mamba2": ["Mamba2ForCausalLM", "mamba2"],
    "falcon-mamba": ["FalconMambaForCausalLM", "falcon_mamba"] }[cfg.family];
  const out: Json = {
    architectures: [arch[0]],
    model_type: arch[1],
    vocab_size: cfg.paddedVocabSize,
    hidden_size: cfg.hiddenSize,
    intermediate_size: cfg.intermediateSize,
    expand: cfg.intermediateSize / cfg.hiddenSize,
    state_size: cfg.stateSize,
    num_hidden_layers: cfg.numLayers,
    conv_kernel: cfg.convKernel,
    time_step_rank: cfg.timeStepRank,
    use_bias: cfg.useBias,
    use_conv_bias: cfg.useConvBias,
    tie_word_embeddings: cfg.tieEmbeddings,
    layer_norm_epsilon: cfg.layerNormEpsilon,
    residual_in_fp32: cfg.residualInFp32,
    hidden_act: "silu",
    bos_token_id: cfg.bosTokenId ?? 0,
    eos_token_id: cfg.eosTokenId ?? 0,
    pad_token_id: cfg.padTokenId ?? 0,
  };
  if (cfg.mixer !== "s6") out.mixer = cfg.mixer;
  if (cfg.mixerRmsEps !== null) out.mixer_rms_eps = cfg.mixerRmsEps;
  const m = cfg.mamba2;
  if (m) {
    // written as transformers 5 writes a float JSON lacks ({"__float__": "Infinity"})
    const float = (v: number) => (Number.isFinite(v) ? v : { __float__: v > 0 ? "Infinity" : "-Infinity" });
    Object.assign(out, {
      num_heads: m.numHeads, head_dim: m.headDim, n_groups: m.nGroups, chunk_size: m.chunkSize,
      time_step_limit: m.timeStepLimit.map(float), rms_norm: true, norm_before_gate: m.normBeforeGate,
    });
    delete out.time_step_rank;
    check(m.gatedNorm, "a Mamba-2 model without the gated norm (mamba_ssm's rmsnorm = false) has no Hugging Face config");
  }
  return out;
}

/** Parameter tensor shapes the config needs, under Hugging Face names. */
export function parameterShapes(cfg: MambaConfig): Map<string, number[]> {
  const { paddedVocabSize: V, hiddenSize: D, intermediateSize: E, stateSize: N, timeStepRank: R, convKernel: K } = cfg;
  const m = new Map<string, number[]>();
  m.set("backbone.embeddings.weight", [V, D]);
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `backbone.layers.${i}.`;
    m.set(p + "norm.weight", [D]);
    if (cfg.mamba2) {
      // in_proj's outputs in order z | x | B | C | dt; the conv runs over x | B | C
      const { numHeads: H, nGroups: G } = cfg.mamba2;
      const inner = 2 * E + 2 * G * N + H;
      m.set(p + "mixer.in_proj.weight", [inner, D]);
      if (cfg.useBias) m.set(p + "mixer.in_proj.bias", [inner]);
      m.set(p + "mixer.conv1d.weight", [E + 2 * G * N, 1, K]);
      if (cfg.useConvBias) m.set(p + "mixer.conv1d.bias", [E + 2 * G * N]);
      m.set(p + "mixer.dt_bias", [H]);
      m.set(p + "mixer.A_log", [H]);
      m.set(p + "mixer.D", [H]);
      if (cfg.mamba2.gatedNorm) m.set(p + "mixer.norm.weight", [E]);
      m.set(p + "mixer.out_proj.weight", [D, E]);
      if (cfg.useBias) m.set(p + "mixer.out_proj.bias", [D]);
      continue;
    }
    m.set(p + "mixer.in_proj.weight", [2 * E, D]);
    if (cfg.useBias) m.set(p + "mixer.in_proj.bias", [2 * E]);
    m.set(p + "mixer.conv1d.weight", [E, 1, K]);
    if (cfg.useConvBias) m.set(p + "mixer.conv1d.bias", [E]);
    if (cfg.mixer === "lti") {
      // LTI ablation: delta, B, C are learned input-independent parameters (B, C shared across channels as in
      // S6); delta = softplus(dt_lti + dt_proj.bias)
      m.set(p + "mixer.dt_lti", [E, 1]);
      m.set(p + "mixer.dt_proj.bias", [E]);
      m.set(p + "mixer.B_lti", [N, 1]);
      m.set(p + "mixer.C_lti", [N, 1]);
    } else {
      m.set(p + "mixer.x_proj.weight", [R + 2 * N, E]);
      m.set(p + "mixer.dt_proj.weight", [E, R]);
      m.set(p + "mixer.dt_proj.bias", [E]);
    }
    m.set(p + "mixer.A_log", [E, N]);
    m.set(p + "mixer.D", [E]);
    m.set(p + "mixer.out_proj.weight", [D, E]);
    if (cfg.useBias) m.set(p + "mixer.out_proj.bias", [D]);
  }
  m.set("backbone.norm_f.weight", [D]);
  if (!cfg.tieEmbeddings) m.set("lm_head.weight", [V, D]);
  return m;
}
