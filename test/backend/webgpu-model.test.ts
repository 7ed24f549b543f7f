/**
 * The whole model on WebGPU: the PyTorch fixtures (every checkpoint format, f16 / bf16 weights kept packed on the
 * GPU) within 1e-4; step mode and chunked prefill against the full forward; generation (greedy, sampled with
 * penalties, batched prompts of different lengths) identical to the CPU backend's with the same seed.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { makeConfig, modelFromTensors, type MambaModel } from "../../src/index.ts";
import { MambaCache } from "../../src/model/cache.ts";
import { prefill } from "../../src/generate/generate.ts";
import { assertClose, checkFixtureForward, fixture } from "../helpers/fixtures.ts";
import { TestRng, perturbedParameters } from "../helpers/random.ts";
import { toBF16Bits, toF16Bits } from "../../src/io/tensor.ts";
import { gpuTest } from "../helpers/backends.ts";
import { decodeStepsMatchCpu } from "../helpers/decode.ts";
import type { WebGpuBackend, WebGpuInternalTuning } from "../../src/backend/webgpu/index.ts";


for (const name of ["hf-mamba/tiny", "hf-mamba/tiny-f16", "hf-mamba/tiny-bf16-sharded", "mamba-ssm/tiny"]) {
  test(`${name}: logits, hidden states and greedy output match PyTorch (webgpu)`, async (t) => {
    if (!(await gpuTest(t))) return;
    await checkFixtureForward(fixture(...name.split("/")), "webgpu", { tol: 1e-4, backendName: "webgpu" });
  });
}

// odd sizes everywhere, all biases, an untied padded head
const cfg = makeConfig({
  vocabSize: 45, paddedVocabSize: 48, hiddenSize: 20, intermediateSize: 38, stateSize: 5, timeStepRank: 3,
  convKernel: 4, numLayers: 2, useBias: true, useConvBias: true, tieEmbeddings: false,
});
const params = perturbedParameters(cfg, 11);

/** A WebGPU backend whose decodeStep takes batches past the fused kernels or not (WebGpuInternalTuning.decodeBatch). */
async function batchBackend(decodeBatch = true, tuning: WebGpuInternalTuning = {}) {
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  return createWebGpuBackend({ decodeBatch, ...tuning });
}

async function pair(): Promise<[MambaModel, MambaModel]> {
  return [await modelFromTensors(cfg, params, { backend: "webgpu" }), await modelFromTensors(cfg, params, { backend: "cpu" })];
}

test("webgpu: prefill then one-token steps (batch 3) equal the full forward; chunked prefill equals one shot", async (t) => {
  if (!(await gpuTest(t))) return;
  const [gpu, cpu] = await pair();
  try {
    const B = 3, L = 11, V = cfg.paddedVocabSize;
    const ids = new TestRng(5).ids(B * L, cfg.vocabSize);
    const full = (await cpu.forward(ids, { batch: B, seqLen: L })).logits;
    assertClose((await gpu.forward(ids, { batch: B, seqLen: L })).logits, full, 1e-4, "forward");

    const b = gpu.backend;
    const cache = MambaCache.zeros(b, cfg, B);
    const j = 4;
    const head = new Int32Array(B * j);
    for (let r = 0; r < B; r++) head.set(ids.subarray(r * L, r * L + j), r * j);
    let t0 = b.fromI32(head, [head.length]);
    let h = gpu.lm.hidden(t0, { batch: B, seqLen: j }, cache);
    b.dispose(t0, h);
    for (let pos = j; pos < L; pos++) {
      const col = Int32Array.from({ length: B }, (_, r) => ids[r * L + pos]!);
      t0 = b.fromI32(col, [B]);
      h = gpu.lm.hidden(t0, { batch: B, seqLen: 1 }, cache);
      const logits = await b.readF32(gpu.lm.logits(h));
      for (let r = 0; r < B; r++) {
        assertClose(logits.subarray(r * V, (r + 1) * V), full.subarray((r * L + pos) * V, (r * L + pos + 1) * V), 1e-4, `step pos ${pos} row ${r}`);
      }
      b.dispose(t0, h);
    }
    cache.dispose();

    const prompt = ids.subarray(0, L);
    const one = await prefill(gpu.lm, prompt, L);
    const chunked = await prefill(gpu.lm, prompt, 3);
    assertClose(await b.readF32(chunked.logits), await b.readF32(one.logits), 1e-4, "chunked prefill logits");
    for (let i = 0; i < cfg.numLayers; i++) {
      assertClose(await b.readF32(chunked.cache.ssm[i]!), await b.readF32(one.cache.ssm[i]!), 1e-4, `ssm state ${i}`);
      assertClose(await b.readF32(chunked.cache.conv[i]!), await b.readF32(one.cache.conv[i]!), 1e-5, `conv state ${i}`);
    }
  } finally {
    await gpu.dispose();
    await cpu.dispose();
  }
});

test("webgpu: generation (greedy and sampled with penalties, batched prompts) equals the CPU's", async (t) => {
  if (!(await gpuTest(t))) return;
  const [gpu, cpu] = await pair();
  try {
    const rng = new TestRng(9);
    const prompts = [rng.ids(5, cfg.vocabSize), rng.ids(1, cfg.vocabSize), rng.ids(8, cfg.vocabSize)];
    for (const o of [
      { maxNewTokens: 12, stopTokens: [] },
      { maxNewTokens: 12, temperature: 0.8, topK: 10, topP: 0.9, seed: 3, stopTokens: [] },
      { maxNewTokens: 12, temperature: 1.1, minP: 0.05, repetitionPenalty: 1.3, seed: 4, stopTokens: [] },
      { maxNewTokens: 10, temperature: 1, seed: 5, stopTokens: [7, 8, 9, 10, 11] },
    ]) {
      const want = await cpu.generate(prompts, o);
      const got = await gpu.generate(prompts, o);
      assert.deepEqual(got.map((g) => Array.from(g)), want.map((w) => Array.from(w)), JSON.stringify(o));
    }
    // prompts of one length are prefilled as one batch: the same as each alone
    const same = [rng.ids(6, cfg.vocabSize), rng.ids(6, cfg.vocabSize), rng.ids(6, cfg.vocabSize)];
    const o = { maxNewTokens: 6, stopTokens: [] };
    const alone = await Promise.all(same.map((p) => cpu.generate(p, o)));
    assert.deepEqual((await gpu.generate(same, o)).map((g) => Array.from(g)), alone.map((w) => Array.from(w)), "equal-length prompts");
  } finally {
    await gpu.dispose();
    await cpu.dispose();
  }
});

test("webgpu: a batch of 11 decodes through the batch step (default), and with decodeBatch:false through a recorded step, as the CPU does", async (t) => {
  if (!(await gpuTest(t))) return;
  const cpu = await modelFromTensors(cfg, params, { backend: "cpu" });
  const gpu = await modelFromTensors(cfg, params, { backend: await batchBackend(false) });
  const batched = await modelFromTensors(cfg, params, { backend: "webgpu" });
  try {
    const b = gpu.backend;
    const capture = b.capture!.bind(b);
    let captures = 0;
    b.capture = (fn) => {
      captures++;
      return capture(fn);
    };
    const rng = new TestRng(21);
    // 11 rows (past the 8 of the fused kernels), prompts of three lengths
    const prompts = Array.from({ length: 11 }, (_, i) => rng.ids(1 + (i % 3) * 3, cfg.vocabSize));
    const options = [
      { maxNewTokens: 9, stopTokens: [] },
      { maxNewTokens: 9, temperature: 0.9, topK: 12, seed: 6, stopTokens: [3, 4] },
    ];
    for (const o of options) {
      const want = (await cpu.generate(prompts, o)).map((w) => Array.from(w));
      assert.deepEqual((await gpu.generate(prompts, o)).map((g) => Array.from(g)), want, `recorded step ${JSON.stringify(o)}`);
      assert.deepEqual((await batched.generate(prompts, o)).map((g) => Array.from(g)), want, `batch step ${JSON.stringify(o)}`);
    }
    assert.equal(captures, 4, "two recordings a generation");
    const bb = batched.backend, cache = MambaCache.zeros(bb, cfg, 11);
    assert.ok(bb.decodeStep!(batched.lm, bb.fromI32(new Int32Array(11), [11]), cache.conv, cache.ssm), "the batch step takes 11 rows");
    cache.dispose();
    // the recording's buffers went back to the pool: a third generation leaves as many bytes alive
    const gb = (b as unknown as { gpu: { liveBytes: number } }).gpu;
    await gpu.generate(prompts, { maxNewTokens: 4, stopTokens: [] });
    const live = gb.liveBytes;
    await gpu.generate(prompts, { maxNewTokens: 4, stopTokens: [] });
    assert.equal(gb.liveBytes, live, "bytes alive after another generation");
  } finally {
    await batched.dispose();
    await gpu.dispose();
    await cpu.dispose();
  }
});

test("webgpu: the LTI mixer (no fused step) decodes through a recorded step that uploads constants, as the CPU does", async (t) => {
  if (!(await gpuTest(t))) return;
  // its mixer uploads a column of ones each step: a recording must keep that buffer for itself
  const c = makeConfig({ vocabSize: 30, hiddenSize: 16, numLayers: 2, mixer: "lti" });
  const ps = perturbedParameters(c, 12);
  const gpu = await modelFromTensors(c, ps, { backend: "webgpu" });
  const cpu = await modelFromTensors(c, ps, { backend: "cpu" });
  try {
    const rng = new TestRng(13);
    const prompts = [rng.ids(3, c.vocabSize), rng.ids(3, c.vocabSize)];
    const o = { maxNewTokens: 12, stopTokens: [] };
    assert.deepEqual((await gpu.generate(prompts, o)).map((g) => Array.from(g)), (await cpu.generate(prompts, o)).map((g) => Array.from(g)));
    // the recorded step's logits, step by step, against the ops run one by one on a second cache
    const b = gpu.backend, lm = gpu.lm, B = 2;
    const recorded = MambaCache.zeros(b, c, B), direct = MambaCache.zeros(b, c, B);
    const fixed = b.fromI32(new Int32Array(B), [B]);
    const steps = [0, 1].map(() => b.capture!(() => {
      const h = lm.hidden(fixed, { batch: B, seqLen: 1 }, recorded);
      const lg = lm.logits(h);
      b.dispose(h);
      return lg;
    }));
    for (let s = 0; s < 4; s++) {
      const ids = b.fromI32(rng.ids(B, c.vocabSize), [B]);
      b.copyInto(fixed, ids);
      steps[s % 2]!.run();
      const h = lm.hidden(ids, { batch: B, seqLen: 1 }, direct);
      assertClose(await b.readF32(steps[s % 2]!.output), await b.readF32(lm.logits(h)), 1e-6, `recorded step ${s}`);
      b.dispose(ids, h);
    }
    steps.forEach((x) => x.dispose());
    recorded.dispose();
    direct.dispose();
    b.dispose(fixed);
  } finally {
    await gpu.dispose();
    await cpu.dispose();
  }
});

test("webgpu: the fused decode step equals step mode on the CPU (logits and states), f32/f16/bf16, batch 1 and 3 (fused kernels), 9 and 20 (batch kernels, decodeBatch)", async (t) => {
  if (!(await gpuTest(t))) return;
  const configs = [
    cfg,
    makeConfig({ vocabSize: 37, hiddenSize: 12, intermediateSize: 22, stateSize: 3, timeStepRank: 2, convKernel: 2,
      numLayers: 3, useBias: false, useConvBias: false, tieEmbeddings: true }),
    // a state size that is a multiple of 4: the batch step's thread scan kernel (the two above take the block
    // kernel), its 36 channels in workgroups of 32 + 4, batch 20 in blocks of 8 + 8 + 4 rows
    makeConfig({ vocabSize: 33, hiddenSize: 16, intermediateSize: 36, stateSize: 4, timeStepRank: 5, numLayers: 2 }),
  ];
  for (const [ci, c] of configs.entries()) {
    for (const dtype of ["F32", "F16", "BF16"] as const) {
      const base = perturbedParameters(c, 20 + ci);
      const ps = new Map([...base].map(([k, v]) => [k, dtype === "F32" || v.shape.length < 2 ? v
        : { dtype, shape: v.shape, data: (dtype === "F16" ? toF16Bits : toBF16Bits)(v.data as Float32Array) }]));
      const gpu = await modelFromTensors(c, ps, { backend: await batchBackend() });
      const cpu = await modelFromTensors(c, ps, { backend: "cpu" });
      try {
        for (const B of [1, 3, 9, 20]) {
          await decodeStepsMatchCpu(gpu, cpu, B,
            { steps: 4, rng: new TestRng(100 + B), tol: 1e-4, ssmTol: 1e-4, convTol: 1e-5, what: `config ${ci} ${dtype}` });
        }
      } finally {
        await gpu.dispose();
        await cpu.dispose();
      }
    }
  }
});

// the two batch-step tests below share this config (the first says what its sizes exercise)
const kSplitConfig = makeConfig({ vocabSize: 30, hiddenSize: 64, intermediateSize: 160, stateSize: 8, timeStepRank: 20, numLayers: 3,
  useBias: true, useConvBias: true });

test("webgpu: the batch decode step with K-split in_proj and out_proj (partials summed by the next kernel) equals step mode on the CPU", async (t) => {
  if (!(await gpuTest(t))) return;
  // D 64 and E 160 give in_proj 2 and out_proj 5 K-parts at batches 12 and 64 when split by the workgroups' target
  // alone (decodeBatchSplitCols 0), and by default, where such short parts become 96 columns, in_proj one part and
  // out_proj 96 + 64; biases on, so each part's sum adds one; x_proj's 36 outputs make 288 for a block of 8 rows, more
  // than the scan kernel's 256 threads (each sums several); D 2080 is too wide for the fused kernels' copy of the
  // input at batch 2, which the batch step then takes
  const cases = [
    { c: kSplitConfig, batches: [12, 64], tol: 1e-4 },
    { c: kSplitConfig, batches: [12, 64], tol: 1e-4, tuning: { decodeBatchSplitCols: 0 } },
    // logits are sums of 2080 products here, their f32 rounding (in another order than the CPU's) about 1e-4
    { c: makeConfig({ vocabSize: 20, hiddenSize: 2080, intermediateSize: 24, stateSize: 4, timeStepRank: 3, numLayers: 2 }), batches: [2], tol: 5e-4 },
  ];
  for (const { c, batches, tol, tuning } of cases) await batchStepMatchesCpu(c, batches, tol, tuning);
});

test("webgpu: the batch decode step's scan kernel by rows a workgroup (decodeBatchScanRows) and K parts of fixed width (decodeBatchSplitCols) equals step mode on the CPU", async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  // the defaults (the thread scan kernel with 8 rows a workgroup, whose second block of batch 12 has 4 rows) run in
  // the test above, on this config and these batches; with 2 rows a workgroup the scan kernel's second group has 32
  // of its 128 channels; 0 rows is the fused step's scan kernel; parts of 64 columns split out_proj's K of 160 into
  // 64 + 64 + 32 and leave in_proj's 64 whole
  const tunings: WebGpuInternalTuning[] = [{ decodeBatchScanRows: 2 }, { decodeBatchScanRows: 4 }, { decodeBatchScanRows: 0 },
    { decodeBatchSplitCols: 64 }];
  for (const tuning of tunings) {
    await batchStepMatchesCpu(kSplitConfig, [12, 64], 1e-4, tuning);
  }
  await assert.rejects(createWebGpuBackend({ decodeBatchScanRows: 3 }), /decodeBatchScanRows must be one of 2, 4, 8, got 3/);
  await assert.rejects(createWebGpuBackend({ decodeBatchSplitCols: 80 }), /decodeBatchSplitCols must be one of 64, 96, 128, got 80/);
});

async function batchStepMatchesCpu(
  c: ReturnType<typeof makeConfig>, batches: number[], tol: number, tuning: WebGpuInternalTuning = {},
): Promise<void> {
  const ps = perturbedParameters(c, 41);
  const gpu = await modelFromTensors(c, ps, { backend: await batchBackend(true, tuning) });
  const cpu = await modelFromTensors(c, ps, { backend: "cpu" });
  try {
    for (const B of batches) {
      await decodeStepsMatchCpu(gpu, cpu, B, { steps: 3, rng: new TestRng(300 + B), tol, ssmTol: tol, convTol: 1e-5, what: `batch step ${JSON.stringify(tuning)}` });
    }
  } finally {
    await gpu.dispose();
    await cpu.dispose();
  }
}

test("webgpu: the fused decode step with x_proj wider than a workgroup (332 outputs) and than four (1062) equals step mode on the CPU", async (t) => {
  if (!(await gpuTest(t))) return;
  // a thread of the first kernel holds 3 (332 outputs) or 9 (1062) chunks of Wx and adds each into its output
  for (const R of [300, 1030]) {
    const c = makeConfig({ vocabSize: 50, hiddenSize: 64, intermediateSize: 40, stateSize: 16, timeStepRank: R, numLayers: 2 });
    const ps = perturbedParameters(c, 33);
    const gpu = await modelFromTensors(c, ps, { backend: "webgpu" });
    const cpu = await modelFromTensors(c, ps, { backend: "cpu" });
    try {
      await decodeStepsMatchCpu(gpu, cpu, 1, { steps: 3, rng: new TestRng(77), tol: 1e-4, what: `x_proj ${R + 32} wide` });
    } finally {
      await gpu.dispose();
      await cpu.dispose();
    }
  }
});

test("webgpu: the fused decode step with x_proj's fixed-point totals (decodeAccumulate, the default) and with a partial per workgroup equals step mode on the CPU, f32 and bf16; one layer takes the partials", async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  // 100 channels: 7 first-kernel workgroups adding into each total; 3 layers, so that the regions' clearing wraps
  // around unevenly; biases on every projection
  const three = makeConfig({ vocabSize: 45, hiddenSize: 20, intermediateSize: 100, stateSize: 8, timeStepRank: 5, numLayers: 3,
    useBias: true, useConvBias: true });
  const one = makeConfig({ vocabSize: 45, hiddenSize: 20, intermediateSize: 100, stateSize: 8, timeStepRank: 5, numLayers: 1 });
  for (const [c, dtype] of [[three, "F32"], [three, "BF16"], [one, "F32"]] as const) {
    const base = perturbedParameters(c, 61);
    const ps = new Map([...base].map(([k, v]) => [k, dtype === "F32" || v.shape.length < 2 ? v
      : { dtype, shape: v.shape, data: toBF16Bits(v.data as Float32Array) }]));
    const cpu = await modelFromTensors(c, ps, { backend: "cpu" });
    try {
      for (const decodeAccumulate of [true, false]) {
        // three dispatches a layer, whose first kernel's name says which variant ran
        const backend = (await createWebGpuBackend({ decodeAccumulate, decodePersistent: false })) as WebGpuBackend;
        const gpu = await modelFromTensors(c, ps, { backend });
        try {
          for (const B of [1, 3, 8]) {
            await decodeStepsMatchCpu(gpu, cpu, B, { steps: 4, rng: new TestRng(400 + B), tol: 1e-4, ssmTol: 1e-4, convTol: 1e-5,
              what: `${c.numLayers} layers, ${dtype}, decodeAccumulate:${decodeAccumulate}` });
          }
          const totals = backend.gpu.kernelNames.some((n) => n.startsWith("decode_in_") && n.includes("_acc"));
          assert.equal(totals, decodeAccumulate && c.numLayers > 1, `${c.numLayers} layers, decodeAccumulate:${decodeAccumulate}: the totals' kernel`);
        } finally {
          await gpu.dispose();
        }
      }
    } finally {
      await cpu.dispose();
    }
  }
  await assert.rejects(createWebGpuBackend({ decodeAccumulate: 1 as unknown as boolean }), /decodeAccumulate must be true or false, got 1/);
});

test("webgpu: the fused decode step with 4 and 64 channels a workgroup (decodeChannels), 128 and 256 bytes of loads (decodeLoadBytes) equals step mode on the CPU", async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  const c = makeConfig({ vocabSize: 41, hiddenSize: 16, intermediateSize: 70, stateSize: 4, timeStepRank: 2, numLayers: 2 });
  const ps = perturbedParameters(c, 31);
  const cpu = await modelFromTensors(c, ps, { backend: "cpu" });
  try {
    for (const tuning of [{ decodeChannels: 4 }, { decodeChannels: 64 }, { decodeLoadBytes: 128 }, { decodeLoadBytes: 256 }, { decodeLoadBytes: 384 }]) {
      const gpu = await modelFromTensors(c, ps, { backend: await createWebGpuBackend(tuning) });
      const what = JSON.stringify(tuning);
      try {
        const rng = new TestRng(200 + (tuning.decodeChannels ?? tuning.decodeLoadBytes ?? 0));
        await decodeStepsMatchCpu(gpu, cpu, 3, { steps: 3, rng, tol: 1e-4, ssmTol: 1e-4, what });
      } finally {
        await gpu.dispose();
      }
    }
    await assert.rejects(createWebGpuBackend({ decodeChannels: 12 }), /decodeChannels must be one of 4, 8, 16, 32, 64, got 12/);
    await assert.rejects(createWebGpuBackend({ decodeLoadBytes: 100 }), /decodeLoadBytes must be one of 64, 128, 256, 384, got 100/);
    await assert.rejects(createWebGpuBackend({ decodeBatch: "no" as unknown as boolean }), /decodeBatch must be true or false, got no/);
    // with decodeBatch:false a batch past the fused kernels gets no fused step: generate records the ops
    const off = await modelFromTensors(c, ps, { backend: await createWebGpuBackend({ decodeBatch: false }) });
    try {
      const B = 9, cache = MambaCache.zeros(off.backend, c, B);
      assert.equal(off.backend.decodeStep!(off.lm, off.backend.fromI32(new Int32Array(B), [B]), cache.conv, cache.ssm), null);
      const prompts = [Int32Array.of(1, 2), Int32Array.of(3)];
      const o = { maxNewTokens: 3, stopTokens: [] };
      const batch = Array.from({ length: B }, (_, i) => prompts[i % 2]!);
      assert.deepEqual((await off.generate(batch, o)).map((g) => Array.from(g)), (await cpu.generate(batch, o)).map((g) => Array.from(g)));
      cache.dispose();
    } finally {
      await off.dispose();
    }
  } finally {
    await cpu.dispose();
  }
});
