/**
 * Configs and loaders of the later families: every spelling of infinity in time_step_limit / dt_limit (Python's
 * bare Infinity included), mamba_ssm's Mamba-2 defaults, the family from model_type or architectures, and one
 * clear MambaError for configs and tensors that do not fit.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { MambaError } from "../../src/errors.ts";
import { normalizeConfig, parseConfigJson, toHfConfig } from "../../src/config.ts";
import { filesFromMap, readCheckpointFrom, readConfigFrom } from "../../src/io/model-files.ts";
import { fixture } from "../helpers/fixtures.ts";

const enc = (s: string) => new TextEncoder().encode(s);

async function hfMamba2Text(): Promise<string> {
  return readFile(fixture("hf-mamba2", "tiny", "config.json"), "utf8");
}

test("time_step_limit in every spelling of infinity", async () => {
  const text = await hfMamba2Text();
  const spellings: [string, number][] = [
    ['{"__float__": "Infinity"}', Infinity], ["Infinity", Infinity], ['"Infinity"', Infinity], ['"inf"', Infinity],
    ["1e30", 1e30], ["1e400", Infinity], ["100.0", 100],
  ];
  for (const [spelling, want] of spellings) {
    const raw = text.replace(/"time_step_limit": \[[^\]]*\]/s, `"time_step_limit": [0.0, ${spelling}]`);
    assert.notEqual(raw, text);
    const cfg = await readConfigFrom(filesFromMap(new Map([["config.json", enc(raw)]])));
    assert.deepEqual(cfg.mamba2!.timeStepLimit, [0, want], spelling);
  }
});

test("parseConfigJson reads Python's bare Infinity, -Infinity and NaN outside strings only", () => {
  assert.deepEqual(parseConfigJson('{"a": [0.0, Infinity], "b": -Infinity, "s": "Infinity, NaN \\" Infinity", "n": NaN}'),
    { a: [0, Infinity], b: -Infinity, s: 'Infinity, NaN " Infinity', n: "NaN" });
  assert.throws(() => parseConfigJson('{"a": Infinityx}'), SyntaxError);
  assert.throws(() => parseConfigJson('{"a": }'), SyntaxError);
});

test("a NaN limit, a bad pair and a reversed pair are MambaErrors", async () => {
  const text = await hfMamba2Text();
  for (const bad of ["[0.0, NaN]", "[0.0]", "[1.0, 0.5]", '[0.0, "lots"]']) {
    const raw = text.replace(/"time_step_limit": \[[^\]]*\]/s, `"time_step_limit": ${bad}`);
    await assert.rejects(readConfigFrom(filesFromMap(new Map([["config.json", enc(raw)]]))), MambaError, bad);
  }
});

test("mamba_ssm's Mamba-2 config: its defaults, and dt_limit from Python's json", () => {
  const cfg = normalizeConfig(parseConfigJson(`{"d_model": 768, "n_layer": 24, "vocab_size": 50277, "pad_vocab_size_multiple": 16,
    "ssm_cfg": {"layer": "Mamba2", "dt_limit": [0.0, Infinity]}, "tie_embeddings": true}`));
  assert.equal(cfg.family, "mamba2");
  assert.equal(cfg.stateSize, 128);
  assert.equal(cfg.paddedVocabSize, 50288);
  assert.deepEqual(cfg.mamba2, { numHeads: 24, headDim: 64, nGroups: 1, chunkSize: 256, timeStepLimit: [0, Infinity], gatedNorm: true, normBeforeGate: false });
  assert.equal(cfg.intermediateSize, 1536);
});

test("the family comes from model_type, or from architectures without one", () => {
  const base = { hidden_size: 16, num_hidden_layers: 1, vocab_size: 10 };
  assert.equal(normalizeConfig({ ...base, model_type: "falcon_mamba" }).family, "falcon-mamba");
  assert.equal(normalizeConfig({ ...base, model_type: "falcon_mamba" }).mixerRmsEps, 1e-6);
  assert.equal(normalizeConfig({ ...base, architectures: ["Mamba2ForCausalLM"], head_dim: 8 }).family, "mamba2");
  assert.equal(normalizeConfig({ ...base, architectures: ["FalconMambaForCausalLM"] }).family, "falcon-mamba");
  assert.equal(normalizeConfig(base).family, "mamba");
  assert.throws(() => normalizeConfig({ ...base, model_type: "jamba" }), /model_type 'jamba' is not supported/);
});

test("Mamba-2 configs that do not fit are MambaErrors that say why", () => {
  const base = { model_type: "mamba2", hidden_size: 16, num_hidden_layers: 1, vocab_size: 10, expand: 2 };
  assert.throws(() => normalizeConfig({ ...base, num_heads: 3, head_dim: 8 }), /heads × head size \(3 × 8 = 24\) must equal the inner size 32/);
  assert.throws(() => normalizeConfig({ ...base, num_heads: 4, head_dim: 8, n_groups: 3 }), /multiple of the groups/);
  assert.throws(() => normalizeConfig({ d_model: 16, n_layer: 1, vocab_size: 10, ssm_cfg: { layer: "Mamba3" } }), /Mamba1 or Mamba2/);
  assert.throws(() => normalizeConfig({ d_model: 16, n_layer: 1, vocab_size: 10, ssm_cfg: { layer: "Mamba2", headdim: 5 } }), /not a multiple of headdim/);
  assert.throws(() => normalizeConfig({ d_model: 16, n_layer: 1, vocab_size: 10, ssm_cfg: { layer: "Mamba2", headdim: 8, d_ssm: 16 } }), /d_ssm/);
});

test("a Mamba-2 checkpoint whose tensors do not fit its config is one MambaError naming the tensor", async () => {
  const dir = fixture("hf-mamba2", "tiny");
  const files = new Map<string, Uint8Array>([["model.safetensors", await readFile(`${dir}/model.safetensors`)]]);
  const raw = JSON.parse(await readFile(`${dir}/config.json`, "utf8").then((t) => t.replace('{"__float__": "Infinity"}', "1e30").replace(/\{\s*"__float__":\s*"Infinity"\s*\}/, "1e30")));
  files.set("config.json", enc(JSON.stringify({ ...raw, n_groups: 2 })));
  await assert.rejects(readCheckpointFrom(filesFromMap(files)), /tensor 'backbone\.layers\.0\.mixer\.in_proj\.weight' has shape \[168,32\], the config needs \[200,32\]/);
  files.set("config.json", enc(JSON.stringify({ ...raw, model_type: "mamba", architectures: ["MambaForCausalLM"] })));
  await assert.rejects(readCheckpointFrom(filesFromMap(files)), MambaError);
});

test("toHfConfig writes a config that reads back the same (Mamba-2 and Falcon-Mamba)", async () => {
  for (const name of [["hf-mamba2", "tiny"], ["mamba-ssm", "mamba2-tiny"], ["hf-falcon-mamba", "tiny"]]) {
    const files = new Map([["config.json", await readFile(fixture(...name, "config.json"))]]);
    const cfg = await readConfigFrom(filesFromMap(files));
    const back = normalizeConfig(parseConfigJson(JSON.stringify(toHfConfig(cfg))));
    assert.deepEqual({ ...back, format: cfg.format, timeStepRank: cfg.timeStepRank, eosTokenId: cfg.eosTokenId, bosTokenId: cfg.bosTokenId, padTokenId: cfg.padTokenId }, cfg, name.join("/"));
  }
});
