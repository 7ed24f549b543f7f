/** The package entry for plain Node.js: lib/index.js loads without tsx on the command line and gives the same API. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { defaultModelFolder, loadModel } from "../src/index.ts";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

test("lib/index.js: plain node imports the API and generates what the TypeScript API generates", async () => {
  const entry = pathToFileURL(path.join(root, "lib", "index.js")).href;
  const script = `const m = await import(${JSON.stringify(entry)});
    const model = await m.loadModel(m.defaultModelFolder(), { backend: "cpu" });
    const ids = await model.generate(Int32Array.of(72, 105), { maxNewTokens: 6 });
    await model.dispose();
    console.log(JSON.stringify(Array.from(ids)), typeof m.MambaError, typeof m.createModel);`;
  const out = execFileSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8", env: { ...process.env, NODE_OPTIONS: "" } });
  const model = await loadModel(defaultModelFolder(), { backend: "cpu" });
  const want = await model.generate(Int32Array.of(72, 105), { maxNewTokens: 6 });
  await model.dispose();
  assert.equal(out.trim(), `${JSON.stringify(Array.from(want))} function function`);
});
