/**
 * The CPU engine on the 130m shape (D 768, E 1536, N 16, 24 layers, vocab 50280, random weights), beside llama.cpp's
 * figures on the same shape and machine kind (bench/anchors/cpu-2core.json), as ratios:
 *   prefill: time to the first token of a 256-token prompt (prefill, head, greedy choice, id read back), as tok/s;
 *   decode: 32 greedy tokens after it, tok/s;
 * for f32 and f16-stored weights, with 2 threads and 1 (BENCH_THREADS="2,1"), each the best of BENCH_REPS (2) runs.
 * Then the machine's memory bandwidth as the engine's kernels read it (a streaming read of 512 MB, 1 and 2 threads)
 * and the share of it that decode reaches, and a cold start from a 130m f32 safetensors folder in a child process:
 * peak RSS and the time from the process's start to the first token.
 * The engine's reference twin (the plain TypeScript backend) takes minutes here: BENCH_REFERENCE=1 adds it (1 thread).
 * BENCH_1_4B=1 adds the 1.4b shape's decode (D 2048, 48 layers) with f16 weights (its f32 weights, 5.6 GB, do not fit
 * wasm32's 4 GiB), weights made tile by tile straight into the engine's memory; BENCH_1_4B=only runs just that.
 * BENCH_MAMBA2=1 adds the mamba2-130m shape (D 768, E 1536, 24 heads of 64, N 128, 24 layers, random f32 weights):
 * the same prefill and decode rates for each thread count, beside the engine with its SSD scan and gated norm
 * taken from the reference backend (the TypeScript ops it ran before they had kernels), and one layer's
 * ssdScanBackward, the kernel against the reference; BENCH_MAMBA2=only runs just that.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createCpuBackend, describeBackend, modelFromTensors } from "../src/index.ts";
import { initParameters, makeConfig } from "../src/model/init.ts";
import { SHAPE, anchors, cpuSeconds, llama, timeGeneration } from "./cpu-common.ts";
import { type HostTensor, numel, toF16Bits } from "../src/io/tensor.ts";
import { writeSafetensors } from "../src/io/safetensors.ts";
import { WasmCpuBackend } from "../src/backend/wasm/index.ts";
import { CpuBackend } from "../src/backend/cpu/index.ts";
import { cols } from "../src/backend/backend.ts";
import { filled } from "./data.ts";
import { median } from "./timing.ts";
import { parameterShapes } from "../src/config.ts";

const here = path.dirname(fileURLToPath(import.meta.url));
const PROMPT = 256;
const STEPS = Number(process.env.BENCH_DECODE_TOKENS ?? 32);
const REPS = Number(process.env.BENCH_REPS ?? 2);
const THREADS = (process.env.BENCH_THREADS ?? "2,1").split(",").map(Number);





/** The 130m weights with every matrix of 1024 values or more stored as f16 (as an f16 checkpoint holds them). */
function toF16(tensors: Map<string, HostTensor>): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const [name, t] of tensors) {
    const big = t.shape.length === 2 && numel(t.shape) >= 1024;
    out.set(name, big ? { dtype: "F16", shape: t.shape, data: toF16Bits(t.data as Float32Array) } : t);
  }
  return out;
}

const fmt = (v: number, d = 1) => v.toFixed(d);
const ratio = (ours: number, theirs: number | undefined) => (theirs ? `${fmt(ours / theirs, 2)}x` : "-");

export default async function run(): Promise<void> {
  if (process.env.BENCH_1_4B === "only") return decode14b();
  if (process.env.BENCH_MAMBA2 === "only") return mamba2();
  const cpus = os.cpus();
  console.log(`machine: ${cpus.length} x ${cpus[0]?.model ?? "cpu"}, Node ${process.version}; load average ${os.loadavg().map((v) => v.toFixed(1)).join(" ")}` +
    " (others' work on this machine makes these figures noisy)");
  const config = makeConfig(SHAPE);
  let t0 = performance.now();
  const f32 = initParameters(config, { seed: 0 });
  const weights = { f32, f16: toF16(f32) };
  console.log(`model: 130m shape (D 768, E 1536, N 16, 24 layers, V 50280), random weights, made in ${fmt((performance.now() - t0) / 1000)} s`);
  const prompt = new Int32Array(PROMPT).map((_, i) => (i * 7919 + 13) % SHAPE.vocabSize);

  const rows: string[] = [];
  const header = "| weights | threads | engine | prefill tok/s (llama.cpp, ratio) | decode tok/s (llama.cpp, ratio) | CPU ms a token, prefill / decode |";
  const decodeRates: { weights: string; threads: number; tps: number }[] = [];
  const prefillRates: number[] = [];
  const setups: { weights: "f32" | "f16"; threads: number; reference?: boolean }[] = [];
  for (const w of ["f32", "f16"] as const) for (const threads of THREADS) setups.push({ weights: w, threads });
  if (process.env.BENCH_REFERENCE === "1") setups.push({ weights: "f32", threads: 1, reference: true });
  for (const s of setups) {
    const backend = await createCpuBackend({ threads: s.threads, reference: s.reference === true });
    const model = await modelFromTensors(config, weights[s.weights], { backend }, { source: "bench", folder: "", dtype: s.weights.toUpperCase() });
    await timeGeneration(model, prompt.subarray(0, 16), STEPS); // warm-up: compile, JIT, allocator blocks
    let best = { ttft: Infinity, decode: Infinity, ttftCpu: Infinity, decodeCpu: Infinity };
    for (let r = 0; r < (s.reference ? 1 : REPS); r++) {
      const m = await timeGeneration(model, prompt, STEPS);
      best = {
        ttft: Math.min(best.ttft, m.ttft), decode: Math.min(best.decode, m.decode),
        ttftCpu: Math.min(best.ttftCpu, m.ttftCpu), decodeCpu: Math.min(best.decodeCpu, m.decodeCpu),
      };
    }
    const pf = PROMPT / best.ttft, dc = STEPS / best.decode;
    const a = llama(s.weights, s.threads);
    decodeRates.push({ weights: s.weights, threads: s.threads, tps: dc });
    prefillRates.push(pf);
    // CPU seconds a token: on a shared machine the wall clock counts others' work too; with one thread, the
    // rate by CPU time is what the core gives when it is ours
    const cpu = `${fmt((1000 * best.ttftCpu) / PROMPT, 2)} / ${fmt((1000 * best.decodeCpu) / STEPS, 1)}` +
      (s.threads === 1 ? ` (${fmt(PROMPT / best.ttftCpu)} / ${fmt(STEPS / best.decodeCpu)} tok/s by CPU time)` : "");
    const row = `| ${s.weights} | ${s.threads} | ${describeBackend(backend)} | ${fmt(pf)} (${a?.prefill_tok_per_s ?? "-"}, ${ratio(pf, a?.prefill_tok_per_s)}) | ` +
      `${fmt(dc)} (${a?.decode_tok_per_s ?? "-"}, ${ratio(dc, a?.decode_tok_per_s)}) | ${cpu} |`;
    rows.push(row);
    console.log(row);
    await model.dispose();
  }
  console.log(`\n${header}\n|---|---|---|---|---|---|\n${rows.join("\n")}`);

  // memory bandwidth as the kernels see it: 512 MB read once per pass, best of 3 passes
  const bandwidth: Record<number, number> = {};
  for (const threads of [1, 2]) {
    const b = (await createCpuBackend({ threads })) as WasmCpuBackend;
    const bytes = 512 << 20;
    const src = b.rt.alloc(bytes), out = b.rt.alloc(64);
    new Uint8Array(b.rt.memory.buffer, src, bytes).fill(1);
    let best = Infinity;
    for (let r = 0; r < 3; r++) {
      const t = performance.now();
      b.rt.run("streamRead", [src, out], bytes / 64, 1024);
      best = Math.min(best, (performance.now() - t) / 1000);
    }
    bandwidth[threads] = bytes / best / 1e9;
    await b.destroy();
  }
  const limits = anchors.machine_limits.wasm_simd_matvec_gb_per_s;
  console.log(`\nmemory bandwidth (wasm streaming read of 512 MB): 1 thread ${fmt(bandwidth[1]!)} GB/s, 2 threads ${fmt(bandwidth[2]!)} GB/s` +
    ` (the anchor machine's wasm matvec: ${limits.threads_1} / ${limits.threads_2} GB/s)`);
  // the products' arithmetic rate on a cache-resident product (x 64 x 512, w 512 x 512: 1.2 MB), and prefill's share
  const flops: Record<number, { wall: number; cpu: number }> = {};
  for (const threads of [1, 2]) {
    const b = (await createCpuBackend({ threads })) as WasmCpuBackend;
    const [T, K, N] = [64, 512, 512];
    const x = b.fromF32(new Float32Array(T * K).fill(0.5), [T, K]);
    const w = b.fromF32(new Float32Array(N * K).fill(0.25), [N, K]);
    let wall = Infinity, cpu = Infinity;
    for (let r = 0; r < 5; r++) {
      const c = process.cpuUsage(), t = performance.now();
      for (let i = 0; i < 20; i++) b.dispose(b.matmul(x, w, null));
      wall = Math.min(wall, (performance.now() - t) / 1000);
      cpu = Math.min(cpu, cpuSeconds(c));
    }
    const work = 20 * 2 * T * K * N;
    flops[threads] = { wall: work / wall / 1e9, cpu: (work / cpu / 1e9) * threads };
    await b.destroy();
  }
  console.log(`SIMD arithmetic (a cache-resident f32 product): 1 thread ${fmt(flops[1]!.wall)} GFLOP/s (${fmt(flops[1]!.cpu)} by CPU time), ` +
    `2 threads ${fmt(flops[2]!.wall)} GFLOP/s`);
  // the layers' products: 2 (D 2E + E (R + 2N) + R E + E D) a token and layer
  const { hiddenSize: D, intermediateSize: E, stateSize: N, timeStepRank: R, numLayers } = config;
  const flopsPerToken = 2 * numLayers * (D * 2 * E + E * (R + 2 * N) + R * E + E * D);
  console.log(`prefill's products: ${fmt(flopsPerToken / 1e6)} MFLOP a token; the prefill rates above make ` +
    decodeRates.map((d, i) => `${d.weights}/${d.threads}t ${fmt((prefillRates[i]! * flopsPerToken) / 1e9)}`).join(", ") + " GFLOP/s");
  const bytesPerToken = { f32: 0, f16: 0 };
  for (const [, t] of weights.f32) bytesPerToken.f32 += numel(t.shape) * 4;
  for (const [, t] of weights.f16) bytesPerToken.f16 += numel(t.shape) * (t.dtype === "F16" ? 2 : 4);
  for (const d of decodeRates) {
    const gbs = (d.tps * bytesPerToken[d.weights as "f32" | "f16"]) / 1e9;
    const bw = bandwidth[d.threads] ?? bandwidth[2]!;
    console.log(`decode ${d.weights}, ${d.threads} thread(s): ${fmt(gbs)} GB/s of weights read, ${fmt((100 * gbs) / bw, 0)}% of the measured bandwidth`);
  }

  if (process.env.BENCH_COLD !== "0") await coldStart(config, f32);
  if (process.env.BENCH_1_4B === "1") await decode14b();
  if (process.env.BENCH_MAMBA2 === "1") await mamba2();
}

/** The mamba2-130m shape on the engine: prefill and decode rates, with the SSD scan and gated norm as kernels and as
 *  the reference's TypeScript ops (for the ratio). */
async function mamba2(): Promise<void> {
  const config = makeConfig({ family: "mamba2", vocabSize: 50280, hiddenSize: 768, numLayers: 24, stateSize: 128, mamba2: { headDim: 64, chunkSize: 256 } });
  const tensors = initParameters(config, { seed: 1 });
  const prompt = new Int32Array(PROMPT).map((_, i) => (i * 7919 + 13) % SHAPE.vocabSize);
  console.log(`\nmamba2-130m shape (D 768, E 1536, 24 heads of 64, N 128, 24 layers, V 50280), random f32 weights; load average ${os.loadavg().map((v) => v.toFixed(1)).join(" ")}`);
  for (const threads of THREADS) {
    const rates: string[] = [];
    for (const ssdOps of ["kernels", "reference"] as const) {
      const backend = await createCpuBackend({ threads });
      if (ssdOps === "reference") Object.assign(backend, { ssdScan: CpuBackend.prototype.ssdScan, gatedRmsNorm: CpuBackend.prototype.gatedRmsNorm });
      const model = await modelFromTensors(config, tensors, { backend }, { source: "bench", folder: "", dtype: "F32" });
      await timeGeneration(model, prompt.subarray(0, 16), 4);
      let best = { ttft: Infinity, decode: Infinity };
      for (let r = 0; r < (ssdOps === "reference" ? 1 : REPS); r++) {
        const m = await timeGeneration(model, prompt, STEPS);
        best = { ttft: Math.min(best.ttft, m.ttft), decode: Math.min(best.decode, m.decode) };
      }
      rates.push(`${ssdOps === "kernels" ? "SSD scan and gated norm kernels" : "the reference's SSD scan and gated norm"}: ` +
        `prefill ${fmt(PROMPT / best.ttft)} tok/s, decode ${fmt(STEPS / best.decode)} tok/s`);
      await model.dispose();
    }
    console.log(`mamba2-130m, ${threads} thread${threads === 1 ? "" : "s"}: ${rates.join("; ")}`);
  }
  await ssdBackwardOp();
}

/** One ssdScanBackward call at a mamba2-130m layer's shape (batch 1, L 256, 24 heads of 64, N 128, one group, no
 *  gate; the training step's op): the engine's kernel against the reference's TypeScript on the same tensors
 *  (median of 7 calls; the reference's of 2). */
async function ssdBackwardOp(): Promise<void> {
  const [L, H, P, N] = [256, 24, 64, 128];
  const E = H * P;
  for (const threads of THREADS) {
    const b = (await createCpuBackend({ threads })) as WasmCpuBackend;
    const xBC = b.fromF32(filled(L * (E + 2 * N), -1, 1, 1), [L, E + 2 * N]);
    const args = {
      batch: 1, seqLen: L, x: cols(xBC, 0, E), B: cols(xBC, E, N), C: cols(xBC, E + N, N), dt: b.fromF32(filled(L * H, -1, 1, 2), [L, H]),
      dtBias: b.fromF32(filled(H, -1, 1, 3), [H]), A_log: b.fromF32(filled(H, 0, 2, 4), [H]), D: b.fromF32(filled(H, -1, 1, 5), [H]), z: null, headDim: P,
      nGroups: 1, dtLimit: [0, Infinity] as [number, number], chunkSize: 256, state: null,
    };
    const dy = b.fromF32(filled(L * E, -1, 1, 6), [L, E]);
    const dxBC = b.zeros([L, E + 2 * N]);
    const g = {
      dx: cols(dxBC, 0, E), dB: cols(dxBC, E, N), dC: cols(dxBC, E + N, N), dDt: b.zeros([L, H]), dDtBias: b.zeros([H]),
      dA_log: b.zeros([H]), dD: b.zeros([H]), dz: null,
    };
    // the median ms of reps calls
    const timed = (f: () => void, reps: number) => median(Array.from({ length: reps }, () => {
      const t0 = performance.now();
      f();
      return performance.now() - t0;
    }));
    const kernel = timed(() => b.ssdScanBackward(args, dy, g), 7);
    const forward = timed(() => b.dispose(b.ssdScan(args)), 7);
    const reference = timed(() => CpuBackend.prototype.ssdScanBackward!.call(b, args, dy, g), 2);
    console.log(`mamba2-130m layer's ssdScanBackward (L ${L}), ${describeBackend(b)}: kernel ${fmt(kernel)} ms, the reference's ` +
      `${fmt(reference)} ms (${fmt(reference / kernel)}x); the forward ssdScan ${fmt(forward)} ms`);
    await b.destroy();
  }
}

/** The 1.4b shape's decode with f16 weights: random values tiled from one block, written straight into the engine. */
async function decode14b(): Promise<void> {
  const config = makeConfig({ vocabSize: 50280, hiddenSize: 2048, numLayers: 48 });
  const block = toF16Bits(Float32Array.from({ length: 1 << 20 }, (_, i) => (((i * 2654435761) >>> 0) / 2 ** 32 - 0.5) * 0.06));
  const blockBytes = new Uint8Array(block.buffer);
  const tensors = new Map<string, HostTensor>();
  for (const [name, shape] of parameterShapes(config)) {
    const n = numel(shape);
    const fill = (dst: Uint8Array) => { for (let o = 0; o < n * 2; o += blockBytes.length) dst.set(blockBytes.subarray(0, Math.min(blockBytes.length, n * 2 - o)), o); };
    tensors.set(name, {
      dtype: "F16", shape, readInto: fill,
      get data() { const d = new Uint16Array(n); fill(new Uint8Array(d.buffer)); return d; },
    });
  }
  for (const threads of THREADS) {
    const backend = await createCpuBackend({ threads });
    const t0 = performance.now();
    const model = await modelFromTensors(config, tensors, { backend }, { source: "bench", folder: "", dtype: "F16" });
    const built = (performance.now() - t0) / 1000;
    const prompt = new Int32Array(16).map((_, i) => i * 31 + 5);
    await timeGeneration(model, prompt.subarray(0, 4), STEPS);
    const m = await timeGeneration(model, prompt, STEPS);
    console.log(`1.4b shape (D 2048, 48 layers), f16 weights, ${describeBackend(backend)}: decode ${fmt(STEPS / m.decode, 2)} tok/s, ` +
      `${fmt((1000 * m.decodeCpu) / STEPS)} CPU ms a token${threads === 1 ? ` (${fmt(STEPS / m.decodeCpu, 2)} tok/s by CPU time)` : ""} ` +
      `(weights placed in ${fmt(built)} s)`);
    await model.dispose();
  }
}

/** A 130m f32 folder loaded from disk in a fresh process: peak RSS and time from process start to first token. */
async function coldStart(config: ReturnType<typeof makeConfig>, tensors: Map<string, HostTensor>): Promise<void> {
  const folder = path.join(os.tmpdir(), "mamba-ts-bench-130m-f32");
  if (!existsSync(path.join(folder, "model.safetensors"))) {
    mkdirSync(folder, { recursive: true });
    const named = new Map([...tensors].filter(([n]) => n !== "lm_head.weight"));
    await writeSafetensors(path.join(folder, "model.safetensors"), named);
    writeFileSync(path.join(folder, "config.json"), JSON.stringify({
      architectures: ["MambaForCausalLM"], model_type: "mamba", hidden_size: config.hiddenSize, intermediate_size: config.intermediateSize,
      num_hidden_layers: config.numLayers, vocab_size: config.vocabSize, state_size: config.stateSize, conv_kernel: config.convKernel,
      time_step_rank: config.timeStepRank, layer_norm_epsilon: config.layerNormEpsilon, use_bias: config.useBias,
      use_conv_bias: config.useConvBias, tie_word_embeddings: config.tieEmbeddings, bos_token_id: 0, eos_token_id: 0, pad_token_id: 0,
    }));
  }
  for (const threads of [2]) {
    const r = spawnSync(process.execPath, ["--import", "tsx", path.join(here, "cpu-cold.ts"), folder, String(threads)], { encoding: "utf8" });
    if (r.status !== 0) {
      console.log(`cold start: the child failed: ${r.stderr.trim().split("\n").slice(-3).join(" / ")}`);
      continue;
    }
    const m = JSON.parse(r.stdout.trim().split("\n").pop()!) as { rssMb: number; firstTokenS: number; loadS: number; engine: string };
    const a = llama("f32", 2);
    console.log(`cold start, 130m f32 from a folder, ${m.engine}: first token ${fmt(m.firstTokenS, 2)} s after the process started ` +
      `(load ${fmt(m.loadS, 2)} s; target 3 s); peak RSS ${fmt(m.rssMb, 0)} MB (target 770; llama.cpp ${a?.peak_rss_mb ?? "-"} MB)`);
  }
}
