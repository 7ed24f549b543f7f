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
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createCpuBackend, describeBackend, modelFromTensors } from "../src/index.ts";
import type { MambaModel } from "../src/index.ts";
import { initParameters, makeConfig } from "../src/model/init.ts";
import { prefill } from "../src/generate/generate.ts";
import { type HostTensor, numel, toF16Bits } from "../src/io/tensor.ts";
import { writeSafetensors } from "../src/io/safetensors.ts";
import { WasmCpuBackend } from "../src/backend/wasm/index.ts";

const here = path.dirname(fileURLToPath(import.meta.url));
const PROMPT = 256;
const STEPS = Number(process.env.BENCH_DECODE_TOKENS ?? 32);
const REPS = Number(process.env.BENCH_REPS ?? 2);
const THREADS = (process.env.BENCH_THREADS ?? "2,1").split(",").map(Number);
const SHAPE = { vocabSize: 50280, hiddenSize: 768, numLayers: 24 };

interface LlamaRow { weights: string; threads: number; prefill_tok_per_s?: number; decode_tok_per_s?: number; peak_rss_mb?: number }
const anchors = JSON.parse(readFileSync(path.join(here, "anchors/cpu-2core.json"), "utf8")) as {
  llama_cpp: LlamaRow[];
  machine_limits: { wasm_simd_matvec_gb_per_s: { threads_1: number; threads_2: number } };
};
const llama = (weights: string, threads: number) => anchors.llama_cpp.find((r) => r.weights === weights && r.threads === threads && r.prefill_tok_per_s !== undefined);

const greedy = { vocabSize: SHAPE.vocabSize, temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, history: null, uniforms: new Float32Array(1) };

/** Time to first token of a 256-token prompt, then STEPS greedy tokens (seconds). */
async function timeGeneration(model: MambaModel, prompt: Int32Array): Promise<{ ttft: number; decode: number }> {
  const lm = model.lm, b = lm.backend;
  let t = performance.now();
  const { cache, logits } = await prefill(lm, prompt);
  let ids = b.sample(logits, greedy);
  await b.readI32(ids);
  b.dispose(logits);
  const ttft = (performance.now() - t) / 1000;
  t = performance.now();
  for (let i = 0; i < STEPS; i++) {
    const h = lm.hidden(ids, { batch: 1, seqLen: 1 }, cache);
    const lg = lm.logits(h);
    const next = b.sample(lg, greedy);
    await b.readI32(next);
    b.dispose(h, lg, ids);
    ids = next;
  }
  const decode = (performance.now() - t) / 1000;
  b.dispose(ids);
  cache.dispose();
  return { ttft, decode };
}

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
  const header = "| weights | threads | engine | prefill tok/s (llama.cpp, ratio) | decode tok/s (llama.cpp, ratio) |";
  const decodeRates: { weights: string; threads: number; tps: number }[] = [];
  const setups: { weights: "f32" | "f16"; threads: number; reference?: boolean }[] = [];
  for (const w of ["f32", "f16"] as const) for (const threads of THREADS) setups.push({ weights: w, threads });
  if (process.env.BENCH_REFERENCE === "1") setups.push({ weights: "f32", threads: 1, reference: true });
  for (const s of setups) {
    const backend = await createCpuBackend({ threads: s.threads, reference: s.reference === true });
    const model = await modelFromTensors(config, weights[s.weights], { backend }, { source: "bench", folder: "", dtype: s.weights.toUpperCase() });
    await timeGeneration(model, prompt.subarray(0, 16)); // warm-up: compile, JIT, allocator blocks
    let best = { ttft: Infinity, decode: Infinity };
    for (let r = 0; r < (s.reference ? 1 : REPS); r++) {
      const m = await timeGeneration(model, prompt);
      best = { ttft: Math.min(best.ttft, m.ttft), decode: Math.min(best.decode, m.decode) };
    }
    const pf = PROMPT / best.ttft, dc = STEPS / best.decode;
    const a = llama(s.weights, s.threads);
    decodeRates.push({ weights: s.weights, threads: s.threads, tps: dc });
    const row = `| ${s.weights} | ${s.threads} | ${describeBackend(backend)} | ${fmt(pf)} (${a?.prefill_tok_per_s ?? "-"}, ${ratio(pf, a?.prefill_tok_per_s)}) | ` +
      `${fmt(dc)} (${a?.decode_tok_per_s ?? "-"}, ${ratio(dc, a?.decode_tok_per_s)}) |`;
    rows.push(row);
    console.log(row);
    await model.dispose();
  }
  console.log(`\n${header}\n|---|---|---|---|---|\n${rows.join("\n")}`);

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
  const bytesPerToken = { f32: 0, f16: 0 };
  for (const [, t] of weights.f32) bytesPerToken.f32 += numel(t.shape) * 4;
  for (const [, t] of weights.f16) bytesPerToken.f16 += numel(t.shape) * (t.dtype === "F16" ? 2 : 4);
  for (const d of decodeRates) {
    const gbs = (d.tps * bytesPerToken[d.weights as "f32" | "f16"]) / 1e9;
    const bw = bandwidth[d.threads] ?? bandwidth[2]!;
    console.log(`decode ${d.weights}, ${d.threads} thread(s): ${fmt(gbs)} GB/s of weights read, ${fmt((100 * gbs) / bw, 0)}% of the measured bandwidth`);
  }

  if (process.env.BENCH_COLD !== "0") await coldStart(config, f32);
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
