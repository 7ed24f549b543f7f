/**
 * WebGPU backend speed against the official mamba_ssm CUDA figures (bench/anchors/h100.json):
 *  - the selective scan forward alone at the anchor shapes (GPU time per call from many calls between two waits
 *    for the queue, after warm-up), with its achieved bandwidth over the minimum traffic 4·B·L·E + 2·B·L·N floats;
 *  - decode: 130m batch 1 and 64, 130m with f16-stored weights, 1.4b batch 1 (prompt 128 + 256 new, greedy);
 *    dispatches per decoded token;
 *  - one LM forward of batch 8 × 2048 (logits included) on 130m and 1.4b;
 *  - prefill tokens/s at 2^14, 2^17, 2^20 prompt tokens on 130m with the peak of GPU memory, then generation
 *    after the 2^20-token prompt;
 *  - the tiled matmul alone at the forward's shapes (in_proj, out_proj, head of 130m; in_proj of 1.4b) in TFLOP/s;
 *  - (section `kernels`, not run by default) decode kernels alone: ./decode-kernels.ts.
 * Random weights from createModel (130m: D 768, 24 layers; 1.4b: D 2048, 48 layers; vocab 50280).
 * BENCH_ONLY=scan,matmul,decode,breakdown,forward,prefill[,kernels] picks sections; BENCH_MODELS=130m,1.4b picks models; BENCH_SMOKE=1
 * shrinks every shape to check the bench itself on a slow adapter. BENCH_TUNING=name:value,... sets WebGpuInternalTuning
 * values for every backend of the run (e.g. matmulVec4:false); BENCH_MATMUL_TUNINGS=...|... runs the
 * matmul section again with each set; BENCH_DECODE_TUNINGS=...|... compares the decode step's GPU time with each set
 * in one process. BENCH_DECODE_BATCHES=1,64 picks the batches of 130m's fp32 decode and of that comparison;
 * BENCH_DECODE_ROUNDS=5 the generations each decode figure is the median of. BENCH_QUANT=q8_0[,q4_0] adds decode rows
 * (batch 1, 130m and 1.4b) with the matrices quantized by src/io/quant.ts and kept in their GGUF blocks on the GPU
 * (dt_proj f16, as GGUF files store it), beside the f32 and f16 rows, against the official fp16 figure.
 */
import { modelFromTensors, type MambaModel } from "../src/index.ts";
import { createWebGpuBackend, type WebGpuBackend, type WebGpuInternalTuning } from "../src/backend/webgpu/index.ts";
import type { Prepared } from "../src/backend/webgpu/gpu.ts";
import { makeConfig, initParameters } from "../src/model/init.ts";
import { prefill } from "../src/generate/generate.ts";
import { toF16Bits, type HostTensor } from "../src/io/tensor.ts";
import { quantizeQ4_0, quantizeQ8_0, QK } from "../src/io/quant.ts";
import { cols } from "../src/backend/backend.ts";
import { anchor } from "./anchors.ts";
import { benchPrompts, benchSizes, filled, greedyRequest, randomModel } from "./data.ts";
import { benchDecodeKernels } from "./decode-kernels.ts";
import { alternatingRounds, decodeRounds, gpuTrials, parseTunings, printProfile, timeTrials, warmUpGpu } from "./timing.ts";
import { checkCount } from "../src/errors.ts";
import { hasTensorCores } from "../src/backend/webgpu/ops.ts";
import { printTargets, targetFigure, targetRow } from "./targets.ts";
import { GROUP_TARGET, type MatmulArgs, kSplits, matmulTiled, splitPlan } from "../src/backend/webgpu/kernels/matmul.ts";
import { matmulReduce } from "../src/backend/webgpu/kernels/matmul-reduce.ts";
import type { GpuTensor } from "../src/backend/webgpu/tensor.ts";
import { dawnToggles } from "../src/backend/webgpu/node.ts";

const only = new Set((process.env.BENCH_ONLY ?? "scan,matmul,decode,breakdown,forward,prefill").split(","));
const models = new Set((process.env.BENCH_MODELS ?? "130m,1.4b").split(","));
const smoke = process.env.BENCH_SMOKE === "1";
const tuning: WebGpuInternalTuning = parseTunings<WebGpuInternalTuning>(process.env.BENCH_TUNING)[0] ?? {};
const decodeBatches = (process.env.BENCH_DECODE_BATCHES ?? "1,64").split(",").map(Number);
const decodeRoundCount = Number(process.env.BENCH_DECODE_ROUNDS ?? (smoke ? 1 : 5));
checkCount("BENCH_DECODE_ROUNDS", decodeRoundCount, 1);
const quantTypes = (process.env.BENCH_QUANT ?? "").split(",").filter(Boolean).map((q) => {
  if (q !== "q8_0" && q !== "q4_0") throw new Error(`BENCH_QUANT takes q8_0 and q4_0, got ${q}`);
  return q === "q8_0" ? "Q8_0" as const : "Q4_0" as const;
});
/** The official figures to compare with: fp16 where the run's products are f16 (BENCH_TUNING=precision:f16). */
const officialDtype = tuning.precision === "f16" ? "float16" as const : "float32" as const;
const tuningNote = Object.keys(tuning).length ? `; tuning ${JSON.stringify(tuning)}` : "";
/** A backend with the run's tuning plus `extra`. */
const backend = async (extra: WebGpuInternalTuning = {}) => (await createWebGpuBackend({ ...tuning, ...extra })) as WebGpuBackend;
const SIZES = benchSizes(smoke);
const S = smoke ? { newTokens: 8, fwdB: 2, fwdL: 64, prefill: [1 << 8, 1 << 10, 1 << 12], head: 64, idMod: 1000 }
  : { newTokens: 256, fwdB: 8, fwdL: 2048, prefill: [1 << 14, 1 << 17, 1 << 20], head: 4096, idMod: 50000 };
type ModelName = "130m" | "1.4b";

const ratio = (ours: number, official: number | null | undefined, higherIsBetter: boolean) =>
  official ? `${(higherIsBetter ? ours / official : official / ours).toFixed(2)}x official` : "(no anchor)";
const ms = (t: number) => `${t.toFixed(3)} ms`;


function gpuOf(model: MambaModel): WebGpuBackend {
  return model.backend as unknown as WebGpuBackend;
}

async function benchScan(b: WebGpuBackend): Promise<void> {
  console.log("\n-- selective scan forward (fp32, delta_softplus, D and z, GPU time per call after warm-up) --");
  const shapes: { batch: number; dim: number; seqlen: number; dstate: number; fwd_ms?: number }[] = smoke
    ? [{ batch: 2, dim: 64, seqlen: 256, dstate: 16 }] : anchor.scans();
  for (const a of shapes) {
    const { batch: B, dim: E, seqlen: L, dstate: N } = a;
    const T = B * L;
    const u = b.fromF32(filled(T * E, -1, 1, 1), [T, E]);
    const delta = b.fromF32(filled(T * E, -7, -2, 2), [T, E]);
    const z = b.fromF32(filled(T * E, -2, 2, 3), [T, E]);
    const BC = b.fromF32(filled(T * 2 * N, -1, 1, 4), [T, 2 * N]);
    const A_log = b.fromF32(new Float32Array(E * N).map((_, i) => Math.log((i % N) + 1)), [E, N]);
    const D = b.fromF32(new Float32Array(E).fill(1), [E]);
    const bias = b.fromF32(filled(E, -1, 1, 5), [E]);
    const args = { batch: B, seqLen: L, u, delta, deltaBias: bias, A_log, B: cols(BC, 0, N), C: cols(BC, N, N), D, z, state: null };
    for (let i = 0; i < 3; i++) b.dispose(b.selectiveScan(args));
    await b.sync();
    const reps = Math.max(10, Math.min(200, Math.round(2e8 / (T * E))));
    const d0 = b.gpu.dispatches;
    const tt = await timeTrials(b, () => b.dispose(b.selectiveScan(args)), reps);
    const t = tt.median;
    const bytes = (4 * T * E + 2 * T * N) * 4;
    console.log(`scan B${B} E${E} L${L} N${N}: ${ms(t)} (median of 5 loops, ${ms(tt.min)} – ${ms(tt.max)}; official ` +
      `${a.fwd_ms ? ms(a.fwd_ms) : "n/a"}; ${ratio(t, a.fwd_ms, false)}); ${(bytes / (t / 1000) / 1e9).toFixed(0)} GB/s of ` +
      `minimum traffic; ${(b.gpu.dispatches - d0) / tt.calls} dispatches`);
    const gt = await gpuTrials(b, () => b.dispose(b.selectiveScan(args)), reps);
    if (gt) {
      console.log(`  on the GPU clock (timestamp queries around ${reps} calls in one pass): ${ms(gt.median)} (${ms(gt.min)} – ` +
        `${ms(gt.max)}; ${ratio(gt.median, a.fwd_ms, false)}); ${(bytes / (gt.median / 1000) / 1e9).toFixed(0)} GB/s`);
    }
    b.dispose(u, delta, z, BC, A_log, D, bias);
  }
}

/** A product's operands: x [T, K] in [-1, 1], w [N, K] in [-0.05, 0.05]. */
function productOperands(b: WebGpuBackend, T: number, K: number, N: number): [GpuTensor, GpuTensor] {
  return [b.fromF32(filled(T * K, -1, 1, 1), [T, K]) as GpuTensor, b.fromF32(filled(N * K, -0.05, 0.05, 2), [N, K]) as GpuTensor];
}

async function benchMatmul(b: WebGpuBackend): Promise<void> {
  const shapes = smoke ? [{ what: "small", T: 512, K: 64, N: 256 }] : [
    { what: "130m in_proj", T: 16384, K: 768, N: 3072 },
    { what: "130m out_proj", T: 16384, K: 1536, N: 768 },
    { what: "130m head", T: 4096, K: 768, N: 50280 },
    { what: "1.4b in_proj", T: 16384, K: 2048, N: 8192 },
  ];
  for (const { what, T, K, N } of shapes) {
    const [x, w] = productOperands(b, T, K, N);
    const f = () => b.dispose(b.matmul(x, w, null));
    const reps = Math.max(3, Math.min(200, Math.round((smoke ? 2e9 : 2e12) / (2 * T * K * N))));
    const { median: t, min, max } = await timeTrials(b, f, reps);
    const flops = (perCall: number) => `${((2 * T * K * N) / (perCall / 1000) / 1e12).toFixed(1)} TFLOP/s`;
    const gt = await gpuTrials(b, f, reps);
    const kind = b.precision === "f16" ? `f16 products (${hasTensorCores(b) ? `tensor cores, tile ${JSON.stringify(b.settings.tensorCoreTile)}` : "shader-f16"})` : "fp32";
    console.log(`matmul ${what} [${T}, ${K}] x [${N}, ${K}]^T ${kind}: ${ms(t)} (median of 5 loops, ${ms(min)} – ${ms(max)}), ` +
      `${flops(t)}${gt ? `; GPU clock ${ms(gt.median)}, ${flops(gt.median)}` : ""}`);
    // half precision's target: 300 TFLOP/s at the forward's shapes
    if (b.precision === "f16" && !smoke) {
      targetFigure({ measure: `f16 product, ${what} [${T}, ${K}] x [${N}, ${K}]^T (GPU clock)`, ours: (2 * T * K * N) / ((gt?.median ?? t) / 1000) / 1e12, unit: "TFLOP/s", target: 300 });
    }
    b.dispose(x, w);
  }
}

/** A prompt's products (a few hundred rows) by tile: the 64 × 64 tiles the forward picks for them (few 128 × 128
 *  tiles), against 128 × 128 tiles with K split over workgroups to fill the GPU (the partials summed after), on the
 *  GPU clock. */
async function benchPromptTiles(b: WebGpuBackend): Promise<void> {
  const shapes = smoke ? [{ what: "small", T: 128, K: 256, N: 512 }] : [
    { what: "2.7b in_proj", T: 128, K: 2560, N: 10576 },
    { what: "2.7b out_proj", T: 128, K: 5120, N: 2560 },
    { what: "2.7b in_proj", T: 512, K: 2560, N: 10576 },
    { what: "1.4b in_proj", T: 128, K: 2048, N: 8192 },
    { what: "130m in_proj", T: 128, K: 768, N: 3072 },
    { what: "130m in_proj", T: 512, K: 768, N: 3072 },
  ];
  for (const { what, T, K, N } of shapes) {
    const [x, w] = productOperands(b, T, K, N);
    const y = b.gpu.alloc(T * N * 4, "bench product");
    const line: string[] = [];
    for (const [name, cfg] of [["64x64", b.settings.tileSmall], ["128x128", b.settings.tileLarge]] as const) {
      for (const target of [GROUP_TARGET, 2 * GROUP_TARGET]) {
        const plan = splitPlan(K, kSplits(T, N, K, cfg, target));
        const args: MatmulArgs = { x: x.buf, ldx: K, offx: 0, rows: T, K, w: w.buf, ws: "f32", N, bias: null, y };
        const part = plan.count > 1 ? b.gpu.alloc(plan.count * T * N * 4, "bench partials") : null;
        const f = () => {
          if (!part) matmulTiled(b.gpu, args, cfg);
          else {
            matmulTiled(b.gpu, { ...args, y: part }, cfg, plan);
            matmulReduce(b.gpu, part, plan.count, null, T, N, y);
          }
        };
        const gt = await gpuTrials(b, f, 20);
        if (part) b.gpu.release(part);
        const us = gt ? gt.median * 1000 : NaN;
        line.push(`${name} K in ${plan.count}: ${us.toFixed(1)} us (${((2 * T * K * N) / us / 1e6).toFixed(1)} TFLOP/s)`);
      }
    }
    console.log(`prompt product ${what} [${T}, ${K}] x [${N}, ${K}]^T f32, GPU clock: ${line.join("; ")}`);
    b.gpu.release(y);
    b.dispose(x, w);
  }
}

/** GPU time per call of f in microseconds: one call to warm up, then one timed loop of `reps` calls. */
async function gpuMicros(b: WebGpuBackend, f: () => void, reps = 100): Promise<number> {
  f();
  return (await timeTrials(b, f, reps, 1)).median * 1000;
}

/** The last fused step's kernels alone: its recorded dispatches replayed by kind (results meaningless, time real). */
async function printKernelTimes(b: WebGpuBackend, lm: MambaModel["lm"]): Promise<void> {
  // the backend's DecodePlans keeps each model's recorded step in its own (private) map
  const plans = (b as unknown as { decodePlans: { decodePlans: WeakMap<object, { plan: Prepared[] }> } }).decodePlans;
  const plan = plans.decodePlans.get(lm.weights)?.plan;
  if (!plan) return;
  const kinds = new Map<string, Prepared[]>();
  for (const d of plan) {
    const kind = (d.pipeline.label || "?").split("_").slice(0, 2).join("_");
    kinds.set(kind, [...(kinds.get(kind) ?? []), d]);
  }
  for (const [kind, ds] of kinds) {
    const t = (await gpuMicros(b, () => b.gpu.replay(ds), 50)) / ds.length;
    console.log(`breakdown: fused step kernel ${kind}: ${t.toFixed(1)} us each (${ds.length} replayed a step)`);
  }
}

async function makeModel(name: ModelName, dtype: "F32" | "F16" | "Q8_0" | "Q4_0" = "F32"): Promise<MambaModel> {
  const t0 = performance.now();
  let model: MambaModel;
  // the parameters are made on the host before the backend: with the device created first and then left waiting
  // through seconds of initialization, f32 decode of 130m at batch 1 measured 520 – 793 tok/s on the H200 against
  // 850 – 1101 in this order (alternating runs; the cause is not known)
  const cfg = makeConfig(SIZES[name]);
  const params = initParameters(cfg, { seed: 0 });
  if (dtype === "F32") {
    model = await randomModel(cfg, params, await backend());
  } else if (dtype === "Q8_0" || dtype === "Q4_0") {
    // as a GGUF file of this type holds them: matrices whose rows are whole blocks in blocks, the rest of the
    // matrices (dt_proj) f16, vectors and the conv f32
    const quant = new Map<string, HostTensor>();
    const quantize = dtype === "Q8_0" ? quantizeQ8_0 : quantizeQ4_0;
    for (const [k, v] of params) {
      const f = v.data as Float32Array;
      quant.set(k, v.shape.length !== 2 ? v : v.shape[1]! % QK === 0 ? { dtype, shape: v.shape, data: quantize(f) }
        : { dtype: "F16", shape: v.shape, data: toF16Bits(f) });
    }
    model = await modelFromTensors(cfg, quant, { backend: await backend() }, { source: "bench", folder: "", dtype });
  } else {
    const half = new Map<string, HostTensor>();
    for (const [k, v] of params) half.set(k, v.shape.length === 2 ? { dtype: "F16", shape: v.shape, data: toF16Bits(v.data as Float32Array) } : v);
    model = await modelFromTensors(cfg, half, { backend: await backend() }, { source: "bench", folder: "", dtype: "F16" });
  }
  await gpuOf(model).sync();
  const gpuBytes = gpuOf(model).gpu.liveBytes;
  console.log(`(${name} ${dtype} weights built and uploaded in ${((performance.now() - t0) / 1000).toFixed(1)} s; ` +
    `${(gpuBytes / 2 ** 20).toFixed(1)} MiB of GPU buffers)`);
  return model;
}

async function benchDecode(model: MambaModel, name: ModelName, dtype: "float32" | "float16", batch: number, note = ""): Promise<void> {
  const b = gpuOf(model);
  const prompts = benchPrompts(batch, 128, S.idMod);
  const f = await decodeRounds(model, b, prompts, S.newTokens, decodeRoundCount, smoke ? 0 : 1000);
  const total = f.total;
  const official = anchor.decode(name, dtype, batch);
  const spread = f.rounds > 1 ? ` (median of ${f.rounds} rounds, ${f.min.toFixed(0)} – ${f.max.toFixed(0)})` : "";
  console.log(`decode ${name} ${note || dtype} batch ${batch} (prompt 128 + 256 new): ${total.toFixed(0)} tok/s${spread} ` +
    `(official ${official ?? "n/a"} tok/s; ${ratio(total, official, true)}); decode steps alone ${f.steady.toFixed(0)} tok/s, ` +
    `${f.dispatches.toFixed(0)} dispatches per step; prefill and first token ${f.firstMs.toFixed(1)} ms`);
  // half precision's targets against the official fp16 figures: 1.5x at batch 1 of 130m, 1.0x at 64 and for 1.4b
  const target = dtype !== "float16" || smoke ? 0 : name === "130m" && batch === 1 ? 1.5 : name === "130m" && batch === 64 || name === "1.4b" && batch === 1 ? 1 : 0;
  if (target) targetRow({ measure: `decode ${name}, batch ${batch}, ${note ? note.replace(/,$/, "") : `precision ${b.precision}`}`, ours: total, official, unit: "tok/s", target });
}

/** Decode at batch 1 with each BENCH_QUANT type's weights (the official figure: fp16). */
async function benchQuantDecode(name: ModelName): Promise<void> {
  for (const q of quantTypes) {
    const m = await makeModel(name, q);
    await benchDecode(m, name, "float16", 1, `${q.toLowerCase()} weights (GGUF blocks), f32 math,`);
    await m.dispose();
  }
}

async function benchForward(model: MambaModel, name: ModelName): Promise<void> {
  const b = gpuOf(model);
  const B = S.fwdB, L = S.fwdL, T = B * L;
  const ids = b.fromI32(Int32Array.from({ length: T }, (_, i) => (i * 7919) % S.idMod), [T]);
  const head = S.head; // logits rows per head matmul: [4096, 50280] f32 is 824 MB, under the 2 GiB binding limit
  const pass = () => {
    const h = model.lm.hidden(ids, { batch: B, seqLen: L }, null);
    for (let r = 0; r < T; r += head) {
      const part = b.takeRows(h, Array.from({ length: head }, (_, i) => r + i));
      b.dispose(part, model.lm.logits(part));
    }
    b.dispose(h);
  };
  pass();
  await b.sync();
  const reps = 3;
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) pass();
  await b.sync();
  const t = (performance.now() - t0) / reps;
  const official = anchor.forward(name, officialDtype);
  console.log(`forward ${name} ${tuning.precision ?? "f32"} products (official ${officialDtype}) batch ${B} x ${L} (logits included): ${t.toFixed(1)} ms (official ${official ?? "n/a"} ms; ${ratio(t, official, false)})`);
  if (officialDtype === "float16" && !smoke) targetRow({ measure: `forward ${name}, B${B} × ${L}, f16 products`, ours: t, official, unit: "ms", target: 1 });
  const g = await b.timeGpu(pass);
  if (g !== null) console.log(`  on the GPU clock (one pass): ${g.toFixed(1)} ms (${ratio(g, official, false)})`);
  printProfile(await b.profileKernels(pass));
  b.dispose(ids);
}

/** Where a decode step's time goes: GPU time of the fused step and of its parts, host encoding, readback. */
async function benchBreakdown(model: MambaModel, name: ModelName, batches: number[]): Promise<void> {
  const b = gpuOf(model);
  const lm = model.lm;
  const V = lm.config.vocabSize;
  const greedy = (B: number) => greedyRequest(V, B);
  const us = (t: number) => `${t.toFixed(1)} us`;
  const gpuTime = (f: () => void, reps = 100) => gpuMicros(b, f, reps);
  /** Host time per call of f alone (the queue drained between calls). */
  const hostTime = async (f: () => void, reps = 50) => {
    let t = 0;
    for (let i = 0; i < reps; i++) {
      await b.sync();
      const t0 = performance.now();
      f();
      t += performance.now() - t0;
    }
    return (t * 1000) / reps;
  };
  const { MambaCache } = await import("../src/model/cache.ts");
  for (const B of batches) {
    const cache = MambaCache.zeros(b, lm.config, B);
    const ids = b.fromI32(new Int32Array(B).fill(7), [B]);
    const fusedStep = (m: typeof lm | { config: typeof lm.config; weights: typeof lm.weights }) => () => {
      const lg = b.decodeStep(m, ids, cache.conv, cache.ssm);
      if (!lg) throw new Error("no fused step");
      b.dispose(b.sample(lg, greedy(B)), lg);
    };
    const opsStep = () => {
      const h = lm.hidden(ids, { batch: B, seqLen: 1 }, cache);
      const lg = lm.logits(h);
      b.dispose(h, b.sample(lg, greedy(B)), lg);
    };
    if (B === 1) {
      // against the same model cut to two layers (one layer takes other kernels: decodeAccumulate needs two)
      const two = { config: { ...lm.config, numLayers: 2 }, weights: { ...lm.weights, layers: lm.weights.layers.slice(0, 2) } };
      const full = await gpuTime(fusedStep(lm));
      const short = await gpuTime(fusedStep(two));
      const perLayer = (full - short) / (lm.config.numLayers - 2);
      const count = (f: () => void) => {
        const d0 = b.gpu.dispatches;
        f();
        return b.gpu.dispatches - d0;
      };
      const dispatches = count(fusedStep(lm));
      const layerDispatches = (dispatches - count(fusedStep(two))) / (lm.config.numLayers - 2);
      console.log(`breakdown ${name} batch 1, fused step: GPU ${us(full)} a step (${dispatches} dispatches); ${us(perLayer)} a layer ` +
        `(${layerDispatches} dispatches), ${us(short - 2 * perLayer)} embedding + norm_f + head + sample; host encoding ${us(await hostTime(fusedStep(lm)))}`);
      console.log(`breakdown ${name} batch 1, op-by-op step: GPU ${us(await gpuTime(opsStep))}; host encoding ${us(await hostTime(opsStep))}`);
      const { hiddenSize: D, intermediateSize: E } = lm.config;
      const x = b.fromF32(new Float32Array(D).fill(0.01), [1, D]);
      const y = b.fromF32(new Float32Array(E).fill(0.01), [1, E]);
      console.log(`breakdown: head matvec [1, ${D}] x [${V}, ${D}]: ${us(await gpuTime(() => b.dispose(lm.logits(x))))}; ` +
        `out_proj matvec [1, ${E}] x [${D}, ${E}]: ${us(await gpuTime(() => b.dispose(b.matmul(y, lm.weights.layers[0]!.mixer.outProj, null))))}`);
      const lg = lm.logits(x);
      b.dispose(y);
      console.log(`breakdown: greedy sample of ${V} logits: ${us(await gpuTime(() => b.dispose(b.sample(lg, greedy(1)))))}; ` +
        `an empty dispatch (fill of 1 word): ${us(await gpuTime(() => b.dispose(b.zeros([1]))))}`);
      // the floor of a dispatch: a recorded chain of one-workgroup copies, each reading what the last wrote
      const { copyWords } = await import("../src/backend/webgpu/kernels/copy.ts");
      const bufs = [b.gpu.alloc(1024), b.gpu.alloc(1024)] as const;
      const chain = b.gpu.record(() => {
        for (let i = 0; i < 200; i++) copyWords(b.gpu, bufs[i % 2]!, 0, bufs[(i + 1) % 2]!, 0, 256);
      });
      const perDispatch = (await gpuTime(() => b.gpu.replay(chain), 20)) / chain.length;
      console.log(`breakdown: a dependent dispatch (one workgroup copying 1 KiB, recorded and replayed): ${us(perDispatch)} each`);
      bufs.forEach((x) => b.gpu.release(x));
      await printKernelTimes(b, lm);
      const one32 = b.fromI32(Int32Array.of(1), [1]);
      let t = 0;
      for (let i = 0; i < 50; i++) {
        await b.sync();
        const t0 = performance.now();
        await b.readI32(one32);
        t += performance.now() - t0;
      }
      console.log(`breakdown: readback of one id (submit, copy, map): ${us((t * 1000) / 50)}`);
      b.dispose(x, lg, one32);
    } else if (!b.decodeStep(lm, ids, cache.conv, cache.ssm)) {
      console.log(`breakdown ${name} batch ${B}: no batch step (decodeBatch:false, or a model the batch kernels do not take)`);
      console.log(`breakdown ${name} batch ${B}, op-by-op step: GPU ${us(await gpuTime(opsStep, 30))}; host encoding ${us(await hostTime(opsStep, 20))}`);
      printProfile(await b.profileKernels(opsStep));
    } else {
      const d0 = b.gpu.dispatches;
      fusedStep(lm)();
      const dispatches = b.gpu.dispatches - d0;
      console.log(`breakdown ${name} batch ${B}, batch step: GPU ${us(await gpuTime(fusedStep(lm), 30))} a step (${dispatches} dispatches); ` +
        `host encoding ${us(await hostTime(fusedStep(lm), 20))}`);
      await printKernelTimes(b, lm);
      printProfile(await b.profileKernels(fusedStep(lm)));
      console.log(`breakdown ${name} batch ${B}, op-by-op step: GPU ${us(await gpuTime(opsStep, 30))}; host encoding ${us(await hostTime(opsStep, 20))}`);
      printProfile(await b.profileKernels(opsStep));
    }
    cache.dispose();
    b.dispose(ids);
  }
}

async function benchPrefill(model: MambaModel): Promise<void> {
  const b = gpuOf(model);
  const rates: number[] = [];
  for (const n of S.prefill) {
    const prompt = Int32Array.from({ length: n }, (_, i) => (i * 7919) % S.idMod);
    await b.sync();
    b.gpu.peakBytes = b.gpu.liveBytes;
    const t0 = performance.now();
    const { cache, logits } = await prefill(model.lm, prompt);
    await b.readF32(logits);
    const t = (performance.now() - t0) / 1000;
    cache.dispose();
    b.dispose(logits);
    rates.push(n / t);
    console.log(`prefill 130m fp32, ${n} tokens (chunks of 2048, state carried): ${(n / t).toFixed(0)} tok/s, ${t.toFixed(2)} s; ` +
      `peak GPU memory ${(b.gpu.peakBytes / 2 ** 30).toFixed(2)} GiB (weights and pool included)`);
  }
  console.log(`prefill linearity: the ${S.prefill[2]}-token rate is ${((rates[2]! / rates[1]!) * 100).toFixed(1)}% of the ${S.prefill[1]}-token rate`);
  const prompt = Int32Array.from({ length: S.prefill[2]! }, (_, i) => (i * 7919) % S.idMod);
  const t0 = performance.now();
  const out = await model.generate(prompt, { maxNewTokens: 32, stopTokens: [] });
  console.log(`generate after a ${prompt.length}-token prompt: ${out.length - prompt.length} new tokens in ${((performance.now() - t0) / 1000).toFixed(2)} s (prefill included)`);
}

export default async function run(): Promise<void> {
  const probe = await backend();
  const g = probe.gpu;
  // BENCH_SCAN_THREADS=a,b,...: the scan again with other chunkings (channel-chunk threads aimed for)
  for (const n of (process.env.BENCH_SCAN_THREADS ?? "").split(",").filter(Boolean)) {
    const other = await backend({ scanThreads: Number(n) });
    console.log(`(scan with scanThreads ${n})`);
    await warmUpGpu(other);
    await benchScan(other);
    await other.destroy();
  }
  const toggles = dawnToggles().enabled;
  console.log(`device: ${g.description}; WebGPU (Dawn, Node ${process.version}, toggles ${toggles || "none"}); subgroups ${g.hasSubgroups}, timestamp-query ${g.hasTimestamps}; ` +
    `max storage binding ${(g.limits.maxStorageBufferBindingSize / 2 ** 30).toFixed(2)} GiB${tuningNote}`);
  await warmUpGpu(probe);
  if (only.has("scan")) await benchScan(probe);
  if (only.has("tiles")) await benchPromptTiles(probe);
  if (only.has("matmul")) {
    console.log(`\n-- tiled matmul (${probe.precision === "f16" ? "f16 products" : "fp32"}, GPU time per call after warm-up) --`);
    await benchMatmul(probe);
  }
  if (only.has("kernels")) {
    console.log("\n-- decode kernels alone (GPU clock, dependent dispatches in one pass) --");
    await benchDecodeKernels(probe, smoke);
  }
  await probe.destroy();
  for (const extra of parseTunings<WebGpuInternalTuning>(process.env.BENCH_MATMUL_TUNINGS)) {
    console.log(`\n-- tiled matmul with tuning ${JSON.stringify({ ...tuning, ...extra })} --`);
    const other = await backend(extra).catch((e: Error) => {
      console.log(`not run: ${e.message}`);
      return null;
    });
    if (!other) continue;
    await warmUpGpu(other);
    await benchMatmul(other);
    await other.destroy();
  }

  if (models.has("130m") && (only.has("decode") || only.has("forward") || only.has("prefill") || only.has("breakdown"))) {
    const m = await makeModel("130m");
    if (only.has("breakdown")) {
      console.log("\n-- where a decode step's time goes --");
      await benchBreakdown(m, "130m", decodeBatches);
    }
    if (only.has("decode")) {
      console.log("\n-- decode (greedy; tok/s = batch x 256 new tokens / wall time including the 128-token prefill) --");
      for (const B of decodeBatches) await benchDecode(m, "130m", officialDtype, B);
    }
    if (only.has("forward")) {
      console.log("\n-- forward --");
      await benchForward(m, "130m");
    }
    if (only.has("prefill")) {
      console.log("\n-- prefill of long prompts --");
      await benchPrefill(m);
    }
    await m.dispose();
    if (only.has("decode") && decodeBatches.includes(1)) {
      const h = await makeModel("130m", "F16");
      await benchDecode(h, "130m", "float16", 1, "f16-stored weights, f32 math,");
      await h.dispose();
    }
    if (only.has("decode")) await benchQuantDecode("130m");
  }
  if (models.has("1.4b") && (only.has("decode") || only.has("forward") || only.has("breakdown"))) {
    const m = await makeModel("1.4b");
    if (only.has("breakdown")) await benchBreakdown(m, "1.4b", [1]);
    if (only.has("decode")) await benchDecode(m, "1.4b", officialDtype, 1);
    if (only.has("forward")) await benchForward(m, "1.4b");
    await m.dispose();
    if (only.has("decode")) await benchQuantDecode("1.4b");
  }
  if (process.env.BENCH_DECODE_TUNINGS) {
    for (const name of ["130m", "1.4b"] as const) if (models.has(name)) await benchDecodeTunings(name);
  }
  printTargets(`-- half precision's targets (official fp16: ${anchor.file}) --`);
}

/**
 * BENCH_DECODE_TUNINGS=a|b: the decode step's GPU time (fused, or the recorded ops where a set has no fused step)
 * with the run's tuning and with each set, one backend
 * each in this one process, measured in alternating rounds (separate processes on one machine moved every kernel,
 * the tuned and the untouched alike, by up to 50%). Batches from BENCH_DECODE_BATCHES.
 */
async function benchDecodeTunings(name: ModelName): Promise<void> {
  const sets: WebGpuInternalTuning[] = [{}, ...parseTunings<WebGpuInternalTuning>(process.env.BENCH_DECODE_TUNINGS)];
  const cfg = makeConfig(SIZES[name]);
  const params = initParameters(cfg, { seed: 0 });
  const models: MambaModel[] = [];
  for (const extra of sets) {
    models.push(await randomModel(cfg, params, await backend(extra)));
  }
  const { MambaCache } = await import("../src/model/cache.ts");
  console.log(`\n-- decode step by tuning, ${name} (GPU time a step, median of 5 alternating rounds of 50 steps) --`);
  for (const B of decodeBatches) {
    // a set whose backend has no fused step for this batch (past 8 rows without decodeBatch) is timed as generate
    // runs it then: the model's ops recorded once and replayed
    const recorded: boolean[] = [];
    const steps = models.map((m) => {
      const b = gpuOf(m);
      const cache = MambaCache.zeros(b, m.lm.config, B);
      const ids = b.fromI32(new Int32Array(B).fill(7), [B]);
      const greedy = greedyRequest(cfg.vocabSize, B);
      const step = () => {
        const lg = b.decodeStep(m.lm, ids, cache.conv, cache.ssm);
        if (lg) b.dispose(b.sample(lg, greedy), lg);
        return !!lg;
      };
      recorded.push(!step());
      if (!recorded.at(-1)) return step;
      const cap = b.capture(() => {
        const h = m.lm.hidden(ids, { batch: B, seqLen: 1 }, cache);
        const lg = m.lm.logits(h);
        b.dispose(h);
        return lg;
      });
      return () => {
        cap.run();
        b.dispose(b.sample(cap.output, greedy));
        return true;
      };
    });
    const times = await alternatingRounds(models.map((m, i) => ({ b: gpuOf(m), step: steps[i]! })), 5, 50, smoke ? 0 : 300);
    for (const [i, extra] of sets.entries()) {
      const [t, lo, hi] = [times[i]!.median * 1000, times[i]!.min * 1000, times[i]!.max * 1000];
      const how = recorded[i] ? "recorded ops" : "fused step";
      console.log(`decode step ${name} batch ${B} ${JSON.stringify({ ...tuning, ...extra })} (${how}): ${t.toFixed(1)} us ` +
        `(${lo.toFixed(1)} – ${hi.toFixed(1)}), ${((B * 1e6) / t).toFixed(0)} tok/s of GPU time`);
    }
  }
  for (const m of models) await m.dispose();
}

