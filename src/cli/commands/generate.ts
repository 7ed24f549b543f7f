/**
 * `mamba-ts generate`: loads a model and its tokenizer and streams the continuation of a prompt to stdout as the
 * tokens come (never half a UTF-8 character), then a newline. Notes go to stderr: the backend chosen, the seed when
 * it was drawn at random (so that a run can be repeated with --seed), and a summary (new tokens, tokens per second).
 * Ctrl-C stops generation cleanly: what was generated so far is printed, and the exit code is 130.
 */
import { randomInt } from "node:crypto";
import { existsSync } from "node:fs";
import path from "node:path";
import { setImmediate as nextTurn } from "node:timers/promises";
import { Command, Option } from "commander";
import { type MambaModel, type Tokenizer, loadModel } from "../../index.ts";
import { MambaError } from "../../errors.ts";
import { TextStreamer, loadTokenizer } from "../../tokenizer.ts";
import { ggufInFolder, isGgufPath } from "../../io/gguf.ts";
import type { BackendName } from "../../backend/create.ts";
import { describeBackend } from "../../backend/wasm/create.ts";
import { cpuOptions, generateOptionParser, modelOption, modelSource, parseIntegerList, precisionOption, resolveWithProgress, threadsOption } from "../common.ts";

interface GenerateCliOptions {
  model?: string;
  prompt: string;
  promptIds?: number[];
  maxNewTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  repetitionPenalty: number;
  seed?: number;
  backend: BackendName;
  threads?: number;
  precision: "f32" | "f16" | "auto";
  promptEcho: boolean;
  persistentDecode: boolean;
}

export const EXIT_INTERRUPTED = 130;

export function generateCommand(): Command {
  return new Command("generate")
    .description("generate text from a prompt, streamed to stdout as it comes")
    .addOption(modelOption())
    .addOption(new Option("-p, --prompt <text>", "the prompt (empty: start from the model's bos token)").default(""))
    .addOption(new Option("--prompt-ids <ids>", "the prompt as comma-separated token ids, e.g. 1,2,3 (instead of --prompt)")
      .argParser(parseIntegerList).conflicts("prompt"))
    .addOption(new Option("-n, --max-new-tokens <n>", "new tokens to generate at most")
      .default(64).argParser(generateOptionParser("maxNewTokens", true)))
    .addOption(new Option("-t, --temperature <t>", "sampling temperature; 0 = greedy")
      .default(0.8).argParser(generateOptionParser("temperature", false)))
    .addOption(new Option("--top-k <k>", "keep only the k most likely tokens; 0 = off")
      .default(0).argParser(generateOptionParser("topK", true)))
    .addOption(new Option("--top-p <p>", "keep the most likely tokens whose probability reaches p; 1 = off")
      .default(0.95).argParser(generateOptionParser("topP", false)))
    .addOption(new Option("--min-p <p>", "drop tokens less likely than p times the most likely one; 0 = off")
      .default(0).argParser(generateOptionParser("minP", false)))
    .addOption(new Option("--repetition-penalty <r>", "> 1 discourages tokens already in the prompt or output; 1 = off")
      .default(1.1).argParser(generateOptionParser("repetitionPenalty", false)))
    .addOption(new Option("--seed <n>", "seed of the sampler (default: random, printed on stderr)")
      .argParser(generateOptionParser("seed", true)))
    .addOption(new Option("--backend <name>", "compute backend; auto = WebGPU when available, else CPU")
      .choices(["cpu", "webgpu", "auto"]).default("auto"))
    .addOption(threadsOption())
    .addOption(precisionOption())
    .option("--no-prompt-echo", "print only the continuation, not the prompt before it")
    .option("--no-persistent-decode", "on WebGPU, decode each layer in three dispatches instead of one (for a GPU that " +
      "fails the one-dispatch layer; the WebGpuTuning decodePersistent)")
    .action(async (opts: GenerateCliOptions) => {
      process.exitCode = await runGenerate(opts);
    });
}

async function runGenerate(opts: GenerateCliOptions): Promise<number> {
  const folder = await resolveWithProgress(modelSource(opts.model));
  // the tokenizer first: it is small, and without it there is no point reading the weights
  // (a GGUF file, or a folder holding one, carries its tokenizer in its metadata)
  if (!existsSync(path.join(folder, "tokenizer.json")) && !isGgufPath(folder) && (await ggufInFolder(folder)) === null) {
    throw new MambaError(`no tokenizer.json in ${folder}: generate needs the model's tokenizer to read the prompt and write the text`);
  }
  const tokenizer = await loadTokenizer(folder);

  const notices: string[] = [];
  const model = await loadModel(folder, {
    backend: opts.backend, onNotice: (m) => notices.push(m), webgpu: opts.persistentDecode ? {} : { decodePersistent: false },
    precision: opts.precision, ...cpuOptions(opts.threads),
  });
  try {
    const prompt = opts.promptIds !== undefined ? Int32Array.from(opts.promptIds) : tokenizer.encode(opts.prompt);
    checkPrompt(prompt, model);
    // notes only once nothing in the request can fail before generation starts: bad input gives one error line
    process.stderr.write(`${notices.length > 0 ? notices.join("\n") : `backend: ${model.backend.name}`}\n`);
    process.stderr.write(`engine: ${describeBackend(model.backend)}\n`);
    let seed = opts.seed;
    if (seed === undefined) {
      seed = randomInt(0, 2 ** 31);
      process.stderr.write(`seed: ${seed}\n`);
    }
    return await streamText(model, tokenizer, prompt, { ...opts, seed });
  } finally {
    await model.dispose();
  }
}

/** The checks the model makes on a prompt, made before anything is printed. */
function checkPrompt(prompt: Int32Array, model: MambaModel): void {
  const V = model.config.vocabSize;
  const bad = prompt.findIndex((id) => id < 0 || id >= V);
  if (bad >= 0) throw new MambaError(`prompt token id ${prompt[bad]} at position ${bad} is outside the model's vocabulary [0, ${V})`);
  if (prompt.length === 0 && model.config.bosTokenId === null) {
    throw new MambaError("the prompt is empty and the model has no bos token to start from: pass --prompt");
  }
}

async function streamText(
  model: MambaModel, tokenizer: Tokenizer, prompt: Int32Array, opts: GenerateCliOptions & { seed: number },
): Promise<number> {
  const controller = new AbortController();
  let interrupted = false;
  let stdoutClosed = false;
  const onSigint = () => {
    if (interrupted) process.exit(EXIT_INTERRUPTED); // a second Ctrl-C does not wait
    interrupted = true;
    controller.abort();
  };
  let stdoutError: Error | null = null;
  const onStdoutError = (err: NodeJS.ErrnoException) => {
    // EPIPE: the reader went away (`| head`), stop quietly; any other write error is reported after the loop
    if (err.code !== "EPIPE") stdoutError ??= new MambaError(`cannot write to stdout: ${err.message}`);
    stdoutClosed = true;
    controller.abort();
  };
  let lineOpen = false; // text written and no newline after it yet
  const write = (text: string) => {
    if (text.length === 0 || stdoutClosed) return;
    process.stdout.write(text);
    lineOpen = !text.endsWith("\n");
  };

  process.on("SIGINT", onSigint);
  process.stdout.on("error", onStdoutError);
  const streamer = new TextStreamer(tokenizer);
  if (opts.promptEcho) for (const id of prompt) write(streamer.push(id));
  const start = performance.now();
  let count = 0;
  try {
    const tokens = model.stream(prompt, {
      maxNewTokens: opts.maxNewTokens, temperature: opts.temperature, topK: opts.topK, topP: opts.topP,
      minP: opts.minP, repetitionPenalty: opts.repetitionPenalty, seed: opts.seed, signal: controller.signal,
    });
    for await (const id of tokens) {
      count++;
      write(streamer.push(id));
      // let Ctrl-C and stdout errors in: without this a CPU backend never leaves the microtask queue
      await nextTurn();
    }
  } catch (err) {
    if (!controller.signal.aborted) {
      if (lineOpen) write("\n"); // the error message goes to stderr; end the echoed text's line first
      throw err;
    }
  } finally {
    process.off("SIGINT", onSigint);
  }
  write(streamer.flush() + "\n");
  if (stdoutError) throw stdoutError;
  if (stdoutClosed) return 0;
  const seconds = (performance.now() - start) / 1000;
  const rate = seconds > 0 ? (count / seconds).toFixed(1) : "-";
  process.stderr.write(`${interrupted ? "interrupted: " : ""}${count} new token${count === 1 ? "" : "s"} in ${seconds.toFixed(2)} s (${rate} tok/s)\n`);
  return interrupted ? EXIT_INTERRUPTED : 0;
}
