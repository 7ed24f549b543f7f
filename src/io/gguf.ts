/**
 * GGUF model files on disk (Node). Reading takes the header first; each tensor reads its bytes when a backend
 * uploads it, so that a big file is never held beside its weights; writing streams tensor by tensor into a temporary file renamed over the target
 * when complete. The container is ./gguf-format.ts and the model mapping ./gguf-model.ts (both usable in
 * browsers); their main functions are re-exported here.
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import { MambaError, check } from "../errors.ts";
import type { HostTensor } from "./tensor.ts";
import { numel } from "./tensor.ts";
import { lazyFileTensor } from "./lazy-tensor.ts";
import { type GgufFile, type GgufTensorInfo, type GgufTensorOut, type GgufValue, NeedMoreBytes, ggmlBytes, ggmlDType, ggufHeader,
  parseGgufHeader, tensorBytes, tensorFromBytes } from "./gguf-format.ts";
import { type GgufModel, ggufModelFrom } from "./gguf-model.ts";

export { parseGgufHeader, serializeGguf, isGguf } from "./gguf-format.ts";
export { readGgufModel, ggufModelContent, ggufTokenizerJson } from "./gguf-model.ts";
export type { GgufModel, GgufFileType } from "./gguf-model.ts";

const ioError = (file: string, err: unknown) =>
  new MambaError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);

/** True for a path that names a .gguf file (by its extension). */
export function isGgufPath(p: string): boolean {
  return p.toLowerCase().endsWith(".gguf");
}

/** The one .gguf file in a folder, null when there is none; several are an error (which one is meant?). */
export async function ggufInFolder(folder: string): Promise<string | null> {
  let names: string[];
  try {
    names = await fs.readdir(folder);
  } catch {
    return null;
  }
  const found = names.filter((n) => isGgufPath(n)).sort();
  if (found.length === 0) return null;
  check(found.length === 1, `${folder} holds several GGUF files (${found.join(", ")}); pass the one to load`);
  return path.join(folder, found[0]!);
}

/** Reads a GGUF file's header (metadata and tensor table), reading only as much of the file as it takes. */
export async function readGgufHeader(file: string): Promise<GgufFile> {
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(file, "r");
  } catch (err) {
    throw ioError(file, err);
  }
  try {
    return await headerOf(fh, file);
  } finally {
    await fh.close();
  }
}

async function headerOf(fh: fs.FileHandle, file: string): Promise<GgufFile> {
  const size = (await fh.stat()).size;
  for (let window = Math.min(size, 1 << 20); ; window = Math.min(size, window * 4)) {
    const head = new Uint8Array(window);
    const { bytesRead } = await fh.read(head, 0, window, 0).catch((err: unknown) => { throw ioError(file, err); });
    check(bytesRead === window, `${file}: the file changed while it was read`);
    try {
      return parseGgufHeader(head, file, size);
    } catch (err) {
      if (!(err instanceof NeedMoreBytes) || window === size) throw err;
    }
  }
}

/**
 * Reads a GGUF model file: config, tensors under Hugging Face names (checked against the config), tokenizer.
 * Only the header is read here: each tensor reads its bytes from the file when used (HostTensor.readInto straight
 * into a backend's memory, or `data`), so that loading never holds the file beside the weights. The file must stay
 * in place while the tensors are used.
 */
export async function readGgufFile(file: string): Promise<GgufModel> {
  const header = await readGgufHeader(file);
  return ggufModelFrom(header, file, (t) => lazyTensor(file, header, t));
}

function lazyTensor(file: string, header: GgufFile, info: GgufTensorInfo): HostTensor {
  return lazyFileTensor(file, {
    name: info.name, dtype: ggmlDType(info.type)!, shape: [...info.dims].reverse(),
    start: header.dataOffset + info.offset, size: tensorBytes(info),
    decode: (raw) => tensorFromBytes(info, raw).data,
  });
}

/**
 * Writes a GGUF file atomically (a temporary file in the same folder, renamed over `file` when complete and
 * flushed). Each tensor's bytes are made when it is written; onTensor reports progress after each.
 */
export async function writeGgufFile(file: string, metadata: Map<string, GgufValue>, tensors: GgufTensorOut[],
  onTensor?: (done: number, total: number, bytes: number, totalBytes: number) => void): Promise<void> {
  const { header, offsets, dataSize } = ggufHeader(metadata, tensors);
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${Date.now()}.tmp`);
  const fh = await fs.open(tmp, "w");
  let ok = false;
  try {
    await fh.write(header, 0, header.length, 0);
    let written = 0;
    for (let i = 0; i < tensors.length; i++) {
      const t = tensors[i]!;
      const bytes = typeof t.data === "function" ? t.data() : t.data;
      check(bytes.length === ggmlBytes(t.dtype, numel(t.shape)), `tensor '${t.name}': ${bytes.length} bytes do not hold ${t.dtype} [${t.shape}]`);
      await fh.write(bytes, 0, bytes.length, header.length + offsets[i]!);
      written += bytes.length;
      onTensor?.(i + 1, tensors.length, written, dataSize);
    }
    // the padding after the last tensor
    await fh.truncate(header.length + dataSize);
    await fh.sync();
    ok = true;
  } finally {
    await fh.close();
    if (!ok) await fs.rm(tmp, { force: true });
  }
  try {
    await fs.rename(tmp, file);
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw new MambaError(`cannot write ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
}
