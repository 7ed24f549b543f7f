/**
 * Benchmark runner: `npm run bench` runs every bench/<name>.bench.ts; `npm run bench -- cpu` runs one.
 * Each module default-exports `async function (): Promise<void>` that prints its own table: our figure, the
 * anchor's (bench/anchors/h100.json) where one exists, their ratio, shapes, dtype and device.
 */
import { readdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const all = readdirSync(here).filter((f) => f.endsWith(".bench.ts")).map((f) => f.slice(0, -".bench.ts".length)).sort();
const wanted = process.argv.slice(2).filter((a) => !a.startsWith("-"));
for (const name of wanted) {
  if (!all.includes(name)) {
    console.error(`bench: unknown benchmark '${name}' (have: ${all.join(", ")})`);
    process.exit(2);
  }
}
for (const name of wanted.length ? wanted : all) {
  console.log(`\n== ${name} ==`);
  const mod = (await import(`./${name}.bench.ts`)) as { default: () => Promise<void> };
  await mod.default();
}
