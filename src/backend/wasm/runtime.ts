/**
 * The WebAssembly engine's machinery: the compiled kernels, one shared memory, an allocator over it and a pool of
 * worker threads that run each kernel call on their shares of its work range.
 *
 * Kernels (assembly/, built by scripts/build-wasm.mjs) take byte offsets into the memory, sizes, and a work range
 * [r0, r1) last. `run(name, args, total, grain)` cuts [0, total) in chunks of whole grains that the calling thread
 * and the workers claim one at a time, and returns when every chunk is done. Each output belongs to one chunk and
 * is computed the same way whatever the chunk or the thread, so results do not depend on the thread count.
 *
 * Threads: workers get the compiled module and the memory once, then wait for jobs on a control block in the shared
 * memory (Atomics): they spin a short while after each job, since the next one usually follows within
 * microseconds, then sleep in Atomics.wait. The caller claims chunks too, so on a machine busy with other work a
 * job never waits for a worker that is not scheduled to start. Where shared memory is missing (a page without cross-origin isolation)
 * the engine is not made: the caller falls back to the reference backend and says so.
 */
import { MambaError } from "../../errors.ts";
import { plainWasmBase64, relaxedWasmBase64 } from "./generated/kernels.ts";

export type SimdPath = "relaxed" | "plain";

type KernelFn = (...args: number[]) => number | void;

/** An argument that differs by thread: thread i (the caller is 0) gets args[arg] + i * stride (its scratch). */
export interface PerThreadArg {
  arg: number;
  stride: number;
}

const PAGE = 65536;
const MAX_PAGES = 65536; // 4 GiB: wasm32's limit
/** The control block's words (Int32 indices). A job is cut in chunks that threads claim through `ticket`: the job's
 *  tag (its generation's low bits) and the next chunk. A thread that claims runs the chunk and counts it in `done`;
 *  the caller claims too, so a job finishes even when the workers are not scheduled (a busy machine), and which
 *  thread runs a chunk changes nothing in its results. */
const C = {
  gen: 0, ticket: 1, fn: 2, nargs: 3, total: 4, chunkSize: 5, stop: 6, error: 7, perThreadArg: 8, perThreadStride: 9,
  chunks: 10, done: 11,
} as const;
const CTRL_INTS = 16;
const TAG_BITS = 12;
const TAG_MASK = (1 << TAG_BITS) - 1;
const CHUNK_BITS = 31 - TAG_BITS;
/** A ticket no tag matches: between jobs. */
const CLOSED = -1;
/** Chunks a job is cut into, per thread: a few, so that a thread that starts late still gets a share. */
const CHUNKS_PER_THREAD = 4;

/** The next chunk of the job tagged `tag`, or -1 when its chunks are all claimed or another job is on. */
function claim(c: Int32Array, tag: number, chunks: number): number {
  for (;;) {
    const v = Atomics.load(c, C.ticket);
    if (v >>> CHUNK_BITS !== tag) return -1;
    const k = v & ((1 << CHUNK_BITS) - 1);
    if (k >= chunks) return -1;
    if (Atomics.compareExchange(c, C.ticket, v, v + 1) === v) return k;
  }
}

/** claim() as source for the workers. */
function claimSource(): string {
  return `function claim(c, tag, chunks) {
    for (;;) {
      const v = Atomics.load(c, ${C.ticket});
      if ((v >>> ${CHUNK_BITS}) !== tag) return -1;
      const k = v & ${(1 << CHUNK_BITS) - 1};
      if (k >= chunks) return -1;
      if (Atomics.compareExchange(c, ${C.ticket}, v, v + 1) === v) return k;
    }
  }`;
}

const MAX_ARGS = 32;
/** Atomics.load polls a worker makes before it sleeps (some tens of microseconds: decode's jobs follow each other
 *  closer than a wake-up takes), and that the caller makes before it sleeps until the last chunk is done. */
const SPIN = 20_000;
const CALLER_SPIN = 2_000;

function decodeBase64(text: string): Uint8Array {
  if (typeof atob === "function") {
    const bin = atob(text);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  throw new MambaError("no base64 decoder in this JavaScript runtime");
}

interface NodeV8 { setFlagsFromString(flags: string): void }
interface NodeProcess { versions?: { node?: string }; getBuiltinModule?: (id: string) => unknown }
const nodeProcess = (globalThis as { process?: NodeProcess }).process;
const isNode = typeof nodeProcess?.versions?.node === "string";

/** Node's built-in module by name, without an import that a browser bundle would follow. */
function nodeBuiltin<T>(id: string): T | null {
  if (!isNode || typeof nodeProcess?.getBuiltinModule !== "function") return null;
  return nodeProcess.getBuiltinModule(id) as T;
}

let compiled: Promise<{ module: WebAssembly.Module; path: SimdPath; note: string }> | null = null;

/**
 * The kernels' module: the relaxed-SIMD build where the runtime validates it, else the plain one. Node 20 has
 * relaxed SIMD behind a V8 flag, which is set when the first validation fails. `prefer: "plain"` forces the plain
 * build (tests of both paths).
 */
export function compileKernels(prefer: SimdPath | "auto" = "auto"): Promise<{ module: WebAssembly.Module; path: SimdPath; note: string }> {
  if (prefer === "plain") return WebAssembly.compile(decodeBase64(plainWasmBase64) as BufferSource).then((module) => ({ module, path: "plain" as const, note: "plain SIMD (asked for)" }));
  if (compiled) return compiled;
  compiled = (async () => {
    const relaxed = decodeBase64(relaxedWasmBase64);
    let ok = WebAssembly.validate(relaxed as BufferSource);
    let note = "relaxed SIMD";
    if (!ok) {
      const v8 = nodeBuiltin<NodeV8>("node:v8");
      if (v8) {
        try {
          v8.setFlagsFromString("--experimental-wasm-relaxed-simd");
          ok = WebAssembly.validate(relaxed as BufferSource);
          note = "relaxed SIMD (enabled by V8 flag)";
        } catch {
          ok = false;
        }
      }
    }
    if (ok) return { module: await WebAssembly.compile(relaxed as BufferSource), path: "relaxed" as const, note };
    const plain = decodeBase64(plainWasmBase64);
    return { module: await WebAssembly.compile(plain as BufferSource), path: "plain" as const, note: "plain SIMD (no relaxed SIMD in this runtime)" };
  })();
  return compiled;
}

/** Whether this runtime can share memory between threads (SharedArrayBuffer and Atomics, isolation in pages). */
export function sharedMemoryAvailable(): boolean {
  if (typeof SharedArrayBuffer === "undefined" || typeof Atomics === "undefined") return false;
  const isolated = (globalThis as { crossOriginIsolated?: boolean }).crossOriginIsolated;
  return isolated !== false;
}

/** Whether this thread may block in Atomics.wait (not a page's main thread). */
function canBlock(): boolean {
  if (isNode) return true;
  return typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== "undefined";
}

// The code each worker runs, in Node (worker_threads, eval) and in browsers (a Blob URL) alike.
const WORKER_SOURCE = `
"use strict";
// (Node workers are made only where process.getBuiltinModule exists: see nodeBuiltin)
const nodeThreads = typeof self !== "undefined" ? null : process.getBuiltinModule("node:worker_threads");
const nodePort = nodeThreads ? nodeThreads.parentPort : null;
const post = (m) => (nodePort ? nodePort.postMessage(m) : self.postMessage(m));
const onFirst = (fn) => {
  if (nodePort) nodePort.once("message", fn);
  else self.onmessage = (e) => { self.onmessage = null; fn(e.data); };
};
onFirst((init) => {
  const { module, memory, ctrl, args, index, spin } = init;
  let fns;
  try {
    const inst = new WebAssembly.Instance(module, { env: { memory, abort() { throw new Error("abort"); } } });
    fns = init.names.map((n) => inst.exports[n]);
  } catch (err) {
    post({ error: String(err && err.message || err) });
    return;
  }
  const c = new Int32Array(memory.buffer, ctrl, ${CTRL_INTS});
  const a = new Float64Array(memory.buffer, args, ${MAX_ARGS});
  ${claimSource()}
  let gen = Atomics.load(c, ${C.gen});
  post({ ready: true });
  for (;;) {
    let polls = 0;
    while (Atomics.load(c, ${C.gen}) === gen) {
      if (++polls > spin) { Atomics.wait(c, ${C.gen}, gen); polls = 0; }
    }
    gen = Atomics.load(c, ${C.gen});
    if (Atomics.load(c, ${C.stop}) !== 0) break;
    const tag = gen & ${TAG_MASK};
    const chunks = c[${C.chunks}];
    for (;;) {
      const k = claim(c, tag, chunks);
      if (k < 0) break;
      // the claimed chunk holds the job open: its fields stay until the chunk is counted done
      try {
        const nargs = c[${C.nargs}], total = c[${C.total}], size = c[${C.chunkSize}];
        const list = new Array(nargs + 2);
        for (let i = 0; i < nargs; i++) list[i] = a[i];
        if (c[${C.perThreadArg}] >= 0) list[c[${C.perThreadArg}]] += index * c[${C.perThreadStride}];
        list[nargs] = k * size;
        list[nargs + 1] = Math.min(total, (k + 1) * size);
        fns[c[${C.fn}]].apply(null, list);
      } catch (err) {
        Atomics.store(c, ${C.error}, 1);
      }
      if (Atomics.add(c, ${C.done}, 1) + 1 === chunks) Atomics.notify(c, ${C.done});
    }
  }
});
`;

/**
 * The size of the block that holds `bytes`: free blocks are reused by size, so sizes below 16 MiB (activations,
 * whose sizes vary with the batch and the chunk) are rounded up to one of four steps per power of two (at most 25%
 * more), and larger ones (weights, made once) to 64 bytes only.
 */
function blockSize(bytes: number): number {
  const b = Math.max(64, Math.ceil(bytes / 64) * 64);
  if (b >= 1 << 24) return b;
  const step = 2 ** Math.max(6, Math.floor(Math.log2(b)) - 2);
  return Math.ceil(b / step) * step;
}

interface PoolWorker {
  post(msg: unknown): void;
  terminate(): void;
}

async function startWorker(init: Record<string, unknown>): Promise<PoolWorker> {
  const threads = nodeBuiltin<typeof import("node:worker_threads")>("node:worker_threads");
  if (threads) {
    const w = new threads.Worker(WORKER_SOURCE, { eval: true, execArgv: [] });
    w.unref(); // a waiting worker never keeps the process alive
    const ready = new Promise<void>((resolve, reject) => {
      w.once("message", (m: { ready?: boolean; error?: string }) => (m.ready ? resolve() : reject(new MambaError(`wasm worker: ${m.error}`))));
      w.once("error", (e: Error) => reject(new MambaError(`wasm worker: ${e.message}`)));
    });
    w.postMessage(init);
    await ready;
    return { post: (m) => w.postMessage(m), terminate: () => void w.terminate() };
  }
  const url = URL.createObjectURL(new Blob([WORKER_SOURCE], { type: "text/javascript" }));
  const w = new Worker(url);
  const ready = new Promise<void>((resolve, reject) => {
    w.onmessage = (e: MessageEvent<{ ready?: boolean; error?: string }>) => (e.data.ready ? resolve() : reject(new MambaError(`wasm worker: ${e.data.error}`)));
    w.onerror = (e: ErrorEvent) => reject(new MambaError(`wasm worker: ${e.message}`));
  });
  w.postMessage(init);
  try {
    await ready;
  } finally {
    URL.revokeObjectURL(url);
  }
  return { post: (m) => w.postMessage(m), terminate: () => w.terminate() };
}

/** The kernels instantiated over one shared memory, with its allocator and thread pool. */
export class WasmRuntime {
  private readonly fns: KernelFn[];
  private readonly fnIndex = new Map<string, number>();
  private readonly ctrl: Int32Array;
  private readonly args: Float64Array;
  private workers: PoolWorker[] = [];
  private top: number;
  private readonly free = new Map<number, number[]>();
  /** bytes handed out and not freed */
  used = 0;
  private destroyed = false;

  private constructor(
    readonly memory: WebAssembly.Memory,
    readonly module: WebAssembly.Module,
    readonly path: SimdPath,
    readonly pathNote: string,
    readonly threads: number,
    readonly exports: Record<string, unknown>,
  ) {
    this.fns = [];
    for (const [name, v] of Object.entries(exports)) {
      if (typeof v === "function") {
        this.fnIndex.set(name, this.fns.length);
        this.fns.push(v as KernelFn);
      }
    }
    const base = Math.ceil(((exports.heapBase as () => number)() >>> 0) / 64) * 64;
    this.ctrl = new Int32Array(memory.buffer, base, CTRL_INTS);
    this.args = new Float64Array(memory.buffer, base + 4 * CTRL_INTS, MAX_ARGS);
    this.top = base + 4 * CTRL_INTS + 8 * MAX_ARGS;
  }

  /** Compiles (once per process) and instantiates the kernels, and starts threads - 1 workers. */
  static async create(threads: number, prefer: SimdPath | "auto" = "auto"): Promise<WasmRuntime> {
    if (!sharedMemoryAvailable()) throw new MambaError("shared memory (SharedArrayBuffer) is not available here");
    const { module, path, note } = await compileKernels(prefer);
    const memory = new WebAssembly.Memory({ initial: 32, maximum: MAX_PAGES, shared: true });
    const inst = await WebAssembly.instantiate(module, { env: { memory, abort() { throw new MambaError("wasm kernel aborted"); } } });
    // without a way to start threads (Node before 20.16 has no process.getBuiltinModule) the engine runs one
    const poolable = nodeBuiltin("node:worker_threads") !== null || (!isNode && typeof Worker === "function");
    const count = poolable ? Math.max(1, Math.floor(threads)) : 1;
    const why = count < threads ? "; one thread: no worker threads in this runtime" : "";
    const rt = new WasmRuntime(memory, module, path, note + why, count, inst.exports as Record<string, unknown>);
    try {
      const names = [...rt.fnIndex.keys()];
      const init = (index: number) => ({
        module, memory, ctrl: rt.ctrl.byteOffset, args: rt.args.byteOffset, index, names, spin: SPIN,
      });
      rt.workers = await Promise.all(Array.from({ length: rt.threads - 1 }, (_, i) => startWorker(init(i + 1))));
    } catch (err) {
      rt.destroy();
      throw err;
    }
    return rt;
  }

  /** Calls kernel `name` once on this thread (kernels with no work range). */
  call(name: string, args: readonly number[]): number | void {
    const id = this.fnIndex.get(name);
    if (id === undefined) throw new MambaError(`wasm kernel '${name}' is missing from the build`);
    return this.fns[id]!(...args);
  }

  has(name: string): boolean {
    return this.fnIndex.has(name);
  }

  /**
   * Runs kernel `name`(...args, r0, r1) over [0, total): on this thread alone when `parallel` is false, else split in
   * whole grains between every thread, this one taking the first share.
   */
  run(name: string, args: readonly number[], total: number, grain = 1, parallel = true, perThread: PerThreadArg | null = null): void {
    const id = this.fnIndex.get(name);
    if (id === undefined) throw new MambaError(`wasm kernel '${name}' is missing from the build`);
    const fn = this.fns[id]!;
    if (total <= 0) return;
    const P = this.threads;
    if (!parallel || P === 1 || total <= grain) {
      fn(...args, 0, total);
      return;
    }
    if (args.length > MAX_ARGS) throw new MambaError(`wasm kernel '${name}': ${args.length} arguments, the pool passes ${MAX_ARGS}`);
    const c = this.ctrl;
    const units = Math.ceil(total / grain);
    const chunkSize = Math.ceil(units / (P * CHUNKS_PER_THREAD)) * grain;
    const chunks = Math.ceil(total / chunkSize);
    Atomics.store(c, C.ticket, CLOSED);
    for (let i = 0; i < args.length; i++) this.args[i] = args[i]!;
    c[C.fn] = id; c[C.nargs] = args.length; c[C.total] = total; c[C.chunkSize] = chunkSize; c[C.error] = 0;
    c[C.perThreadArg] = perThread ? perThread.arg : -1; c[C.perThreadStride] = perThread ? perThread.stride : 0;
    c[C.chunks] = chunks; c[C.done] = 0;
    const tag = (c[C.gen]! + 1) & TAG_MASK;
    Atomics.store(c, C.ticket, tag << CHUNK_BITS);
    Atomics.add(c, C.gen, 1);
    Atomics.notify(c, C.gen);
    let failure: unknown = null;
    for (;;) {
      const k = claim(c, tag, chunks);
      if (k < 0) break;
      try {
        fn(...args, k * chunkSize, Math.min(total, (k + 1) * chunkSize));
      } catch (err) {
        failure = err;
      }
      Atomics.add(c, C.done, 1);
    }
    // wait for the chunks that workers claimed: poll, then sleep where this thread may
    const block = canBlock();
    let polls = 0;
    for (;;) {
      const done = Atomics.load(c, C.done);
      if (done >= chunks) break;
      if (++polls > CALLER_SPIN && block) { Atomics.wait(c, C.done, done, 5); polls = 0; }
    }
    Atomics.store(c, C.ticket, CLOSED);
    if (failure) throw failure;
    if (Atomics.load(c, C.error) !== 0) throw new MambaError(`wasm kernel '${name}' failed in a worker thread`);
  }

  /** A block of at least `bytes` bytes, 64-byte aligned; the memory grows when needed. */
  alloc(bytes: number): number {
    const size = blockSize(bytes);
    const list = this.free.get(size);
    if (list && list.length > 0) {
      this.used += size;
      return list.pop()!;
    }
    const at = this.top;
    const end = at + size;
    const have = this.memory.buffer.byteLength;
    if (end > have) {
      const pages = Math.ceil((end - have) / PAGE);
      // grow by at least an eighth of the memory, so that a stream of allocations grows it a few times only
      const want = Math.max(pages, Math.min(Math.ceil(have / PAGE / 8), MAX_PAGES - have / PAGE));
      try {
        this.memory.grow(want);
      } catch {
        try {
          this.memory.grow(pages);
        } catch {
          throw new MambaError(`the wasm engine's memory is full (${(have / 2 ** 30).toFixed(2)} GiB of 4 GiB, ${bytes} bytes more asked): use half-precision weights or the reference cpu engine`);
        }
      }
    }
    this.top = end;
    this.used += size;
    return at;
  }

  release(offset: number, bytes: number): void {
    const size = blockSize(bytes);
    this.used -= size;
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    list.push(offset);
  }

  /** The whole memory as bytes (a fresh view: the memory may have grown). */
  get bytes(): Uint8Array {
    return new Uint8Array(this.memory.buffer);
  }

  /** Bytes the memory holds now. */
  get memoryBytes(): number {
    return this.memory.buffer.byteLength;
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    Atomics.store(this.ctrl, C.stop, 1);
    Atomics.add(this.ctrl, C.gen, 1);
    Atomics.notify(this.ctrl, C.gen);
    for (const w of this.workers) w.terminate();
    this.workers = [];
  }
}
