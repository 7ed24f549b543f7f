/**
 * Tokenizers from GGUF metadata (`tokenizer.ggml.*`, byte-level BPE) against tokenizer.json run by the reference
 * library. What can be compared honestly:
 *  - the fixture GGUFs hold GPT-NeoX's vocabulary cut to hf-mamba/tiny's 96 rows (no merge result is among them)
 *    and all 50,009 GPT-NeoX merges; test/fixtures/tokenizer is a 400-row byte-level BPE in GPT-NeoX's style whose
 *    first 96 tokens are the same, with merges of its own. So (1) the GGUF tokenizer must give the ids of that
 *    tokenizer.json cut the same way to 96 rows, with GPT-NeoX's NFC normalizer (which GPT-NeoX's and Mamba's
 *    tokenizer.json carry; the cut fixture has none). With 96 rows no merge applies, so (2) the merge handling is
 *    checked on the 400-row tokenizer: its merges in GGUF form, after the GPT-NeoX merges of the fixture GGUF
 *    whose result is not among the 400 (which must be ignored, though they come first), give the reference
 *    library's ids (expected.json); and (3) tokenizer.json -> GGUF metadata (what `quantize` writes) -> tokenizer
 *    gives them too.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { loadTokenizer, tokenizerFromJson } from "../../src/tokenizer.ts";
import { makeConfig } from "../../src/model/init.ts";
import { GgufType, type GgufValue, parseGgufHeader, serializeGguf } from "../../src/io/gguf-format.ts";
import { ggufTokenizerJson, tokenizerMetadata } from "../../src/io/gguf-model.ts";
import { fixture } from "../helpers/fixtures.ts";

const root = mkdtempSync(path.join(os.tmpdir(), "mamba-ts-gguf-tok-"));
after(() => rmSync(root, { recursive: true, force: true }));

interface TokJson { model: { vocab: Record<string, number>; merges: Array<[string, string]> }; added_tokens: Array<{ id: number; content: string }> }
const tokJson = JSON.parse(readFileSync(fixture("tokenizer", "tokenizer.json"), "utf8")) as TokJson;
const expected = JSON.parse(readFileSync(fixture("tokenizer", "expected.json"), "utf8")) as Array<{ text: string; ids: number[]; decoded: string }>;
const gguf = parseGgufHeader(new Uint8Array(readFileSync(fixture("gguf", "tiny-f32.gguf"))), "tiny-f32.gguf");
const ggufTokens = gguf.metadata.get("tokenizer.ggml.tokens")!.value as string[];
const ggufMerges = gguf.metadata.get("tokenizer.ggml.merges")!.value as string[];

const TEXTS = [...expected.map((e) => e.text), "ab!?{}~", "Mamba is a state space model.", "x\u0301 e\u0301 NFC", "tabs\tand\r\nCRLF", "<|padding|>"];

/** tokenizer.json cut to the first `rows` ids: merges kept when both parts and the result are among them. */
function cut(rows: number): TokJson {
  const vocab = Object.fromEntries(Object.entries(tokJson.model.vocab).filter(([, id]) => id < rows));
  const merges = tokJson.model.merges.filter(([a, b]) => a in vocab && b in vocab && a + b in vocab);
  return { ...tokJson, model: { ...tokJson.model, vocab, merges }, added_tokens: tokJson.added_tokens.filter((t) => t.id < rows) };
}

/** A GGUF header with these tokenizer keys (and nothing else), parsed back. */
function ggufWith(meta: Map<string, GgufValue>) {
  return parseGgufHeader(serializeGguf(meta, []), "made");
}

test("the fixture GGUF's 96 tokens are GPT-NeoX's first 96, as the 400-row tokenizer.json's", () => {
  assert.equal(ggufTokens.length, 96);
  const byId: string[] = [];
  for (const [tok, id] of Object.entries(tokJson.model.vocab)) byId[id] = tok;
  for (const a of tokJson.added_tokens) byId[a.id] = a.content;
  assert.deepEqual(ggufTokens, byId.slice(0, 96));
  assert.equal(ggufMerges.length, 50009);
});

test("the fixture GGUF's tokenizer gives the ids of tokenizer.json cut to the same 96 rows", async () => {
  const fromGguf = await loadTokenizer(fixture("gguf", "tiny-q8_0.gguf"));
  const reference = tokenizerFromJson({ ...cut(96), normalizer: { type: "NFC" } });
  assert.equal(fromGguf.vocabSize, 96);
  for (const text of TEXTS) {
    const ids = fromGguf.encode(text);
    assert.deepEqual(Array.from(ids), Array.from(reference.encode(text)), JSON.stringify(text));
    assert.equal(fromGguf.decode(ids), reference.decode(ids));
  }
});

test("merges in GGUF form, those whose result is outside the vocabulary ignored, give the reference library's ids", () => {
  const byId: string[] = [];
  const types: number[] = [];
  for (const [tok, id] of Object.entries(tokJson.model.vocab)) { byId[id] = tok; types[id] = 1; }
  for (const a of tokJson.added_tokens) types[a.id] = 3;
  const vocab = tokJson.model.vocab;
  const outside = ggufMerges.filter((m) => { const [a, b] = m.split(" ") as [string, string]; return !(a + b in vocab); });
  assert.ok(outside.length > 49_000);
  const merges = [...outside, ...tokJson.model.merges.map(([a, b]) => `${a} ${b}`)];
  const meta = new Map<string, GgufValue>([
    ["tokenizer.ggml.model", { type: GgufType.STRING, value: "gpt2" }],
    ["tokenizer.ggml.pre", { type: GgufType.STRING, value: "gpt-2" }],
    ["tokenizer.ggml.tokens", { type: GgufType.ARRAY, itemType: GgufType.STRING, value: byId }],
    ["tokenizer.ggml.token_type", { type: GgufType.ARRAY, itemType: GgufType.INT32, value: types }],
    ["tokenizer.ggml.merges", { type: GgufType.ARRAY, itemType: GgufType.STRING, value: merges }],
  ]);
  const json = ggufTokenizerJson(ggufWith(meta), "made")!;
  assert.deepEqual((json.model as { merges: Array<[string, string]> }).merges, tokJson.model.merges);
  const tok = tokenizerFromJson(json);
  for (const e of expected) {
    assert.deepEqual(Array.from(tok.encode(e.text)), e.ids, JSON.stringify(e.text));
    assert.equal(tok.decode(e.ids), e.decoded);
  }
});

test("tokenizer.json -> GGUF metadata -> tokenizer keeps the ids (what quantize writes)", async () => {
  const config = makeConfig({ vocabSize: 400, hiddenSize: 8, numLayers: 1 });
  const meta = tokenizerMetadata(tokJson, config, "tokenizer.json");
  assert.equal(meta.get("tokenizer.ggml.model")!.value, "gpt2");
  assert.deepEqual((meta.get("tokenizer.ggml.token_type")!.value as number[]).slice(0, 4), [3, 3, 1, 1]);
  const file = path.join(root, "tok.gguf");
  writeFileSync(file, serializeGguf(meta, []));
  const tok = await loadTokenizer(file);
  for (const e of expected) assert.deepEqual(Array.from(tok.encode(e.text)), e.ids, JSON.stringify(e.text));
  // a padded vocabulary: ids past the tokenizer's get placeholders, as llama.cpp's converter writes
  const padded = tokenizerMetadata(tokJson, makeConfig({ vocabSize: 408, hiddenSize: 8, numLayers: 1 }), "tokenizer.json");
  assert.equal((padded.get("tokenizer.ggml.tokens")!.value as string[])[404], "[PAD404]");
});

test("unsupported tokenizer models and pre-tokenizers are named", () => {
  const meta = (model: string, pre: string) => new Map<string, GgufValue>([
    ["tokenizer.ggml.model", { type: GgufType.STRING, value: model }],
    ["tokenizer.ggml.pre", { type: GgufType.STRING, value: pre }],
    ["tokenizer.ggml.tokens", { type: GgufType.ARRAY, itemType: GgufType.STRING, value: ["a"] }],
  ]);
  assert.throws(() => ggufTokenizerJson(ggufWith(meta("llama", "default")), "f"), /tokenizer\.ggml\.model 'llama' is not supported/);
  assert.throws(() => ggufTokenizerJson(ggufWith(meta("gpt2", "llama-bpe")), "f"), /tokenizer\.ggml\.pre 'llama-bpe' is not supported/);
});
