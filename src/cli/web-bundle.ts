/**
 * Bundling the demo page (web/) with esbuild: web/main.ts and everything it imports from src/ become one ES module,
 * main.js, served beside web/index.html and web/style.css. The build is for browsers and enforces it: a Node
 * built-in module anywhere in the page's imports fails the build, naming the importer. The one Node-only package
 * the WebGPU backend reaches (`webgpu`, Dawn for Node) is imported by src/backend/webgpu/node.ts by a name in a
 * variable, which bundlers leave alone, and only where navigator.gpu is absent; should an import of it by its
 * literal name appear, it is replaced by a stub that throws.
 *
 * The page is shipped prebuilt: `npm run build` writes it to dist/web/, and `mamba-ts demo` run from the compiled
 * package serves those files, so an installed package needs neither esbuild nor web/. Run from the sources (through
 * tsx, as the tests do) it bundles in memory at start, so the page matches the sources. `npm run build:web` writes
 * web/dist/ for any static server.
 */
import { promises as fs } from "node:fs";
import { builtinModules } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { Plugin } from "esbuild";
import { MambaError } from "../errors.ts";
import { PACKAGE_ROOT } from "./common.ts";

export const WEB_DIR = path.join(PACKAGE_ROOT, "web");
const STATIC_FILES = ["index.html", "style.css"];
const NODE_BUILTINS = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]));

/** Fails the build on Node built-ins; stubs the `webgpu` package (browsers have navigator.gpu). */
export function browserOnlyPlugin(): Plugin {
  return {
    name: "mamba-ts-browser-only",
    setup(build) {
      build.onResolve({ filter: /.*/ }, (args) => {
        if (NODE_BUILTINS.has(args.path)) {
          const from = path.relative(PACKAGE_ROOT, args.importer) || args.importer;
          return { errors: [{ text: `'${args.path}' is a Node module, imported by ${from}: the page must not reach it` }] };
        }
        if (args.path === "webgpu") return { path: "webgpu", namespace: "node-only-stub" };
        return undefined;
      });
      build.onLoad({ filter: /.*/, namespace: "node-only-stub" }, () => ({
        contents: "export function create() { throw new Error(\"the 'webgpu' package is for Node: browsers use navigator.gpu\"); }",
        loader: "js",
      }));
    },
  };
}

export interface WebBundle {
  /** file name -> contents: index.html, style.css, main.js, main.js.map (unless sourcemap: false) */
  files: Map<string, Uint8Array>;
  /** the source files that went into main.js, relative to the package root */
  inputs: string[];
}

/** Builds the page in memory. */
export async function bundleWeb(options: { minify?: boolean; entry?: string; sourcemap?: boolean } = {}): Promise<WebBundle> {
  const esbuild = await import("esbuild");
  let result;
  try {
    result = await esbuild.build({
      entryPoints: [options.entry ?? path.join(WEB_DIR, "main.ts")],
      bundle: true,
      format: "esm",
      platform: "browser",
      target: "es2022",
      minify: options.minify ?? false,
      sourcemap: options.sourcemap === false ? false : "linked",
      outfile: path.join(WEB_DIR, "dist", "main.js"),
      write: false,
      metafile: true,
      logLevel: "silent",
      absWorkingDir: PACKAGE_ROOT,
      plugins: [browserOnlyPlugin()],
    });
  } catch (err) {
    const errors = (err as { errors?: { text: string; location?: { file: string; line: number } | null }[] }).errors;
    if (!errors?.length) throw err;
    throw new MambaError(`cannot build the demo page: ${errors.map((e) =>
      `${e.location ? `${e.location.file}:${e.location.line}: ` : ""}${e.text}`).join("; ")}`);
  }
  const files = new Map<string, Uint8Array>();
  for (const out of result.outputFiles) files.set(path.basename(out.path), out.contents);
  for (const name of STATIC_FILES) files.set(name, await fs.readFile(path.join(WEB_DIR, name)));
  return { files, inputs: Object.keys(result.metafile.inputs) };
}

/**
 * Writes the built page, minified, to a folder (web/dist by default), replacing what was there; `sourcemap: false`
 * leaves out main.js.map (the package's prebuilt page does: the map holds every source, three times main.js's size).
 */
export async function writeWebDist(outDir = path.join(WEB_DIR, "dist"), options: { sourcemap?: boolean } = {}): Promise<string[]> {
  const { files } = await bundleWeb({ minify: true, ...options });
  await fs.rm(outDir, { recursive: true, force: true });
  await fs.mkdir(outDir, { recursive: true });
  for (const [name, data] of files) await fs.writeFile(path.join(outDir, name), data);
  return [...files.keys()].map((n) => path.join(outDir, n));
}

/** Where the compiled package keeps the prebuilt page: dist/web/, beside this module's folder (dist/cli/). */
export const PREBUILT_WEB_DIR = fileURLToPath(new URL("../web/", import.meta.url));

/**
 * The page `mamba-ts demo` serves: bundled now when this module runs from the sources (src/cli/web-bundle.ts),
 * else the prebuilt files of dist/web/.
 */
export async function demoPage(): Promise<Map<string, Uint8Array>> {
  if (import.meta.url.endsWith(".ts")) return (await bundleWeb()).files;
  let names: string[];
  try {
    names = await fs.readdir(PREBUILT_WEB_DIR);
  } catch {
    throw new MambaError(`the demo page is not built (${PREBUILT_WEB_DIR} is missing): run \`npm run build\` in the package folder`);
  }
  const files = new Map<string, Uint8Array>();
  for (const name of names) files.set(name, await fs.readFile(path.join(PREBUILT_WEB_DIR, name)));
  if (!files.has("index.html") || !files.has("main.js")) {
    throw new MambaError(`the demo page in ${PREBUILT_WEB_DIR} is incomplete: run \`npm run build\` in the package folder`);
  }
  return files;
}
