/**
 * The `mamba-ts` command line (bin/mamba-ts.js runs this). Each command lives in its own module under commands/
 * and is registered by adding its factory to COMMANDS.
 *
 * Errors come out as one line on stderr, `mamba-ts: error: <message>`, never a stack trace (MAMBA_TS_DEBUG=1
 * prints it). Exit codes: 0 success, 1 a failure while running (bad or missing files, a MambaError), 2 a usage
 * error (unknown option, a value that does not parse or is out of range), 130 interrupted (Ctrl-C).
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import { Command, CommanderError } from "commander";
import { PACKAGE_ROOT, UsageError } from "./common.ts";
import { demoCommand } from "./commands/demo.ts";
import { generateCommand } from "./commands/generate.ts";
import { infoCommand } from "./commands/info.ts";
import { trainCommand } from "./commands/train.ts";
import { evalCommand } from "./commands/eval.ts";
import { serveCommand } from "./commands/serve.ts";
import { quantizeCommand } from "./commands/quantize.ts";

/** The commands, in the order --help lists them. Each factory returns a fresh commander Command. */
const COMMANDS: Array<() => Command> = [generateCommand, infoCommand, demoCommand, trainCommand, evalCommand, quantizeCommand, serveCommand];

export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(path.join(PACKAGE_ROOT, "package.json"), "utf8")) as { version?: string };
  return pkg.version ?? "unknown";
}

/** One line: messages with line breaks are joined. */
function oneLine(message: string): string {
  return message.trim().replace(/\s*\n\s*/g, " ");
}

function printError(message: string): void {
  process.stderr.write(`mamba-ts: error: ${oneLine(message)}\n`);
}

export function buildProgram(): Command {
  const program = new Command("mamba-ts")
    .description("Mamba selective state space language models: generate text, inspect checkpoints")
    .version(packageVersion(), "-V, --version", "print the version")
    .helpOption("-h, --help", "print help")
    .helpCommand(false)
    .exitOverride()
    .configureOutput({
      // commander's messages start with "error: "
      outputError: (str) => printError(str.replace(/^error:\s*/, "")),
    });
  for (const make of COMMANDS) {
    const cmd = make();
    cmd.copyInheritedSettings(program);
    program.addCommand(cmd);
  }
  return program;
}

/** Runs the command line (argv as in process.argv) and returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  process.exitCode = undefined;
  try {
    await buildProgram().parseAsync(argv);
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // already printed by outputError (or it is --help / --version, which exit 0)
      return err.exitCode === 0 ? 0 : EXIT_USAGE;
    }
    const e = err as Error;
    printError(e instanceof Error ? e.message : String(err));
    if (process.env.MAMBA_TS_DEBUG === "1" && e instanceof Error && e.stack) process.stderr.write(`${e.stack}\n`);
    if (err instanceof UsageError) return EXIT_USAGE;
    return EXIT_FAILURE;
  }
}
