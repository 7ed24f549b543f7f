/**
 * The tensor-core product (src/backend/webgpu/kernels/matmul-tc.ts) on a device that offers subgroup matrices:
 * its results against a host reference on the same f16-rounded inputs, then its speed at the forward's shapes beside
 * the f32 tiled kernel's (TFLOP/s on the GPU clock). Node, `webgpu` package, Dawn toggles allow_unsafe_apis and
 * vulkan_enable_f16_on_nvidia.
 *   node --import tsx scripts/gpu-tc.ts [check|bench|both]
 */
import { create } from "webgpu";
import { Gpu } from "../src/backend/webgpu/gpu.ts";
import { matmulTensorCore, TC_TILE, tensorCoreTileName, type TensorCoreTile } from "../src/backend/webgpu/kernels/matmul-tc.ts";
import { parseTensorCoreTile } from "../src/backend/webgpu/tuning.ts";
import { matmulTiled, TILE_LARGE, type MatmulArgs } from "../src/backend/webgpu/kernels/matmul.ts";
import { f16ToF32, toF16Bits } from "../src/io/tensor.ts";

const mode = process.argv[2] ?? "both";
// TC_TILES: tiles as the tuning knob spells them (BMxBNxBK or BMxBNxBKxSGMxSGN), separated by ";"
const tiles: TensorCoreTile[] = (process.env.TC_TILES ?? "").split(";").filter(Boolean).map(parseTensorCoreTile);
if (!tiles.length) tiles.push(TC_TILE);

const dawn = create(["enable-dawn-features=allow_unsafe_apis,vulkan_enable_f16_on_nvidia,disable_robustness,disable_workgroup_init", "disable-dawn-features=timestamp_quantization"]);
const adapter = await dawn.requestAdapter();
if (!adapter) throw new Error("no adapter");
const want = ["shader-f16", "subgroups", "chromium-experimental-subgroup-matrix", "timestamp-query"] as GPUFeatureName[];
const missing = want.filter((f) => !adapter.features.has(f));
if (missing.length) {
  console.log(`SKIP: the adapter (${adapter.info.description}) lacks ${missing.join(", ")}`);
  process.exit(0);
}
const limits: Record<string, number> = {};
for (const k of ["maxStorageBufferBindingSize", "maxBufferSize", "maxComputeWorkgroupStorageSize", "maxComputeInvocationsPerWorkgroup"] as const) limits[k] = adapter.limits[k];
const device = await adapter.requestDevice({ requiredFeatures: want, requiredLimits: limits });
device.addEventListener("uncapturederror", (e) => console.error("GPU error:", (e as GPUUncapturedErrorEvent).error.message));
const gpu = new Gpu(device, adapter.info.description, dawn);
console.log(`workgroup memory: ${device.limits.maxComputeWorkgroupStorageSize} bytes; subgroups ${gpu.subgroupMinSize} to ${gpu.subgroupMaxSize} wide`);

function rand(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = ((s / 2 ** 32) * 2 - 1) * scale;
  }
  return out;
}
const round16 = (a: Float32Array) => Float32Array.from(toF16Bits(a), f16ToF32);
const packHalves = (h: Uint16Array) => new Uint32Array(h.buffer, h.byteOffset, h.length / 2);

async function check(T: number, K: number, N: number, ldx: number, offx: number, withBias: boolean, tile: TensorCoreTile, parts = 1): Promise<number> {
  const x = rand(T * ldx, 1);
  const w = rand(N * K, 2, 0.1);
  const b = withBias ? rand(N, 3) : null;
  const xr = round16(x), wr = round16(w);
  const args: MatmulArgs = {
    x: gpu.upload(x), ldx, offx, rows: T, K, w: gpu.upload(packHalves(toF16Bits(w))), ws: "f16", N,
    bias: b ? gpu.upload(b) : null, y: gpu.alloc(parts * T * N * 4),
  };
  const kLen = Math.ceil(Math.ceil(K / parts) / 16) * 16;
  matmulTensorCore(gpu, args, parts > 1 ? { kLen, count: parts } : undefined, tile);
  const all = new Float32Array(await gpu.read(args.y, parts * T * N * 4));
  // K parts: summed here, the bias added once (the kernel leaves it to the reduction)
  const y = all.slice(0, T * N);
  for (let q = 1; q < parts; q++) for (let i = 0; i < T * N; i++) y[i]! += all[q * T * N + i]!;
  if (parts > 1 && b) for (let i = 0; i < T * N; i++) y[i]! += b[i % N]!;
  let worst = 0;
  for (let r = 0; r < T; r++) {
    for (let c = 0; c < N; c++) {
      let ref = b ? b[c]! : 0, mag = Math.abs(ref);
      for (let k = 0; k < K; k++) {
        const t = xr[r * ldx + offx + k]! * wr[c * K + k]!;
        ref += t;
        mag += Math.abs(t);
      }
      worst = Math.max(worst, Math.abs(y[r * N + c]! - ref) / (mag + 1e-30));
    }
  }
  for (const buf of [args.x, args.w, args.y, ...(args.bias ? [args.bias] : [])]) gpu.release(buf);
  return worst;
}

if (mode === "check" || mode === "both") {
  for (const tile of [...tiles]) {
    const cases: [number, number, number, number, number, boolean, number?][] = [
      [64, 768, 200, 768, 0, true, 3], [130, 1536, 64, 1536, 0, false, 5],
      [128, 64, 128, 64, 0, false], [100, 72, 200, 72, 0, true], [16, 32, 16, 32, 0, false], [300, 768, 77, 800, 28, true], [257, 1536, 130, 1536, 0, true],
    ];
    for (const [T, K, N, ldx, offx, bias, parts] of cases) {
      let err: number;
      try {
        err = await check(T, K, N, ldx, offx, bias, tile, parts);
      } catch (e) {
        // a tile that does not compile or run is left out of the timings; the others go on
        console.log(`check tile ${tensorCoreTileName(tile)}: failed: ${(e as Error).message.split("\n").filter((l) => / error/i.test(l)).slice(0, 3).join(" | ") || (e as Error).message.slice(0, 300)}`);
        tiles.splice(tiles.indexOf(tile), 1);
        break;
      }
      console.log(`check tile ${tensorCoreTileName(tile)} T${T} K${K} N${N} ldx${ldx} off${offx} bias ${bias} K parts ${parts ?? 1}: worst |err| / Σ|terms| = ${err.toExponential(2)} ${err < 1e-5 ? "ok" : "FAIL"}`);
    }
  }
}

async function timeIt(f: () => void, reps: number): Promise<number> {
  f();
  await gpu.sync();
  const t = await gpu.timePass(() => { for (let i = 0; i < reps; i++) f(); });
  return t! / reps;
}

if (mode === "bench" || mode === "both") {
  { // the GPU to its working clock first (it idles at a fraction of it)
    const n = 4096, x = gpu.upload(rand(n * n, 1)), w = gpu.upload(rand(n * n, 2)), y = gpu.alloc(n * n * 4);
    const t0 = performance.now();
    while (performance.now() - t0 < 1500) {
      for (let i = 0; i < 10; i++) matmulTiled(gpu, { x, ldx: n, offx: 0, rows: n, K: n, N: n, w, ws: "f32", bias: null, y }, TILE_LARGE);
      await gpu.sync();
    }
    for (const b of [x, w, y]) gpu.release(b);
  }
  const shapes: [string, number, number, number][] = [
    ["130m in_proj", 16384, 768, 3072], ["130m out_proj", 16384, 1536, 768], ["130m head", 4096, 768, 50280], ["1.4b in_proj", 16384, 2048, 8192],
    ["1.4b out_proj", 16384, 4096, 2048], ["4096^3", 4096, 4096, 4096],
  ];
  for (const [name, T, K, N] of shapes) {
    const x = gpu.upload(rand(T * K, 1)), w32 = gpu.upload(rand(N * K, 2, 0.1)), w16 = gpu.upload(packHalves(toF16Bits(rand(N * K, 2, 0.1))));
    const y = gpu.alloc(T * N * 4);
    const flop = 2 * T * K * N;
    const base = { x, ldx: K, offx: 0, rows: T, K, N, bias: null, y };
    const t32 = await timeIt(() => matmulTiled(gpu, { ...base, w: w32, ws: "f32" }, TILE_LARGE), 5);
    const line = [`${name} [${T}, ${K}] x [${N}, ${K}]^T: f32 tiled ${t32.toFixed(3)} ms ${(flop / t32 / 1e9).toFixed(1)} TFLOP/s`];
    for (const tile of tiles) {
      const t = await timeIt(() => matmulTensorCore(gpu, { ...base, w: w16, ws: "f16" }, undefined, tile), 10);
      line.push(`tc ${tensorCoreTileName(tile)} ${t.toFixed(3)} ms ${(flop / t / 1e9).toFixed(1)} TFLOP/s`);
    }
    console.log(line.join("; "));
    for (const b of [x, w32, w16, y]) gpu.release(b);
  }
}
await gpu.destroy();
