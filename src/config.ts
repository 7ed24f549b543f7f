/**
 * One normalized, validated model config from either checkpoint format:
 *  - Hugging Face `MambaForCausalLM` config.json (hidden_size, state_size, num_hidden_layers, ...)
 *  - mamba_ssm config.json (d_model, n_layer, ssm_cfg, pad_vocab_size_multiple, tie_embeddings)
 * Names follow docs: D = hiddenSize, E = intermediateSize, N = stateSize, R = timeStepRank, K = convKernel.
 */
import { MambaError, check } from "./errors.ts";

export type MixerKind = "s6" | "lti";

export interface MambaConfig {
  /** which checkpoint convention the config came from; decides tensor names when saving back */
  format: "hf" | "mamba_ssm";
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
}

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
  return cfg;
}

function fromHf(c: Json, where: string): MambaConfig {
  if (c.model_type !== undefined && c.model_type !== "mamba") {
    throw new MambaError(`${where}: model_type '${String(c.model_type)}' is not supported (only 'mamba', i.e. Mamba-1)`);
  }
  const hiddenSize = int(c, "hidden_size", where);
  // intermediate_size, when present, is E; `expand` only matters without it (and may be fractional, as in
  // transformers: E = int(expand * hidden_size)). Checkpoints written by toHfConfig store expand = E / D.
  let intermediate: number;
  if (c.intermediate_size != null) intermediate = int(c, "intermediate_size", where);
  else {
    const expand = c.expand ?? 2;
    check(typeof expand === "number" && Number.isFinite(expand) && Math.floor(expand * hiddenSize) > 0,
      `${where}: 'expand' must be a positive number, got ${JSON.stringify(expand)}`);
    intermediate = Math.floor(expand * hiddenSize);
  }
  const vocabSize = int(c, "vocab_size", where);
  const eps = c.layer_norm_epsilon ?? 1e-5;
  check(typeof eps === "number", `${where}: 'layer_norm_epsilon' must be a number`);
  return {
    format: "hf",
    vocabSize,
    paddedVocabSize: vocabSize,
    hiddenSize,
    intermediateSize: intermediate,
    stateSize: int(c, "state_size", where, 16),
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
  };
}

function fromMambaSsm(c: Json, where: string): MambaConfig {
  const ssm = (c.ssm_cfg ?? {}) as Json;
  check(typeof ssm === "object" && ssm !== null && !Array.isArray(ssm), `${where}: 'ssm_cfg' must be an object`);
  if (ssm.layer !== undefined && ssm.layer !== "Mamba1") {
    throw new MambaError(`${where}: ssm_cfg.layer '${String(ssm.layer)}' is not supported (only Mamba1)`);
  }
  if (Array.isArray(c.attn_layer_idx) && c.attn_layer_idx.length > 0) {
    throw new MambaError(`${where}: hybrid models with attention layers (attn_layer_idx) are not supported`);
  }
  if (c.d_intermediate !== undefined && c.d_intermediate !== 0) {
    throw new MambaError(`${where}: MLP blocks (d_intermediate = ${JSON.stringify(c.d_intermediate)}) are not supported`);
  }
  if (c.rms_norm === false) throw new MambaError(`${where}: LayerNorm models (rms_norm: false) are not supported`);
  const hiddenSize = int(c, "d_model", where);
  const expand = int(ssm, "expand", `${where} ssm_cfg`, 2);
  const vocabSize = int(c, "vocab_size", where);
  const multiple = int(c, "pad_vocab_size_multiple", where, 8);
  const padded = vocabSize % multiple === 0 ? vocabSize : vocabSize + multiple - (vocabSize % multiple);
  return {
    format: "mamba_ssm",
    vocabSize,
    paddedVocabSize: padded,
    hiddenSize,
    intermediateSize: expand * hiddenSize,
    stateSize: int(ssm, "d_state", `${where} ssm_cfg`, 16),
    numLayers: int(c, "n_layer", where),
    convKernel: int(ssm, "d_conv", `${where} ssm_cfg`, 4),
    timeStepRank: rank(ssm.dt_rank, hiddenSize, `${where} ssm_cfg`),
    useBias: bool(ssm, "bias", `${where} ssm_cfg`, false),
    useConvBias: bool(ssm, "conv_bias", `${where} ssm_cfg`, true),
    tieEmbeddings: bool(c, "tie_embeddings", where, true),
    layerNormEpsilon: 1e-5, // mamba_ssm's norm_epsilon default; not stored in its config.json
    residualInFp32: bool(c, "residual_in_fp32", where, true),
    mixer: mixerKind(c.mixer, where),
    eosTokenId: optId(c, "eos_token_id", where),
    bosTokenId: optId(c, "bos_token_id", where),
    padTokenId: optId(c, "pad_token_id", where),
  };
}

/** The Hugging Face config.json for a normalized config (what checkpoints written by mamba-ts carry). */
export function toHfConfig(cfg: MambaConfig): Json {
  const out: Json = {
    architectures: ["MambaForCausalLM"],
    model_type: "mamba",
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
