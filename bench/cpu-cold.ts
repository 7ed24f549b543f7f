/**
 * One cold start for bench/cpu.bench.ts: loads a model folder on the CPU engine, prefills a 256-token prompt and
 * draws the first token greedily, then 32 more; prints {rssMb, firstTokenS, loadS, engine} as one JSON line.
 * Usage: node --import tsx bench/cpu-cold.ts <folder> [threads]
 */
import { readFileSync } from "node:fs";
import { loadModel, describeBackend } from "../src/index.ts";

const [folder, threadsArg] = process.argv.slice(2);
const loadStart = performance.now();
const model = await loadModel(folder!, { backend: "cpu", ...(threadsArg ? { cpu: { threads: Number(threadsArg) } } : {}) });
const loadS = (performance.now() - loadStart) / 1000;
const prompt = new Int32Array(256).map((_, i) => (i * 7919 + 13) % model.config.vocabSize);
let firstTokenS = 0;
let n = 0;
for await (const _id of model.stream(prompt, { maxNewTokens: 33, temperature: 0, stopTokens: [] })) {
  if (n++ === 0) firstTokenS = performance.now() / 1000; // performance.now() counts from the process's start
}
const engine = describeBackend(model.backend);
await model.dispose();
console.log(JSON.stringify({ rssMb: peakRssMb(), firstTokenS, loadS, engine }));

/** This process's peak RSS: Linux's VmHWM (getrusage's maxrss may count the parent's pages from before the exec). */
function peakRssMb(): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
    if (m) return Number(m[1]) / 1024;
  } catch {
    // not Linux
  }
  return process.resourceUsage().maxRSS / 1024;
}
