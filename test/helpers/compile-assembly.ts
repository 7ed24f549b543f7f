/**
 * Compiles AssemblyScript sources of assembly/ in memory, with the flags of scripts/build-wasm.mjs, from an entry
 * module that exists only here (its path under the repository root, and its text). Used by the kernel tests and the
 * kernel benchmark, so both always run the current sources whatever state the generated module is in.
 */
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import asc from "assemblyscript/asc";

const root = join(dirname(fileURLToPath(import.meta.url)), "../..");

/** entry: e.g. "assembly/x-entry.ts" (never written to disk); features: asc's --enable list, e.g. "simd,relaxed-simd" */
export async function compileAssembly(entry: string, entrySource: string, features: string): Promise<Uint8Array<ArrayBuffer>> {
  let binary: Uint8Array | null = null;
  let stderr = "";
  const { error } = await asc.main([
    entry, "--baseDir", root, "--importMemory", "--sharedMemory", "--initialMemory", "2", "--maximumMemory", "65536",
    "--runtime", "stub", "-O3", "--noAssert", "--enable", features, "--outFile", "kernels.wasm",
  ], {
    readFile(name: string, baseDir: string) {
      if (name.replaceAll("\\", "/").endsWith(entry)) return entrySource;
      try {
        return readFileSync(join(baseDir, name), "utf8");
      } catch {
        return null;
      }
    },
    writeFile(name: string, contents: Uint8Array | string) {
      if (name.endsWith(".wasm")) binary = contents as Uint8Array;
    },
    stderr: { write(chunk: Uint8Array | string) { stderr += String(chunk); return true; } } as never,
    stdout: { write() { return true; } } as never,
  });
  if (error || binary === null) throw new Error(`asc --enable ${features}: ${error?.message ?? "no output"}\n${stderr}`);
  return new Uint8Array(binary as Uint8Array);
}
