/**
 * safetensors files (Node): reading a file and writing one atomically (temp file + rename). The format itself,
 * on bytes, is in ./safetensors-format.ts (usable in browsers); its functions are re-exported here.
 */
import { promises as fs } from "node:fs";
import { MambaError } from "../errors.ts";
import type { HostTensor } from "./tensor.ts";
import { parseSafetensors, serializeSafetensors } from "./safetensors-format.ts";

export { parseSafetensors, serializeSafetensors };

export async function readSafetensors(path: string): Promise<Map<string, HostTensor>> {
  let bytes: Uint8Array;
  try {
    bytes = await fs.readFile(path);
  } catch (err) {
    throw new MambaError(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  return parseSafetensors(bytes, path);
}

/** Writes a file atomically: a temporary file in the same folder, flushed, then renamed over the target. */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const tmp = `${path}.${process.pid}.${Date.now()}.tmp`;
  const fh = await fs.open(tmp, "w");
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await fs.rename(tmp, path);
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw err;
  }
}

export async function writeSafetensors(path: string, tensors: Map<string, HostTensor>, metadata?: Record<string, string>): Promise<void> {
  await writeFileAtomic(path, serializeSafetensors(tensors, metadata));
}
