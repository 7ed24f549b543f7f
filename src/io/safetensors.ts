/**
 * safetensors files (Node): reading a file and writing one atomically (temp file + rename). The format itself,
 * on bytes, is in ./safetensors-format.ts (usable in browsers); its functions are re-exported here.
 */
import { promises as fs, closeSync, openSync, readSync } from "node:fs";
import { MambaError } from "../errors.ts";
import { type HostTensor, numel } from "./tensor.ts";
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
  const readInto = (dst: Uint8Array): void => {
    const size = e.end - e.start;
    if (dst.length < size) throw new MambaError(`${path}: tensor '${e.name}' needs ${size} bytes, ${dst.length} given`);
    let fd: number;
    try {
      fd = openSync(path, "r");
    } catch (err) {
      throw new MambaError(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
    try {
      for (let done = 0; done < size;) {
        const n = readSync(fd, dst, done, Math.min(size - done, 1 << 30), e.start + done);
        if (n <= 0) throw new MambaError(`${path}: the file ended inside tensor '${e.name}' (was it changed while loading?)`);
        done += n;
      }
    } finally {
      closeSync(fd);
    }
  };
  // the last array read stays shared while someone holds it, so that repeated reads of `data` read the file once
  let last: WeakRef<Float32Array | Uint16Array> | null = null;
  let assigned: HostTensor["data"] | null = null; // data set by a caller replaces the file's
  const t: HostTensor = {
    dtype: e.dtype,
    shape: e.shape,
    readInto,
    get data(): HostTensor["data"] {
      if (assigned) return assigned;
      const held = last?.deref();
      if (held) return held;
      const raw = new Uint8Array(e.end - e.start);
      readInto(raw);
      const n = numel(this.shape);
      const data = e.dtype === "F32" ? new Float32Array(raw.buffer, 0, n) : new Uint16Array(raw.buffer, 0, n);
      last = new WeakRef(data);
      return data;
    },
    set data(value: HostTensor["data"]) {
      assigned = value;
      delete t.readInto;
    },
  };
  return t;
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
