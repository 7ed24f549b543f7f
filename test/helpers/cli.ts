/**
 * Running the `mamba-ts` command as a child process, from the sources (test/helpers/mamba-ts.ts through tsx), with
 * a bound: a child still running after `timeoutMs` is killed and the promise rejects, saying so.
 */
import { type ChildProcess, spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
/** the command's entry in the sources; run it with cliArgs */
export const CLI_ENTRY = path.join(ROOT, "test", "helpers", "mamba-ts.ts");
/** tsx's loader, by its resolved URL, so that the child finds it from any working directory */
const TSX = import.meta.resolve("tsx");
/** how long a CLI run may take by default before it is killed */
export const CLI_TIMEOUT_MS = 300_000;

/** The arguments for `spawn(process.execPath, ...)` that run the command with these arguments. */
export function cliArgs(args: string[], entry = CLI_ENTRY): string[] {
  return ["--import", TSX, entry, ...args];
}

/** Kills the child (SIGKILL) when it runs longer than `ms`; returns the timer to clear, and calls onKill first. */
export function killAfter(child: ChildProcess, ms: number, onKill: () => void): NodeJS.Timeout {
  const timer = setTimeout(() => {
    onKill();
    child.kill("SIGKILL");
  }, ms);
  child.once("close", () => clearTimeout(timer));
  return timer;
}

export interface CliRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  env?: NodeJS.ProcessEnv;
  /** the entry to run instead of CLI_ENTRY (a symlink to it, say) */
  entry?: string;
  timeoutMs?: number;
  /** called with all stdout so far whenever some comes (to send the child a signal, say) */
  onStdout?: (child: ChildProcess, text: string) => void;
  /** likewise for stderr */
  onStderr?: (child: ChildProcess, text: string) => void;
}

/** Runs the command and collects its exit code and output; rejects when it must be killed for running too long. */
export function cli(args: string[], opts: CliOptions = {}): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const env = { ...process.env, ...opts.env };
    if (!opts.env?.MAMBA_TS_DEBUG) delete env.MAMBA_TS_DEBUG;
    const child = spawn(process.execPath, cliArgs(args, opts.entry), { env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "", stderr = "";
    let killed = false;
    const ms = opts.timeoutMs ?? CLI_TIMEOUT_MS;
    killAfter(child, ms, () => (killed = true));
    child.stdout!.setEncoding("utf8").on("data", (d: string) => {
      stdout += d;
      opts.onStdout?.(child, stdout);
    });
    child.stderr!.setEncoding("utf8").on("data", (d: string) => {
      stderr += d;
      opts.onStderr?.(child, stderr);
    });
    child.on("error", reject);
    child.on("close", (code, signal) => {
      if (killed) reject(new Error(`mamba-ts ${args.join(" ")} ran past ${ms / 1000} s and was killed; stderr:\n${stderr}`));
      else resolve({ code, signal, stdout, stderr });
    });
  });
}
