/**
 * WebGPU training speed against the official mamba_ssm CUDA figures (bench/anchors/h100.json):
 *  - the selective scan forward + backward at the anchor shapes (fp32, delta_softplus with the dt bias, D and the
 *    gate z; GPU time per forward + backward from many calls between two waits for the queue, after warm-up), with
 *    the forward alone beside it and the dispatches per call;
 *  - one training step of the 130m shape (D 768, 24 layers, vocab 50280, random weights) at batch 8 × 2048 tokens:
 *    forward, loss, backward and AdamW, in tokens/s. The logits of 8 × 2048 tokens (3.3 GB) exceed the largest
 *    buffer a WebGPU binding allows (2 GiB on the H100), so the step runs as micro-batches of whole sequences
 *    whose logits fit, their gradients accumulated (the same update); the micro-batch is printed.
 * BENCH_ONLY=scan,step picks sections. BENCH_SMOKE=1 shrinks every shape to check the bench on a slow adapter
 * (lavapipe); BENCH_SCAN_SHAPES=BxExLxN,... and BENCH_STEP=D,layers,vocab,batch,seqLen[,micro] override the shapes;
 * BENCH_TRAIN_PRECISIONS=f32,f16 times the step with each precision of the products.
 * BENCH_SCAN_TUNINGS=name:value,...|... runs the scan section again with each set of WebGpuInternalTuning values
 * (e.g. scanBackwardChunk:128,scanBackwardSubTile:4|scanBackwardKernel:channel|scanBackwardLanes:8).
 * BENCH_TUNING=name:value,... sets WebGpuInternalTuning values for every backend of the run (e.g. matmulVec4:false).
 */
import { modelFromTensors } from "../src/index.ts";
import { initParameters, makeConfig } from "../src/model/init.ts";
import { createWebGpuBackend, type WebGpuTrainingBackend, type WebGpuInternalTuning } from "../src/backend/webgpu/index.ts";
import { cols, type Tensor } from "../src/backend/backend.ts";
import { MambaError } from "../src/errors.ts";
import { forwardBackward, shiftedTargets } from "../src/train/backprop.ts";
import { namedTensors, zerosLike } from "../src/train/params.ts";
import { AdamW, DEFAULT_OPTIM } from "../src/train/optim.ts";
import { fmtBytes } from "../src/backend/webgpu/gpu.ts";
import { anchor } from "./anchors.ts";
import { printTargets, targetRow } from "./targets.ts";
import { filled } from "./data.ts";
import { gpuTrials, parseTunings, printProfile, timeTrials, warmUpGpu } from "./timing.ts";

const only = new Set((process.env.BENCH_ONLY ?? "scan,step").split(","));
const smoke = process.env.BENCH_SMOKE === "1";
const baseTuning = parseTunings<WebGpuInternalTuning>(process.env.BENCH_TUNING)[0] ?? {};

interface ScanShape { batch: number; dim: number; seqlen: number; dstate: number; fwd_ms: number | null; fwd_bwd_ms: number | null }

function scanShapes(): ScanShape[] {
  const env = process.env.BENCH_SCAN_SHAPES;
  if (env) {
    return env.split(",").map((s) => {
      const [batch, dim, seqlen, dstate] = s.split("x").map(Number) as [number, number, number, number];
      const a = anchor.scans().find((x) => x.batch === batch && x.dim === dim && x.seqlen === seqlen && x.dstate === dstate);
      return { batch, dim, seqlen, dstate, fwd_ms: a?.fwd_ms ?? null, fwd_bwd_ms: a?.fwd_bwd_ms ?? null };
    });
  }
  if (smoke) return [{ batch: 2, dim: 64, seqlen: 256, dstate: 16, fwd_ms: null, fwd_bwd_ms: null }];
  return anchor.scans().map((a) => ({ ...a }));
}

const STEP = (() => {
  const env = process.env.BENCH_STEP?.split(",").map(Number);
  if (env) return { D: env[0]!, layers: env[1]!, vocab: env[2]!, batch: env[3]!, seqLen: env[4]!, micro: env[5] ?? 0 };
  return smoke ? { D: 64, layers: 2, vocab: 1000, batch: 4, seqLen: 128, micro: 0 }
    : { D: 768, layers: 24, vocab: 50280, batch: 8, seqLen: 2048, micro: 0 };
})();

const ms = (t: number) => `${t.toFixed(3)} ms`;
const ratio = (ours: number, official: number | null) => (official ? `${(official / ours).toFixed(3)}x official speed` : "(no anchor)");

async function benchScan(b: WebGpuTrainingBackend): Promise<void> {
  console.log("\n-- selective scan forward + backward (fp32, delta_softplus + dt bias, D, gate z; GPU time per call after warm-up) --");
  for (const a of scanShapes()) {
    const { batch: B, dim: E, seqlen: L, dstate: N } = a;
    const T = B * L;
    const shape = `B${B} E${E} L${L} N${N}`;
    const made: Tensor[] = [];
    const up = (d: Float32Array, s: number[]) => { const t = b.fromF32(d, s); made.push(t); return t; };
    try {
      const u = up(filled(T * E, -1, 1, 1), [T, E]);
      const delta = up(filled(T * E, -7, -2, 2), [T, E]);
      const z = up(filled(T * E, -2, 2, 3), [T, E]);
      const BC = up(filled(T * 2 * N, -1, 1, 4), [T, 2 * N]);
      const A_log = up(new Float32Array(E * N).map((_, i) => Math.log((i % N) + 1)), [E, N]);
      const D = up(new Float32Array(E).fill(1), [E]);
      const bias = up(filled(E, -1, 1, 5), [E]);
      const dy = up(filled(T * E, -1, 1, 6), [T, E]);
      const args = { batch: B, seqLen: L, u, delta, deltaBias: bias, A_log, B: cols(BC, 0, N), C: cols(BC, N, N), D, z, state: null };
      const zeros = (s: number[]) => { const t = b.zeros(s); made.push(t); return t; };
      const dBC = zeros([T, 2 * N]);
      const g = {
        du: zeros([T, E]), dDelta: zeros([T, E]), dDeltaBias: zeros([E]), dA_log: zeros([E, N]), dB: cols(dBC, 0, N),
        dC: cols(dBC, N, N), dD: zeros([E]), dz: zeros([T, E]), zeroed: true, // as the model's backward passes them
      };
      const fwdBwd = () => {
        b.dispose(b.selectiveScan(args)); // the training forward's scan, then its backward
        b.selectiveScanBackward(args, dy, g);
      };
      const time = async (fn: () => void) => {
        for (let i = 0; i < 2; i++) fn();
        const reps = Math.max(3, Math.min(100, Math.round((smoke ? 2e6 : 1e9) / (T * E))));
        const d0 = b.gpu.dispatches;
        const tt = await timeTrials(b, fn, reps);
        const d = (b.gpu.dispatches - d0) / tt.calls;
        const gt = await gpuTrials(b, fn, reps);
        return { t: tt.median, min: tt.min, max: tt.max, d, gpu: gt?.median ?? null, reps };
      };
      const f = await time(() => b.dispose(b.selectiveScan(args)));
      const fb = await time(fwdBwd);
      console.log(`scan fwd+bwd ${shape} fp32: ${ms(fb.t)} (median of 5 loops, ${ms(fb.min)} – ${ms(fb.max)}; official ${a.fwd_bwd_ms !== null ? ms(a.fwd_bwd_ms) : "n/a"}; ` +
        `${ratio(fb.t, a.fwd_bwd_ms)}); backward alone ~${ms(fb.t - f.t)}; forward ${ms(f.t)} (official ` +
        `${a.fwd_ms !== null ? ms(a.fwd_ms) : "n/a"}); ${fb.d} dispatches per fwd+bwd`);
      if (fb.gpu !== null && f.gpu !== null) {
        console.log(`  on the GPU clock (timestamp queries around ${fb.reps} calls in one pass, median of 5): fwd+bwd ` +
          `${ms(fb.gpu)} (${ratio(fb.gpu, a.fwd_bwd_ms)}), forward ${ms(f.gpu)}`);
      }
      printProfile(await b.profileKernels(fwdBwd));
    } catch (err) {
      if (!(err instanceof MambaError)) throw err;
      console.log(`scan fwd+bwd ${shape} fp32: does not fit this device (${err.message})`);
    } finally {
      b.dispose(...made);
      await b.sync().catch(() => {});
    }
  }
}

/** BENCH_TRAIN_PRECISIONS=f32,f16: the step with each precision of the products (f16: mixed precision as the
 *  trainer runs it: f32 master weights, each product reading an f16 copy remade when its weights change). */
const trainPrecisions = (process.env.BENCH_TRAIN_PRECISIONS ?? "f32").split(",").filter(Boolean);
for (const p of trainPrecisions) if (p !== "f32" && p !== "f16") throw new Error(`BENCH_TRAIN_PRECISIONS takes f32 and f16, got ${p}`);

/** The training step's tok/s with this precision of the products (NaN where it does not fit the device). */
async function benchStep(precision: "f32" | "f16"): Promise<number> {
  const s = STEP;
  const T1 = s.seqLen * s.vocab * 4; // logits bytes of one sequence
  // parameters first, then the backend (see BENCHMARKS.md, decode: a device left waiting through seconds of host
  // work after its creation ran decode slower)
  const cfg = makeConfig({ vocabSize: s.vocab, hiddenSize: s.D, numLayers: s.layers });
  const params = initParameters(cfg, { seed: 0 });
  const model = await modelFromTensors(cfg, params, { backend: await createWebGpuBackend(baseTuning) });
  const b = model.backend as unknown as WebGpuTrainingBackend;
  b.usePrecision(precision); // no matrix narrowed: the master weights stay f32, as in the trainer
  const lm = model.lm;
  const maxBinding = Math.min(b.gpu.limits.maxStorageBufferBindingSize, b.gpu.limits.maxBufferSize);
  let micro = s.micro || s.batch;
  while (micro > 1 && (micro * T1 > maxBinding || s.batch % micro !== 0)) micro--;
  const k = s.batch / micro;
  console.log(`\n-- training step${Object.keys(baseTuning).length ? ` (tuning ${JSON.stringify(baseTuning)})` : ""}, ${s.D === 768 && s.layers === 24 && s.vocab === 50280 ? "130m shape" : "custom shape"} ` +
    `(D ${s.D}, ${s.layers} layers, vocab ${s.vocab}, ${precision === "f16" ? "f16 products, f32 master weights" : "fp32"}, AdamW), batch ${s.batch} x ${s.seqLen} tokens --`);
  if (micro < s.batch) {
    console.log(`(the logits of the whole batch, ${fmtBytes(s.batch * T1)}, exceed the ${fmtBytes(maxBinding)} one buffer may bind on this ` +
      `device: the step runs as ${k} micro-batches of ${micro} x ${s.seqLen}, gradients accumulated)`);
  }
  const grads = zerosLike(b, lm.weights);
  const gradMap = namedTensors(lm.config, grads);
  const opt = new AdamW(b, { ...DEFAULT_OPTIM, warmupSteps: 0 }, namedTensors(lm.config, lm.weights));
  const shape = { batch: micro, seqLen: s.seqLen };
  const ids = Array.from({ length: k }, (_, m) =>
    Int32Array.from({ length: micro * s.seqLen }, (_, i) => (i * 7919 + m * 104729) % s.vocab));
  /** Encodes forward + backward of micro-batch m (gradients added at scale 1/k); returns its loss tensor. */
  const encodeMicro = (m: number) => {
    const idt = b.fromI32(ids[m]!, [ids[m]!.length]);
    const tgt = b.fromI32(shiftedTargets(ids[m]!, shape), [ids[m]!.length]);
    const r = forwardBackward(lm, b, idt, tgt, shape, grads, 1 / k);
    b.dispose(idt, tgt, r.correct);
    return r.loss;
  };
  let step = 0;
  // host-side split of a step: encoding forward + backward, waiting for each loss, the optimizer with its sync
  const split = { encode: 0, wait: 0, optim: 0 };
  const trainStep = async () => {
    for (const g of new Set(gradMap.values())) b.zeroFill(g);
    let loss = 0;
    for (let m = 0; m < k; m++) {
      const t0 = performance.now();
      const lossT = encodeMicro(m);
      const t1 = performance.now();
      loss += (await b.readF32(lossT))[0]! / k;
      b.dispose(lossT);
      split.encode += t1 - t0;
      split.wait += performance.now() - t1;
    }
    const t2 = performance.now();
    await opt.step(gradMap, ++step, 1e-4);
    await b.sync();
    split.optim += performance.now() - t2;
    return loss;
  };
  let tokPerS = NaN;
  try {
    const t0 = performance.now();
    const first = await trainStep(); // warm-up: pipelines compile, buffers enter the pool
    console.log(`(first step ${((performance.now() - t0) / 1000).toFixed(2)} s, loss ${first.toFixed(3)})`);
    const steps = smoke ? 2 : 3;
    const d0 = b.gpu.dispatches;
    const created0 = { buffers: b.gpu.buffersCreated, bindGroups: b.gpu.bindGroupsCreated };
    Object.assign(split, { encode: 0, wait: 0, optim: 0 });
    const t1 = performance.now();
    let loss = 0;
    for (let i = 0; i < steps; i++) loss = await trainStep();
    const t = (performance.now() - t1) / 1000 / steps;
    const tokens = s.batch * s.seqLen;
    tokPerS = tokens / t;
    console.log(`train step batch ${s.batch} x ${s.seqLen}: ${(tokens / t).toFixed(0)} tok/s (${(t * 1000).toFixed(0)} ms a step, ` +
      `loss ${loss.toFixed(3)}, ${((b.gpu.dispatches - d0) / steps).toFixed(0)} dispatches a step; GPU memory peak ` +
      `${fmtBytes(b.gpu.peakBytes)}); no official training anchor (official forward alone B8 L2048: ${anchor.forward("130m", "float32") ?? "n/a"} ms)`);
    console.log(`  a step on the host: encoding forward + backward ${(split.encode / steps).toFixed(1)} ms, waiting for the losses ` +
      `${(split.wait / steps).toFixed(1)} ms, optimizer and sync ${(split.optim / steps).toFixed(1)} ms; ` +
      `${((b.gpu.buffersCreated - created0.buffers) / steps).toFixed(0)} buffers and ` +
      `${((b.gpu.bindGroupsCreated - created0.bindGroups) / steps).toFixed(0)} bind groups created a step`);
    // where a step's time goes: one micro-batch's forward and backward on the GPU clock (no readback inside),
    // against the step's wall time per micro-batch, and per kernel
    const microBatch = () => b.dispose(encodeMicro(0));
    const gpuMs = await b.timeGpu(microBatch);
    if (gpuMs !== null) {
      console.log(`  one micro-batch's forward + backward on the GPU clock: ${gpuMs.toFixed(1)} ms (the step: ${(t * 1000 / k).toFixed(1)} ms ` +
        `a micro-batch, optimizer and host included)`);
      try {
        printProfile(await b.profileKernels(microBatch));
      } catch (err) {
        if (!(err instanceof MambaError)) throw err;
        console.log(`  (no per-kernel profile: ${err.message})`);
      }
    }
  } catch (err) {
    if (!(err instanceof MambaError)) throw err;
    console.log(`train step batch ${s.batch} x ${s.seqLen}: does not fit this device (${err.message})`);
  } finally {
    await model.dispose();
  }
  return tokPerS;
}

export default async function run(): Promise<void> {
  if (only.has("scan")) {
    const tunings = parseTunings<WebGpuInternalTuning>(process.env.BENCH_SCAN_TUNINGS);
    for (const extra of [{}, ...tunings]) {
      const tuning = { ...baseTuning, ...extra };
      const b = (await createWebGpuBackend(tuning)) as WebGpuTrainingBackend;
      console.log(`device: ${b.device} (WebGPU)${Object.keys(tuning).length ? `; tuning ${JSON.stringify(tuning)}` : ""}`);
      try {
        await warmUpGpu(b);
        await benchScan(b);
      } finally {
        await b.destroy();
      }
    }
  }
  if (only.has("step")) {
    const tok: Record<string, number> = {};
    for (const p of trainPrecisions) tok[p] = await benchStep(p as "f32" | "f16");
    // half precision's target: the step with f16 products at 3x the f32 step (in this process)
    if (tok.f16 !== undefined && tok.f32 !== undefined) {
      targetRow({ measure: `training step, batch ${STEP.batch} x ${STEP.seqLen}, f16 products (against the f32 step)`, ours: tok.f16, official: tok.f32, unit: "tok/s", target: 3 });
    }
    printTargets("-- half precision's training target (against this run's f32 step) --");
  }
}
