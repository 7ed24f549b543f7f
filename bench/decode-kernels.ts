/**
 * The webgpu bench's `kernels` section: decode kernels alone, on the GPU clock (many dispatches of one kernel in one
 * timed pass, each depending on the one before as in a step, so each includes a dependent dispatch's fixed cost):
 *  - the scan kernel of the fused and batch steps (decode/mixer-scan.ts) at the shapes of 130m and 1.4b, with one
 *    row, one block of 8 rows and 64 rows (8 blocks), its x_proj partials as many as the step makes; and the
 *    batch step's kernel of a thread per row and channel (decode/batch-scan.ts) at 64 rows, by rows a workgroup;
 *  - the batch step's 64-row matmuls (in_proj and out_proj of 130m, and the head of a decode batch) with the 64-row
 *    tiles the backend has (64 × 64 with K tiles of 8 or 16, 64 × 128), each K split tried, loading one value or 4
 *    at a time (vec4);
 *  - the sampler on rows of 50,280 logits.
 */
import type { WebGpuBackend } from "../src/backend/webgpu/index.ts";
import { decodeMixerScan } from "../src/backend/webgpu/kernels/decode/mixer-scan.ts";
import { BATCH_SCAN_ROW_CHOICES, batchScanBytes, decodeBatchScan } from "../src/backend/webgpu/kernels/decode/batch-scan.ts";
import { matmulReduce } from "../src/backend/webgpu/kernels/matmul-reduce.ts";
import { matmulTiled, splitPlan, TILE_BATCH, TILE_SMALL, TILE_WIDE, type TileConfig, vec4Fits } from "../src/backend/webgpu/kernels/matmul.ts";
import { sample } from "../src/backend/webgpu/kernels/sample.ts";
import { Rng } from "../src/generate/rng.ts";
import { filled } from "./data.ts";
import { gpuTrials } from "./timing.ts";

/** GPU time per call of f after one warm-up call: the median and spread of 5 timed passes of `reps` calls. */
async function passMicros(b: WebGpuBackend, f: () => void, reps: number): Promise<string> {
  f();
  const t = await gpuTrials(b, f, reps);
  if (!t) return "n/a (no timestamp queries)";
  return `${(t.median * 1000).toFixed(2)} us (${(t.min * 1000).toFixed(2)} – ${(t.max * 1000).toFixed(2)})`;
}

/** Values in ±0.05. */
const random = (n: number, seed: number) => filled(n, -0.05, 0.05, seed);

export async function benchDecodeKernels(b: WebGpuBackend, smoke: boolean): Promise<void> {
  const gpu = b.gpu;
  // a scan kernel's inputs and outputs: G partials of x_proj [G, B, J], the layer constants, dt_proj, xz, states, y
  const scanBuffers = (E: number, N: number, R: number, G: number, B: number) => ({
    Q: gpu.upload(random(G * B * (R + 2 * N), 1)), lp: gpu.upload(random(E * (N + 2), 2)), wDt: gpu.upload(random(E * R, 3)),
    xz: gpu.upload(random(B * 2 * E, 4)), ssm: gpu.upload(random(B * E * N, 5)), y: gpu.alloc(B * E * 4),
  });
  const reps = smoke ? 3 : 200;
  // [model, E, N, R, x_proj partials G, rows]: G is E / 16 (130m) or E / 32 (1.4b) channels per fused first
  // kernel at one row, E / 64 channels per batch conv workgroup past 8 rows
  const scans = smoke ? [["small", 64, 16, 4, 4, 1], ["small", 64, 16, 4, 1, 9]] as const : [
    ["130m", 1536, 16, 48, 96, 1], ["130m", 1536, 16, 48, 24, 8], ["130m", 1536, 16, 48, 24, 64],
    ["1.4b", 4096, 16, 128, 128, 1], ["1.4b", 4096, 16, 128, 64, 64],
    // the batch step's partials summed first (below, matmul_reduce), so that each workgroup reads one
    ["130m", 1536, 16, 48, 1, 64], ["1.4b", 4096, 16, 128, 1, 64],
  ] as const;
  for (const [name, E, N, R, G, B] of scans) {
    const J = R + 2 * N;
    const bufs = scanBuffers(E, N, R, G, B);
    const t = await passMicros(b, () => decodeMixerScan(gpu, { B, E, N, R, J, G, oPack: 0, wsDt: "f32", ...bufs }), reps);
    console.log(`decode scan kernel ${name} (E ${E}, N ${N}, R ${R}), ${B} row${B > 1 ? "s" : ""}, ${G} partials: ${t}`);
    for (const buf of Object.values(bufs)) gpu.release(buf);
  }
  // the batch step's scan kernel of a thread per (row, channel) (decodeBatchScanRows), by rows a workgroup
  const threadScans = smoke ? [["small", 64, 16, 4, 1, 9]] as const : [
    ["130m", 1536, 16, 48, 24, 64], ["130m", 1536, 16, 48, 1, 64], ["1.4b", 4096, 16, 128, 64, 64], ["1.4b", 4096, 16, 128, 1, 64],
  ] as const;
  for (const [name, E, N, R, G, B] of threadScans) {
    const J = R + 2 * N;
    const bufs = scanBuffers(E, N, R, G, B);
    for (const RW of BATCH_SCAN_ROW_CHOICES) {
      if (batchScanBytes(RW, N, R, J) > gpu.limits.maxComputeWorkgroupStorageSize) continue;
      const t = await passMicros(b, () => decodeBatchScan(gpu, { RW, B, E, N, R, J, G, oPack: 0, wsDt: "f32", ...bufs }), reps);
      console.log(`decode batch scan kernel (a thread per row and channel, ${RW} rows a workgroup) ${name}, ${B} rows, ${G} partials: ${t}`);
    }
    for (const buf of Object.values(bufs)) gpu.release(buf);
  }
  for (const [name, G, B, J] of smoke ? [["small", 1, 9, 36]] as const : [["130m", 24, 64, 80], ["1.4b", 64, 64, 160]] as const) {
    const Q = gpu.upload(random(G * B * J, 8)), out = gpu.alloc(B * J * 4);
    const t = await passMicros(b, () => matmulReduce(gpu, Q, G, null, B, J, out), reps);
    console.log(`x_proj's ${G} partials of ${B} rows of ${name} summed (matmul_reduce): ${t}`);
    gpu.release(Q);
    gpu.release(out);
  }
  const M = smoke ? 9 : 64;
  // the head of a decode batch: one part, 64 rows by the vocabulary
  const shapes = smoke ? [["small in_proj", 64, 256, [1, 2]]] as const : [
    ["130m in_proj", 768, 3072, [2, 4, 6, 8, 12]], ["130m out_proj", 1536, 768, [8, 12, 16, 20, 24]], ["head", 768, 50280, [1]],
  ] as const;
  for (const [name, K, N, splits] of shapes) {
    const x = gpu.upload(random(M * K, 6)), w = gpu.upload(random(N * K, 7));
    const y = gpu.alloc(Math.max(...splits) * M * N * 4);
    // the 64-row tiles (the batch step's: 64 x 64 with K tiles of 16), loading one value or 4 K columns at once
    for (const vec4 of [false, true]) {
      for (const tile of [TILE_SMALL, TILE_BATCH, TILE_WIDE]) {
        const cfg: TileConfig = { ...tile, vec4 };
        const args = { x, ldx: K, offx: 0, rows: M, K, w, ws: "f32" as const, N, bias: null, y };
        if (vec4 && !vec4Fits(cfg, args)) continue;
        for (const s of splits) {
          const plan = splitPlan(K, s);
          const t = await passMicros(b, () => matmulTiled(gpu, args, cfg, plan), smoke ? 3 : name === "head" ? 20 : 100);
          console.log(`batch matmul ${name} [${M}, ${K}] x [${N}, ${K}]^T, 64 x ${cfg.BN} tiles of ${cfg.TM} x ${cfg.TN} a thread, ` +
            `K tiles of ${cfg.BK}, ${plan.count} K parts, ${vec4 ? "vec4" : "scalar"} loads: ${t}`);
        }
      }
    }
    gpu.release(x);
    gpu.release(w);
    gpu.release(y);
  }
  await benchSampler(b, smoke);
}

/**
 * Zipf-like logits: the token of rank r (ranks shuffled over the ids) gets -s ln r, so p(r) is proportional to
 * r^-s. s = 1.5 keeps 97% of the mass within 10 nats of the best (a confident step of a language model), s = 1 about
 * half of it within 5 nats over a long tail (an uncertain one).
 */
function zipfLogits(V: number, s: number, seed: number): Float32Array {
  const ranks = Array.from({ length: V }, (_, i) => i + 1), rng = new Rng(seed);
  for (let i = V - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [ranks[i], ranks[j]] = [ranks[j]!, ranks[i]!];
  }
  return Float32Array.from(ranks, (r) => -s * Math.log(r));
}

/** The sampler alone on one row (and 64 rows) of 50,280 logits, each setting. */
async function benchSampler(b: WebGpuBackend, smoke: boolean): Promise<void> {
  const gpu = b.gpu, V = smoke ? 5000 : 50280, reps = smoke ? 2 : 50;
  const rows = [
    ["zipf 1.5", zipfLogits(V, 1.5, 11)], ["zipf 1.0", zipfLogits(V, 1, 12)],
    ["flat (±0.05, a random-weight model's)", random(V, 13)],
  ] as const;
  const settings = [
    ["greedy", { temperature: 0, topK: 0, topP: 1, minP: 0 }],
    ["temperature 1", { temperature: 1, topK: 0, topP: 1, minP: 0 }],
    ["temperature 1, top-k 50, top-p 0.9", { temperature: 1, topK: 50, topP: 0.9, minP: 0 }],
    ["temperature 0.7, top-p 0.9", { temperature: 0.7, topK: 0, topP: 0.9, minP: 0 }],
    ["temperature 1, min-p 0.05", { temperature: 1, topK: 0, topP: 1, minP: 0.05 }],
  ] as const;
  const B = 64, out = gpu.alloc(B * 4);
  for (const [what, row] of rows) {
    const wide = new Float32Array(B * V);
    for (let r = 0; r < B; r++) wide.set(row, r * V);
    const logits = gpu.upload(wide);
    for (const [name, st] of settings) {
      for (const u of st.temperature === 0 ? [0.5] : [0.3, 0.9]) {
        const uniforms = gpu.upload(new Float32Array(B).fill(u));
        const run = (n: number) => () => sample(gpu, {
          logits, rows: n, ldV: V, V, ...st, penalty: 1, uniforms, history: null, seen: null, out,
        });
        const one = await passMicros(b, run(1), reps);
        const rows64 = await passMicros(b, run(B), reps);
        const draw = st.temperature === 0 ? "" : `, draw ${u}`;
        console.log(`sample ${V} logits, ${what}, ${name}${draw}: ${one}; 64 rows ${rows64}`);
        gpu.release(uniforms);
      }
    }
    gpu.release(logits);
  }
  gpu.release(out);
}
