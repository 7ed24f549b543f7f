/**
 * The runtime under the WebGPU ops: a buffer pool, one pending command encoder that every op appends its
 * dispatches to (one compute pass, submitted only when data must cross to the host or the queue), compiled
 * pipelines cached by their WGSL text (./kernel-def.ts), parameter blocks and bind groups cached by content, and
 * readbacks.
 *
 * Ordering rules that keep this correct with a pool and a lazily submitted encoder:
 *  - Dispatches in one encoder run in order, so a buffer freed by one op may be the output of the next.
 *  - queue.writeBuffer runs before every command still waiting in the pending encoder. Uploads therefore go only
 *    to buffers that no pending command touches ("clean" buffers: last used in an earlier submit).
 *  - Parameter blocks are immutable (created mapped, filled once), so they need no ordering at all.
 */
import { MambaError } from "../../errors.ts";
import { type KernelDef, shapeKey } from "./kernel-def.ts";
import type { HalfFeatures } from "./device.ts";

// WebGPU's usage and map-mode bits, spelled out so that no global (absent in Node) is needed
export const Usage = { MAP_READ: 1, COPY_SRC: 4, COPY_DST: 8, UNIFORM: 64, STORAGE: 128, QUERY_RESOLVE: 512 } as const;
const MAP_READ_MODE = 1;
const STORAGE_USAGE = Usage.STORAGE | Usage.COPY_SRC | Usage.COPY_DST;

/** A pooled storage buffer. `serial` is the submit it was last used in; `freed` orders releases to the pool. */
export class Buf {
  freed = 0;
  constructor(
    readonly gpu: GPUBuffer,
    readonly size: number,
    readonly id: number,
    public serial: number,
  ) {}
}

/** A compiled pipeline with an id for cache keys, and its label (the first definition's that compiled it). */
export interface Kernel {
  pipeline: GPUComputePipeline;
  id: number;
  name: string;
}

/** A dispatch with everything resolved (pipeline, bind group, workgroups), to be encoded again as it is. */
export interface Prepared {
  pipeline: GPUComputePipeline;
  bindGroup: GPUBindGroup;
  groups: readonly [number, number, number];
  bufs: Buf[];
}

/** Builds a kernel's uniform parameter block: u32, i32 and f32 fields, 4 bytes each, in WGSL struct order. */
export class Params {
  private words: number[] = [];
  private f = new Float32Array(1);
  private u = new Uint32Array(this.f.buffer);
  u32(v: number): this {
    this.words.push(v >>> 0);
    return this;
  }
  f32(v: number): this {
    this.f[0] = v;
    this.words.push(this.u[0]!);
    return this;
  }
  bool(v: boolean): this {
    return this.u32(v ? 1 : 0);
  }
  get values(): readonly number[] {
    return this.words;
  }
}

/** A shape of workgroups for `count` groups along one axis, folded into y past the per-dimension limit. */
export function grid(count: number, maxPerDim: number): [number, number] {
  if (count <= maxPerDim) return [Math.max(1, count), 1];
  const y = Math.ceil(count / maxPerDim);
  return [Math.ceil(count / y), y];
}

/** idle readback buffers kept for reuse, at most */
const MAX_STAGING_BYTES = 256 * 2 ** 20;
/** the least the buffer pool keeps by default, whatever the working set so far */
const MIN_POOL_BYTES = 256 * 2 ** 20;

const bucket = (bytes: number) => {
  // sizes round up to 256 B below 64 KiB, then to a quarter octave: reuse without more than 25% waste
  const b = Math.max(16, bytes);
  if (b <= 65536) return Math.ceil(b / 256) * 256;
  const step = 2 ** (Math.floor(Math.log2(b)) - 2);
  return Math.ceil(b / step) * step;
};

/** Timestamps a WebGPU query set may hold: profileKernels times at most half as many dispatches. */
const MAX_QUERIES = 4096;

export class Gpu {
  readonly limits: GPUSupportedLimits;
  readonly hasSubgroups: boolean;
  /** The smallest subgroup size the device may run; 0 without the subgroups feature or a known size. */
  readonly subgroupMinSize: number;
  /** The largest subgroup size the device may run; 0 without the subgroups feature or a known size. */
  readonly subgroupMaxSize: number;
  /** The adapter runs on the CPU (Mesa lavapipe, SwiftShader): a memory access takes nanoseconds, not a GPU's
   *  round trip, which bounded waits count in polls must allow for. */
  readonly softwareDriver: boolean;
  /** The adapter's vendor as WebGPU names it ("nvidia", "amd", "intel", "apple", ...; "" when not told). */
  readonly vendor: string;
  readonly hasTimestamps: boolean;
  /** What the device offers for half-precision products: shader-f16 here, the subgroup-matrix shapes where the
   *  adapter told them (createWebGpuBackend sets them from the adapter's info). */
  half: HalfFeatures;
  /** Dispatches encoded so far (benchmarks read it to count dispatches per token). */
  dispatches = 0;
  /** Submits so far. */
  submits = 0;
  /** `dispatches` at the last submit. */
  private submittedAt = 0;
  /** Bind groups created so far (a decode step that reuses its buffers creates none). */
  bindGroupsCreated = 0;
  /** Uniform parameter blocks created so far (steady work creates none: per-step values belong in buffers). */
  paramBlocksCreated = 0;
  /** readback buffers made so far (the rest were reused) */
  stagingCreated = 0;
  /** storage buffers created (the pool had none of the size free) */
  buffersCreated = 0;
  /** Bytes of storage buffers alive (in use or pooled) and the most ever alive. */
  liveBytes = 0;
  peakBytes = 0;
  /** The most bytes ever held by tensors at once (alive and not in the pool): the working set. */
  peakInUseBytes = 0;

  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private serial = 1; // the submit the pending encoder will be
  private nextId = 1;
  private free = new Map<number, Buf[]>();
  private freeBytes = 0;
  private releases = 0;
  /** a fixed pool budget (createWebGpuBackend's poolBytes), or null to follow the working set (twice it) */
  private readonly poolBytes: number | null;
  /** compiled pipelines by their WGSL text */
  private kernels = new Map<string, Kernel>();
  /** each definition's pipelines by shape (shapeKey): the text is generated once a shape */
  private kernelsByShape = new Map<KernelDef<never>, Map<string, Kernel>>();
  private paramCache = new Map<string, GPUBuffer>();
  private bindCache = new Map<string, GPUBindGroup>();
  /** idle readback buffers by size (a bucket), reused by later reads of that bucket */
  private staging = new Map<number, GPUBuffer[]>();
  private stagingBytes = 0;
  /** timePass's query set and buffers, made on first use */
  private timestamps: { set: GPUQuerySet; resolved: GPUBuffer; out: GPUBuffer } | null = null;
  /** the pass timePass is timing, while it encodes */
  private timedPass: GPUComputePassEncoder | null = null;
  /** while profileKernels encodes: its query set and the kernel of each pass so far */
  private profiling: { set: GPUQuerySet; names: string[] } | null = null;
  private recording: Prepared[] | null = null;
  /** while capture() records: the buffers released meanwhile (the recording refers to them), and those host data
   *  was uploaded into (written once, now: no other tensor of the recording may have them) */
  private captured: Set<Buf> | null = null;
  private capturedUploads: Set<Buf> | null = null;
  private pinned: Buf[] = [];
  private errors: string[] = [];
  private lost: string | null = null;
  private destroyed = false;
  /** Stand-ins for absent optional bindings: one read-only, one writable (WebGPU forbids a buffer bound
   *  writable twice, or writable and read-only, in one dispatch). */
  readonly dummy: Buf;
  readonly dummyOut: Buf;

  /**
   * `poolBytes`: bytes of freed buffers kept for reuse. By default the pool keeps twice the largest working set
   * so far (at least 256 MiB): a training step that frees gigabytes of activations after its backward takes the
   * same buffers back in the next step, and destroying them made the next step create them again (517 buffers a
   * step of the 130m shape; its host time doubled the step). Twice, because work whose phases take buffers of
   * other sizes frees more than it ever held at once: mamba2-130m's forward at B8 × 2048 frees its layers' buffers,
   * then its logits' 824 MB parts, and with the pool at the working set it destroyed and made again 12 buffers a
   * pass (52.6 ms of the host's time a pass on the H100, the forward 155.2 ms against 127.7 on the GPU clock).
   * Memory held stays under three times the peak the program needed at once.
   */
  constructor(readonly device: GPUDevice, readonly description: string, private readonly keepAlive: unknown, poolBytes?: number) {
    this.limits = device.limits;
    this.hasSubgroups = device.features.has("subgroups");
    const info = (device as { adapterInfo?: { subgroupMinSize?: number; subgroupMaxSize?: number; isFallbackAdapter?: boolean; vendor?: string } }).adapterInfo;
    this.vendor = info?.vendor ?? "";
    this.subgroupMinSize = this.hasSubgroups ? info?.subgroupMinSize ?? 0 : 0;
    this.subgroupMaxSize = this.hasSubgroups ? info?.subgroupMaxSize ?? 0 : 0;
    this.softwareDriver = info?.isFallbackAdapter === true || /llvmpipe|lavapipe|swiftshader/i.test(description);
    this.hasTimestamps = device.features.has("timestamp-query");
    this.half = { f16: device.features.has("shader-f16"), subgroupMatrix: [] };
    this.poolBytes = poolBytes ?? null;
    device.lost.then((info) => {
      if (!this.destroyed) this.lost = info.message || String(info.reason);
    });
    device.onuncapturederror = (ev: GPUUncapturedErrorEvent) => {
      if (this.errors.length < 8) this.errors.push(ev.error.message);
    };
    this.dummy = this.alloc(16);
    this.dummyOut = this.alloc(16);
  }

  /** Throws if the device was lost or an earlier command failed. */
  check(): void {
    if (this.destroyed) throw new MambaError("the WebGPU backend has been destroyed");
    if (this.lost !== null) throw new MambaError(`the GPU device was lost: ${this.lost}`);
    if (this.errors.length) {
      const msg = this.errors.join("; ");
      this.errors = [];
      throw new MambaError(`WebGPU error: ${msg}`);
    }
  }

  // ---- buffers ----

  /** A storage buffer's size for `bytes`: its pool bucket, unless that would pass the binding limit that `bytes`
   *  itself keeps (a kernel binds whole buffers), then `bytes` to a multiple of 4. */
  private sizeFor(bytes: number): number {
    const b = bucket(bytes);
    return b > this.limits.maxStorageBufferBindingSize ? Math.ceil(Math.max(16, bytes) / 4) * 4 : b;
  }

  /**
   * A storage buffer of at least `bytes` bytes from the pool (contents undefined): of the free buffers of its size,
   * the one made first. So which buffer an op gets depends only on which are free, not on the order they were
   * freed in: a loop whose iterations take and free the same sizes in the same order (a training step) gets the
   * same buffers every iteration, and its dispatches find their bind groups in the cache. (Taking the buffer freed
   * last, the buffers went round in cycles as long as a step's frees reordered them, and a training step created
   * 50 – 150 bind groups, every step.)
   */
  alloc(bytes: number, what = "a tensor"): Buf {
    this.checkSize(bytes, what);
    const size = this.sizeFor(bytes);
    const list = this.free.get(size);
    const hit = list?.pop();
    if (hit) {
      this.freeBytes -= size;
      this.noteInUse();
      return hit;
    }
    return this.create(size);
  }

  /** Bytes of freed buffers the pool may keep now. */
  get poolBudget(): number {
    return this.poolBytes ?? Math.max(MIN_POOL_BYTES, 2 * this.peakInUseBytes);
  }

  private noteInUse(): void {
    this.peakInUseBytes = Math.max(this.peakInUseBytes, this.liveBytes - this.freeBytes);
  }

  /** A buffer that no pending command uses, so that queue.writeBuffer into it is ordered correctly. */
  allocClean(bytes: number, what = "a tensor"): Buf {
    this.checkSize(bytes, what);
    const size = this.sizeFor(bytes);
    const list = this.free.get(size);
    if (list) {
      for (let i = list.length - 1; i >= 0; i--) {
        if (list[i]!.serial < this.serial || !this.encoder) {
          const [b] = list.splice(i, 1);
          this.freeBytes -= size;
          this.noteInUse();
          return b!;
        }
      }
    }
    return this.create(size);
  }

  private checkSize(bytes: number, what: string): void {
    this.check();
    const max = Math.min(this.limits.maxStorageBufferBindingSize, this.limits.maxBufferSize);
    if (bytes > max) {
      throw new MambaError(`${what} needs ${fmtBytes(bytes)} but this GPU allows at most ${fmtBytes(max)} per buffer ` +
        `(maxStorageBufferBindingSize ${this.limits.maxStorageBufferBindingSize}, maxBufferSize ${this.limits.maxBufferSize}); ` +
        "use a smaller batch or chunk");
    }
  }

  private create(size: number): Buf {
    const gpu = this.device.createBuffer({ size, usage: STORAGE_USAGE });
    this.buffersCreated++;
    this.liveBytes += size;
    this.peakBytes = Math.max(this.peakBytes, this.liveBytes);
    this.noteInUse();
    return new Buf(gpu, size, this.nextId++, 0);
  }

  release(b: Buf): void {
    if (b === this.dummy || b === this.dummyOut || this.destroyed) return;
    if (this.capturedUploads?.has(b)) {
      this.pinned.push(b); // held by the capture, outside the pool (capture())
      return;
    }
    this.captured?.add(b);
    b.freed = ++this.releases;
    const list = this.free.get(b.size);
    if (list) insertById(list, b);
    else this.free.set(b.size, [b]);
    this.freeBytes += b.size;
  }

  /**
   * Frees pooled buffers beyond the pool's budget, those released longest ago first: a loop that frees and takes
   * back the same large buffers keeps them, instead of recreating them each time (destroying the largest first
   * did that whenever older, smaller buffers filled the budget). Only after a submit, so no pending command refers
   * to what it destroys.
   */
  private trim(): void {
    if (this.recording) return; // a recording may refer to pooled buffers until capture() takes them out
    const budget = this.poolBudget;
    if (this.freeBytes <= budget) return;
    const pooled = [...this.free.values()].flat().sort((a, b) => a.freed - b.freed);
    const gone = new Set<Buf>();
    for (const b of pooled) {
      if (this.freeBytes <= budget / 2) break;
      b.gpu.destroy();
      gone.add(b);
      this.freeBytes -= b.size;
      this.liveBytes -= b.size;
    }
    for (const [size, list] of this.free) {
      const kept = list.filter((b) => !gone.has(b));
      if (kept.length) this.free.set(size, kept);
      else this.free.delete(size);
    }
  }

  /** Writes host data into a fresh buffer. */
  upload(data: ArrayBufferView, what = "a tensor"): Buf {
    const bytes = data.byteLength;
    // while capturing, a buffer of its own: a pooled one may be an intermediate that the replays rewrite
    this.checkSize(Math.max(4, bytes), what);
    const b = this.capturedUploads ? this.create(this.sizeFor(Math.max(4, bytes))) : this.allocClean(Math.max(4, bytes), what);
    this.capturedUploads?.add(b);
    const padded = bytes % 4 === 0 ? data : padTo4(data);
    if (padded.byteLength > 0) this.device.queue.writeBuffer(b.gpu, 0, padded.buffer, padded.byteOffset, padded.byteLength);
    return b;
  }

  // ---- kernels ----

  /** How many entries each of the runtime's caches and pools holds: steady work must not grow any of them. */
  get bookkeeping(): { kernels: number; paramBlocks: number; bindGroups: number; pooledBuffers: number; staging: number } {
    let pooled = 0, staging = 0;
    for (const list of this.free.values()) pooled += list.length;
    for (const list of this.staging.values()) staging += list.length;
    return { kernels: this.kernels.size, paramBlocks: this.paramCache.size, bindGroups: this.bindCache.size, pooledBuffers: pooled, staging };
  }

  /** The labels of the kernels compiled so far (which variant of a kernel ran). */
  get kernelNames(): string[] {
    return [...this.kernels.values()].map((k) => k.name);
  }

  /** The pipeline of kernel `def` for `shape`: compiled once for each distinct WGSL text. */
  kernel<S>(def: KernelDef<S>, shape: S): Kernel {
    let byShape = this.kernelsByShape.get(def as unknown as KernelDef<never>);
    if (!byShape) this.kernelsByShape.set(def as unknown as KernelDef<never>, byShape = new Map());
    const key = shapeKey(shape);
    let k = byShape.get(key);
    if (!k) {
      const code = def.wgsl(shape);
      k = this.kernels.get(code);
      if (!k) {
        const label = def.label?.(shape) ?? def.name;
        const module = this.device.createShaderModule({ code, label });
        const pipeline = this.device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" }, label });
        k = { pipeline, id: this.kernels.size + 1, name: label };
        this.kernels.set(code, k);
      }
      byShape.set(key, k);
    }
    return k;
  }

  private paramBuffer(p: Params): { buf: GPUBuffer; key: string } {
    const key = p.values.join(",");
    let buf = this.paramCache.get(key);
    if (!buf) {
      const n = Math.max(4, Math.ceil(p.values.length / 4) * 4); // uniform blocks are 16-byte multiples
      buf = this.device.createBuffer({ size: n * 4, usage: Usage.UNIFORM, mappedAtCreation: true });
      this.paramBlocksCreated++;
      new Uint32Array(buf.getMappedRange()).set(p.values);
      buf.unmap();
      if (this.paramCache.size > 4096) this.paramCache.clear(); // buffers stay valid for bind groups holding them
      this.paramCache.set(key, buf);
    }
    return { buf, key };
  }

  private computePass(): GPUComputePassEncoder {
    if (!this.pass) {
      this.encoder ??= this.device.createCommandEncoder();
      this.pass = this.encoder.beginComputePass();
    }
    return this.pass;
  }

  /** Appends one dispatch: storage buffers at bindings 0.., the parameter block after them. */
  dispatch(k: Kernel, bufs: Buf[], p: Params, groups: readonly [number, number?, number?]): void {
    this.check();
    const { buf, key } = this.paramBuffer(p);
    let bkey = `${k.id}|${key}`;
    for (const b of bufs) bkey += `|${b.id}`;
    let bg = this.bindCache.get(bkey);
    if (!bg) {
      const entries: GPUBindGroupEntry[] = bufs.map((b, i) => ({ binding: i, resource: { buffer: b.gpu } }));
      entries.push({ binding: bufs.length, resource: { buffer: buf } });
      bg = this.device.createBindGroup({ layout: k.pipeline.getBindGroupLayout(0), entries });
      this.bindGroupsCreated++;
      if (this.bindCache.size > 16384) this.bindCache.clear();
      this.bindCache.set(bkey, bg);
    }
    if (this.recording) {
      this.recording.push({ pipeline: k.pipeline, bindGroup: bg, groups: [groups[0], groups[1] ?? 1, groups[2] ?? 1], bufs });
      return;
    }
    for (const b of bufs) b.serial = this.serial;
    const pass = this.profiling ? this.profiledPass(k.name) : this.computePass();
    pass.setPipeline(k.pipeline);
    pass.setBindGroup(0, bg);
    pass.dispatchWorkgroups(groups[0], groups[1] ?? 1, groups[2] ?? 1);
    this.dispatches++;
  }

  /** A pass of its own for one dispatch of `name`, with timestamps at its start and end (profileKernels). */
  private profiledPass(name: string): GPUComputePassEncoder {
    const prof = this.profiling!;
    const i = prof.names.length;
    if (2 * i + 2 > prof.set.count) {
      throw new MambaError(`profileKernels: more than ${prof.set.count / 2} dispatches; profile less work at a time`);
    }
    prof.names.push(name);
    this.pass?.end();
    this.encoder ??= this.device.createCommandEncoder();
    this.pass = this.encoder.beginComputePass({
      timestampWrites: { querySet: prof.set, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 },
    });
    return this.pass;
  }

  /**
   * GPU time per kernel of the dispatches `fn` encodes (at most `maxDispatches`): each runs in a compute pass of
   * its own with timestamps at its start and end, and the times are summed by kernel name, in the order the
   * kernels first ran. A pass per dispatch serializes them (no overlap of one's tail with the next's start), so
   * the sum exceeds what the same work takes in one pass; the shares are what it is for. null without
   * 'timestamp-query'. fn must not submit or read back.
   */
  async profileKernels(fn: () => void, maxDispatches = MAX_QUERIES / 2): Promise<Map<string, { ms: number; count: number }> | null> {
    this.check();
    if (!this.hasTimestamps) return null;
    if (this.recording || this.timedPass || this.profiling) throw new MambaError("profileKernels: already recording, timing or profiling");
    this.flush();
    const count = 2 * Math.min(maxDispatches, MAX_QUERIES / 2);
    const set = this.device.createQuerySet({ type: "timestamp", count });
    const resolved = this.device.createBuffer({ size: count * 8, usage: Usage.QUERY_RESOLVE | Usage.COPY_SRC });
    const out = this.device.createBuffer({ size: count * 8, usage: Usage.MAP_READ | Usage.COPY_DST });
    this.profiling = { set, names: [] };
    const submits = this.submits;
    let names: string[];
    try {
      fn();
    } finally {
      names = this.profiling.names;
      this.profiling = null;
    }
    try {
      if (this.submits !== submits) {
        this.flush();
        throw new MambaError("profileKernels: the profiled work submitted or read back");
      }
      const result = new Map<string, { ms: number; count: number }>();
      if (names.length === 0) return result;
      const ts = await this.readTimestamps(set, 2 * names.length, resolved, out);
      names.forEach((name, i) => {
        const r = result.get(name) ?? { ms: 0, count: 0 };
        r.ms += elapsedMs(ts[2 * i]!, ts[2 * i + 1]!);
        r.count++;
        result.set(name, r);
      });
      return result;
    } finally {
      set.destroy();
      resolved.destroy();
      out.destroy();
    }
  }

  /** Runs fn and returns the dispatches it would make, resolved, for replay(); nothing is encoded meanwhile. */
  record(fn: () => void): Prepared[] {
    this.recording = [];
    try {
      fn();
      return this.recording;
    } finally {
      this.recording = null;
    }
  }

  /**
   * Records the dispatches `fn` encodes (as record does) and takes the buffers released meanwhile out of the pool:
   * the recording refers to them, so nothing else may get them until `releaseHeld(held)`. Buffers still alive
   * after fn stay with whoever holds them. Throws if fn reads back (a recording cannot wait for the GPU).
   */
  capture(fn: () => void): { plan: Prepared[]; held: Buf[] } {
    if (this.recording || this.captured) throw new MambaError("capture: already recording");
    this.captured = new Set();
    this.capturedUploads = new Set();
    this.pinned = [];
    try {
      const plan = this.record(fn);
      // uploads made during fn hold constants its replays read (an LTI mixer's column of ones): the recording keeps
      // them whether or not fn freed them; the tensors still alive keep theirs
      const held: Buf[] = this.pinned;
      for (const b of this.captured) {
        const list = this.free.get(b.size);
        const i = list ? list.indexOf(b) : -1;
        if (i < 0) continue; // taken again inside fn, and alive
        list!.splice(i, 1);
        if (!list!.length) this.free.delete(b.size);
        this.freeBytes -= b.size;
        held.push(b);
      }
      this.noteInUse();
      return { plan, held };
    } finally {
      this.captured = null;
      this.capturedUploads = null;
      this.pinned = [];
    }
  }

  /** Gives the buffers a capture held back to the pool (its recording must not be replayed afterwards). */
  releaseHeld(held: readonly Buf[]): void {
    for (const b of held) this.release(b);
  }

  /** Encodes recorded dispatches again: a few calls each, no lookups (the buffers must be the recorded ones). */
  replay(plan: readonly Prepared[]): void {
    this.check();
    const shared = this.profiling ? null : this.computePass();
    for (const d of plan) {
      for (const b of d.bufs) b.serial = this.serial;
      // while profileKernels encodes, each dispatch in a timed pass of its own, as dispatch() does
      const pass = shared ?? this.profiledPass(d.pipeline.label || "?");
      pass.setPipeline(d.pipeline);
      pass.setBindGroup(0, d.bindGroup);
      pass.dispatchWorkgroups(d.groups[0], d.groups[1], d.groups[2]);
    }
    this.dispatches += plan.length;
  }

  /**
   * Submits what is encoded so far so that the GPU starts while the host encodes more (the backends call it every
   * few hundred dispatches); not while timePass or profileKernels encodes, whose passes must all stay in one
   * command buffer with their queries.
   */
  submitEarly(): void {
    if (!this.timedPass && !this.profiling) this.flush();
  }

  /** Dispatches encoded since the last submit. */
  get pendingDispatches(): number {
    return this.dispatches - this.submittedAt;
  }

  /** Submits everything encoded so far. */
  flush(): void {
    if (!this.encoder) return;
    this.submittedAt = this.dispatches;
    this.pass?.end();
    this.pass = null;
    this.device.queue.submit([this.encoder.finish()]);
    this.encoder = null;
    this.serial++;
    this.submits++;
    this.trim();
  }

  /** Copies `bytes` of a buffer to the host; submits the pending work. */
  async read(b: Buf, bytes: number): Promise<ArrayBuffer> {
    return (await this.readWith(b, bytes, null, 0)).data;
  }

  /** As read, and in the same copy the u32 at byte `offset` of `watch` (0 without one). */
  async readWith(b: Buf, bytes: number, watch: Buf | null, offset: number): Promise<{ data: ArrayBuffer; word: number }> {
    this.check();
    if (this.recording) throw new MambaError("a recorded step cannot read back from the GPU");
    const size = Math.ceil(Math.max(4, bytes) / 4) * 4;
    const total = watch ? size + 4 : size;
    const staging = this.takeStaging(total);
    this.encoder ??= this.device.createCommandEncoder();
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
    this.encoder.copyBufferToBuffer(b.gpu, 0, staging, 0, size);
    b.serial = this.serial;
    if (watch) {
      this.encoder.copyBufferToBuffer(watch.gpu, offset, staging, size, 4);
      watch.serial = this.serial;
    }
    this.flush();
    try {
      await staging.mapAsync(MAP_READ_MODE, 0, total);
    } catch (err) {
      staging.destroy();
      this.check();
      throw new MambaError(`WebGPU: reading a tensor back failed (${(err as Error).message})`);
    }
    const mapped = staging.getMappedRange(0, total);
    const data = mapped.slice(0, bytes);
    const word = watch ? new Uint32Array(mapped, size, 1)[0]! : 0;
    staging.unmap();
    this.returnStaging(staging);
    this.check();
    return { data, word };
  }

  /**
   * A readback buffer for `size` bytes: an idle one of the same bucket, else a new one. Readbacks of one size
   * recur every step (a loss, a token id), so they must find their buffer again, not make one each time.
   */
  private takeStaging(size: number): GPUBuffer {
    const b = bucket(size);
    const hit = this.staging.get(b)?.pop();
    if (hit) {
      this.stagingBytes -= b;
      return hit;
    }
    this.stagingCreated++;
    return this.device.createBuffer({ size: b, usage: Usage.MAP_READ | Usage.COPY_DST });
  }

  private returnStaging(buf: GPUBuffer): void {
    const list = this.staging.get(buf.size) ?? [];
    // a few idle buffers per size, within a budget; reads of sizes seen once are not kept
    if (list.length >= 4 || this.stagingBytes + buf.size > MAX_STAGING_BYTES) {
      buf.destroy();
      return;
    }
    list.push(buf);
    this.staging.set(buf.size, list);
    this.stagingBytes += buf.size;
  }

  /**
   * GPU time in ms of the dispatches `fn` encodes, from timestamp queries written at the start and end of one
   * compute pass that holds them alone: the GPU's own clock, without the host's submit and wait. null when the
   * device lacks 'timestamp-query' (Dawn may round these timestamps; time many calls in one pass). Throws if fn
   * submits or reads, which would end the pass early.
   */
  async timePass(fn: () => void): Promise<number | null> {
    this.check();
    if (!this.hasTimestamps) return null;
    this.flush();
    this.timestamps ??= {
      set: this.device.createQuerySet({ type: "timestamp", count: 2 }),
      resolved: this.device.createBuffer({ size: 16, usage: Usage.QUERY_RESOLVE | Usage.COPY_SRC }),
      out: this.device.createBuffer({ size: 16, usage: Usage.MAP_READ | Usage.COPY_DST }),
    };
    const { set, resolved, out } = this.timestamps;
    this.encoder = this.device.createCommandEncoder();
    const pass = this.encoder.beginComputePass({ timestampWrites: { querySet: set, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 } });
    this.pass = pass;
    this.timedPass = pass;
    try {
      fn();
    } catch (err) {
      this.flush(); // what was encoded still runs, in order
      throw err;
    } finally {
      this.timedPass = null;
    }
    if (this.pass !== pass) throw new MambaError("timePass: the timed work submitted or read back, which ends the timed pass");
    const [t0, t1] = await this.readTimestamps(set, 2, resolved, out);
    return elapsedMs(t0!, t1!);
  }

  /**
   * Ends the open pass, resolves the first `count` queries of `set` and reads them back (ns), submitting what is
   * pending: the last step of timePass and profileKernels.
   */
  private async readTimestamps(set: GPUQuerySet, count: number, resolved: GPUBuffer, out: GPUBuffer): Promise<BigUint64Array> {
    this.pass?.end();
    this.pass = null;
    this.encoder!.resolveQuerySet(set, 0, count, resolved, 0);
    this.encoder!.copyBufferToBuffer(resolved, 0, out, 0, count * 8);
    this.flush();
    await out.mapAsync(MAP_READ_MODE, 0, count * 8);
    const ts = new BigUint64Array(out.getMappedRange(0, count * 8).slice(0));
    out.unmap();
    this.check();
    return ts;
  }

  /** Resolves when the GPU has finished everything submitted (after submitting what is pending). */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.check();
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return;
    try {
      this.flush();
      if (this.lost === null) await this.device.queue.onSubmittedWorkDone();
    } finally {
      this.destroyed = true;
      this.device.destroy();
      this.free.clear();
      this.kernels.clear();
      this.kernelsByShape.clear();
      this.paramCache.clear();
      this.bindCache.clear();
      this.staging.clear();
      void this.keepAlive;
    }
  }
}

/** ms between two GPU timestamps in ns (0 when the clock did not advance, or stepped back). */
function elapsedMs(t0: bigint, t1: bigint): number {
  return t1 > t0 ? Number(t1 - t0) / 1e6 : 0;
}

/** Puts b into a free list kept in descending id order (pop() takes the lowest). */
function insertById(list: Buf[], b: Buf): void {
  let lo = 0, hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (list[mid]!.id > b.id) lo = mid + 1;
    else hi = mid;
  }
  list.splice(lo, 0, b);
}

function padTo4(data: ArrayBufferView): Uint8Array {
  const out = new Uint8Array(Math.ceil(data.byteLength / 4) * 4);
  out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  return out;
}

export function fmtBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  return `${n} B`;
}
