/**
 * Mamba-2 on WebGPU against the official mamba_ssm 2.3.2 Triton figures (bench/anchors/h100-mamba2.json):
 *  - the SSD scan forward alone (ssdScan: chunked, fp32) at the anchor shapes, GPU time per call after warm-up,
 *    with the achieved bandwidth over the minimum traffic (x, dt, B, C in; y out) and the FLOP rate of the chunked
 *    algorithm (chunk states, within-chunk products, outputs from the states);
 *  - mamba2-130m (D 768, 24 layers, 24 heads of 64, N 128, vocabulary 50280; random weights): one forward of
 *    batch 8 × 2048 (logits included) and greedy decode at batch 1 (prompt 128 + 256 new).
 *  - the SSD scan forward + backward (ssdScanBackward: every input's gradient) at the same shapes (section "bwd");
 *  - decode at each of BENCH_DECODE_BATCHES (default 1,64) rows;
 *  - mamba2-2.7b's decode at batch 1 (section "2.7b", not in the default set: 10.8 GB of weights made on the host);
 *  - the fused decode's matvecs alone by lanes a row (section "lanes", not in the default set).
 * BENCH_SMOKE=1 shrinks every shape to check the bench itself on a slow adapter; BENCH_ONLY=scan,bwd,forward,decode picks.
 */
import { readFileSync, existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createWebGpuBackend, type WebGpuBackend, type WebGpuInternalTuning } from "../src/backend/webgpu/index.ts";
import { type Backend, type Tensor, cols } from "../src/backend/backend.ts";
import type { TrainingOps } from "../src/backend/training.ts";
import { makeConfig, initParameters } from "../src/model/init.ts";
import { modelFromTensors } from "../src/index.ts";
import { filled, benchPrompts, greedyRequest } from "./data.ts";
import { MambaCache } from "../src/model/cache.ts";
import { PIPELINE_DEPTH } from "../src/generate/generate.ts";
import { printTargets, targetRow } from "./targets.ts";
import { decodeRounds, gpuTrials, parseTunings, printProfile, timeTrials } from "./timing.ts";
import { chunkTuning } from "../src/backend/webgpu/kernels/ssd/chunked.ts";
import { ssdBackwardTuning } from "../src/backend/webgpu/kernels/ssd/backward.ts";
import { M2_LANE_CHOICES, decodeM2In, m2Lanes } from "../src/backend/webgpu/kernels/decode/mamba2-in.ts";
import { decodeM2Out } from "../src/backend/webgpu/kernels/decode/mamba2-out.ts";
import { m2SsmGroups } from "../src/backend/webgpu/kernels/decode/mamba2-ssm.ts";
import { defineKernel } from "../src/backend/webgpu/kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../src/backend/webgpu/kernels/compose.ts";

const here = path.dirname(fileURLToPath(import.meta.url));
const anchorFile = process.env.MAMBA_TS_ANCHORS_MAMBA2 ?? path.resolve(here, "anchors/h100-mamba2.json");
interface Anchors {
  ssd_scan: { batch: number; seqlen: number; heads: number; headdim: number; dstate: number; ngroups: number; chunk: number; fwd_ms: number; fwd_bwd_ms?: number }[];
  forward_ms: { model: string; batch: number; seqlen: number; ms: number }[];
  decode_tok_per_s?: { model: string; batch: number; tok_per_s: number }[];
}
const anchors: Anchors | null = existsSync(anchorFile) ? JSON.parse(readFileSync(anchorFile, "utf8")) as Anchors : null;
const smoke = process.env.BENCH_SMOKE === "1";
const only = new Set((process.env.BENCH_ONLY ?? "scan,bwd,forward,decode").split(","));
const bwd = only.has("bwd");
const ssdVariants = parseTunings<Partial<typeof chunkTuning>>(process.env.BENCH_SSD_VARIANTS);
// BENCH_SSD_BWD_TUNINGS=Q:64|Q:128,groupWorkgroups:1: the backward's tunings to time side by side (default its own)
const bwdTunings = parseTunings<Partial<typeof ssdBackwardTuning>>(process.env.BENCH_SSD_BWD_TUNINGS);
if (!bwdTunings.length) bwdTunings.push({});
// BENCH_TUNING=name:value,...: the WebGPU backend's internal tuning for the models (e.g. decodeScanOut:false)
const tuning: WebGpuInternalTuning = parseTunings<WebGpuInternalTuning>(process.env.BENCH_TUNING)[0] ?? {};
const decodeBatches = (process.env.BENCH_DECODE_BATCHES ?? "1,64").split(",").map(Number);
const ms = (t: number) => `${t.toFixed(3)} ms`;
const ratio = (ours: number, official: number | undefined, higherIsBetter: boolean) =>
  official ? `${(higherIsBetter ? ours / official : official / ours).toFixed(2)}x official` : "(no anchor)";

async function benchScan(b: WebGpuBackend): Promise<void> {
  console.log("\n-- SSD scan forward (fp32, chunked; dt softplus + bias, D; no gate) --");
  const shapes = smoke ? [{ batch: 1, seqlen: 256, heads: 4, headdim: 16, dstate: 32, ngroups: 1, chunk: 64, fwd_ms: 0 }] : anchors?.ssd_scan ?? [];
  for (const a of shapes) {
    const { batch: B, seqlen: L, heads: H, headdim: P, dstate: N, ngroups: G, chunk: Q } = a;
    const T = B * L, E = H * P;
    const x = b.fromF32(filled(T * E, -1, 1, 1), [T, E]);
    const dt = b.fromF32(filled(T * H, -5, -2, 2), [T, H]);
    const BC = b.fromF32(filled(T * 2 * G * N, -1, 1, 3), [T, 2 * G * N]);
    const args = {
      batch: B, seqLen: L, x, dt, dtBias: b.fromF32(filled(H, -1, 1, 4), [H]), A_log: b.fromF32(filled(H, 0, 2.7, 5), [H]),
      B: cols(BC, 0, G * N), C: cols(BC, G * N, G * N), D: b.fromF32(new Float32Array(H).fill(1), [H]), z: null,
      headDim: P, nGroups: G, dtLimit: [0, Infinity] as const, chunkSize: Q, state: null,
    };
    const f = () => b.dispose((b as Backend).ssdScan!(args));
    for (let i = 0; i < 3; i++) f();
    await b.sync();
    const reps = Math.max(3, Math.min(100, Math.round(2e8 / (T * E))));
    // BENCH_SSD_VARIANTS=Q:64,SL:1|...: the chunked kernels' own chunk length and slots, each timed in this process
    if (ssdVariants.length) {
      const saved = { ...chunkTuning };
      const line: string[] = [];
      for (const v of ssdVariants) {
        Object.assign(chunkTuning, v);
        for (let i = 0; i < 2; i++) f();
        const g = await gpuTrials(b, f, reps);
        line.push(`${JSON.stringify(v)} ${g ? ms(g.median) : "n/a"}`);
      }
      Object.assign(chunkTuning, saved);
      console.log(`  variants B${B} L${L} H${H}: ${line.join("; ")}`);
    }
    const tt = await timeTrials(b, f, reps);
    const gt = await gpuTrials(b, f, reps);
    const t = gt?.median ?? tt.median;
    let bwdLine = "";
    const profiles: [string, Map<string, { ms: number; count: number }>][] = [];
    const tb_ = b as unknown as TrainingOps;
    if (bwd && tb_.ssdScanBackward) {
      // the gradients of every input, added into zeroed buffers (the training path's call)
      const dy = b.fromF32(filled(T * E, -1, 1, 6), [T, E]);
      const zeros = (n: number, shape: number[]) => b.fromF32(new Float32Array(n), shape);
      const g = {
        dx: zeros(T * E, [T, E]), dDt: zeros(T * H, [T, H]), dDtBias: zeros(H, [H]), dA_log: zeros(H, [H]),
        dB: zeros(T * G * N, [T, G * N]), dC: zeros(T * G * N, [T, G * N]), dD: zeros(H, [H]), dz: null,
      };
      const fb = () => { f(); tb_.ssdScanBackward!(args, dy, g); };
      const saved = { ...ssdBackwardTuning };
      for (const bt of bwdTunings) {
        Object.assign(ssdBackwardTuning, saved, bt);
        const label = bwdTunings.length > 1 ? ` (${JSON.stringify(bt)})` : "";
        try {
          for (let i = 0; i < 2; i++) fb();
          await b.sync();
          const reps2 = Math.max(3, Math.min(30, Math.round(5e7 / (T * E))));
          const gb = await gpuTrials(b, fb, reps2);
          const tb = gb?.median ?? (await timeTrials(b, fb, reps2)).median;
          bwdLine += `; fwd+bwd${label} ${ms(tb)} (official ${a.fwd_bwd_ms ? ms(a.fwd_bwd_ms) : "n/a"}; ${ratio(tb, a.fwd_bwd_ms, false)})`;
          targetRow({ measure: `SSD scan forward + backward, B${B} L${L} H${H} P${P} N${N}, f32${label}`, ours: tb, official: a.fwd_bwd_ms, unit: "ms", target: 1 });
          // where one forward + backward's time goes, kernel by kernel (each dispatch in a pass of its own)
          const prof = await b.profileKernels(fb).catch(() => null);
          if (prof) profiles.push([`  forward + backward B${B} L${L} H${H}${label}:`, prof]);
        } catch (e) {
          bwdLine += `; fwd+bwd${label} not run: ${(e as Error).message}`;
        }
      }
      Object.assign(ssdBackwardTuning, saved);
      b.dispose(dy, g.dx, g.dDt, g.dDtBias, g.dA_log, g.dB, g.dC, g.dD);
    }
    const bytes = (2 * T * E + T * H + 2 * T * G * N) * 4;
    const q = Math.min(64, Q);
    const flops = 2 * T * H * (P * N /* chunk states */ + (q / 2) * (N + P) /* within the chunk */ + P * N /* from the states */);
    console.log(`ssd B${B} L${L} H${H} P${P} N${N} G${G}: ${ms(t)} ${gt ? "(GPU clock" : "(wall"}, ${ms(tt.min)} – ${ms(tt.max)} wall; official ` +
      `${a.fwd_ms ? ms(a.fwd_ms) : "n/a"}; ${ratio(t, a.fwd_ms, false)}); ${(bytes / (t / 1000) / 1e9).toFixed(0)} GB/s of minimum traffic, ` +
      `${(flops / (t / 1000) / 1e12).toFixed(2)} TFLOP/s${bwdLine}`);
    targetRow({ measure: `SSD scan forward, B${B} L${L} H${H} P${P} N${N}, f32`, ours: t, official: a.fwd_ms, unit: "ms", target: 1 });
    for (const [title, prof] of profiles) {
      console.log(title);
      printProfile(prof, "    ");
    }
    b.dispose(x, dt, BC, args.dtBias, args.A_log, args.D);
  }
}

function mamba2_130m() {
  return smoke
    ? makeConfig({ family: "mamba2", vocabSize: 1000, hiddenSize: 64, numLayers: 2, stateSize: 32, mamba2: { headDim: 16, chunkSize: 64 } })
    : makeConfig({ family: "mamba2", vocabSize: 50280, hiddenSize: 768, numLayers: 24, stateSize: 128, mamba2: { headDim: 64, chunkSize: 256 } });
}

/** mamba2-2.7b (D 2560, 64 layers, 80 heads of 64, N 128; random f32 weights): greedy decode at batch 1 (section "2.7b"). */
async function bench27b(): Promise<void> {
  const cfg = makeConfig({ family: "mamba2", vocabSize: 50280, hiddenSize: 2560, numLayers: 64, stateSize: 128, mamba2: { headDim: 64, chunkSize: 256 } });
  const t0 = performance.now();
  const model = await modelFromTensors(cfg, initParameters(cfg, { seed: 1 }), { backend: await createWebGpuBackend(tuning) });
  console.log(`\n(mamba2-2.7b random f32 weights built and uploaded in ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
  try {
    await benchDecode(model, "mamba2-2.7b", 1, 128, 256);
    await profileDecodeStep(model, "mamba2-2.7b", 1);
    await profilePrefill(model, "mamba2-2.7b", 128);
  } finally {
    await model.dispose();
  }
}

/** Greedy decode of `fresh` tokens after prompts of `prompt` at `batch` rows: the whole generation's tok/s (prefill
 *  included, as the official figure), the steps' alone and the first token's time (bench/timing.ts decodeRounds). */
async function benchDecode(model: Awaited<ReturnType<typeof modelFromTensors>>, name: string, batch: number, prompt: number, fresh: number): Promise<void> {
  const b = model.backend as WebGpuBackend;
  const f = await decodeRounds(model, b, benchPrompts(batch, prompt, model.lm.config.vocabSize), fresh, smoke ? 1 : 3, smoke ? 0 : 1000);
  const official = smoke ? undefined : anchors?.decode_tok_per_s?.find((d) => d.model === name && d.batch === batch)?.tok_per_s;
  console.log(`${name} decode batch ${batch} (prompt ${prompt} + ${fresh} new, wall time incl. the prompt, median of ${f.rounds} rounds, ` +
    `${f.min.toFixed(0)} – ${f.max.toFixed(0)}): ${f.total.toFixed(0)} tok/s (official ${official ?? "n/a"}; ${ratio(f.total, official, true)}); ` +
    `decode steps alone ${f.steady.toFixed(0)} tok/s, ${f.dispatches.toFixed(0)} dispatches per step; prefill and first token ${f.firstMs.toFixed(1)} ms`);
  // the issue's targets: 3x official at batch 1 of 130m, 1.5x at 64 and at batch 1 of 2.7b
  const target = name === "mamba2-130m" && batch === 1 ? 3 : name === "mamba2-130m" && batch === 64 || name === "mamba2-2.7b" && batch === 1 ? 1.5 : 0;
  if (target) targetRow({ measure: `${name} decode, batch ${batch}, ${b.precision}`, ours: f.total, official, unit: "tok/s", target });
}

/** A prompt's prefill at batch 1 (the hidden states of `prompt` positions into a fresh cache, then the last row's
 *  logits, as generate's prefill does) on the GPU clock and wall, and its kernels one by one: the part of a
 *  generation's time that is not decode steps. */
async function profilePrefill(model: Awaited<ReturnType<typeof modelFromTensors>>, name: string, prompt: number): Promise<void> {
  const b = model.backend as WebGpuBackend;
  const lm = model.lm;
  const ids = b.fromI32(Int32Array.from({ length: prompt }, (_, i) => (i * 7919) % lm.config.vocabSize), [prompt]);
  const caches: MambaCache[] = [];
  const run = () => {
    const cache = MambaCache.zeros(b, lm.config, 1);
    caches.push(cache);
    const h = lm.hidden(ids, { batch: 1, seqLen: prompt }, cache);
    const last = b.takeRows(h, [prompt - 1]);
    b.dispose(h, last, lm.logits(last));
  };
  try {
    run();
    await b.sync();
    const wall: number[] = [];
    for (let k = 0; k < 3; k++) {
      const t0 = performance.now();
      run();
      await b.sync();
      wall.push(performance.now() - t0);
    }
    wall.sort((x, y) => x - y);
    const g = await b.timeGpu(run);
    console.log(`  ${name} prefill of ${prompt} (batch 1, logits of the last row): ${wall[1]!.toFixed(2)} ms wall (median of 3)` +
      (g !== null ? `, ${g.toFixed(2)} ms on the GPU clock` : ""));
    printProfile(await b.profileKernels(run), "    ");
  } catch (e) {
    console.log(`  ${name} prefill profile not run: ${(e as Error).message}`);
  } finally {
    b.dispose(ids);
    for (const c of caches) c.dispose();
  }
}

/** One fused decode step of B rows (greedy, logits included) on the GPU clock, and its kernels one by one. */
async function profileDecodeStep(model: Awaited<ReturnType<typeof modelFromTensors>>, name: string, B: number): Promise<void> {
  const b = model.backend as WebGpuBackend;
  const lm = model.lm;
  const cache = MambaCache.zeros(b, lm.config, B);
  const ids = b.fromI32(new Int32Array(B).fill(7), [B]);
  // a step and its greedy ids (kept by the caller)
  const stepIds = () => {
    const lg = b.decodeStep(lm, ids, cache.conv, cache.ssm);
    if (!lg) throw new Error("no fused step");
    const next = b.sample(lg, greedyRequest(lm.config.vocabSize, B));
    b.dispose(lg);
    return next;
  };
  const step = () => b.dispose(stepIds());
  try {
    step();
    await b.sync();
    const g = await b.timeGpu(() => { for (let i = 0; i < 20; i++) step(); });
    // the bytes of weights a step reads (in_proj, out_proj, the head; the conv, norms and constants are a few KiB a
    // layer), against the H100's memory bandwidth (about 3.35 TB/s)
    const c = lm.config, m = c.mamba2!;
    const nin = 2 * c.intermediateSize + 2 * m.nGroups * c.stateSize + m.numHeads;
    const weightBytes = (c.numLayers * (nin + c.hiddenSize) * c.hiddenSize + c.vocabSize * c.hiddenSize) * (b.precision === "f16" ? 2 : 4);
    if (g !== null) {
      const us = (g / 20) * 1000;
      console.log(`  ${name} decode step, batch ${B}, on the GPU clock: ${us.toFixed(1)} us, ${(weightBytes / us / 1e3).toFixed(0)} GB/s of weights ` +
        `(${(weightBytes / 2 ** 20).toFixed(0)} MiB a step; tuning: ${Object.keys(tuning).length ? JSON.stringify(tuning) : "defaults"})`);
    }
    await stepWallTimes(b, stepIds);
    printProfile(await b.profileKernels(step), "    ");
  } catch (e) {
    console.log(`  ${name} decode step profile not run: ${(e as Error).message}`);
  } finally {
    b.dispose(ids);
    cache.dispose();
  }
}

/** Where a decode step's wall time goes beyond its GPU time: the host's encoding of a step, 40 steps in one submit,
 *  40 steps each submitted alone, 40 steps each read back as generate does (PIPELINE_DEPTH in flight), and 40 with
 *  one read every 4 steps. `stepIds` encodes a step and returns its ids. */
async function stepWallTimes(b: WebGpuBackend, stepIds: () => Tensor): Promise<void> {
  const n = 40;
  const step = () => b.dispose(stepIds());
  const per = (t0: number) => ((performance.now() - t0) / n).toFixed(3);
  await b.sync();
  let t0 = performance.now();
  for (let i = 0; i < n; i++) step();
  const encode = per(t0);
  await b.sync();
  const oneSubmit = per(t0);
  t0 = performance.now();
  for (let i = 0; i < n; i++) {
    step();
    b.gpu.flush();
  }
  await b.sync();
  const eachSubmit = per(t0);
  t0 = performance.now();
  const queue: { ids: Tensor; read: Promise<Int32Array> }[] = [];
  for (let i = 0; i < n; i++) {
    const ids = stepIds();
    queue.push({ ids, read: b.readI32(ids) });
    if (queue.length >= PIPELINE_DEPTH) {
      const cur = queue.shift()!;
      await cur.read;
      b.dispose(cur.ids);
    }
  }
  for (const q of queue) {
    await q.read;
    b.dispose(q.ids);
  }
  const readEach = per(t0);
  // the same with one read every 4 steps (the others submitted alone)
  t0 = performance.now();
  const reads: Promise<Int32Array>[] = [];
  for (let i = 0; i < n; i++) {
    const ids = stepIds();
    if (i % 4 === 3) reads.push(b.readI32(ids));
    else b.gpu.flush();
    if (reads.length >= 2) await reads.shift();
    b.dispose(ids);
  }
  await Promise.all(reads);
  const readFourth = per(t0);
  console.log(`  a step's wall time (ms, ${n} steps): host encoding ${encode}; all in one submit ${oneSubmit}; each submitted alone ` +
    `${eachSubmit}; each read back, ${PIPELINE_DEPTH} in flight ${readEach}; every 4th read back ${readFourth}`);
}

async function benchModel(): Promise<void> {
  const cfg = mamba2_130m();
  const model = await modelFromTensors(cfg, initParameters(cfg, { seed: 1 }), { backend: await createWebGpuBackend(tuning) });
  try {
    if (only.has("forward")) {
      const [B, L] = smoke ? [2, 128] : [8, 2048];
      const T = B * L;
      const b = model.backend as WebGpuBackend;
      const ids = b.fromI32(Int32Array.from({ length: T }, (_, i) => (i * 7919) % cfg.vocabSize), [T]);
      // logits in parts of 4096 rows: [16384, 50280] f32 is 3.3 GB, over a buffer binding's 2 GiB
      const head = Math.min(T, 4096);
      const pass = () => {
        const h = model.lm.hidden(ids, { batch: B, seqLen: L }, null);
        for (let r = 0; r < T; r += head) {
          const part = b.takeRows(h, Array.from({ length: Math.min(head, T - r) }, (_, i) => r + i));
          b.dispose(part, model.lm.logits(part));
        }
        b.dispose(h);
      };
      pass();
      await b.sync();
      const times: number[] = [];
      let hostMs = 0, created = 0, submits = 0;
      for (let k = 0; k < 3; k++) {
        const [c0, s0] = [b.gpu.buffersCreated, b.gpu.submits];
        const t0 = performance.now();
        pass();
        hostMs += performance.now() - t0;
        await b.sync();
        times.push(performance.now() - t0);
        created += b.gpu.buffersCreated - c0;
        submits += b.gpu.submits - s0;
      }
      // what the wall time holds beside the GPU's work: the host's encoding, submits, buffers made anew
      console.log(`  forward, a pass: host encoding ${ms(hostMs / 3)}, ${(submits / 3).toFixed(0)} submits, ${(created / 3).toFixed(0)} buffers created`);
      const g = await b.timeGpu(pass);
      if (g !== null) console.log(`  forward on the GPU clock (one pass): ${ms(g)}`);
      printProfile(await b.profileKernels(pass), "    ");
      b.dispose(ids);
      times.sort((a, c) => a - c);
      const official = smoke ? undefined : anchors?.forward_ms.find((f) => f.model === "mamba2-130m")?.ms;
      console.log(`\nmamba2-130m forward B${B} × ${L}, ${b.precision === "f16" ? "f16 products" : "f32"} (logits included, in parts of ${head} rows): ${ms(times[1]!)} (median of 3; official ${official ? ms(official) : "n/a"}; ${ratio(times[1]!, official, false)})`);
      targetRow({ measure: `mamba2-130m forward, B${B} × ${L}, ${b.precision}, logits included`, ours: times[1]!, official, unit: "ms", target: 1 });
    }
    if (only.has("decode")) {
      const [prompt, fresh] = smoke ? [16, 16] : [128, 256];
      for (const batch of decodeBatches) {
        await benchDecode(model, "mamba2-130m", batch, prompt, fresh);
        await profileDecodeStep(model, "mamba2-130m", batch);
        if (batch === 1) await profilePrefill(model, "mamba2-130m", prompt);
      }
    }
  } finally {
    await model.dispose();
  }
}

// The read ceiling: every thread sums vec4s at a stride of the grid's threads, U loads in flight, and stores
// nothing unless the sum hits a value it never does (so no load can be dropped).
const readParts: WgslParts = {
  consts: [], params: [["n4", "u32"], ["threads", "u32"]],
  bindings: [["w", "var<storage, read> w: array<vec4<f32>>"], ["sink", "var<storage, read_write> sink: array<f32>"]],
  decls: "", fn: "",
};
const readKernel = defineKernel({
  name: "bench_read_ceiling", example: { U: 4 },
  wgsl: ({ U }: { U: number }) => standaloneWgsl({ ...readParts, fn: /* wgsl */ `
fn readAll(gid: vec3<u32>) {
  let st = p.threads;
  var s = vec4<f32>(0.0);
  var i = gid.x;
  loop {
    if (i + ${U - 1}u * st >= p.n4) { break; }
    ${Array.from({ length: U }, (_, u) => `let v${u} = w[i + ${u}u * st];`).join(" ")}
    s += ${Array.from({ length: U }, (_, u) => `v${u}`).join(" + ")};
    i += ${U}u * st;
  }
  loop { if (i >= p.n4) { break; } s += w[i]; i += st; }
  if (s.x + s.y + s.z + s.w == 1234.5678) { sink[0] = s.x; }
}` }, "256", "readAll(gid)"),
});

/** What plain vec4 reads of a buffer of `bytes` reach (GB/s), by workgroups and loads in flight: the ceiling the
 *  decode matvecs' weight streaming is measured against. */
async function benchReadCeiling(b: WebGpuBackend, bytes: number, reps: number): Promise<void> {
  const gpu = b.gpu;
  const n4 = bytes / 16;
  const w = gpu.upload(filled(n4 * 4, -1, 1, 9)), sink = gpu.alloc(16);
  const rows: string[] = [];
  try {
    for (const U of [1, 4, 8]) {
      const k = gpu.kernel(readKernel, { U });
      for (const groups of [132, 264, 528, 1056, 2112, 4224]) {
        const threads = groups * 256;
        const t = await gpuTrials(b, () => gpu.dispatch(k, bindingsByName(readParts, { w, sink }), paramBlock(readParts.params, { n4, threads }), [groups]), reps);
        if (!t) { console.log("read ceiling: no timestamp queries"); return; }
        rows.push(`U ${U} x ${groups} wg: ${(bytes / (t.median / 1000) / 1e9).toFixed(0)}`);
      }
    }
    console.log(`read ceiling, ${(bytes / 1e6).toFixed(0)} MB of f32 in vec4 loads (GB/s; U loads in flight a thread, workgroups of 256): ${rows.join("; ")}`);
  } finally {
    gpu.release(w); gpu.release(sink);
  }
}

/**
 * Section "lanes": the fused decode's two matvecs alone (in_proj with the RMSNorm in front and the conv behind it,
 * out_proj with the gated norm's scale), one row, f32 weights, at mamba2-130m's and mamba2-2.7b's shapes, by lanes
 * a row (M2_LANE_CHOICES; 0: the default by row width) and bytes a lane loads at once: GPU time per call in a pass of
 * 100 dependent calls (so each includes a dispatch's fixed cost, as in a step), and the weights' bytes over it.
 */
async function benchLanes(b: WebGpuBackend): Promise<void> {
  const gpu = b.gpu;
  const reps = smoke ? 3 : 100;
  const models = smoke ? [["small", 64, 128, 16, 4]] as const : [["mamba2-130m", 768, 1536, 128, 24], ["mamba2-2.7b", 2560, 5120, 128, 80]] as const;
  for (const [name, D, E, N, H] of models) {
    const K = 4, C = E + 2 * N, NIN = E + C + H, P = E / H, NWG = m2SsmGroups(N, P, H);
    const oInBias = D, oConvW = oInBias + NIN, oConvB = oConvW + C * K, oDtBias = oConvB + C;
    const bufs = {
      x: gpu.upload(filled(D, -1, 1, 1)), res: gpu.upload(filled(2 * D, -1, 1, 2)), lp: gpu.upload(filled(oDtBias + H, -0.1, 0.1, 3)),
      wIn: gpu.upload(filled(NIN * D, -0.05, 0.05, 4)), conv: gpu.upload(filled((K - 1) * C, -1, 1, 5)), zx: gpu.alloc(NIN * 4),
      v: gpu.upload(filled(E, -1, 1, 6)), ss: gpu.upload(filled(NWG, 0.5, 1, 7)), wOut: gpu.upload(filled(D * E, -0.05, 0.05, 8)), y: gpu.alloc(D * 4),
    };
    for (const loadBytes of [64, 128, 256]) {
      for (const lanes of [0, ...M2_LANE_CHOICES]) {
        if (lanes && lanes * 4 > D) continue;
        // each as the step runs it (its workgroups by decodeM2Workgroups), and with a workgroup a group of rows
        const inProj = (workgroups: number | undefined) => gpuTrials(b, () => decodeM2In(gpu, {
          T: 1, D, E, C, H, K, x: bufs.x, norm: { res: bufs.res, hasRes: true, par: 0, eps: 1e-5 }, lp: bufs.lp, hasBias: false, oNorm: 0,
          oInBias, oConvW, oConvB, oDtBias, w: bufs.wIn, ws: "f32", loadBytes, lanes, workgroups, convState: bufs.conv, out: bufs.zx, lo: 0, hi: 1e30,
        }), reps);
        const tIn = await inProj(tuning.decodeM2Workgroups);
        const tInEach = await inProj(2 ** 30);
        const outProj = (workgroups: number | undefined) => gpuTrials(b, () => decodeM2Out(gpu, {
          T: 1, K: E, N: D, v: bufs.v, w: bufs.wOut, ws: "f32", bias: null, y: bufs.y, loadBytes, lanes, workgroups, norm: { ss: bufs.ss, G: 1, GS: E, NWG, eps: 1e-5 },
        }), reps);
        const tOut = await outProj(tuning.decodeM2Workgroups);
        const tOutEach = await outProj(2 ** 30);
        if (!tIn || !tOut) { console.log("lanes: no timestamp queries"); return; }
        const rate = (bytes: number, t: number) => `${(t * 1000).toFixed(2)} us, ${(bytes / (t / 1000) / 1e9).toFixed(0)} GB/s`;
        console.log(`${name} decode matvecs, lanes ${lanes || `${m2Lanes(D, 0, loadBytes, "f32").LPR}/${m2Lanes(E, 0, loadBytes, "f32").LPR} (default)`}, ` +
          `loads of ${loadBytes} B: in_proj [${NIN} x ${D}] ${rate(NIN * D * 4, tIn.median)}; out_proj [${D} x ${E}] ${rate(D * E * 4, tOut.median)}; ` +
          `with a workgroup a group of rows: in_proj ${tInEach ? rate(NIN * D * 4, tInEach.median) : "n/a"}, out_proj ${tOutEach ? rate(D * E * 4, tOutEach.median) : "n/a"}`);
      }
    }
    for (const buf of Object.values(bufs)) gpu.release(buf);
    await benchReadCeiling(b, (NIN * D * 4) & ~63, reps);
  }
}

export default async function (): Promise<void> {
  const b = (await createWebGpuBackend()) as WebGpuBackend;
  console.log(`device: ${b.device}; anchors: ${anchors ? anchorFile : "not found"}`);
  try {
    if (only.has("lanes")) await benchLanes(b);
    if (only.has("scan")) await benchScan(b);
  } finally {
    await b.destroy();
  }
  if (only.has("forward") || only.has("decode")) await benchModel();
  if (only.has("2.7b")) await bench27b();
  printTargets(`-- Mamba-2's targets (official: ${anchorFile}) --`);
}
