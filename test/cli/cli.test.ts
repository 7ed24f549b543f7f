/**
 * The `mamba-ts` command line, run as users run it but from the sources (test/helpers/mamba-ts.ts through tsx, a
 * child process each), against the tiny fixture model. Generated text is compared with what the library API produces
 * for the same options and seed; info's parameter count with a count taken from the safetensors header here; bad
 * input must give exactly one `mamba-ts: error:` line on stderr, the right exit code and no stack trace. The compiled
 * bin/mamba-ts.js is run from an installed package by test/package/install.test.ts.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { loadModel, loadTokenizer, type GenerateOptions, type Tokenizer } from "../../src/index.ts";
import { defaultModelFolder } from "../../src/cli/default-model.ts";
import { CLI_ENTRY, type CliRun as Run, ROOT, cli } from "../helpers/cli.ts";
import { fixture } from "../helpers/fixtures.ts";

const TINY = fixture("hf-mamba", "tiny");

/** Exactly one line on stderr, in the CLI's error format, with no stack trace, and the given exit code. */
function assertOneLineError(r: Run, code: number, mentions?: RegExp): void {
  assert.equal(r.code, code, `exit code (stderr: ${r.stderr})`);
  const lines = r.stderr.split("\n").filter((l) => l.length > 0);
  assert.equal(lines.length, 1, `one line on stderr, got:\n${r.stderr}`);
  assert.match(lines[0]!, /^mamba-ts: error: \S/);
  assert.doesNotMatch(r.stderr, /^\s+at /m, "no stack trace");
  if (mentions) assert.match(lines[0]!, mentions);
}

/** The CLI's generate defaults, as GenerateOptions (the API's own defaults differ: greedy, no penalty). */
const CLI_DEFAULTS: GenerateOptions = { maxNewTokens: 64, temperature: 0.8, topK: 0, topP: 0.95, minP: 0, repetitionPenalty: 1.1 };

let tmp: string;
let modelDir: string; // the tiny fixture model plus the fixture tokenizer.json
let tokenizer: Tokenizer;

/** What the API generates for these prompt ids and options, on the CPU. */
async function apiGenerate(prompt: number[], options: GenerateOptions): Promise<Int32Array> {
  const model = await loadModel(modelDir, { backend: "cpu" });
  try {
    return await model.generate(Int32Array.from(prompt), options);
  } finally {
    await model.dispose();
  }
}

before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), "mamba-ts-cli-"));
  modelDir = path.join(tmp, "tiny");
  await fs.mkdir(modelDir);
  for (const f of await fs.readdir(TINY)) {
    if (f === "config.json" || f === "generation_config.json" || f === "model.safetensors") await fs.copyFile(path.join(TINY, f), path.join(modelDir, f));
  }
  await fs.copyFile(fixture("tokenizer", "tokenizer.json"), path.join(modelDir, "tokenizer.json"));
  tokenizer = await loadTokenizer(modelDir);
});

after(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe("help and version", { timeout: 600_000 }, () => {
  test("--version prints package.json's version", async () => {
    const pkg = JSON.parse(await fs.readFile(path.join(ROOT, "package.json"), "utf8")) as { version: string };
    const r = await cli(["--version"]);
    assert.equal(r.code, 0);
    assert.equal(r.stdout.trim(), pkg.version);
  });

  test("--help lists the commands and exits 0", async () => {
    const r = await cli(["--help"]);
    assert.equal(r.code, 0, r.stderr);
    for (const c of ["generate", "info"]) assert.match(r.stdout, new RegExp(`^\\s+${c}\\b`, "m"));
  });

  test("generate --help lists every option and exits 0", async () => {
    const r = await cli(["generate", "--help"]);
    assert.equal(r.code, 0, r.stderr);
    for (const o of ["--model", "--prompt", "--prompt-ids", "--max-new-tokens", "--temperature", "--top-k", "--top-p",
      "--min-p", "--repetition-penalty", "--seed", "--backend", "--no-prompt-echo", "--no-persistent-decode", "--help"]) {
      assert.ok(r.stdout.includes(o), `generate --help mentions ${o}`);
    }
  });

  test("info --help exits 0", async () => {
    const r = await cli(["info", "--help"]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.includes("--model"));
  });

  test("runs through a symlink, as npm installs it", async () => {
    const binDir = path.join(tmp, "node_modules", ".bin");
    await fs.mkdir(binDir, { recursive: true });
    const link = path.join(binDir, "mamba-ts");
    await fs.symlink(CLI_ENTRY, link);
    const r = await cli(["info", "--model", TINY], { entry: link });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^parameters: \d+/m);
  });
});

/** The number of parameters in a model.safetensors, from its JSON header; a tied lm_head counts once. */
async function safetensorsParameterCount(file: string, tied: boolean): Promise<number> {
  const bytes = await fs.readFile(file);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString("utf8")) as Record<string, { shape?: number[] }>;
  let total = 0;
  for (const [name, e] of Object.entries(header)) {
    if (name === "__metadata__" || (tied && name === "lm_head.weight")) continue;
    total += e.shape!.reduce((a, b) => a * b, 1);
  }
  return total;
}

/** info's `key: value` lines as a map. */
function parseInfo(stdout: string): Map<string, string> {
  return new Map(stdout.trim().split("\n").map((l) => {
    const i = l.indexOf(": ");
    return [l.slice(0, i), l.slice(i + 2)] as [string, string];
  }));
}

describe("info", { timeout: 600_000 }, () => {
  test("prints the config, the parameter count from the checkpoint, dtype, format and folder", async () => {
    const config = JSON.parse(await fs.readFile(path.join(TINY, "config.json"), "utf8")) as Record<string, number | boolean>;
    const want = await safetensorsParameterCount(path.join(TINY, "model.safetensors"), config.tie_word_embeddings === true);
    const r = await cli(["info", "--model", TINY]);
    assert.equal(r.code, 0, r.stderr);
    const info = parseInfo(r.stdout);
    assert.equal(Number(info.get("parameters")!.split(" ")[0]), want);
    assert.equal(info.get("hiddenSize"), String(config.hidden_size));
    assert.equal(info.get("numLayers"), String(config.num_hidden_layers));
    assert.equal(info.get("vocabSize"), String(config.vocab_size));
    assert.equal(info.get("stateSize"), String(config.state_size));
    assert.equal(info.get("intermediateSize"), String(config.intermediate_size));
    assert.equal(info.get("timeStepRank"), String(config.time_step_rank));
    assert.equal(info.get("tieEmbeddings"), String(config.tie_word_embeddings));
    assert.equal(info.get("format"), "hf");
    assert.equal(info.get("dtype"), "F32");
    assert.match(info.get("weights")!, /safetensors/);
    assert.equal(info.get("folder"), TINY);
  });

  test("the same model in the other formats: same parameter count, their own dtype and format", async () => {
    const want = await safetensorsParameterCount(path.join(TINY, "model.safetensors"), true);
    const cases = [
      { dir: fixture("hf-mamba", "tiny-bf16-sharded"), dtype: "BF16", weights: /sharded/, format: "hf" },
      { dir: fixture("hf-mamba", "tiny-f16"), dtype: "F16", weights: /safetensors/, format: "hf" },
      { dir: fixture("mamba-ssm", "tiny"), dtype: "F32", weights: /pytorch_model\.bin/, format: "mamba_ssm" },
      { dir: fixture("gguf", "tiny-q8_0.gguf"), dtype: "Q8_0", weights: /^GGUF \(tiny-q8_0\.gguf\)$/, format: "hf" },
    ];
    for (const c of cases) {
      const r = await cli(["info", "-m", c.dir]);
      assert.equal(r.code, 0, r.stderr);
      const info = parseInfo(r.stdout);
      assert.equal(Number(info.get("parameters")!.split(" ")[0]), want, c.dir);
      assert.equal(info.get("dtype"), c.dtype, c.dir);
      assert.equal(info.get("format"), c.format, c.dir);
      assert.match(info.get("weights")!, c.weights, c.dir);
    }
  });
});

describe("generate", { timeout: 600_000 }, () => {
  test("greedy (--temperature 0) prints the API's greedy continuation, prompt echoed, then a newline", async () => {
    const prompt = [5, 6, 7];
    const r = await cli(["generate", "-m", modelDir, "--prompt-ids", prompt.join(","), "--temperature", "0", "--max-new-tokens", "20", "--backend", "cpu"]);
    assert.equal(r.code, 0, r.stderr);
    const ids = await apiGenerate(prompt, { ...CLI_DEFAULTS, temperature: 0, maxNewTokens: 20 });
    assert.equal(r.stdout, tokenizer.decode(ids) + "\n");
    assert.match(r.stderr, /^backend: cpu$/m);
    const summary = /^(\d+) new tokens? in [\d.]+ s \([\d.]+ tok\/s\)$/m.exec(r.stderr);
    assert.ok(summary, `summary line on stderr:\n${r.stderr}`);
    assert.equal(Number(summary[1]), ids.length - prompt.length);
  });

  test("a text prompt is encoded with the model's tokenizer; --no-prompt-echo prints only the continuation", async () => {
    const text = "snake";
    const prompt = Array.from(tokenizer.encode(text));
    assert.ok(prompt.every((id) => id < 96), "precondition: the prompt's ids fit the fixture model's vocabulary");
    const ids = await apiGenerate(prompt, { ...CLI_DEFAULTS, temperature: 0, maxNewTokens: 16 });

    const echo = await cli(["generate", "-m", modelDir, "--prompt", text, "-t", "0", "-n", "16"]);
    assert.equal(echo.code, 0, echo.stderr);
    assert.equal(echo.stdout, tokenizer.decode(ids) + "\n");
    assert.ok(echo.stdout.startsWith(text));

    const quiet = await cli(["generate", "-m", modelDir, "--prompt", text, "-t", "0", "-n", "16", "--no-prompt-echo"]);
    assert.equal(quiet.code, 0, quiet.stderr);
    assert.equal(quiet.stdout, tokenizer.decode(ids.subarray(prompt.length)) + "\n");
  });

  test("sampling options and --seed reach the sampler: same output as the API with the same seed", async () => {
    const prompt = [40, 41, 42, 43];
    const options = { maxNewTokens: 24, temperature: 1.3, topK: 40, topP: 0.9, minP: 0.02, repetitionPenalty: 1.2, seed: 1234 };
    const r = await cli(["generate", "-m", modelDir, "--prompt-ids", prompt.join(","), "-n", "24", "--temperature", "1.3",
      "--top-k", "40", "--top-p", "0.9", "--min-p", "0.02", "--repetition-penalty", "1.2", "--seed", "1234"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, tokenizer.decode(await apiGenerate(prompt, options)) + "\n");
    assert.doesNotMatch(r.stderr, /^seed:/m, "a given seed is not announced");
  });

  test("without --seed a random seed is printed, and passing it back repeats the run", async () => {
    const args = ["generate", "-m", modelDir, "--prompt-ids", "40,41", "-n", "24", "--temperature", "1.5"];
    const first = await cli(args);
    assert.equal(first.code, 0, first.stderr);
    const m = /^seed: (\d+)$/m.exec(first.stderr);
    assert.ok(m, `seed on stderr:\n${first.stderr}`);
    const ids = await apiGenerate([40, 41], { ...CLI_DEFAULTS, maxNewTokens: 24, temperature: 1.5, seed: Number(m[1]) });
    assert.equal(first.stdout, tokenizer.decode(ids) + "\n");
    const again = await cli([...args, "--seed", m[1]!]);
    assert.equal(again.stdout, first.stdout);
  });

  test("the empty prompt starts from the bos token, as the API does", async () => {
    const r = await cli(["generate", "-m", modelDir, "-t", "0", "-n", "12", "--repetition-penalty", "1"]);
    assert.equal(r.code, 0, r.stderr);
    const ids = await apiGenerate([], { ...CLI_DEFAULTS, temperature: 0, maxNewTokens: 12, repetitionPenalty: 1 });
    assert.equal(r.stdout, tokenizer.decode(ids) + "\n");
  });

  test("Ctrl-C stops generation cleanly: the text so far, a newline, exit 130, no stack", async () => {
    // greedy without a penalty loops without meeting the eos token, so this would run for a long time
    let sent = false;
    const prompt = [5, 6, 7];
    const r = await cli(["generate", "-m", modelDir, "--prompt-ids", prompt.join(","), "-t", "0", "--repetition-penalty", "1",
      "-n", "1000000", "--no-prompt-echo", "--seed", "0"], {
      onStdout: (child) => {
        if (!sent) child.kill("SIGINT");
        sent = true;
      },
    });
    assert.equal(r.code, 130, `exit code (signal ${r.signal}, stderr: ${r.stderr})`);
    assert.doesNotMatch(r.stderr, /^\s+at /m);
    const m = /^interrupted: (\d+) new tokens? in /m.exec(r.stderr);
    assert.ok(m, `interrupted summary on stderr:\n${r.stderr}`);
    const count = Number(m[1]);
    assert.ok(count > 0 && count < 1000000);
    const ids = await apiGenerate(prompt, { ...CLI_DEFAULTS, temperature: 0, repetitionPenalty: 1, maxNewTokens: count });
    assert.equal(r.stdout, tokenizer.decode(ids.subarray(prompt.length)) + "\n");
  });
});

describe("bad input: one line on stderr, exit 2 for usage errors, 1 for others, no stack trace", { timeout: 600_000 }, () => {
  const usage: Array<[string, string[], RegExp]> = [
    ["--top-p 2", ["--top-p", "2"], /top-p.*\(0, 1\]/],
    ["--max-new-tokens -1", ["--max-new-tokens", "-1"], /max-new-tokens.*>= 0/],
    ["--max-new-tokens abc", ["--max-new-tokens", "abc"], /max-new-tokens.*integer/],
    ["--max-new-tokens 2.5", ["--max-new-tokens", "2.5"], /max-new-tokens.*integer/],
    ["--temperature x", ["--temperature", "x"], /temperature.*number/],
    ["--temperature -1", ["--temperature", "-1"], /temperature/],
    ["--temperature Infinity", ["--temperature", "Infinity"], /temperature/],
    ["--top-k -3", ["--top-k", "-3"], /top-k/],
    ["--min-p 1", ["--min-p", "1"], /min-p/],
    ["--repetition-penalty 0", ["--repetition-penalty", "0"], /repetition-penalty/],
    ["--seed 1.5", ["--seed", "1.5"], /seed/],
    ["--backend gpu", ["--backend", "gpu"], /backend/],
    ["--prompt-ids 1,x", ["--prompt-ids", "1,x"], /prompt-ids/],
    ["--prompt with --prompt-ids", ["--prompt", "a", "--prompt-ids", "1"], /prompt/],
    ["an unknown option", ["--top-q", "1"], /unknown option '--top-q'/],
  ];
  for (const [name, args, mentions] of usage) {
    test(`generate ${name}: exit 2`, async () => {
      assertOneLineError(await cli(["generate", "-m", modelDir, ...args]), 2, mentions);
    });
  }

  test("an unknown command: exit 2", async () => {
    assertOneLineError(await cli(["frobnicate"]), 2, /unknown command/);
  });

  test("no --model and no default model installed: exit 2, asks for --model", async () => {
    const env = { MAMBA_TS_DEFAULT_MODEL: path.join(tmp, "no-default-model-here") };
    assertOneLineError(await cli(["generate", "--prompt", "a"], { env }), 2, /--model is required/);
    assertOneLineError(await cli(["info"], { env }), 2, /--model is required/);
  });

  test("no flags at all: generate runs the embedded default model, as the API does", async () => {
    assert.ok(existsSync(defaultModelFolder()), `the embedded model is missing at ${defaultModelFolder()}`);
    const r = await cli(["generate", "--temperature", "0", "--max-new-tokens", "24"]);
    assert.equal(r.code, 0, r.stderr);
    const model = await loadModel(defaultModelFolder(), { backend: "cpu" });
    const tok = await loadTokenizer(defaultModelFolder());
    try {
      const ids = await model.generate(Int32Array.of(model.config.bosTokenId!), { maxNewTokens: 24 });
      assert.equal(r.stdout, tok.decode(ids.subarray(1)) + "\n");
      assert.ok(r.stdout.trim().length > 0);
    } finally {
      await model.dispose();
    }
    const plain = await cli(["generate", "--seed", "5", "--max-new-tokens", "8"]);
    assert.equal(plain.code, 0, plain.stderr);
  });

  test("a missing model folder: exit 1", async () => {
    const missing = path.join(tmp, "no-such-model");
    assertOneLineError(await cli(["generate", "-m", missing]), 1, /not found/);
    assertOneLineError(await cli(["info", "-m", missing]), 1, /not found/);
  });

  test("a model folder without tokenizer.json: generate fails, exit 1", async () => {
    assertOneLineError(await cli(["generate", "-m", TINY, "-n", "2"]), 1, /tokenizer\.json/);
  });

  test("prompt ids outside the model's vocabulary: exit 1", async () => {
    assertOneLineError(await cli(["generate", "-m", modelDir, "--prompt-ids", "1,200"]), 1, /200.*vocabulary/);
  });

  test("damaged files: exit 1, one line; MAMBA_TS_DEBUG=1 adds the stack", async () => {
    const truncated = path.join(tmp, "truncated");
    await fs.cp(modelDir, truncated, { recursive: true });
    const weights = path.join(truncated, "model.safetensors");
    const bytes = await fs.readFile(weights);
    await fs.writeFile(weights, bytes.subarray(0, Math.floor(bytes.length / 2)));
    assertOneLineError(await cli(["info", "-m", truncated]), 1);
    assertOneLineError(await cli(["generate", "-m", truncated, "-n", "2"]), 1);

    const badJson = path.join(tmp, "bad-json");
    await fs.cp(modelDir, badJson, { recursive: true });
    await fs.writeFile(path.join(badJson, "config.json"), "{ not json");
    assertOneLineError(await cli(["info", "-m", badJson]), 1, /config\.json/);

    const badTokenizer = path.join(tmp, "bad-tokenizer");
    await fs.cp(modelDir, badTokenizer, { recursive: true });
    await fs.writeFile(path.join(badTokenizer, "tokenizer.json"), "[1, 2");
    assertOneLineError(await cli(["generate", "-m", badTokenizer, "-n", "2"]), 1, /tokenizer\.json/);

    const debug = await cli(["info", "-m", truncated], { env: { MAMBA_TS_DEBUG: "1" } });
    assert.equal(debug.code, 1);
    assert.match(debug.stderr, /^mamba-ts: error: /);
    assert.match(debug.stderr, /^\s+at /m, "the stack with MAMBA_TS_DEBUG=1");
  });
});
