/**
 * safetensors files (Node): reading a file and writing one atomically (temp file + rename). The format itself,
 * on bytes, is in ./safetensors-format.ts (usable in browsers); its functions are re-exported here.
 */
import { promises as fs } from "node:fs";
import { MambaError } from "../errors.ts";
import { type HostTensor, numel } from "./tensor.ts";
import { lazyFileTensor } from "./lazy-tensor.ts";
import { type SafetensorsEntry, parseSafetensors, safetensorsEntries, safetensorsHeaderLength, serializeSafetensors } from "./safetensors-format.ts";

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

/**
 * Reads a safetensors file's header only: its tensors read their bytes from the file when used (HostTensor.readInto
 * straight into a backend's memory, or `data`), so that loading never holds the whole file beside the weights.
 * The file must stay in place while the tensors are used.
 */
export async function readSafetensorsLazy(path: string): Promise<Map<string, HostTensor>> {
  let entries: SafetensorsEntry[];
  try {
    const fh = await fs.open(path, "r");
    try {
      const size = (await fh.stat()).size;
      const first = new Uint8Array(8);
      await fh.read(first, 0, Math.min(8, size), 0);
      const headerLen = safetensorsHeaderLength(first.subarray(0, Math.min(8, size)), size, path);
      const head = new Uint8Array(8 + headerLen);
      await fh.read(head, 0, head.length, 0);
      entries = safetensorsEntries(head, size, path);
    } finally {
      await fh.close();
    }
  } catch (err) {
    if (err instanceof MambaError) throw err;
    throw new MambaError(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  return new Map(entries.map((e) => [e.name, lazyTensor(path, e)]));
}

function lazyTensor(path: string, e: SafetensorsEntry): HostTensor {
  return lazyFileTensor(path, {
    name: e.name, dtype: e.dtype, shape: e.shape, start: e.start, size: e.end - e.start,
    decode: (raw, t) => {
      const n = numel(t.shape);
      return e.dtype === "F32" ? new Float32Array(raw.buffer, 0, n) : new Uint16Array(raw.buffer, 0, n);
    },
  });
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
