/**
 * Mamba models in llama.cpp's GGUF files, as llama.cpp's converter (convert_hf_to_gguf.py) writes them, with no
 * file system (usable in browsers); reading and writing files on disk: ./gguf.ts (Node).
 *
 * Mapping to the Hugging Face checkpoint (names per layer i):
 *
 *   token_embd.weight            backbone.embeddings.weight
 *   blk.i.attn_norm.weight       backbone.layers.i.norm.weight
 *   blk.i.ssm_in.{weight,bias}   backbone.layers.i.mixer.in_proj.{weight,bias}
 *   blk.i.ssm_conv1d.weight      backbone.layers.i.mixer.conv1d.weight   stored 2-D: [E, K], not [E, 1, K]
 *   blk.i.ssm_conv1d.bias        backbone.layers.i.mixer.conv1d.bias
 *   blk.i.ssm_x.weight           backbone.layers.i.mixer.x_proj.weight
 *   blk.i.ssm_dt.{weight,bias}   backbone.layers.i.mixer.dt_proj.{weight,bias}
 *   blk.i.ssm_a                  backbone.layers.i.mixer.A_log           stored as A = -exp(A_log)
 *   blk.i.ssm_d                  backbone.layers.i.mixer.D
 *   blk.i.ssm_out.{weight,bias}  backbone.layers.i.mixer.out_proj.{weight,bias}
 *   output_norm.weight           backbone.norm_f.weight
 *   output.weight                lm_head.weight                          absent when the head is tied
 *
 * The config comes from the `mamba.*` metadata, the vocabulary size from the embedding's rows, biases from which
 * tensors are present. The tokenizer (`tokenizer.ggml.*`, byte-level BPE) becomes a tokenizer.json equivalent
 * for @huggingface/tokenizers.
 */
import { MambaError, check } from "../errors.ts";
import { type MambaConfig, normalizeConfig, parameterShapes } from "../config.ts";
import { type HostDType, type HostTensor, isQuantized, numel, toBF16Bits, toF16Bits, toFloat32 } from "./tensor.ts";
import { type GgufFile, type GgufTensorOut, type GgufValue, GgufType, ggufTensor, parseGgufHeader } from "./gguf-format.ts";
import { QK, quantizeQ4_0, quantizeQ8_0 } from "./quant.ts";

/** What a GGUF model file holds, in mamba-ts's terms. */
export interface GgufModel {
  config: MambaConfig;
  /** parameters under Hugging Face names, validated against the config */
  tensors: Map<string, HostTensor>;
  /** storage type of the bulk of the weights (that of the embedding) */
  dtype: HostDType;
  /** a tokenizer.json equivalent built from the metadata, or null when the file has no tokenizer */
  tokenizer: Record<string, unknown> | null;
  /** the parsed container (metadata with types, tensor table) */
  file: GgufFile;
}

const LAYER_NAMES: Array<[gguf: string, hf: string]> = [
  ["attn_norm.weight", "norm.weight"],
  ["ssm_in.weight", "mixer.in_proj.weight"],
  ["ssm_in.bias", "mixer.in_proj.bias"],
  ["ssm_conv1d.weight", "mixer.conv1d.weight"],
  ["ssm_conv1d.bias", "mixer.conv1d.bias"],
  ["ssm_x.weight", "mixer.x_proj.weight"],
  ["ssm_dt.weight", "mixer.dt_proj.weight"],
  ["ssm_dt.bias", "mixer.dt_proj.bias"],
  ["ssm_dt.bias", "mixer.dt_bias"], // Mamba-2's (no dt_proj there)
  ["ssm_norm.weight", "mixer.norm.weight"], // Mamba-2's gated norm
  ["ssm_a", "mixer.A_log"],
  ["ssm_d", "mixer.D"],
  ["ssm_out.weight", "mixer.out_proj.weight"],
  ["ssm_out.bias", "mixer.out_proj.bias"],
];
const GLOBAL_NAMES: Array<[gguf: string, hf: string]> = [
  ["token_embd.weight", "backbone.embeddings.weight"],
  ["output_norm.weight", "backbone.norm_f.weight"],
  ["output.weight", "lm_head.weight"],
];
const TO_HF = new Map(GLOBAL_NAMES);
const TO_GGUF = new Map(GLOBAL_NAMES.map(([g, h]) => [h, g]));

/** The Hugging Face name of a GGUF tensor name (null for a name that is not part of a Mamba model). */
export function hfName(ggufName: string, mamba2 = false): string | null {
  const global = TO_HF.get(ggufName);
  if (global) return global;
  const m = /^blk\.(\d+)\.(.+)$/.exec(ggufName);
  if (!m) return null;
  if (m[2] === "ssm_dt.bias") return `backbone.layers.${m[1]}.mixer.${mamba2 ? "dt_bias" : "dt_proj.bias"}`;
  const hit = LAYER_NAMES.find(([g]) => g === m[2]);
  return hit ? `backbone.layers.${m[1]}.${hit[1]}` : null;
}

/** The GGUF name of a Hugging Face tensor name (null when GGUF has none). */
export function ggufName(hf: string): string | null {
  const global = TO_GGUF.get(hf);
  if (global) return global;
  const m = /^backbone\.layers\.(\d+)\.(.+)$/.exec(hf);
  if (!m) return null;
  const hit = LAYER_NAMES.find(([, h]) => h === m[2]);
  return hit ? `blk.${m[1]}.${hit[0]}` : null;
}

function meta(file: GgufFile, key: string): GgufValue | undefined {
  return file.metadata.get(key);
}

const INT_TYPES = new Set<number>([GgufType.UINT8, GgufType.INT8, GgufType.UINT16, GgufType.INT16, GgufType.UINT32,
  GgufType.INT32, GgufType.UINT64, GgufType.INT64]);

function metaInt(file: GgufFile, key: string, where: string, required: true): number;
function metaInt(file: GgufFile, key: string, where: string, required: false): number | null;
function metaInt(file: GgufFile, key: string, where: string, required: boolean): number | null {
  const v = meta(file, key);
  if (v === undefined) {
    check(!required, `${where}: missing metadata '${key}'`);
    return null;
  }
  check(INT_TYPES.has(v.type) && typeof v.value === "number" && Number.isSafeInteger(v.value) && v.value >= 0,
    `${where}: metadata '${key}' must be a non-negative integer, got ${String(v.value)}`);
  return v.value as number;
}

function metaString(file: GgufFile, key: string, where: string): string | null {
  const v = meta(file, key);
  if (v === undefined) return null;
  check(v.type === GgufType.STRING, `${where}: metadata '${key}' must be a string`);
  return v.value as string;
}

function metaArray(file: GgufFile, key: string, where: string, itemTypes: readonly number[]): unknown[] | null {
  const v = meta(file, key);
  if (v === undefined) return null;
  check(v.type === GgufType.ARRAY && itemTypes.includes(v.itemType!), `${where}: metadata '${key}' must be an array of ${itemTypes.length === 1 && itemTypes[0] === GgufType.STRING ? "strings" : "integers"}`);
  return v.value as unknown[];
}

/** The architectures read, with the model family each is. */
const ARCHS: Record<string, "mamba" | "mamba2"> = { mamba: "mamba", mamba2: "mamba2" };

/**
 * The model config from a GGUF file's metadata (`<arch>.*` keys) and tensor table: the vocabulary size is the
 * embedding's rows, biases and the untied head are there when their tensors are.
 */
export function ggufConfig(file: GgufFile, where: string): MambaConfig {
  const arch = metaString(file, "general.architecture", where);
  check(arch !== null, `${where}: missing metadata 'general.architecture'`);
  const family = ARCHS[arch];
  if (family === undefined) {
    throw new MambaError(`${where}: architecture '${arch}' is not supported (mamba-ts reads Mamba models: ${Object.keys(ARCHS).join(", ")})`);
  }
  const embd = file.tensors.find((t) => t.name === "token_embd.weight");
  check(embd, `${where}: missing tensor 'token_embd.weight'`);
  check(embd.dims.length === 2, `${where}: tensor 'token_embd.weight' has ${embd.dims.length} dimensions, 2 expected`);
  const key = (k: string) => `${arch}.${k}`;
  const hidden = metaInt(file, key("embedding_length"), where, true);
  const inner = metaInt(file, key("ssm.inner_size"), where, true);
  const has = (name: string) => file.tensors.some((t) => t.name === name);
  const eps = meta(file, key("attention.layer_norm_rms_epsilon"));
  check(eps === undefined || ((eps.type === GgufType.FLOAT32 || eps.type === GgufType.FLOAT64) && typeof eps.value === "number"),
    `${where}: metadata '${key("attention.layer_norm_rms_epsilon")}' must be a float`);
  const epsilon = eps === undefined ? 1e-5 : (eps.value as number);
  const dtBcRms = meta(file, key("ssm.dt_b_c_rms"));
  check(dtBcRms === undefined || dtBcRms.type === GgufType.BOOL, `${where}: metadata '${key("ssm.dt_b_c_rms")}' must be a bool`);
  const falcon = family === "mamba" && dtBcRms?.value === true;
  const tokenId = (k: string) => {
    const v = metaInt(file, k, where, false);
    return v !== null && v < embd.dims[1]! ? v : null;
  };
  const raw: Record<string, unknown> = {
    model_type: falcon ? "falcon_mamba" : family,
    vocab_size: embd.dims[1],
    hidden_size: hidden,
    intermediate_size: inner,
    state_size: metaInt(file, key("ssm.state_size"), where, true),
    num_hidden_layers: metaInt(file, key("block_count"), where, true),
    conv_kernel: metaInt(file, key("ssm.conv_kernel"), where, true),
    use_bias: has("blk.0.ssm_in.bias"),
    use_conv_bias: has("blk.0.ssm_conv1d.bias"),
    tie_word_embeddings: !has("output.weight"),
    layer_norm_epsilon: epsilon,
    residual_in_fp32: true,
    bos_token_id: tokenId("tokenizer.ggml.bos_token_id"),
    eos_token_id: tokenId("tokenizer.ggml.eos_token_id"),
    pad_token_id: tokenId("tokenizer.ggml.padding_token_id"),
  };
  if (family === "mamba2") {
    // time_step_rank is the head count; llama.cpp's Mamba-2 has the gated norm after the gate and no dt clamp
    const heads = metaInt(file, key("ssm.time_step_rank"), where, true);
    check(heads > 0 && inner % heads === 0, `${where}: ${key("ssm.time_step_rank")} (${heads} heads) must divide ${key("ssm.inner_size")} (${inner})`);
    Object.assign(raw, { num_heads: heads, head_dim: inner / heads, n_groups: metaInt(file, key("ssm.group_count"), where, true),
      expand: inner / hidden, norm_before_gate: false });
  } else {
    raw.time_step_rank = metaInt(file, key("ssm.time_step_rank"), where, true);
  }
  // llama.cpp normalizes Falcon-Mamba's dt, B and C with the layers' epsilon: a GGUF file has no other
  if (falcon) raw.mixer_rms_eps = epsilon;
  try {
    const config = normalizeConfig(raw, `${where} (metadata)`);
    check(config.intermediateSize === inner, `${where}: ${key("ssm.inner_size")} ${inner} is not a whole multiple of the embedding length`);
    return config;
  } catch (err) {
    if (falcon && err instanceof MambaError) {
      throw new MambaError(`${where}: a Falcon-Mamba model (mamba.ssm.dt_b_c_rms = true), which mamba-ts cannot load here: ${err.message}`);
    }
    throw err;
  }
}

/**
 * The shapes a tensor may be stored in, for the shape the config needs: llama.cpp stores conv weights 2-D
 * ([C, K] for [C, 1, K]), and Mamba-2's A and D as [H, 1], its norm weight as [G, E / G].
 */
function storedShapes(hf: string, shape: number[], config: MambaConfig): number[][] {
  if (hf.endsWith("conv1d.weight")) return [[shape[0]!, shape[2]!], shape];
  if (config.mamba2 && (hf.endsWith(".A_log") || hf.endsWith(".D"))) return [[shape[0]!, 1], shape];
  if (config.mamba2 && hf.endsWith("mixer.norm.weight")) {
    const G = config.mamba2.nGroups;
    return [[G, shape[0]! / G], shape];
  }
  return [shape];
}

/**
 * Reads a whole GGUF file held in memory: config, tensors under Hugging Face names (A_log from A, conv weights
 * [E, 1, K]), checked against the config, and the tokenizer.
 */
export function readGgufModel(bytes: Uint8Array, where: string): GgufModel {
  const file = parseGgufHeader(bytes, where);
  return ggufModelFrom(file, where, (t) => ggufTensor(file, bytes, t));
}

/** As readGgufModel, over a parsed header and a function that reads one tensor's data. */
export function ggufModelFrom(file: GgufFile, where: string, read: (t: GgufFile["tensors"][number]) => HostTensor): GgufModel {
  const config = ggufConfig(file, where);
  const shapes = parameterShapes(config);
  const tensors = new Map<string, HostTensor>();
  for (const info of file.tensors) {
    const hf = hfName(info.name, config.mamba2 !== null);
    if (hf === null) throw new MambaError(`${where}: tensor '${info.name}' is not part of a Mamba model`);
    const shape = shapes.get(hf);
    check(shape, `${where}: tensor '${info.name}' (${hf}) is not used by this model's config`);
    const stored = [...info.dims].reverse();
    const allowed = storedShapes(hf, shape, config);
    check(allowed.some((a) => a.length === stored.length && a.every((d, i) => d === stored[i])),
      `${where}: tensor '${info.name}' has shape [${stored}], the config needs [${allowed[0]}]`);
    const t = read(info);
    t.shape = [...shape];
    tensors.set(hf, hf.endsWith(".A_log") ? aLogFromA(t, `${where}: tensor '${info.name}'`) : t);
  }
  for (const [name] of shapes) {
    check(tensors.has(name), () => `${where}: missing tensor '${ggufName(name) ?? name}'`);
  }
  return { config, tensors, dtype: tensors.get("backbone.embeddings.weight")!.dtype, tokenizer: ggufTokenizerJson(file, where), file };
}

/** GGUF stores A = -exp(A_log); the model takes A_log = log(-A) (every entry of A must be negative). */
function aLogFromA(t: HostTensor, where: string): HostTensor {
  const a = toFloat32(t);
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) {
    check(a[i]! < 0, `${where}: A must be negative (A = -exp(A_log)), entry ${i} is ${a[i]}`);
    out[i] = Math.log(-a[i]!);
  }
  return { dtype: "F32", shape: t.shape, data: out };
}

// ---------------------------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------------------------

/** llama.cpp's token types */
const TOKEN_CONTROL = 3;
const TOKEN_USER_DEFINED = 4;

/** pre-tokenizers that split as GPT-2's regex does (llama.cpp gives them the same expression) */
const GPT2_SPLIT = new Set(["default", "gpt-2", "gpt2", "mpt", "olmo", "gpt-neox"]);
/** those that are GPT-NeoX's tokenizer, whose tokenizer.json normalizes to NFC */
const NFC = new Set(["mpt", "olmo", "gpt-neox"]);

/**
 * A tokenizer.json equivalent of a GGUF file's `tokenizer.ggml.*` metadata (null when there is none): byte-level
 * BPE over `tokens` (ids are positions), with the `merges` whose parts and result are all in the vocabulary;
 * control tokens (type 3) are special added tokens, user-defined ones (type 4) plain added tokens.
 */
export function ggufTokenizerJson(file: GgufFile, where: string): Record<string, unknown> | null {
  const model = metaString(file, "tokenizer.ggml.model", where);
  if (model === null) return null;
  check(model === "gpt2", `${where}: tokenizer.ggml.model '${model}' is not supported (only 'gpt2', byte-level BPE)`);
  const pre = metaString(file, "tokenizer.ggml.pre", where) ?? "default";
  check(GPT2_SPLIT.has(pre), `${where}: tokenizer.ggml.pre '${pre}' is not supported (GPT-2 style pre-tokenizers: ${[...GPT2_SPLIT].join(", ")})`);
  const tokens = metaArray(file, "tokenizer.ggml.tokens", where, [GgufType.STRING]) as string[] | null;
  check(tokens, `${where}: missing metadata 'tokenizer.ggml.tokens'`);
  const types = metaArray(file, "tokenizer.ggml.token_type", where, [...INT_TYPES]) as number[] | null;
  check(types === null || types.length === tokens.length, `${where}: tokenizer.ggml.token_type has ${types?.length} entries, tokens has ${tokens.length}`);
  const merges = (metaArray(file, "tokenizer.ggml.merges", where, [GgufType.STRING]) ?? []) as string[];

  const vocab: Record<string, number> = Object.create(null) as Record<string, number>;
  const added: Array<Record<string, unknown>> = [];
  tokens.forEach((tok, id) => {
    if (!(tok in vocab)) vocab[tok] = id;
    const type = types?.[id];
    if (type === TOKEN_CONTROL || type === TOKEN_USER_DEFINED) {
      const special = type === TOKEN_CONTROL;
      added.push({ id, content: tok, single_word: false, lstrip: false, rstrip: false, normalized: !special, special });
    }
  });
  const kept: Array<[string, string]> = [];
  for (const m of merges) {
    const sp = m.indexOf(" ", 1);
    check(sp > 0, `${where}: tokenizer.ggml.merges holds ${JSON.stringify(m)}, not two tokens separated by a space`);
    const a = m.slice(0, sp);
    const b = m.slice(sp + 1);
    if (a in vocab && b in vocab && a + b in vocab) kept.push([a, b]);
  }
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: NFC.has(pre) ? { type: "NFC" } : null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges: kept,
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Writing (the tensors and metadata llama.cpp's converter writes for Mamba)
// ---------------------------------------------------------------------------------------------------------------

export type GgufFileType = "f32" | "f16" | "bf16" | "q8_0" | "q4_0";

/** general.file_type values (llama.cpp's LLAMA_FTYPE_*) */
const FILE_TYPE: Record<GgufFileType, number> = { f32: 0, f16: 1, q4_0: 2, q8_0: 7, bf16: 32 };

/** llama.cpp's size label: 2 significant digits at least ("23K", "130M", "1.4B"). */
export function sizeLabel(params: number): string {
  const [scaled, suffix] = params > 1e12 ? [params * 1e-12, "T"] : params > 1e9 ? [params * 1e-9, "B"]
    : params > 1e6 ? [params * 1e-6, "M"] : [params * 1e-3, "K"];
  const digits = String(Math.round(scaled)).replace(/^0+/, "").length;
  return `${scaled.toFixed(Math.max(2 - digits, 0))}${suffix}`;
}

/**
 * The type a tensor is written in: matrices (embedding, head, in/x/dt/out projections) in the file's type, or F16
 * when their rows are not a whole number of 32-value blocks (as llama.cpp falls back); norms, conv, A, D and
 * biases in F32 (as llama.cpp's converter keeps them).
 */
export function ggufTensorType(hf: string, shape: readonly number[], type: GgufFileType): HostDType {
  const matrix = shape.length === 2 && /(embeddings|lm_head|in_proj|x_proj|dt_proj|out_proj)\.weight$/.test(hf);
  if (!matrix || type === "f32") return "F32";
  if (type === "f16") return "F16";
  if (type === "bf16") return "BF16";
  if (shape[1]! % QK !== 0) return "F16";
  return type === "q8_0" ? "Q8_0" : "Q4_0";
}

/** A tensor's bytes in a GGUF type (from any host type; quantized sources are dequantized first). */
export function encodeTensor(t: HostTensor, dtype: HostDType): Uint8Array {
  if (t.dtype === dtype && !(dtype === "F32" && t.data.byteOffset % 4 !== 0)) {
    return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  }
  const f = toFloat32(t);
  let out: Float32Array | Uint16Array | Uint8Array;
  if (dtype === "F32") out = f;
  else if (dtype === "F16") out = toF16Bits(f);
  else if (dtype === "BF16") out = toBF16Bits(f);
  else if (dtype === "Q8_0") out = quantizeQ8_0(f);
  else if (dtype === "Q4_0") out = quantizeQ4_0(f);
  else throw new MambaError(`cannot write ${dtype} tensors to GGUF`);
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

/** Metadata keys of the tokenizer, from a parsed tokenizer.json (byte-level BPE, as Mamba checkpoints ship). */
export function tokenizerMetadata(json: unknown, config: MambaConfig, where: string): Map<string, GgufValue> {
  const j = json as {
    model?: { type?: string; vocab?: Record<string, number>; merges?: Array<string | [string, string]> };
    added_tokens?: Array<{ id: number; content: string; special?: boolean }>;
    pre_tokenizer?: { type?: string }; normalizer?: { type?: string } | null;
  };
  check(j && typeof j === "object" && j.model?.type === "BPE" && j.model.vocab && typeof j.model.vocab === "object",
    `${where}: only byte-level BPE tokenizers (model.type 'BPE') can be written to GGUF`);
  check(j.pre_tokenizer?.type === "ByteLevel", `${where}: only byte-level BPE tokenizers (pre_tokenizer 'ByteLevel') can be written to GGUF`);
  const size = config.paddedVocabSize;
  const tokens: string[] = new Array(size);
  const types: number[] = new Array(size).fill(1);
  for (const [tok, id] of Object.entries(j.model.vocab)) if (Number.isInteger(id) && id >= 0 && id < size) tokens[id] = tok;
  for (const a of j.added_tokens ?? []) {
    if (!Number.isInteger(a.id) || a.id < 0 || a.id >= size) continue;
    tokens[a.id] = a.content;
    types[a.id] = a.special === false ? TOKEN_USER_DEFINED : TOKEN_CONTROL;
  }
  // ids the tokenizer does not cover (a padded vocabulary) get placeholders, as llama.cpp's converter writes
  for (let i = 0; i < size; i++) if (tokens[i] === undefined) { tokens[i] = `[PAD${i}]`; types[i] = TOKEN_USER_DEFINED; }
  const merges = (j.model.merges ?? []).map((m) => (Array.isArray(m) ? `${m[0]} ${m[1]}` : m));
  const m = new Map<string, GgufValue>();
  m.set("tokenizer.ggml.model", { type: GgufType.STRING, value: "gpt2" });
  m.set("tokenizer.ggml.pre", { type: GgufType.STRING, value: j.normalizer?.type === "NFC" ? "mpt" : "gpt-2" });
  m.set("tokenizer.ggml.tokens", { type: GgufType.ARRAY, itemType: GgufType.STRING, value: tokens });
  m.set("tokenizer.ggml.token_type", { type: GgufType.ARRAY, itemType: GgufType.INT32, value: types });
  m.set("tokenizer.ggml.merges", { type: GgufType.ARRAY, itemType: GgufType.STRING, value: merges });
  const eot = (j.added_tokens ?? []).find((a) => a.content === "<|endoftext|>")?.id ?? null;
  const ids: Array<[string, number | null]> = [
    ["tokenizer.ggml.bos_token_id", config.bosTokenId ?? eot],
    ["tokenizer.ggml.eos_token_id", config.eosTokenId ?? eot],
    ["tokenizer.ggml.unknown_token_id", eot],
  ];
  for (const [key, id] of ids) if (id !== null && id < size) m.set(key, { type: GgufType.UINT32, value: id });
  return m;
}

/**
 * The metadata and tensors of a GGUF file for a Mamba-1 model, as llama.cpp's converter lays them out: keys in its
 * order, tensors in the checkpoint's name order (layers in order), A stored as -exp(A_log), conv weights 2-D.
 * `tokenizer` is the tokenizer's metadata (tokenizerMetadata of a tokenizer.json, or a GGUF file's own
 * `tokenizer.*` keys), or null to write none.
 */
export function ggufModelContent(config: MambaConfig, tensors: Map<string, HostTensor>, type: GgufFileType,
  options: { name: string; tokenizer: Map<string, GgufValue> | null; where: string }):
  { metadata: Map<string, GgufValue>; tensors: GgufTensorOut[] } {
  check(config.mixer === "s6", `${options.where}: the LTI mixer has no GGUF form (llama.cpp has none)`);
  check(config.family !== "mamba2" || (config.mamba2!.gatedNorm && !config.mamba2!.normBeforeGate),
    `${options.where}: llama.cpp's Mamba-2 has the gated norm after the gate; this model's norm differs`);
  const arch = config.family === "mamba2" ? "mamba2" : "mamba";
  const u32 = (value: number): GgufValue => ({ type: GgufType.UINT32, value });
  let params = 0;
  for (const [name, t] of tensors) if (!(config.tieEmbeddings && name === "lm_head.weight")) params += numel(t.shape);
  const m = new Map<string, GgufValue>([
    ["general.architecture", { type: GgufType.STRING, value: arch }],
    ["general.type", { type: GgufType.STRING, value: "model" }],
    ["general.name", { type: GgufType.STRING, value: options.name }],
    ["general.size_label", { type: GgufType.STRING, value: sizeLabel(params) }],
    [`${arch}.context_length`, u32(2 ** 20)], // no limit of its own: llama.cpp's converter writes 2^20
    [`${arch}.embedding_length`, u32(config.hiddenSize)],
    [`${arch}.feed_forward_length`, u32(0)],
    [`${arch}.attention.head_count`, u32(0)],
    [`${arch}.block_count`, u32(config.numLayers)],
    [`${arch}.ssm.conv_kernel`, u32(config.convKernel)],
    [`${arch}.ssm.inner_size`, u32(config.intermediateSize)],
    [`${arch}.ssm.state_size`, u32(config.stateSize)],
    // Mamba-2's "time step rank" is its head count
    [`${arch}.ssm.time_step_rank`, u32(config.mamba2 ? config.mamba2.numHeads : config.timeStepRank)],
  ]);
  if (config.mamba2) m.set(`${arch}.ssm.group_count`, u32(config.mamba2.nGroups));
  // Falcon-Mamba's own epsilon for dt, B and C has no key: llama.cpp uses the layers' for both
  m.set(`${arch}.attention.layer_norm_rms_epsilon`, { type: GgufType.FLOAT32, value: config.layerNormEpsilon });
  if (!config.mamba2) m.set(`${arch}.ssm.dt_b_c_rms`, { type: GgufType.BOOL, value: config.family === "falcon-mamba" });
  m.set("general.file_type", u32(FILE_TYPE[type]));
  if (options.tokenizer !== null) for (const [k, v] of options.tokenizer) m.set(k, v);
  m.set("general.quantization_version", u32(2));

  const out: GgufTensorOut[] = [];
  const layerOf = (name: string) => Number(/^backbone\.layers\.(\d+)\./.exec(name)?.[1] ?? -1);
  const names = [...parameterShapes(config).keys()].sort((a, b) => {
    const [la, lb] = [layerOf(a), layerOf(b)];
    if (la >= 0 && lb >= 0 && la !== lb) return la - lb;
    return a < b ? -1 : a > b ? 1 : 0;
  });
  for (const hf of names) {
    const t = tensors.get(hf);
    check(t, `${options.where}: missing tensor '${hf}'`);
    const name = ggufName(hf)!;
    const shape = storedShapes(hf, t.shape, config)[0]!;
    const dtype = ggufTensorType(hf, shape, type);
    const src = hf.endsWith(".A_log") ? aFromALog(t) : t;
    out.push({ name, shape, dtype, data: () => encodeTensor(src, dtype) });
  }
  // llama.cpp's converter writes the embedding first
  const embd = out.findIndex((t) => t.name === "token_embd.weight");
  out.unshift(...out.splice(embd, 1));
  return { metadata: m, tensors: out };
}

function aFromALog(t: HostTensor): HostTensor {
  const aLog = toFloat32(t);
  const out = new Float32Array(aLog.length);
  for (let i = 0; i < out.length; i++) out[i] = -Math.exp(aLog[i]!);
  return { dtype: "F32", shape: t.shape, data: out };
}

export { isQuantized };
