/**
 * mamba-ts's CPU engine and llama.cpp side by side, in one run on this machine, on the same GGUF files: the 130m
 * shape (D 768, E 1536, N 16, 24 layers, vocab 50280, random weights) written by mamba-ts's own GGUF writer as
 * f32, f16 and q8_0, with a byte-level tokenizer of 50,280 tokens so that llama.cpp loads them.
 *   prefill: time to the first token of a 256-token prompt, as tok/s; decode: the next 32 greedy tokens, tok/s.
 * Each engine runs in a fresh process per file and thread count (BENCH_THREADS, default "2,1"), best of BENCH_REPS
 * (2); peak RSS is that process's. The stored anchor (bench/anchors/cpu-2core.json) was measured on another machine
 * of this kind; this benchmark is the fair comparison, since these machines differ by tens of percent.
 *
 * llama.cpp comes from node-llama-cpp 3.21.1 (its prebuilt CPU binaries), kept out of the package's dependencies
 * (about 730 MB): `npm run bench:llama-setup` installs it into bench/llama/. Without it this benchmark says so and
 * runs nothing. Run: npm run bench -- llama-cpp
 * Seen so far: on the anchor's AMD EPYC machines node-llama-cpp ran these models (its zen4 CPU binary); on an Intel
 * Xeon machine of this kind its prebuilt CPU binary stops on Mamba models, llama.cpp's own tiny fixture included,
 * with `GGML_ASSERT(*cur_backend_id != -1)` in ggml's scheduler. The row then says so, and the stored anchor stands.
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { initParameters, makeConfig } from "../src/model/init.ts";
import { ggufModelContent, tokenizerMetadata, type GgufFileType } from "../src/io/gguf-model.ts";
import { writeGgufFile } from "../src/io/gguf.ts";
import { SHAPE, timeGeneration } from "./cpu-common.ts";

const here = path.dirname(fileURLToPath(import.meta.url));
const self = fileURLToPath(import.meta.url);
const LLAMA_PKG = path.join(here, "llama", "node_modules", "node-llama-cpp", "dist", "index.js");
const PROMPT = 256;
const STEPS = 32;
const REPS = Number(process.env.BENCH_REPS ?? 2);
const THREADS = (process.env.BENCH_THREADS ?? "2,1").split(",").map(Number);
const TYPES = (process.env.BENCH_LLAMA_TYPES ?? "f32,f16,q8_0").split(",") as GgufFileType[];
const fmt = (v: number, d = 1) => v.toFixed(d);

interface Result { prefill: number; decode: number; rssMb: number }

/** The part of node-llama-cpp's API used here (it is not a dependency of the package, so no types of its own). */
interface LlamaLike {
  loadModel(o: { modelPath: string }): Promise<{
    createContext(o: object): Promise<{
      getSequence(): { evaluate(tokens: number[], o: object): AsyncIterable<number>; dispose(): void };
      dispose(): Promise<void>;
    }>;
    dispose(): Promise<void>;
  }>;
  dispose(): Promise<void>;
}

/** The prompt both engines read: the same ids (none of them special). */
const promptIds = () => Array.from({ length: PROMPT }, (_, i) => 256 + ((i * 7919 + 13) % (SHAPE.vocabSize - 512)));

/** GPT-2's byte-to-character map (the first 256 tokens of a byte-level vocabulary). */
function byteTokens(): string[] {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n++); }
  const out: string[] = new Array(256);
  bs.forEach((b, i) => (out[b] = String.fromCodePoint(cs[i]!)));
  return out;
}

/** The 130m shape as a GGUF file of `type`, with a tokenizer llama.cpp accepts (written once, in the temp folder). */
async function ggufFile(type: GgufFileType): Promise<string> {
  const file = path.join(os.tmpdir(), `mamba-ts-bench-130m-tok-${type}.gguf`);
  if (existsSync(file)) return file;
  const config = makeConfig(SHAPE);
  const tensors = initParameters(config, { seed: 0 });
  tensors.delete("lm_head.weight"); // tied
  const vocab: Record<string, number> = {};
  byteTokens().forEach((t, i) => (vocab[t] = i));
  for (let i = 256; i < SHAPE.vocabSize - 1; i++) vocab[`tok${i}`] = i;
  const tokenizer = tokenizerMetadata({
    model: { type: "BPE", vocab, merges: [] }, pre_tokenizer: { type: "ByteLevel" },
    added_tokens: [{ id: SHAPE.vocabSize - 1, content: "<|endoftext|>", special: true }],
  }, config, file);
  const content = ggufModelContent(config, tensors, type, { name: "bench-130m", tokenizer, where: file });
  await writeGgufFile(file, content.metadata, content.tensors);
  return file;
}

/** In a fresh process: llama.cpp through node-llama-cpp on the file. */
async function llamaChild(file: string, threads: number): Promise<void> {
  const { getLlama } = (await import(pathToFileURL(LLAMA_PKG).href)) as { getLlama: (o: object) => Promise<LlamaLike> };
  const llama = await getLlama({ gpu: false, maxThreads: threads, logLevel: "error" });
  const model = await llama.loadModel({ modelPath: file });
  const context = await model.createContext({ contextSize: 1024, batchSize: 512, threads: { ideal: threads, min: threads } });
  const prompt = promptIds();
  let best = { ttft: Infinity, decode: Infinity };
  for (let r = 0; r <= REPS; r++) { // the first pass warms up
    const seq = context.getSequence();
    let t = performance.now(), ttft = 0, n = 0;
    for await (const _ of seq.evaluate(prompt, { temperature: 0 })) {
      if (n === 0) { ttft = (performance.now() - t) / 1000; t = performance.now(); }
      if (++n > STEPS) break;
    }
    const decode = (performance.now() - t) / 1000;
    seq.dispose();
    if (r > 0) best = { ttft: Math.min(best.ttft, ttft), decode: Math.min(best.decode, decode) };
  }
  const out: Result = { prefill: PROMPT / best.ttft, decode: STEPS / best.decode, rssMb: process.resourceUsage().maxRSS / 1024 };
  console.log(JSON.stringify(out));
  await context.dispose();
  await model.dispose();
  await llama.dispose();
}

/** In a fresh process: mamba-ts's CPU engine on the same file. */
async function oursChild(file: string, threads: number): Promise<void> {
  const { createCpuBackend, loadModel } = await import("../src/index.ts");
  const backend = await createCpuBackend({ threads });
  const model = await loadModel(file, { backend });
  const prompt = Int32Array.from(promptIds());
  let best = { ttft: Infinity, decode: Infinity };
  for (let r = 0; r <= REPS; r++) { // the first pass warms up
    const m = await timeGeneration(model, prompt, STEPS);
    if (r > 0) best = { ttft: Math.min(best.ttft, m.ttft), decode: Math.min(best.decode, m.decode) };
  }
  const out: Result = { prefill: PROMPT / best.ttft, decode: STEPS / best.decode, rssMb: process.resourceUsage().maxRSS / 1024 };
  console.log(JSON.stringify(out));
  await model.dispose();
}

function spawnChild(which: "llama" | "ours", file: string, threads: number): Result | string {
  const r = spawnSync(process.execPath, ["--import", "tsx", self, `--${which}`, file, String(threads)], { encoding: "utf8", timeout: 300_000 });
  if (r.status !== 0) return `failed: ${(r.stderr || String(r.error ?? "")).trim().split("\n").slice(-2).join(" / ")}`;
  return JSON.parse(r.stdout.trim().split("\n").pop()!) as Result;
}

export default async function run(): Promise<void> {
  if (!existsSync(LLAMA_PKG)) {
    console.log("llama-cpp: node-llama-cpp is not installed in bench/llama/ (npm run bench:llama-setup installs it); nothing run");
    return;
  }
  const cpus = os.cpus();
  console.log(`machine: ${cpus.length} x ${cpus[0]?.model ?? "cpu"}, Node ${process.version}; load average ${os.loadavg().map((v) => v.toFixed(1)).join(" ")}`);
  console.log(`130m shape, random weights, ${PROMPT}-token prompt then ${STEPS} greedy tokens; each engine in its own process, best of ${REPS}\n`);
  const rows: string[] = [];
  for (const type of TYPES) {
    const file = await ggufFile(type);
    for (const threads of THREADS) {
      const ours = spawnChild("ours", file, threads);
      const theirs = spawnChild("llama", file, threads);
      const cell = (o: Result | string, t: Result | string, k: "prefill" | "decode") =>
        typeof o === "string" || typeof t === "string" ? "-" : `${fmt(o[k])} / ${fmt(t[k])} = **${fmt(o[k] / t[k], 2)}x**`;
      const rss = (x: Result | string) => (typeof x === "string" ? x : fmt(x.rssMb, 0));
      const row = `| ${type} | ${threads} | ${cell(ours, theirs, "prefill")} | ${cell(ours, theirs, "decode")} | ${rss(ours)} / ${rss(theirs)} |`;
      rows.push(row);
      console.log(row);
    }
  }
  console.log("\n| weights | threads | prefill tok/s, mamba-ts / llama.cpp | decode tok/s, mamba-ts / llama.cpp | peak RSS MB, mamba-ts / llama.cpp |");
  console.log(`|---|---|---|---|---|\n${rows.join("\n")}`);
}

if (process.argv[2] === "--llama") await llamaChild(process.argv[3]!, Number(process.argv[4]));
if (process.argv[2] === "--ours") await oursChild(process.argv[3]!, Number(process.argv[4]));
