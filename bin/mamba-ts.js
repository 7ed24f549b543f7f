#!/usr/bin/env node
/**
 * The `mamba-ts` command: runs the compiled CLI (dist/cli/main.js, built from src/ by `npm run build`, which
 * `npm ci` and `npm pack` run). Plain JavaScript, no TypeScript loader. Its import is relative to this file's real
 * location, so it also works through the symlinks npm puts in front of it (npx, npm link, node_modules/.bin).
 */
let code;
try {
  const { main } = await import("../dist/cli/main.js");
  code = await main(process.argv);
} catch (err) {
  // main reports its own errors; this is for a broken install (dist/ not built, a missing dependency)
  const missing = err?.code === "ERR_MODULE_NOT_FOUND" && /dist[\\/]cli[\\/]main\.js/.test(String(err?.message));
  const message = missing ? "the compiled CLI is missing (dist/cli/main.js): run `npm run build` in the package folder"
    : String(err?.message ?? err).split("\n")[0];
  process.stderr.write(`mamba-ts: error: ${message}\n`);
  if (process.env.MAMBA_TS_DEBUG === "1" && err?.stack) process.stderr.write(`${err.stack}\n`);
  code = 1;
}
// wait until what was written to stdout and stderr has been handed to the OS, then exit
await new Promise((resolve) => process.stdout.write("", resolve));
await new Promise((resolve) => process.stderr.write("", resolve));
process.exit(code);
