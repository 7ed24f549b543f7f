/**
 * Timing GPU work in the benchmarks. Getting the GPU to its working clock first: at rest it idles at a fraction of
 * it, and a short first measurement (the scan at B1 L2048 takes 10 ms in all) would otherwise run partly at the
 * idle clock. Then several timed loops, of which the median is quoted.
 */
import type { Backend } from "../src/backend/backend.ts";

/** Keeps the GPU busy with [2048, 2048] matmuls for `ms` milliseconds. */
export async function warmUpGpu(b: Backend, ms = 1500): Promise<void> {
  const n = 2048;
  const x = b.fromF32(new Float32Array(n * n).fill(0.01), [n, n]);
  const w = b.fromF32(new Float32Array(n * n).fill(0.01), [n, n]);
  const t0 = performance.now();
  while (performance.now() - t0 < ms) {
    for (let i = 0; i < 20; i++) b.dispose(b.matmul(x, w, null));
    const done = b.zeros([1]);
    await b.readF32(done); // waits for the matmuls before it
    b.dispose(done);
  }
  b.dispose(x, w);
}

/** A greedy decode's figures: tok/s of the whole generation (prefill included) and of the steps after the first
 *  token, dispatches a step; the median of the rounds, with the whole generation's lowest and highest. */
export interface DecodeFigures { total: number; steady: number; dispatches: number; min: number; max: number; firstMs: number; rounds: number }

/**
 * Times greedy decode of `newTokens` after `prompts` (a batch of one length) in rounds of (the first token alone, the
 * whole generation): one generation's figure moved by up to 15% between processes, so the median round is quoted.
 * Warms up at the timed batch first, so that its kernels (the batch step's, the prefill's tiles for its rows) are
 * compiled before the first timed run, whose time the steps-alone figure subtracts; then the GPU to its clock.
 */
export async function decodeRounds(
  model: { generate(p: Int32Array[], o: { maxNewTokens: number; stopTokens: number[] }): Promise<unknown> },
  b: Backend & { sync(): Promise<void>; gpu?: { dispatches: number } }, prompts: Int32Array[], newTokens: number, rounds: number, warmMs: number,
): Promise<DecodeFigures> {
  await model.generate(prompts, { maxNewTokens: 4, stopTokens: [] });
  if (warmMs > 0) await warmUpGpu(b, warmMs);
  const run = async (n: number) => {
    await b.sync();
    const d0 = b.gpu?.dispatches ?? 0;
    const t0 = performance.now();
    await model.generate(prompts, { maxNewTokens: n, stopTokens: [] });
    return { t: (performance.now() - t0) / 1000, d: (b.gpu?.dispatches ?? 0) - d0 };
  };
  const B = prompts.length;
  const rs: { total: number; steady: number; d: number; first: number }[] = [];
  for (let i = 0; i < rounds; i++) {
    const first = await run(1); // prefill and the first token
    const full = await run(newTokens);
    rs.push({ total: (B * newTokens) / full.t, steady: (B * (newTokens - 1)) / (full.t - first.t), d: (full.d - first.d) / (newTokens - 1), first: first.t * 1000 });
  }
  const totals = rs.map((r) => r.total);
  return {
    total: median(totals), steady: median(rs.map((r) => r.steady)), dispatches: rs[0]!.d, min: Math.min(...totals), max: Math.max(...totals),
    firstMs: median(rs.map((r) => r.first)), rounds,
  };
}

/** Per call, in ms; `calls` is how many were timed in all. */
export interface Trials { median: number; min: number; max: number; calls: number }

/** Median, least and most time per call (ms) over `trials` timed loops of `reps` calls, each loop between two
 *  waits for the queue. One loop alone moved by several times between invocations on one machine; the median of
 *  several is what the tables quote, with the spread beside it. */
export async function timeTrials(b: { sync(): Promise<void> }, fn: () => void, reps: number, trials = 5): Promise<Trials> {
  const times: number[] = [];
  for (let k = 0; k < trials; k++) {
    await b.sync();
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) fn();
    await b.sync();
    times.push((performance.now() - t0) / reps);
  }
  return summarize(times, reps);
}

/**
 * Per-call times (ms) of several steps measured in `rounds` alternating rounds, so that what drifts over a run (the
 * GPU's clock, the host) falls on all alike: separate processes on one machine moved the same decode step by up to
 * 50%. In each round each step gets `warmMs` of GPU warm-up (none at 0), one untimed call, then a timed loop of
 * `reps` calls. The median, least and most round of each step.
 */
export async function alternatingRounds(
  items: readonly { b: Backend & { sync(): Promise<void> }; step: () => unknown }[], rounds: number, reps: number, warmMs: number,
): Promise<Trials[]> {
  const times: number[][] = items.map(() => []);
  for (let r = 0; r < rounds; r++) {
    for (const [i, { b, step }] of items.entries()) {
      if (warmMs > 0) await warmUpGpu(b, warmMs);
      step();
      times[i]!.push((await timeTrials(b, step, reps, 1)).median);
    }
  }
  return times.map((t) => summarize(t, reps));
}

/** The middle value (the upper one of an even count). */
export function median(xs: number[]): number {
  return [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
}

/** Median, least and most of per-call times, one per loop of `reps` calls. */
function summarize(times: number[], reps: number): Trials {
  return { median: median(times), min: Math.min(...times), max: Math.max(...times), calls: times.length * reps };
}

/**
 * Like timeTrials, on the GPU's own clock: each loop's `reps` calls are encoded into one compute pass with
 * timestamp queries at its start and end, so host submits and waits are not counted. null when the device has
 * no timestamp queries.
 */
export async function gpuTrials(
  b: { sync(): Promise<void>; timeGpu(fn: () => void): Promise<number | null> }, fn: () => void, reps: number, trials = 5,
): Promise<Trials | null> {
  const times: number[] = [];
  for (let k = 0; k < trials; k++) {
    await b.sync();
    const t = await b.timeGpu(() => {
      for (let i = 0; i < reps; i++) fn();
    });
    if (t === null) return null;
    times.push(t / reps);
  }
  return summarize(times, reps);
}

/** Prints a per-kernel GPU profile (WebGpuBackend.profileKernels), largest share first. */
export function printProfile(prof: Map<string, { ms: number; count: number }> | null, indent = "  "): void {
  if (!prof) {
    console.log(`${indent}(no per-kernel profile: this device has no timestamp queries)`);
    return;
  }
  const total = [...prof.values()].reduce((s, v) => s + v.ms, 0);
  const rows = [...prof].sort((a, b) => b[1].ms - a[1].ms);
  console.log(`${indent}per kernel (each dispatch in a pass of its own, so the sum ${total.toFixed(3)} ms exceeds the work's time together):`);
  for (const [name, v] of rows) {
    console.log(`${indent}  ${name.padEnd(34)} ${v.ms.toFixed(3).padStart(9)} ms ${((100 * v.ms) / total).toFixed(1).padStart(5)}%  ${v.count} dispatches`);
  }
}

/**
 * Tuning sets from an environment variable: `name:value,name:value|name:value` (sets separated by '|'); numbers
 * become numbers, anything else stays a string (e.g. scanBackwardKernel:channel).
 */
export function parseTunings<T extends object>(text: string | undefined): T[] {
  for (const kv of (text ?? "").split(/[|,]/).filter(Boolean)) {
    if (!/^[A-Za-z]\w*:[^:]*$/.test(kv)) throw new Error(`a tuning is name:value,name:value (sets apart by |); got ${JSON.stringify(kv)} in ${JSON.stringify(text)}`);
  }
  return (text ?? "").split("|").filter(Boolean)
    .map((t) => Object.fromEntries(t.split(",").map((kv) => kv.split(":"))
      .map(([k, v]) => [k, v === "true" || v === "false" ? v === "true"
        : v !== undefined && v.trim() !== "" && Number.isFinite(Number(v)) ? Number(v) : v])) as T);
}
