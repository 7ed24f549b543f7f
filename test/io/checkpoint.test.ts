/**
 * Loading model folders through loadModel: folders written here (single file, sharded, half precision, mamba_ssm
 * config) load and compute what an independent reference computes; every broken folder (missing files, configs
 * that do not parse or hold impossible sizes, unsupported architectures, damaged or incomplete weights) is a
 * MambaError whose message names the problem and the file or tensor.
 */
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { MambaError, loadModel, makeConfig } from "../../src/index.ts";
import { toHfConfig } from "../../src/config.ts";
import { serializeSafetensors } from "../../src/io/safetensors.ts";
import { type HostTensor, toBF16Bits, toF16Bits, toFloat32 } from "../../src/io/tensor.ts";
import { assertClose, fixture } from "../helpers/fixtures.ts";
import { naiveForward } from "../helpers/naive.ts";
import { TestRng, perturbedParameters } from "../helpers/random.ts";

const root = mkdtempSync(path.join(os.tmpdir(), "mamba-ts-ckpt-"));
after(() => rmSync(root, { recursive: true, force: true }));

const cfg = makeConfig({ vocabSize: 24, hiddenSize: 6, intermediateSize: 10, stateSize: 3, timeStepRank: 2, convKernel: 3, numLayers: 2,
  useBias: true, tieEmbeddings: false });
const params = perturbedParameters(cfg, 31);
const hfConfig = toHfConfig(cfg);

let n = 0;
/** A fresh folder with the given files (objects are written as JSON, byte arrays as they are). */
function folder(files: Record<string, unknown>): string {
  const dir = path.join(root, `m${n++}`);
  mkdirSync(dir);
  for (const [name, content] of Object.entries(files)) {
    writeFileSync(path.join(dir, name), content instanceof Uint8Array ? content : typeof content === "string" ? content : JSON.stringify(content));
  }
  return dir;
}

const weights = (m: Map<string, HostTensor> = params) => serializeSafetensors(m);
const without = (name: string) => new Map([...params].filter(([k]) => k !== name));
const replaced = (name: string, t: HostTensor) => new Map([...params].map(([k, v]) => [k, k === name ? t : v]));

async function loadRejects(dir: string, ...patterns: RegExp[]): Promise<void> {
  await assert.rejects(loadModel(dir, { backend: "cpu" }), (err: unknown) => {
    assert.ok(err instanceof MambaError, `expected a MambaError, got ${String(err)}`);
    for (const p of patterns) assert.match(err.message, p);
    return true;
  });
}
const esc = (s: string) => new RegExp(s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));

async function forwardMatchesReference(dir: string, p: Map<string, HostTensor>, c = cfg): Promise<void> {
  const model = await loadModel(dir, { backend: "cpu" });
  const ids = new TestRng(3).ids(2 * 5, c.vocabSize);
  const out = await model.forward(ids, { batch: 2, seqLen: 5 });
  assertClose(out.logits, naiveForward(c, p, ids, 2, 5).logits, 1e-4, "logits");
  await model.dispose();
}

describe("folders that load", () => {
  test("config.json + model.safetensors (F32)", async () => {
    await forwardMatchesReference(folder({ "config.json": hfConfig, "model.safetensors": weights() }), params);
  });

  test("sharded: model.safetensors.index.json over two shards", async () => {
    const names = [...params.keys()];
    const a = new Map(names.slice(0, 7).map((k) => [k, params.get(k)!]));
    const b = new Map(names.slice(7).map((k) => [k, params.get(k)!]));
    const weightMap = Object.fromEntries(names.map((k, i) => [k, i < 7 ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors"]));
    const dir = folder({
      "config.json": hfConfig, "model.safetensors.index.json": { metadata: {}, weight_map: weightMap },
      "model-00001-of-00002.safetensors": weights(a), "model-00002-of-00002.safetensors": weights(b),
    });
    await forwardMatchesReference(dir, params);
  });

  for (const dtype of ["F16", "BF16"] as const) {
    test(`${dtype} weights compute with their rounded values`, async () => {
      const half = new Map([...params].map(([k, t]) => [k, {
        dtype, shape: t.shape, data: dtype === "F16" ? toF16Bits(t.data as Float32Array) : toBF16Bits(t.data as Float32Array),
      } as HostTensor]));
      const rounded = new Map([...half].map(([k, t]) => [k, { dtype: "F32", shape: t.shape, data: toFloat32(t) } as HostTensor]));
      const dir = folder({ "config.json": hfConfig, "model.safetensors": weights(half) });
      const model = await loadModel(dir, { backend: "cpu" });
      assert.equal(model.info.dtype, dtype);
      await model.dispose();
      await forwardMatchesReference(dir, rounded);
    });
  }

  test("conv1d.weight stored as [E, K] is accepted", async () => {
    const name = "backbone.layers.1.mixer.conv1d.weight";
    const t = params.get(name)!;
    const dir = folder({ "config.json": hfConfig, "model.safetensors": weights(replaced(name, { ...t, shape: [t.shape[0]!, t.shape[2]!] })) });
    await forwardMatchesReference(dir, params);
  });
});

describe("broken folders", () => {
  test("a folder that does not exist, or a file instead of a folder", async () => {
    const missing = path.join(root, "no-such-model");
    await loadRejects(missing, /not found/, esc(missing));
    const dir = folder({ "config.json": hfConfig });
    await loadRejects(path.join(dir, "config.json"), /not a folder|is a file/, esc(path.join(dir, "config.json")));
  });

  test("no config.json", async () => {
    const dir = folder({ "model.safetensors": weights() });
    await loadRejects(dir, /no config\.json/, esc(dir));
  });

  test("config.json that does not parse, or is not an object", async () => {
    for (const text of ["{\"hidden_size\": 6,", "", "hidden_size=6"]) {
      const dir = folder({ "config.json": text, "model.safetensors": weights() });
      await loadRejects(dir, /not valid JSON/, esc(path.join(dir, "config.json")));
    }
    for (const text of ["[]", "42", "null"]) {
      const dir = folder({ "config.json": text, "model.safetensors": weights() });
      await loadRejects(dir, /not a JSON object/, esc(path.join(dir, "config.json")));
    }
  });

  test("negative, zero, fractional or non-numeric sizes in config.json", async () => {
    const keys = ["hidden_size", "num_hidden_layers", "vocab_size", "state_size", "conv_kernel", "intermediate_size", "time_step_rank"];
    for (const key of keys) {
      for (const v of [0, -4, 2.5, "8", null]) {
        if (v === null && key !== "hidden_size") continue; // null means "default" for optional keys; hidden_size has none
        const dir = folder({ "config.json": { ...hfConfig, [key]: v }, "model.safetensors": weights() });
        const named = key === "time_step_rank" ? /time step rank/ : esc(`'${key}'`);
        await loadRejects(dir, named, /positive integer|missing/, esc(path.join(dir, "config.json")));
      }
    }
    // without intermediate_size, E comes from expand (transformers: int(expand * hidden_size))
    const { intermediate_size: _e, ...noInter } = hfConfig;
    for (const v of [0, -2, 0.1, "2", null]) {
      if (v === null) continue;
      const dir = folder({ "config.json": { ...noInter, expand: v }, "model.safetensors": weights() });
      await loadRejects(dir, /'expand'/, /positive number/, esc(path.join(dir, "config.json")));
    }
    const dirE = folder({ "config.json": { ...noInter, expand: 2 }, "model.safetensors": weights() });
    await loadRejects(dirE, /in_proj\.weight' has shape \[20,6\], the config needs \[24,6\]/); // E = 12 from expand 2, not 10
    for (const eps of [0, -1e-5, "1e-5"]) {
      const dir = folder({ "config.json": { ...hfConfig, layer_norm_epsilon: eps }, "model.safetensors": weights() });
      await loadRejects(dir, /epsilon/, esc(path.join(dir, "config.json")));
    }
    const { hidden_size: _h, ...noHidden } = hfConfig;
    const dir = folder({ "config.json": noHidden, "model.safetensors": weights() });
    await loadRejects(dir, /missing 'hidden_size'/);
  });

  test("token ids outside the vocabulary in config.json or generation_config.json", async () => {
    const dir = folder({ "config.json": { ...hfConfig, eos_token_id: 24 }, "model.safetensors": weights() });
    await loadRejects(dir, /eos_token_id/, /outside the vocabulary/, esc(path.join(dir, "config.json")));
    const dir2 = folder({ "config.json": hfConfig, "generation_config.json": { eos_token_id: -1 }, "model.safetensors": weights() });
    await loadRejects(dir2, /eos_token_id/, esc(path.join(dir2, "generation_config.json")));
    const dir3 = folder({ "config.json": hfConfig, "generation_config.json": "{oops", "model.safetensors": weights() });
    await loadRejects(dir3, /not valid JSON/, esc(path.join(dir3, "generation_config.json")));
  });

  test("architectures we do not run (attention layers, MLP blocks, LayerNorm) and Mamba-2 configs that do not fit", async () => {
    const hf2 = folder({ "config.json": { ...hfConfig, model_type: "mamba2" }, "model.safetensors": weights() });
    await loadRejects(hf2, /mamba2/, /head_dim/, esc(path.join(hf2, "config.json")));
    const ssm = { d_model: 6, n_layer: 2, vocab_size: 24, ssm_cfg: { d_state: 3, d_conv: 3, expand: 2 }, pad_vocab_size_multiple: 8, tie_embeddings: true };
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ ...ssm, ssm_cfg: { ...ssm.ssm_cfg, layer: "Mamba2" } }, /Mamba2.*headdim/],
      [{ ...ssm, ssm_cfg: { ...ssm.ssm_cfg, layer: "Mamba3" } }, /Mamba3.*not supported/],
      [{ ...ssm, attn_layer_idx: [1], attn_cfg: { num_heads: 2 } }, /attention/],
      [{ ...ssm, d_intermediate: 24 }, /MLP/],
      [{ ...ssm, rms_norm: false }, /LayerNorm/],
      [{ ...ssm, d_model: 0 }, /'d_model'/],
      [{ ...ssm, ssm_cfg: { ...ssm.ssm_cfg, d_state: -2 } }, /'d_state'/],
      [{ ...ssm, ssm_cfg: "mamba" }, /ssm_cfg/],
    ];
    for (const [config, pattern] of cases) {
      const dir = folder({ "config.json": config, "model.safetensors": weights() });
      await loadRejects(dir, pattern, esc(path.join(dir, "config.json")));
    }
  });

  test("no weights", async () => {
    const dir = folder({ "config.json": hfConfig });
    await loadRejects(dir, /no weights/, esc(dir));
  });

  test("a missing tensor, named", async () => {
    for (const name of ["backbone.layers.1.mixer.D", "lm_head.weight", "backbone.layers.0.mixer.out_proj.bias", "backbone.norm_f.weight"]) {
      const dir = folder({ "config.json": hfConfig, "model.safetensors": weights(without(name)) });
      await loadRejects(dir, /missing tensor/, esc(`'${name}'`), esc(dir));
    }
  });

  test("a tensor of the wrong shape, named with both shapes", async () => {
    const name = "backbone.layers.0.mixer.x_proj.weight"; // [R + 2N, E] = [8, 10]
    const dir = folder({ "config.json": hfConfig, "model.safetensors": weights(replaced(name, { dtype: "F32", shape: [10, 8], data: new Float32Array(80) })) });
    await loadRejects(dir, esc(`'${name}'`), /shape \[10,8\]/, /needs \[8,10\]/, esc(dir));
    // a config whose sizes disagree with the weights
    const dir2 = folder({ "config.json": { ...hfConfig, state_size: 4 }, "model.safetensors": weights() });
    await loadRejects(dir2, /has shape/, /needs/);
  });

  test("damaged model.safetensors: truncated at several points, garbage, unknown dtype", async () => {
    const good = weights();
    const headerLen = Number(new DataView(good.buffer).getBigUint64(0, true));
    for (const cut of [0, 5, 8 + 10, 8 + headerLen, 8 + headerLen + 100, good.length - 1]) {
      const dir = folder({ "config.json": hfConfig, "model.safetensors": good.subarray(0, cut) });
      await loadRejects(dir, esc(path.join(dir, "model.safetensors")), /too short|header length|truncated|outside/);
    }
    const dir = folder({ "config.json": hfConfig, "model.safetensors": new TextEncoder().encode("<html>not a model</html>") });
    await loadRejects(dir, esc(path.join(dir, "model.safetensors")), /header length|not safetensors/);
    const bad = replaced("backbone.norm_f.weight", { dtype: "F32", shape: [6], data: new Float32Array(6) });
    const bytes = serializeSafetensors(bad);
    // rewrite one dtype in the header in place (same length): F32 -> I32
    const text = new TextDecoder().decode(bytes);
    const at = text.indexOf("\"backbone.norm_f.weight\":{\"dtype\":\"F32\"");
    assert.ok(at > 0);
    bytes[at + "\"backbone.norm_f.weight\":{\"dtype\":\"".length] = "I".charCodeAt(0);
    const dir2 = folder({ "config.json": hfConfig, "model.safetensors": bytes });
    await loadRejects(dir2, /'backbone\.norm_f\.weight'/, /unsupported dtype "I32"/, esc(path.join(dir2, "model.safetensors")));
  });

  test("sharded index naming a missing shard, a shard missing a listed tensor, an index that is not JSON", async () => {
    const names = [...params.keys()];
    const weightMap = Object.fromEntries(names.map((k, i) => [k, i < 5 ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors"]));
    const first = new Map(names.slice(0, 5).map((k) => [k, params.get(k)!]));
    const dir = folder({
      "config.json": hfConfig, "model.safetensors.index.json": { weight_map: weightMap }, "model-00001-of-00002.safetensors": weights(first),
    });
    await loadRejects(dir, /model-00002-of-00002\.safetensors/, /missing/);

    const short = new Map(names.slice(5, -1).map((k) => [k, params.get(k)!]));
    const dir2 = folder({
      "config.json": hfConfig, "model.safetensors.index.json": { weight_map: weightMap },
      "model-00001-of-00002.safetensors": weights(first), "model-00002-of-00002.safetensors": weights(short),
    });
    await loadRejects(dir2, esc(`'${names.at(-1)!}'`), /does not hold it|missing tensor/);

    const dir3 = folder({ "config.json": hfConfig, "model.safetensors.index.json": "{", "model-00001-of-00002.safetensors": weights() });
    await loadRejects(dir3, /not valid JSON/, esc(path.join(dir3, "model.safetensors.index.json")));
    const dir4 = folder({ "config.json": hfConfig, "model.safetensors.index.json": { metadata: {} } });
    await loadRejects(dir4, /weight_map/);
    const dir5 = folder({ "config.json": hfConfig, "model.safetensors.index.json": { weight_map: { [names[0]!]: "../../etc/passwd" } } });
    await loadRejects(dir5, /invalid file name/);
  });

  test("a damaged pytorch_model.bin", async () => {
    const ssmConfig = JSON.parse(readFileSync(fixture("mamba-ssm", "tiny", "config.json"), "utf8")) as unknown;
    const real = readFileSync(fixture("mamba-ssm", "tiny", "pytorch_model.bin"));
    for (const bytes of [new Uint8Array(0), real.subarray(0, real.length >> 1), new TextEncoder().encode("PK not really")]) {
      const dir = folder({ "config.json": ssmConfig, "pytorch_model.bin": new Uint8Array(bytes) });
      await loadRejects(dir, esc(path.join(dir, "pytorch_model.bin")));
    }
  });
});
