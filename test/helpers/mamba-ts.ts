/**
 * The `mamba-ts` command run from the sources, for the tests: `node --import tsx test/helpers/mamba-ts.ts ...` does
 * what bin/mamba-ts.js does with the compiled dist/cli/main.js, so the tests exercise src/ without a build. The
 * installed package's own bin is tested by test/package/install.test.ts.
 */
import { main } from "../../src/cli/main.ts";

const code = await main(process.argv);
// wait until what was written to stdout and stderr has been handed to the OS, then exit
await new Promise((resolve) => process.stdout.write("", resolve));
await new Promise((resolve) => process.stderr.write("", resolve));
process.exit(code);
