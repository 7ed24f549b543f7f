/**
 * Bundling the demo page (web/) with esbuild: web/main.ts and everything it imports from src/ become one ES module,
 * main.js, served beside web/index.html and web/style.css. The build is for browsers and enforces it: a Node
 * built-in module anywhere in the page's imports fails the build, naming the importer. The one Node-only package
 * the WebGPU backend reaches (`webgpu`, Dawn for Node, imported lazily by src/backend/webgpu/node.ts and only
 * where navigator.gpu is absent) is replaced by a stub that throws.
 *
 * `mamba-ts demo` bundles in memory at start; `npm run build:web` writes web/dist/ for any static server.
 */
import { promises as fs } from "node:fs";
import { builtinModules } from "node:module";
import path from "node:path";
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
  /** file name -> contents: index.html, style.css, main.js, main.js.map */
  files: Map<string, Uint8Array>;
  /** the source files that went into main.js, relative to the package root */
  inputs: string[];
}

/** Builds the page in memory. */
export async function bundleWeb(options: { minify?: boolean; entry?: string } = {}): Promise<WebBundle> {
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
      sourcemap: "linked",
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

/** Writes the built page to a folder (web/dist by default), replacing what was there. */
export async function writeWebDist(outDir = path.join(WEB_DIR, "dist")): Promise<string[]> {
  const { files } = await bundleWeb({ minify: true });
  await fs.rm(outDir, { recursive: true, force: true });
  await fs.mkdir(outDir, { recursive: true });
  for (const [name, data] of files) await fs.writeFile(path.join(outDir, name), data);
  return [...files.keys()].map((n) => path.join(outDir, n));
}
