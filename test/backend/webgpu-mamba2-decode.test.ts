/**
 * Mamba-2's fused decode step on WebGPU (src/backend/webgpu/decode-plans-mamba2.ts, kernels/decode/mamba2-*.ts)
 * against the model's ops one by one: each step's logits and every layer's conv and SSM states after several
 * steps, compared with the CPU reference backend's step mode and with the WebGPU ops' step mode, on tiny random
 * configs (1 and 2 groups, with and without in_proj / out_proj biases, dt clamped, the norm before the gate, no
 * gated norm), at batch 1, 3 (the three-kernel layer) and 12 (the batch step), and at batch 1 and 3 with a layer in
 * one dispatch (decodePersistent, with decodeM2Persistent taking it whatever the layer's size); then greedy
 * generation of the PyTorch fixtures through the fused step.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { cp, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { type MambaConfig, type MambaModel, modelFromTensors } from "../../src/index.ts";
import { makeConfig } from "../../src/model/init.ts";
import { MambaCache } from "../../src/model/cache.ts";
import type { WebGpuBackend, WebGpuInternalTuning } from "../../src/backend/webgpu/index.ts";
import { toBF16Bits, toF16Bits } from "../../src/io/tensor.ts";
import { TestRng, perturbedParameters } from "../helpers/random.ts";
import { assertClose, expected, fixture } from "../helpers/fixtures.ts";
import { gpuTest } from "../helpers/backends.ts";
import { asciiTokenizerJson } from "../helpers/ascii-tokenizer.ts";
import { raw } from "../server/helpers.ts";
import { LAYER_CTL_WORDS, LAYER_FLAG_BYTE } from "../../src/backend/webgpu/kernels/decode/layer.ts";

/** A backend of the test's own (the GPU model that takes it destroys it) whose step runs the kernels of their own
 *  (decodePersistent false: on hardware GPUs the one-dispatch layer is the default at these sizes), or null where
 *  there is no adapter. */
async function gpuOrSkip(t: Parameters<typeof gpuTest>[0], tuning: WebGpuInternalTuning = {}): Promise<WebGpuBackend | null> {
  if (!(await gpuTest(t))) return null;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  return (await createWebGpuBackend({ decodePersistent: false, ...tuning })) as WebGpuBackend;
}

const configs: [string, MambaConfig][] = [
  // heads of 8 channels, state 16: two channel blocks a head in the scan kernel's workgroups (64 threads of 4 states)
  ["1 group, biases", makeConfig({ family: "mamba2", vocabSize: 37, hiddenSize: 16, intermediateSize: 32, numLayers: 2, stateSize: 16,
    convKernel: 4, useBias: true, tieEmbeddings: false, mamba2: { headDim: 8, nGroups: 1, chunkSize: 4 } })],
  ["2 groups, dt clamped, no biases", makeConfig({ family: "mamba2", vocabSize: 37, hiddenSize: 12, intermediateSize: 24, numLayers: 3,
    stateSize: 8, convKernel: 3, mamba2: { headDim: 4, nGroups: 2, chunkSize: 4, timeStepLimit: [0.05, 0.4] } })],
  // heads wider than a scan workgroup's block (N 128: 8 channels a workgroup), the norm before the gate, 3 groups
  ["3 groups, norm before the gate, N 128", makeConfig({ family: "mamba2", vocabSize: 29, hiddenSize: 8, intermediateSize: 36,
    numLayers: 2, stateSize: 128, convKernel: 4, useBias: true, mamba2: { headDim: 12, nGroups: 3, chunkSize: 4, normBeforeGate: true } })],
  // heads of 40 channels, state 8: blocks of 32 channels a scan workgroup, the second one ragged
  ["heads of 40, N 8", makeConfig({ family: "mamba2", vocabSize: 19, hiddenSize: 16, intermediateSize: 80, numLayers: 2, stateSize: 8,
    convKernel: 4, mamba2: { headDim: 40, chunkSize: 4 } })],
  ["no gated norm", makeConfig({ family: "mamba2", vocabSize: 23, hiddenSize: 8, intermediateSize: 16, numLayers: 2, stateSize: 4,
    convKernel: 2, mamba2: { headDim: 4, chunkSize: 4, gatedNorm: false } })],
];

/** The widest hidden size (a multiple of 4) whose 8 rows in_proj's norm holds in `limit` bytes of workgroup memory. */
const widestNormed = (limit: number) => 4 * Math.floor((limit / 4 - 256 * 8) / 8 / 4);
/** A model of hidden size D and few channels, for the workgroup memory that rows × D take. */
const wideConfig = (D: number) => makeConfig({ family: "mamba2", vocabSize: 31, hiddenSize: D, intermediateSize: 32, numLayers: 2, stateSize: 8,
  convKernel: 4, mamba2: { headDim: 8, chunkSize: 4 } });

/**
 * `steps` steps of batch B from zero caches: the fused step against step mode of the same GPU model's ops and of
 * the CPU model; logits and every layer's states within tol.
 */
async function fusedMatchesOps(gpu: MambaModel, cpu: MambaModel, B: number, steps: number, rng: TestRng, what: string): Promise<void> {
  const c = gpu.lm.config, gb = gpu.backend, cb = cpu.backend;
  const fusedCache = MambaCache.zeros(gb, c, B), opsCache = MambaCache.zeros(gb, c, B), cpuCache = MambaCache.zeros(cb, c, B);
  const tol = 2e-4;
  try {
    for (let step = 0; step < steps; step++) {
      const ids = rng.ids(B, c.vocabSize);
      const it = gb.fromI32(ids, [B]);
      const fused = gb.decodeStep!(gpu.lm, it, fusedCache.conv, fusedCache.ssm);
      assert.ok(fused, `${what}: the fused step takes this model at batch ${B}`);
      const h = gpu.lm.hidden(gb.fromI32(ids, [B]), { batch: B, seqLen: 1 }, opsCache);
      const ops = await gb.readF32(gpu.lm.logits(h));
      const want = await cb.readF32(cpu.lm.logits(cpu.lm.hidden(cb.fromI32(ids, [B]), { batch: B, seqLen: 1 }, cpuCache)));
      const at = `${what} B=${B} step ${step}`;
      const got = await gb.readF32(fused);
      assertClose(got, want, tol, `${at} logits (cpu)`);
      assertClose(got, ops, tol, `${at} logits (webgpu ops)`);
      for (let i = 0; i < c.numLayers; i++) {
        const [ssm, conv] = [await gb.readF32(fusedCache.ssm[i]!), await gb.readF32(fusedCache.conv[i]!)];
        assertClose(ssm, await cb.readF32(cpuCache.ssm[i]!), tol, `${at} ssm ${i} (cpu)`);
        assertClose(ssm, await gb.readF32(opsCache.ssm[i]!), tol, `${at} ssm ${i} (webgpu ops)`);
        assertClose(conv, await cb.readF32(cpuCache.conv[i]!), 1e-5, `${at} conv ${i} (cpu)`);
        assertClose(conv, await gb.readF32(opsCache.conv[i]!), 1e-5, `${at} conv ${i} (webgpu ops)`);
      }
      gb.dispose(it, fused, h);
    }
  } finally {
    for (const k of [fusedCache, opsCache, cpuCache]) k.dispose();
  }
}

for (const [name, cfg] of configs) {
  test(`webgpu mamba2 fused decode (${name}): logits and states over several steps equal the ops one by one, batch 1, 3 and 12`, { timeout: 600_000 }, async (t) => {
    const g = await gpuOrSkip(t);
    if (!g) return;
    const ps = perturbedParameters(cfg, 41);
    const gpu = await modelFromTensors(cfg, ps, { backend: g });
    const cpu = await modelFromTensors(cfg, ps, { backend: "cpu" });
    try {
      for (const B of [1, 3, 12]) await fusedMatchesOps(gpu, cpu, B, 3, new TestRng(600 + B), name);
      const names = g.gpu.kernelNames;
      // batch 1 and 3: out_proj in the scan's dispatch (decode_m2_ssm_..._out); 12: the batch step's kernels
      for (const k of ["decode_m2_in_", "decode_m2_ssm_", "decode_m2_in_finish_", "decode_batchnorm_"]) {
        assert.ok(names.some((n) => n.startsWith(k)), `${name}: ${k} ran`);
      }
      assert.ok(names.some((n) => n.startsWith("decode_m2_ssm_") && n.includes("_out")), `${name}: the scan with out_proj ran`);
      // the batch step scales the gated output before out_proj only with several groups (one: the next norm does)
      const m = cfg.mamba2!;
      assert.equal(names.some((n) => n.startsWith("decode_m2_scale_")), m.gatedNorm && m.nGroups > 1, `${name}: the scale's own dispatch`);
    } finally {
      await gpu.dispose();
      await cpu.dispose();
    }
  });
}

test("webgpu mamba2 fused decode: out_proj a dispatch of its own at batch 1 and 3 (decodeScanOut: false), the matvecs with other lanes a row than their default, in_proj's workgroups each taking several groups of rows, equals the ops one by one", { timeout: 600_000 }, async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  // 8 lanes: in_proj's rows in groups of 32 (100 rows in the first config, 86 in the second); with 3 workgroups at
  // most, the first config's two workgroups take 2 groups each, the last group part full. (out_proj: one group of
  // 16 rows at these widths; several a workgroup in the test of hidden sizes past in_proj's workgroup memory)
  const g = (await createWebGpuBackend({ decodePersistent: false, decodeScanOut: false, decodeM2InLanes: 8, decodeM2OutLanes: 16, decodeM2Workgroups: 3 })) as WebGpuBackend;
  for (const [name, cfg] of [configs[0]!, configs[1]!]) {
    const ps = perturbedParameters(cfg, 47);
    const gpu = await modelFromTensors(cfg, ps, { backend: g });
    const cpu = await modelFromTensors(cfg, ps, { backend: "cpu" });
    try {
      for (const B of [1, 3]) await fusedMatchesOps(gpu, cpu, B, 3, new TestRng(800 + B), `${name}, decodeScanOut false`);
    } finally {
      await cpu.dispose();
    }
  }
  const names = g.gpu.kernelNames;
  assert.ok(names.some((n) => n.startsWith("decode_m2_out_")) && !names.some((n) => /^decode_m2_ssm_.*_out/.test(n)),
    "out_proj ran as a dispatch of its own");
  assert.ok(names.some((n) => /^decode_m2_in_.*_l8$/.test(n)) && names.some((n) => /^decode_m2_out_.*_l16$/.test(n)), "the matvecs took the lanes asked for");
  await g.destroy();
});

test("webgpu mamba2 fused decode: a layer in one dispatch (decodePersistent) equals the ops one by one at batch 1 and 3, no wait gives up, greedy generation equals the CPU's, and a wait that gave up fails the step's ids", { timeout: 900_000 }, async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  const g = (await createWebGpuBackend({ decodePersistent: true, decodeM2Persistent: true })) as WebGpuBackend;
  // the flag of the latest step's counters, which a wait that gave up sets
  const flag = async () => {
    assert.ok(g.barrierWatch, "the step watches its counters");
    return new Uint32Array(await g.gpu.read(g.barrierWatch, LAYER_CTL_WORDS * 4))[LAYER_FLAG_BYTE / 4];
  };
  const prompt = Int32Array.from([3, 1, 4, 1, 5]);
  const opts = { maxNewTokens: 5, stopTokens: [] };
  // 1 group with biases; 2 groups with dt clamped; 3 groups, the norm before the gate and heads of two scan items
  // (the second ragged); no gated norm (no sums of squares pass between the phases)
  for (const [name, cfg] of [configs[0]!, configs[1]!, configs[2]!, configs[4]!]) {
    const ps = perturbedParameters(cfg, 49);
    const gpu = await modelFromTensors(cfg, ps, { backend: g });
    const cpu = await modelFromTensors(cfg, ps, { backend: "cpu" });
    try {
      for (const B of [1, 3]) {
        await fusedMatchesOps(gpu, cpu, B, 3, new TestRng(900 + B), `${name}, one dispatch a layer`);
        assert.equal(await flag(), 0, `${name} B=${B}: no wait gave up`);
      }
      assert.deepEqual(Array.from(await gpu.generate(prompt, opts)), Array.from(await cpu.generate(prompt, opts)), `${name}: greedy generation`);
    } finally {
      await cpu.dispose();
    }
  }
  // the matvecs' phases with fewer items than groups of rows, each item taking several in turn (the layer's default
  // at mamba2-2.7b's widths); both strides wrong would fail it
  const g3 = (await createWebGpuBackend({ decodePersistent: true, decodeM2Persistent: true, decodeM2Workgroups: 3 })) as WebGpuBackend;
  try {
    for (const [name, cfg] of [configs[1]!, configs[2]!]) {
      const ps = perturbedParameters(cfg, 51);
      const gpu = await modelFromTensors(cfg, ps, { backend: g3 });
      const cpu = await modelFromTensors(cfg, ps, { backend: "cpu" });
      try {
        for (const B of [1, 3]) await fusedMatchesOps(gpu, cpu, B, 3, new TestRng(910 + B), `${name}, one dispatch a layer, 3 items a matvec`);
      } finally {
        await cpu.dispose();
      }
    }
    assert.ok(g3.gpu.kernelNames.some((n) => n.startsWith("decode_m2_layer_") && n.endsWith("_w3")), "the layer's kernel of 3 items a matvec ran");
  } finally {
    await g3.destroy();
  }
  const names = g.gpu.kernelNames;
  assert.ok(names.some((n) => n.startsWith("decode_m2_layer_")), "the layer's kernel ran");
  assert.ok(!names.some((n) => n.startsWith("decode_m2_in_") || n.startsWith("decode_m2_ssm_") || n.startsWith("decode_m2_out_")),
    "no step fell back to the kernels of their own");
  // the counters as a dispatch whose wait gave up leaves them: the flag set
  const cfg = configs[0]![1];
  const gpu = await modelFromTensors(cfg, perturbedParameters(cfg, 49), { backend: g });
  const cache = MambaCache.zeros(g, cfg, 1);
  const it = g.fromI32(Int32Array.from([3]), [1]);
  const logits = g.decodeStep(gpu.lm, it, cache.conv, cache.ssm)!;
  assert.ok(g.barrierWatch, "the step watches its counters");
  await g.gpu.sync(); // the step's own work before the write
  g.gpu.device.queue.writeBuffer(g.barrierWatch.gpu, LAYER_FLAG_BYTE, Uint32Array.from([1]));
  const ids = g.sample(logits, { vocabSize: cfg.vocabSize, temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, history: null,
    uniforms: new Float32Array(1) });
  await assert.rejects(g.readI32(ids), /decodePersistent's one-dispatch layer waited in vain.*decodePersistent: false \(the CLI: --no-persistent-decode\)/);
  g.dispose(it, logits, ids);
  cache.dispose();
  await gpu.dispose();
});

test("webgpu mamba2 fused decode: with decodePersistent, rows whose layer kernel outgrows the device's workgroup memory take the kernels of their own, and fewer rows the layer's; both equal the ops one by one", { timeout: 600_000 }, async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  const g = (await createWebGpuBackend({ decodePersistent: true, decodeM2Persistent: true })) as WebGpuBackend;
  // the widest hidden size whose 8 rows in_proj's norm holds (lavapipe's 32 KiB: 768): the layer's kernel, which
  // holds the scan's and out_proj's arrays beside them, does not fit at 8 rows
  const D = widestNormed(g.gpu.limits.maxComputeWorkgroupStorageSize);
  const cfg = wideConfig(D);
  const ps = perturbedParameters(cfg, 51);
  const gpu = await modelFromTensors(cfg, ps, { backend: g });
  const cpu = await modelFromTensors(cfg, ps, { backend: "cpu" });
  try {
    const ran = (prefix: string) => g.gpu.kernelNames.some((n) => n.startsWith(prefix));
    await fusedMatchesOps(gpu, cpu, 8, 2, new TestRng(93), `hidden ${D}`);
    assert.ok(ran("decode_m2_in_") && !ran("decode_batchnorm_") && !ran("decode_m2_layer_"), "8 rows: in_proj's kernel with the norm, no layer kernel");
    await fusedMatchesOps(gpu, cpu, 1, 2, new TestRng(94), `hidden ${D}`);
    assert.ok(ran("decode_m2_layer_"), "1 row: the layer's kernel");
  } finally {
    await gpu.dispose();
    await cpu.dispose();
  }
});

test("webgpu mamba2 fused decode: the matvecs' rows in several batches of loads a lane (the last batch part full), as kernels of their own and as the one-dispatch layer's phases, equal the ops one by one", { timeout: 600_000 }, async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  // 8 lanes a row and loads of 64 bytes: in_proj's rows of 520 and out_proj's of 528 are 17 vec4s a lane, in 5
  // batches of 4 (the last holding 1); 3 workgroups at most, each taking several groups of rows
  const cfg = makeConfig({ family: "mamba2", vocabSize: 31, hiddenSize: 520, intermediateSize: 528, numLayers: 2, stateSize: 8,
    convKernel: 4, mamba2: { headDim: 8, chunkSize: 4 } });
  const ps = perturbedParameters(cfg, 53);
  const cpu = await modelFromTensors(cfg, ps, { backend: "cpu" });
  try {
    for (const persistent of [false, true]) {
      const g = (await createWebGpuBackend({ decodePersistent: persistent, decodeM2Persistent: persistent, decodeScanOut: false,
        decodeM2InLanes: 8, decodeM2OutLanes: 8, decodeLoadBytes: 64, decodeM2Workgroups: 3 })) as WebGpuBackend;
      try {
        const gpu = await modelFromTensors(cfg, ps, { backend: g });
        for (const B of [1, 3]) await fusedMatchesOps(gpu, cpu, B, 2, new TestRng(920 + B), `batches of loads${persistent ? ", one dispatch a layer" : ""}`);
        const names = g.gpu.kernelNames;
        assert.ok(persistent ? names.some((n) => n.startsWith("decode_m2_layer_")) : names.some((n) => n.startsWith("decode_m2_out_")),
          persistent ? "the layer's kernel ran" : "out_proj ran as a dispatch of its own");
        await gpu.dispose();
      } finally {
        await g.destroy();
      }
    }
  } finally {
    await cpu.dispose();
  }
});

test("webgpu mamba2 fused decode: half-precision weights (bf16, f16) equal the CPU's with the same weights, batch 1 and 12 with the kernels of their own, batch 1 and 3 with the layer in one dispatch", { timeout: 600_000 }, async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  const cfg = configs[0]![1];
  for (const [dtype, persistent] of [["BF16", false], ["F16", false], ["BF16", true], ["F16", true]] as const) {
    const g = (await createWebGpuBackend({ decodePersistent: persistent })) as WebGpuBackend;
    const base = perturbedParameters(cfg, 45);
    const bits = dtype === "BF16" ? toBF16Bits : toF16Bits;
    const ps = new Map([...base].map(([k, v]) => [k, v.shape.length < 2 ? v : { dtype, shape: v.shape, data: bits(v.data as Float32Array) }]));
    const gpu = await modelFromTensors(cfg, ps, { backend: g });
    const cpu = await modelFromTensors(cfg, ps, { backend: "cpu" });
    try {
      for (const B of persistent ? [1, 3] : [1, 12]) await fusedMatchesOps(gpu, cpu, B, 2, new TestRng(700 + B), `${dtype}${persistent ? ", one dispatch a layer" : ""}`);
      assert.equal(g.gpu.kernelNames.some((n) => n.startsWith("decode_m2_layer_")), persistent, `${dtype}: the layer's kernel ran where asked for`);
    } finally {
      await gpu.dispose();
      await cpu.dispose();
    }
  }
});

test("webgpu mamba2 fused decode: rows × hidden size past in_proj's workgroup memory (the norm a dispatch of its own) and within it, out_proj a dispatch of its own past 4 rows (its workgroups each taking several groups of rows), and greedy generation equals the CPU's", { timeout: 600_000 }, async (t) => {
  // out_proj's 772 rows in 97 groups of 8 over 5 workgroups: 20 groups each, the last fewer and part full
  const g = await gpuOrSkip(t, { decodeM2Workgroups: 5 });
  if (!g) return;
  // the least hidden size (a multiple of 4) whose 8 rows in_proj's norm cannot hold (lavapipe's 32 KiB: 772)
  const D = widestNormed(g.gpu.limits.maxComputeWorkgroupStorageSize) + 4;
  const cfg = wideConfig(D);
  const ps = perturbedParameters(cfg, 43);
  const gpu = await modelFromTensors(cfg, ps, { backend: g });
  const cpu = await modelFromTensors(cfg, ps, { backend: "cpu" });
  try {
    await fusedMatchesOps(gpu, cpu, 5, 2, new TestRng(91), `hidden ${D}`);
    assert.ok(!g.gpu.kernelNames.some((n) => n.startsWith("decode_batchnorm_")), "5 rows: the norm in in_proj's kernel");
    assert.ok(g.gpu.kernelNames.some((n) => n.startsWith("decode_m2_out_")), "5 rows: out_proj a dispatch of its own");
    await fusedMatchesOps(gpu, cpu, 8, 2, new TestRng(92), `hidden ${D}`);
    assert.ok(g.gpu.kernelNames.some((n) => n.startsWith("decode_batchnorm_")), "8 rows: the norm's own dispatch");
    const prompt = Int32Array.from([3, 1, 4, 1, 5]);
    const opts = { maxNewTokens: 6, stopTokens: [] };
    assert.deepEqual(Array.from(await gpu.generate(prompt, opts)), Array.from(await cpu.generate(prompt, opts)), "greedy generation");
  } finally {
    await gpu.dispose();
    await cpu.dispose();
  }
});

for (const name of ["hf-mamba2/tiny", "mamba-ssm/mamba2-tiny"]) {
  test(`webgpu mamba2 fused decode: ${name}'s greedy output equals PyTorch's, batch 1 and a batch of 12 of the same prompt`, { timeout: 600_000 }, async (t) => {
    const g = await gpuOrSkip(t);
    if (!g) return;
    const { loadModel } = await import("../../src/index.ts");
    const exp = await expected(fixture(...name.split("/")));
    const model = await loadModel(fixture(...name.split("/")), { backend: g });
    try {
      const prompt = exp.get("greedy_prompt")!.i32, want = exp.get("greedy_output")!.i32;
      const maxNewTokens = want.length - prompt.length;
      const got = await model.generate(prompt, { maxNewTokens, stopTokens: [] });
      assert.deepEqual(Array.from(got), Array.from(want), "batch 1");
      const rows = await model.generate(Array.from({ length: 12 }, () => prompt), { maxNewTokens, stopTokens: [] });
      for (const [i, r] of rows.entries()) assert.deepEqual(Array.from(r), Array.from(want), `batch 12, row ${i}`);
      const names = g.gpu.kernelNames;
      assert.ok(names.some((n) => n.startsWith("decode_m2_in_")) && names.some((n) => n.startsWith("decode_m2_in_finish_")), "the fused steps ran");
    } finally {
      await model.dispose();
    }
  });
}

test("webgpu mamba2 fused decode in the server: concurrent greedy requests, whose rows join and leave the batch, answer what each answers alone and what model.generate answers", { timeout: 600_000 }, async (t) => {
  const g = await gpuOrSkip(t);
  if (!g) return;
  const { loadModel, loadTokenizer } = await import("../../src/index.ts");
  const { startServer } = await import("../../src/server/server.ts");
  // the 96-token fixture with a byte tokenizer of its vocabulary
  const folder = await mkdtemp(path.join(tmpdir(), "mamba2-serve-"));
  await cp(fixture("hf-mamba2", "tiny"), folder, { recursive: true });
  await writeFile(path.join(folder, "tokenizer.json"), JSON.stringify(asciiTokenizerJson()));
  const model = await loadModel(folder, { backend: g });
  const tokenizer = await loadTokenizer(folder);
  const server = await startServer({ model, tokenizer, modelName: "m", chat: null, port: 0, prefixInterval: 16 });
  try {
    const prompts = ["The cat", "Once upon a time there", "A", "In the beginning", "The dog"];
    const n = [6, 4, 8, 5, 7];
    const ask = async (p: string, k: number) => {
      const r = await raw(server.url, "POST", "/v1/completions", JSON.stringify({ model: "m", prompt: p, max_tokens: k, temperature: 0, ignore_eos: true }), {}, 120_000);
      assert.equal(r.status, 200, r.text);
      return r.json().choices[0].text as string;
    };
    const single: string[] = [];
    for (const [i, p] of prompts.entries()) single.push(await ask(p, n[i]!));
    assert.deepEqual(await Promise.all(prompts.map((p, i) => ask(p, n[i]!))), single);
    for (const [i, p] of prompts.entries()) {
      const ids = tokenizer.encode(p);
      const out = await model.generate(ids, { maxNewTokens: n[i]!, stopTokens: [] });
      assert.equal(single[i], tokenizer.decode(out.subarray(ids.length)), `prompt ${i}`);
    }
    assert.ok(g.gpu.kernelNames.some((k) => k.startsWith("decode_m2_ssm_")), "the fused step ran");
  } finally {
    await server.close(2000);
    await model.dispose();
    await rm(folder, { recursive: true, force: true });
  }
});
