#!/usr/bin/env node
/**
 * The `mamba-ts` command. Plain JavaScript so that it runs right after `npm ci`, with no build step: it registers
 * tsx's TypeScript loader, then runs src/cli/main.ts. Paths are taken from this file's real location, so it also
 * works through the symlinks that npm (npx, npm link, node_modules/.bin) puts in front of it.
 */
import { existsSync, realpathSync } from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(realpathSync(fileURLToPath(import.meta.url)));
const root = path.resolve(here, "..");

/** Waits until what was written to stdout and stderr has been handed to the OS, then exits. */
async function exit(code) {
  await new Promise((resolve) => process.stdout.write("", resolve));
  await new Promise((resolve) => process.stderr.write("", resolve));
  process.exit(code);
}

let code;
try {
  const { register } = await import("tsx/esm/api");
  const tsconfig = path.join(root, "tsconfig.json");
  // our own tsconfig, not whatever tsconfig.json the current directory has
  register(existsSync(tsconfig) ? { tsconfig } : {});
  const { main } = await import(pathToFileURL(path.join(root, "src", "cli", "main.ts")).href);
  code = await main(process.argv);
} catch (err) {
  // main reports its own errors; this is for a broken install (tsx missing, a file that does not compile)
  process.stderr.write(`mamba-ts: error: ${String(err?.message ?? err).split("\n")[0]}\n`);
  if (process.env.MAMBA_TS_DEBUG === "1" && err?.stack) process.stderr.write(`${err.stack}\n`);
  code = 1;
}
await exit(code);
