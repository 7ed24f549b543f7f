/**
 * A tensor whose bytes stay in a model file until used (GGUF and safetensors files share it): readInto copies the
 * stored bytes straight into a caller's memory (a backend's buffer), and `data` reads and decodes them when asked.
 * The file must stay in place while the tensor is used.
 */
import { closeSync, openSync, readSync } from "node:fs";
import { MambaError, check } from "../errors.ts";
import type { HostDType, HostTensor } from "./tensor.ts";

export interface StoredTensor {
  name: string; // for messages
  dtype: HostDType;
  shape: number[];
  start: number; // byte offset of the tensor's first byte in the file
  size: number; // bytes
  /** the typed array of `data` over the stored bytes (raw is the tensor's own copy; t is the tensor as it is now) */
  decode(raw: Uint8Array<ArrayBuffer>, t: HostTensor): HostTensor["data"];
}

export function lazyFileTensor(file: string, s: StoredTensor): HostTensor {
  const { name, start, size } = s;
  const readInto = (dst: Uint8Array): void => {
    check(dst.length >= size, `${file}: tensor '${name}' needs ${size} bytes, ${dst.length} given`);
    let fd: number;
    try {
      fd = openSync(file, "r");
    } catch (err) {
      throw new MambaError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
    try {
      for (let done = 0; done < size;) {
        const n = readSync(fd, dst, done, Math.min(size - done, 1 << 30), start + done);
        check(n > 0, `${file}: the file ended inside tensor '${name}' (was it changed while loading?)`);
        done += n;
      }
    } finally {
      closeSync(fd);
    }
  };
  // the last array read stays shared while someone holds it, so that repeated reads of `data` read the file once
  let last: WeakRef<HostTensor["data"]> | null = null;
  let assigned: HostTensor["data"] | null = null; // data set by a caller replaces the file's
  const t: HostTensor = {
    dtype: s.dtype,
    shape: s.shape,
    readInto,
    get data(): HostTensor["data"] {
      if (assigned) return assigned;
      const held = last?.deref();
      if (held) return held;
      const raw = new Uint8Array(size);
      readInto(raw);
      const data = s.decode(raw, t);
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
