/**
 * `mamba-ts demo`: serves the demo page on 127.0.0.1 and prints its address. The page loads the model (the one
 * shipped with the package, or --model), generates on WebGPU or the CPU in the browser, and draws per token and
 * layer the Δ of the selective scan and how much of the state each token keeps.
 *
 * The page comes prebuilt with the compiled package (dist/web/); run from the sources, it is bundled from web/ with
 * esbuild when the command starts, so it matches them (web-bundle.ts's demoPage). Without
 * --model and with no model installed in the package, the page runs a small untrained model and says so.
 * Port 8080 by default; when that one is busy the server takes any free port and says so (a port given with
 * --port must be free). Ctrl-C stops the server.
 */
import { existsSync } from "node:fs";
import path from "node:path";
import { Command, InvalidArgumentError, Option } from "commander";
import { MambaError } from "../../errors.ts";
import { UsageError, parseInteger, resolveWithProgress } from "../common.ts";
import { defaultModelFolder } from "../default-model.ts";
import { type DemoServer, startDemoServer } from "../demo-server.ts";
import { demoPage } from "../web-bundle.ts";

export const DEFAULT_PORT = 8080;

interface DemoCliOptions {
  port?: number;
  model?: string;
}

function parsePort(text: string): number {
  const v = parseInteger(text);
  if (v < 0 || v > 65535) throw new InvalidArgumentError("a port is between 0 and 65535.");
  return v;
}

export function demoCommand(): Command {
  return new Command("demo")
    .description("serve the demo page: generation in the browser (WebGPU or CPU) and a map of what each token writes into the state")
    .addOption(new Option("--port <n>", `port on 127.0.0.1; 0 = any free port (default: ${DEFAULT_PORT}, or any free one when it is busy)`)
      .argParser(parsePort))
    .addOption(new Option("-m, --model <folder|repo>",
      "model folder with config.json, weights and tokenizer.json, or a Hugging Face repo id (default: the model shipped with the package)"))
    .action(async (opts: DemoCliOptions) => {
      process.exitCode = await runDemo(opts);
    });
}

/** Checks that a folder has what the page needs, before the server starts. */
function checkModelFolder(folder: string): void {
  if (!existsSync(folder)) throw new MambaError(`model folder not found: ${folder}`);
  if (!existsSync(path.join(folder, "config.json"))) throw new MambaError(`no config.json in ${folder}`);
  const weights = ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"];
  if (!weights.some((w) => existsSync(path.join(folder, w)))) {
    throw new MambaError(`no weights in ${folder} (looked for ${weights.join(", ")})`);
  }
  if (!existsSync(path.join(folder, "tokenizer.json"))) {
    throw new MambaError(`no tokenizer.json in ${folder}: the demo needs the model's tokenizer to read the prompt`);
  }
}

async function runDemo(opts: DemoCliOptions): Promise<number> {
  let modelFolder: string | null = null;
  let noModelMessage: string | undefined;
  if (opts.model !== undefined) {
    if (opts.model.length === 0) throw new UsageError("--model is empty");
    modelFolder = await resolveWithProgress(opts.model);
    checkModelFolder(modelFolder);
  } else {
    const folder = defaultModelFolder();
    if (existsSync(path.join(folder, "config.json"))) {
      checkModelFolder(folder);
      modelFolder = folder;
    } else {
      noModelMessage = `No model is installed with mamba-ts (${folder} is missing; start the demo with --model <folder> to use another).`;
    }
  }

  const page = await demoPage();
  const serve = (port: number) => startDemoServer({ port, page, modelFolder, ...(noModelMessage ? { noModelMessage } : {}) });
  let server: DemoServer;
  if (opts.port !== undefined) {
    server = await serve(opts.port).catch((err: unknown) => {
      if (err instanceof MambaError && /in use/.test(err.message)) throw new MambaError(`${err.message} (pass --port 0 for any free port)`);
      throw err;
    });
  } else {
    try {
      server = await serve(DEFAULT_PORT);
    } catch (err) {
      if (!(err instanceof MambaError && /in use/.test(err.message))) throw err;
      server = await serve(0);
      process.stderr.write(`port ${DEFAULT_PORT} is in use: serving on port ${server.port} instead\n`);
    }
  }

  process.stderr.write(modelFolder ? `model: ${modelFolder}\n` : `model: none installed, the page runs a small untrained model\n`);
  process.stdout.write(`mamba-ts demo: serving ${server.url}\n`);
  process.stderr.write("press Ctrl-C to stop\n");
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
      resolve();
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
  await server.close();
  process.stderr.write("demo stopped\n");
  return 0;
}
