/**
 * `mamba-ts serve`: an OpenAI-compatible HTTP server (src/server/) for one model, with continuous batching and a
 * prefix cache of states. Prints its URL on stdout once it listens. SIGINT / SIGTERM stop it accepting requests,
 * let running ones end (up to --shutdown-timeout seconds), and exit 0.
 */
import { existsSync } from "node:fs";
import path from "node:path";
import { Command, InvalidArgumentError, Option } from "commander";
import { loadModel } from "../../index.ts";
import { MambaError } from "../../errors.ts";
import { loadTokenizer } from "../../tokenizer.ts";
import { ggufInFolder, isGgufPath } from "../../io/gguf.ts";
import type { BackendName } from "../../backend/create.ts";
import { describeBackend } from "../../backend/wasm/create.ts";
import { loadChatTemplate } from "../../server/chat.ts";
import { DEFAULTS, startServer } from "../../server/server.ts";
import { cpuOptions, modelOption, modelSource, parseInteger, parseNumber, precisionOption, resolveWithProgress, threadsOption } from "../common.ts";
import { defaultModelFolder } from "../default-model.ts";

interface ServeCliOptions {
  model?: string;
  host: string;
  port: number;
  backend: BackendName;
  maxBatch: number;
  maxPromptTokens: number;
  maxTokensCap: number;
  prefixCacheMb: number;
  shutdownTimeout: number;
  persistentDecode: boolean;
  threads?: number;
  precision: "f32" | "f16" | "auto";
}

const atLeast = (least: number, most = Number.MAX_SAFE_INTEGER) => (text: string) => {
  const v = parseInteger(text);
  if (v < least || v > most) throw new InvalidArgumentError(`must be between ${least} and ${most}.`);
  return v;
};

const nonNegative = (text: string) => {
  const v = parseNumber(text);
  if (v < 0) throw new InvalidArgumentError("must be >= 0.");
  return v;
};

export function serveCommand(): Command {
  return new Command("serve")
    .description("serve the model over an OpenAI-compatible HTTP API (completions, chat completions), with continuous batching")
    .addOption(modelOption())
    .addOption(new Option("--host <address>", "address to listen on").default(DEFAULTS.host))
    .addOption(new Option("--port <n>", "port to listen on (0: any free port)").default(DEFAULTS.port).argParser(atLeast(0, 65535)))
    .addOption(new Option("--backend <name>", "compute backend; auto = WebGPU when available, else CPU")
      .choices(["cpu", "webgpu", "auto"]).default("auto"))
    .addOption(new Option("--max-batch <n>", "requests decoded together at most; more wait in a queue").default(DEFAULTS.maxBatch).argParser(atLeast(1, 4096)))
    .addOption(new Option("--max-prompt-tokens <n>", "the longest prompt accepted").default(DEFAULTS.maxPromptTokens).argParser(atLeast(1)))
    .addOption(new Option("--max-tokens-cap <n>", "the most tokens one request may generate").default(DEFAULTS.maxTokensCap).argParser(atLeast(1)))
    .addOption(new Option("--prefix-cache-mb <mb>", "memory for cached prompt states, in MiB (0: no prefix cache)").default(DEFAULTS.prefixCacheMb).argParser(nonNegative))
    .addOption(new Option("--shutdown-timeout <s>", "on SIGINT/SIGTERM, seconds to let running requests end").default(10).argParser(nonNegative))
    .addOption(threadsOption())
    .addOption(precisionOption())
    .option("--no-persistent-decode", "on WebGPU, decode each layer in three dispatches instead of one (as generate's option)")
    .action(async (opts: ServeCliOptions) => {
      process.exitCode = await runServe(opts);
    });
}

async function runServe(opts: ServeCliOptions): Promise<number> {
  const source = modelSource(opts.model);
  const folder = await resolveWithProgress(source);
  // a GGUF file, or a folder holding one, carries its tokenizer in its metadata
  if (!existsSync(path.join(folder, "tokenizer.json")) && !isGgufPath(folder) && (await ggufInFolder(folder)) === null) {
    throw new MambaError(`no tokenizer.json in ${folder}: serve needs the model's tokenizer`);
  }
  const tokenizer = await loadTokenizer(folder);
  const chat = isGgufPath(folder) ? null : await loadChatTemplate(folder);
  const notices: string[] = [];
  const model = await loadModel(folder, {
    backend: opts.backend, onNotice: (m) => notices.push(m), webgpu: opts.persistentDecode ? {} : { decodePersistent: false },
    precision: opts.precision, ...cpuOptions(opts.threads),
  });
  // the name clients pass as `model`: the repo id, or the folder's name ("default" for the shipped model)
  const name = opts.model === undefined && folder === defaultModelFolder() ? "mamba-ts-default"
    : source.includes("/") && !existsSync(source) ? source : path.basename(path.resolve(folder)).replace(/\.gguf$/i, "");
  let server;
  try {
    server = await startServer({
      model, tokenizer, modelName: name, chat, host: opts.host, port: opts.port, maxBatch: opts.maxBatch,
      maxPromptTokens: opts.maxPromptTokens, maxTokensCap: opts.maxTokensCap, prefixCacheMb: opts.prefixCacheMb,
    });
  } catch (err) {
    await model.dispose();
    const e = err as NodeJS.ErrnoException;
    if (e.code === "EADDRINUSE") throw new MambaError(`cannot listen on ${opts.host}:${opts.port}: the address is in use`);
    if (e.code === "EACCES" || e.code === "EADDRNOTAVAIL") throw new MambaError(`cannot listen on ${opts.host}:${opts.port}: ${e.message}`);
    throw err;
  }
  process.stderr.write(`${notices.length > 0 ? notices.join("\n") : `backend: ${model.backend.name}`}\n`);
  if (model.backend.precision === "f16") process.stderr.write(`engine: ${describeBackend(model.backend)}\n`);
  process.stderr.write(`model: ${name}${chat ? " (chat template)" : ""}; max batch ${opts.maxBatch}, prefix cache ${opts.prefixCacheMb} MiB\n`);
  process.stdout.write(`${server.url}\n`);
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
      process.stderr.write("shutting down: no new requests, waiting for running ones\n");
      resolve();
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
  await server.close(opts.shutdownTimeout * 1000);
  await model.dispose();
  return 0;
}
