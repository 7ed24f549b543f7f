/**
 * The CPU engine with quantized weights on the 130m shape (D 768, E 1536, N 16, 24 layers, vocab 50280, random
 * weights), beside llama.cpp's q8_0 figures on the same shape and machine kind (bench/anchors/cpu-2core.json):
 *   prefill: time to the first token of a 256-token prompt (prefill, head, greedy choice, id read back), as tok/s;
 *   decode: 32 greedy tokens after it, tok/s;
 * for q8_0 and q4_0 GGUF files (written once into the temporary folder by the project's own writer, as
 * `mamba-ts quantize` writes them: embedding/head, in/x/out projections quantized, dt_proj (48 columns) f16, the
 * rest f32), each loaded from disk in a fresh process so that its peak RSS is the model's own, with 2 threads
 * (BENCH_THREADS="2,1" adds 1), the best of BENCH_REPS (2) runs. Also: the engine's wasm memory (allocated blocks,
 * and the whole memory) beside the file's size, and the weight bytes a decoded token reads as a bandwidth.
 * The machine is shared: figures vary by tens of percent from run to run.
 *
 * Run: npm run bench -- cpu-quant
 */
import { spawnSync } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createCpuBackend, describeBackend, loadModel } from "../src/index.ts";
import { initParameters, makeConfig } from "../src/model/init.ts";
import { SHAPE, anchors, llama, timeGeneration } from "./cpu-common.ts";
import { ggufModelContent, type GgufFileType } from "../src/io/gguf-model.ts";
import { writeGgufFile } from "../src/io/gguf.ts";
import { WasmCpuBackend } from "../src/backend/wasm/index.ts";

const self = fileURLToPath(import.meta.url);
const PROMPT = 256;
const STEPS = Number(process.env.BENCH_DECODE_TOKENS ?? 32);
const REPS = Number(process.env.BENCH_REPS ?? 2);
const THREADS = (process.env.BENCH_THREADS ?? "2").split(",").map(Number);
// f32: the same model unquantized, measured in the same run (the machine's load changes from run to run)
const TYPES = (process.env.BENCH_QUANT_TYPES ?? "q8_0,q4_0,f32").split(",") as GgufFileType[];


const fmt = (v: number, d = 1) => v.toFixed(d);
const ratio = (ours: number, theirs: number | undefined) => (theirs ? `${fmt(ours / theirs, 2)}x` : "-");



interface ChildResult { engine: string; prefill: number; decode: number; prefillCpu: number; decodeCpu: number; rssMb: number; rssBeforeMb: number; heapUsed: number; heapMemory: number; loadS: number }

/** In a fresh process: load the GGUF file, time the generation, report peak RSS and the engine's memory. */
async function child(file: string, threads: number): Promise<void> {
  const t0 = performance.now();
  const backend = await createCpuBackend({ threads });
  const rssBeforeMb = process.memoryUsage().rss / 2 ** 20; // Node, tsx and the engine without a model
  const model = await loadModel(file, { backend });
  const loadS = (performance.now() - t0) / 1000;
  const prompt = new Int32Array(PROMPT).map((_, i) => (i * 7919 + 13) % SHAPE.vocabSize);
  await timeGeneration(model, prompt.subarray(0, 16), STEPS); // warm-up: JIT, allocator blocks
  let best = { ttft: Infinity, decode: Infinity, ttftCpu: Infinity, decodeCpu: Infinity };
  for (let r = 0; r < REPS; r++) {
    const m = await timeGeneration(model, prompt, STEPS);
    best = { ttft: Math.min(best.ttft, m.ttft), decode: Math.min(best.decode, m.decode), ttftCpu: Math.min(best.ttftCpu, m.ttftCpu), decodeCpu: Math.min(best.decodeCpu, m.decodeCpu) };
  }
  const rt = (backend as WasmCpuBackend).rt;
  const out: ChildResult = {
    engine: describeBackend(backend), prefill: PROMPT / best.ttft, decode: STEPS / best.decode,
    prefillCpu: (1000 * best.ttftCpu) / PROMPT, decodeCpu: (1000 * best.decodeCpu) / STEPS,
    rssMb: process.resourceUsage().maxRSS / 1024, rssBeforeMb, heapUsed: rt.used, heapMemory: rt.memoryBytes, loadS,
  };
  console.log(JSON.stringify(out));
  await model.dispose();
}

/** The 130m shape's random weights written as a GGUF file of `type` (once; kept in the temporary folder). */
async function ggufFile(type: GgufFileType): Promise<string> {
  const file = path.join(os.tmpdir(), `mamba-ts-bench-130m-${type}.gguf`);
  if (existsSync(file)) return file;
  const config = makeConfig(SHAPE);
  const tensors = initParameters(config, { seed: 0 });
  tensors.delete("lm_head.weight"); // tied
  const content = ggufModelContent(config, tensors, type, { name: "bench-130m", tokenizer: null, where: file });
  await writeGgufFile(file, content.metadata, content.tensors);
  return file;
}

export default async function run(): Promise<void> {
  const cpus = os.cpus();
  console.log(`machine: ${cpus.length} x ${cpus[0]?.model ?? "cpu"}, Node ${process.version}; load average ${os.loadavg().map((v) => v.toFixed(1)).join(" ")}` +
    " (others' work on this machine makes these figures noisy)");
  const rows: string[] = [];
  const notes: string[] = [];
  for (const type of TYPES) {
    const file = await ggufFile(type);
    const fileBytes = statSync(file).size;
    for (const threads of THREADS) {
      const r = spawnSync(process.execPath, ["--import", "tsx", self, "--child", file, String(threads)], { encoding: "utf8" });
      if (r.status !== 0) {
        console.log(`${type}, ${threads} threads: the child failed: ${r.stderr.trim().split("\n").slice(-3).join(" / ")}`);
        continue;
      }
      const m = JSON.parse(r.stdout.trim().split("\n").pop()!) as ChildResult;
      const a = llama(type === "f32" ? "f32" : "q8_0", threads);
      const row = `| ${type} | ${threads} | ${m.engine} | ${fmt(m.prefill)} (${a?.prefill_tok_per_s ?? "-"}, ${ratio(m.prefill, a?.prefill_tok_per_s)}) | ` +
        `${fmt(m.decode)} (${a?.decode_tok_per_s ?? "-"}, ${ratio(m.decode, a?.decode_tok_per_s)}) | ${fmt(m.prefillCpu, 2)} / ${fmt(m.decodeCpu, 1)} | ` +
        `${fmt(m.rssMb, 0)} (${a?.peak_rss_mb ?? "-"}) |`;
      rows.push(row);
      console.log(row);
      const bw = anchors.machine_limits.wasm_simd_matvec_gb_per_s;
      const gbs = (m.decode * fileBytes) / 1e9;
      notes.push(`${type}, ${threads} thread(s): file ${fmt(fileBytes / 2 ** 20)} MiB; the engine's blocks in use ${fmt(m.heapUsed / 2 ** 20)} MiB, ` +
        `its wasm memory ${fmt(m.heapMemory / 2 ** 20)} MiB; RSS before loading ${fmt(m.rssBeforeMb, 0)} MB (Node, tsx, the engine); loaded in ${fmt(m.loadS, 2)} s; decode reads ${fmt(gbs)} GB/s of weights ` +
        `(${fmt((100 * gbs) / (threads === 1 ? bw.threads_1 : bw.threads_2), 0)}% of the anchor machine's wasm matvec bandwidth)`);
    }
  }
  console.log("\n| weights | threads | engine | prefill tok/s (llama.cpp, ratio) | decode tok/s (llama.cpp, ratio) | CPU ms a token (prefill / decode, all threads) | peak RSS MB (llama.cpp) |");
  console.log(`|---|---|---|---|---|---|---|\n${rows.join("\n")}\n`);
  console.log("(llama.cpp's figures: its q8_0 row for q8_0 and q4_0, its f32 row for f32)");
  for (const n of notes) console.log(n);
  console.log("targets (q8_0, 2 threads): decode >= 87 tok/s (moonshot 150), prefill >= 180 tok/s");
}

if (process.argv[2] === "--child") await child(process.argv[3]!, Number(process.argv[4]));
