/**
 * Options objects at the public entry points: an unknown key (a misspelled option) is one MambaError that names it
 * and, where a known key is near, suggests that one; a correct call still works; the WebGPU backend's internal
 * tunings (tests', benchmarks') stay accepted. Nested objects (loadModel's webgpu and cpu, training's task, model
 * and optim, makeConfig's mamba2) are named by their path.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import {
  MambaError, createCpuBackend, createModel, createWebGpuBackend, loadModel, makeConfig, modelFromTensors,
} from "../src/index.ts";
import { loadModelFromFiles, modelFiles } from "../src/browser.ts";
import { createWebGpuBackend as createWebGpuBackendInternal } from "../src/backend/webgpu/index.ts";
import { checkKeys } from "../src/errors.ts";
import { initParameters } from "../src/model/init.ts";
import { Trainer, type TrainOptions } from "../src/train/trainer.ts";
import { DEFAULT_OPTIM } from "../src/train/optim.ts";
import { renderTrainingReport } from "../src/train/report.ts";
import { startServer } from "../src/server/server.ts";
import { startDemoServer } from "../src/cli/demo-server.ts";
import { CpuBackend } from "../src/backend/cpu/index.ts";
import { checkFixtureForward, expected, fixture } from "./helpers/fixtures.ts";
import { gpuTest } from "./helpers/backends.ts";

const TINY = fixture("hf-mamba", "tiny");
const sizes = { vocabSize: 20, hiddenSize: 8, numLayers: 1, stateSize: 4 };

/** The call rejects (or throws) with a MambaError whose message matches every pattern. */
async function refuses(call: () => unknown, ...patterns: RegExp[]): Promise<void> {
  await assert.rejects(async () => { await call(); }, (err: unknown) => {
    assert.ok(err instanceof MambaError, `expected a MambaError, got ${String(err)}`);
    for (const p of patterns) assert.match(err.message, p);
    return true;
  });
}

/** "what: unknown option 'key' (did you mean 'near'?)", or without the suggestion when near is null. */
function unknown(what: string, key: string, near: string | null): RegExp {
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return new RegExp(`^${esc(what)}: unknown option '${esc(key)}'${near === null ? "$" : ` \\(did you mean '${esc(near)}'\\?\\)$`}`);
}

describe("checkKeys", () => {
  const known = ["precision", "maxNewTokens", "threads", "topK", "topP"];
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ["a dropped letter", { precison: 1 }, unknown("f", "precison", "precision")],
    ["a missing s", { thread: 1 }, unknown("f", "thread", "threads")],
    ["two letters swapped", { perciison: 1 }, unknown("f", "perciison", "precision")],
    ["snake case", { max_new_tokens: 1 }, unknown("f", "max_new_tokens", "maxNewTokens")],
    ["another case", { TopK: 1 }, unknown("f", "TopK", "topK")],
    ["nothing near", { colour: 1 }, unknown("f", "colour", null)],
    ["three edits away", { precisxyz: 1 }, unknown("f", "precisxyz", null)],
  ];
  for (const [name, options, pattern] of cases) {
    test(name, () => assert.throws(() => checkKeys("f", options, known), (e: unknown) => e instanceof MambaError && pattern.test(e.message)));
  }
  test("known keys, undefined values and absent options pass; a nested object's keys are named by their path", () => {
    checkKeys("f", { precision: undefined, threads: 2 }, known);
    checkKeys("f", undefined, known);
    checkKeys("f", {}, known);
    assert.throws(() => checkKeys("f", { threds: 1 }, known, "cpu."), (e: Error) => unknown("f", "cpu.threds", "cpu.threads").test(e.message));
    for (const bad of [null, "fast", [1]]) {
      assert.throws(() => checkKeys("f", bad, known), (e: Error) => e instanceof MambaError && /^f: options must be an object/.test(e.message));
    }
  });
});

describe("loading and building models", { timeout: 120_000 }, () => {
  test("loadModel: misspelled options, also in webgpu and cpu, are refused before anything is read", async () => {
    await refuses(() => loadModel(TINY, { backend: "cpu", precison: "f16" } as never), unknown("loadModel", "precison", "precision"));
    await refuses(() => loadModel(TINY, { backend: "cpu", cpu: { thread: 2 } } as never), unknown("loadModel", "cpu.thread", "cpu.threads"));
    await refuses(() => loadModel(TINY, { backend: "cpu", webgpu: { decodePersistant: false } } as never),
      unknown("loadModel", "webgpu.decodePersistant", "webgpu.decodePersistent"));
    // before the source is looked at: a missing folder still gets the option's error
    await refuses(() => loadModel("/no/such/folder", { onProgres: () => {} } as never), unknown("loadModel", "onProgres", "onProgress"));
  });

  test("loadModel: correct options (undefined ones too, the internal tunings in webgpu) give the fixture's logits", async () => {
    await checkFixtureForward(TINY, "cpu", { tol: 1e-4, backendName: "cpu" });
    const exp = await expected(TINY);
    const ids = exp.get("input_ids")!;
    const [batch, seqLen] = ids.shape as [number, number];
    const model = await loadModel(TINY, {
      backend: "cpu", precision: undefined, onProgress: undefined, cpu: { threads: 1, simd: "auto" },
      webgpu: { decodeChannels: 8, scanBackwardLanes: 4, allowFallbackAdapter: true } as never,
    });
    try {
      const out = await model.forward(ids.i32, { batch, seqLen });
      assert.ok(out.logits.every((v, i) => Math.abs(v - exp.get("logits")!.f32[i]!) <= 1e-4), "logits");
    } finally {
      await model.dispose();
    }
  });

  test("createModel, modelFromTensors and makeConfig: misspelled options and sizes are refused; correct ones agree", async () => {
    await refuses(() => createModel(sizes, { backend: "cpu", sed: 3 } as never), unknown("createModel", "sed", "seed"));
    await refuses(() => createModel({ ...sizes, statSize: 4 } as never, { backend: "cpu" }), unknown("config", "statSize", "stateSize"));
    assert.throws(() => makeConfig({ ...sizes, family: "mamba2", mamba2: { headDims: 4 } } as never),
      (e: Error) => unknown("config", "mamba2.headDims", "mamba2.headDim").test(e.message));
    const cfg = makeConfig(sizes);
    const params = initParameters(cfg, { seed: 3 });
    await refuses(() => modelFromTensors(cfg, params, { backend: "cpu", precission: "f32" } as never),
      unknown("modelFromTensors", "precission", "precision"));
    const a = await createModel(sizes, { backend: "cpu", seed: 3 });
    const b = await modelFromTensors(cfg, params, { backend: "cpu", cpu: { reference: true } });
    try {
      const ids = Int32Array.of(1, 5, 7, 2);
      const [la, lb] = [await a.forward(ids, { batch: 1, seqLen: 4 }), await b.forward(ids, { batch: 1, seqLen: 4 })];
      assert.ok(la.logits.every((v, i) => Math.abs(v - lb.logits[i]!) <= 1e-5), "createModel and modelFromTensors give the same logits");
    } finally {
      await a.dispose();
      await b.dispose();
    }
  });

  test("loadModelFromFiles and modelFiles: misspelled options are refused; correct ones load the fixture", async () => {
    const files = new Map<string, Uint8Array>();
    for (const name of ["config.json", "model.safetensors"]) files.set(name, new Uint8Array(await readFile(`${TINY}/${name}`)));
    await refuses(() => loadModelFromFiles(files, { backend: "cpu", onProgres: () => {} } as never),
      unknown("loadModelFromFiles", "onProgres", "onProgress"));
    await refuses(() => loadModelFromFiles(files, { backend: "cpu", cpu: { refrence: true } } as never),
      unknown("loadModelFromFiles", "cpu.refrence", "cpu.reference"));
    assert.throws(() => modelFiles(files, { onprogress: () => {} } as never), (e: Error) => unknown("modelFiles", "onprogress", "onProgress").test(e.message));
    const { model } = await loadModelFromFiles(files, { backend: "cpu", cpu: { threads: 1 }, onProgress: () => {} });
    try {
      const exp = await expected(TINY);
      const ids = exp.get("input_ids")!;
      const [batch, seqLen] = ids.shape as [number, number];
      const out = await model.forward(ids.i32, { batch, seqLen });
      assert.ok(out.logits.every((v, i) => Math.abs(v - exp.get("logits")!.f32[i]!) <= 1e-4), "logits");
    } finally {
      await model.dispose();
    }
  });
});

describe("backends", { timeout: 120_000 }, () => {
  test("createCpuBackend: a misspelled option is refused; correct ones make the engine", async () => {
    await refuses(() => createCpuBackend({ thread: 2 } as never), unknown("createCpuBackend", "thread", "threads"));
    await refuses(() => createCpuBackend({ simd: "plain", onNotise: () => {} } as never), unknown("createCpuBackend", "onNotise", "onNotice"));
    const b = await createCpuBackend({ threads: 1, reference: undefined });
    assert.equal(b.name, "cpu");
    await b.destroy();
  });

  test("createWebGpuBackend: a misspelled option is refused before any adapter is asked for (the package's and the internal entry)", async () => {
    await refuses(() => createWebGpuBackend({ precison: "f16" } as never), unknown("createWebGpuBackend", "precison", "precision"));
    await refuses(() => createWebGpuBackend({ pool_bytes: 1 } as never), unknown("createWebGpuBackend", "pool_bytes", "poolBytes"));
    await refuses(() => createWebGpuBackendInternal({ decodeChanels: 8 } as never), unknown("createWebGpuBackend", "decodeChanels", "decodeChannels"));
    // a tuning that is no longer one (fixed at its measured best) is refused, not run silently with the defaults
    await refuses(() => createWebGpuBackendInternal({ matmulBK: 16 } as never), unknown("createWebGpuBackend", "matmulBK", null));
  });

  test("createWebGpuBackend: correct options and the internal tunings are accepted", async (t) => {
    if (!(await gpuTest(t))) return;
    const b = await createWebGpuBackend({ poolBytes: 1 << 20, decodePersistent: false, precision: undefined, allowFallbackAdapter: true });
    await b.destroy();
    const internal = await createWebGpuBackendInternal({ decodeChannels: 8, flushEvery: 4, scanBackwardLanes: 4, tensorCoreTile: undefined });
    await internal.destroy();
  });
});

describe("a model's calls", { timeout: 120_000 }, () => {
  test("generate, stream, forward and prefill: a misspelled option is refused; the model still works", async () => {
    const model = await createModel(sizes, { backend: "cpu", seed: 1 });
    try {
      const ids = Int32Array.of(3, 1, 4);
      await refuses(() => model.generate(ids, { maxNewToken: 5 } as never), unknown("generate", "maxNewToken", "maxNewTokens"));
      await refuses(async () => { for await (const _ of model.stream(ids, { topk: 2 } as never)); }, unknown("generate", "topk", "topK"));
      await refuses(() => model.forward(ids, { batch: 1, seqLen: 3 }, { hiddenState: true } as never), unknown("forward", "hiddenState", "hiddenStates"));
      await refuses(() => model.prefill(ids, { stat: undefined } as never), unknown("prefill", "stat", "state"));
      const state = await model.prefill(ids, { state: undefined });
      await refuses(() => model.generate(new Int32Array(0), { state, advanceStat: true } as never), unknown("generate", "advanceStat", "advanceState"));
      // the state API continues as the whole run does
      const whole = await model.generate(ids, { maxNewTokens: 4, stopTokens: [] });
      const rest = await model.generate(new Int32Array(0), { state, maxNewTokens: 4, stopTokens: [] });
      assert.deepEqual(Array.from(rest), Array.from(whole.subarray(ids.length)));
      const out = await model.forward(ids, { batch: 1, seqLen: 3 }, { hiddenStates: true });
      assert.equal(out.lastHiddenState!.length, 3 * sizes.hiddenSize);
      state.dispose();
    } finally {
      await model.dispose();
    }
  });
});

describe("training, the servers and the report", { timeout: 120_000 }, () => {
  const options = (o: Partial<TrainOptions> = {}): TrainOptions => ({
    task: { name: "selective-copying", seqLen: 12, numTokens: 2, vocabSize: 6 },
    model: { hiddenSize: 8, numLayers: 1, stateSize: 4, expand: 2, mixer: "s6" },
    steps: 2, batchSize: 2, accumulation: 1, optim: { ...DEFAULT_OPTIM, warmupSteps: 1 }, seed: 1, checkpointEvery: 0, evalBatches: 1,
    ...o,
  });

  test("Trainer.create: misspelled options, also in task, model and optim, are refused; correct ones train", async () => {
    const cpu = new CpuBackend();
    assert.throws(() => Trainer.create(cpu, { ...options(), stateNoize: 0.1 } as never), (e: Error) => unknown("train", "stateNoize", "stateNoise").test(e.message));
    assert.throws(() => Trainer.create(cpu, options({ model: { ...options().model, layers: 2 } as never })), (e: Error) => unknown("train", "model.layers", null).test(e.message));
    assert.throws(() => Trainer.create(cpu, options({ optim: { ...options().optim, weightdecay: 0 } as never })),
      (e: Error) => unknown("train", "optim.weightdecay", "optim.weightDecay").test(e.message));
    assert.throws(() => Trainer.create(cpu, options({ task: { ...options().task, seqlen: 12 } as never })), (e: Error) => unknown("train", "task.seqlen", "task.seqLen").test(e.message));
    const trainer = Trainer.create(cpu, options({ stateNoise: undefined }));
    const { loss } = await trainer.trainStep();
    assert.ok(Number.isFinite(loss) && loss > 0, `a first step's loss: ${loss}`);
  });

  test("startServer, startDemoServer and renderTrainingReport: a misspelled option is refused", async () => {
    const model = await createModel(sizes, { backend: "cpu", seed: 1 });
    try {
      await refuses(() => startServer({ model, tokenizer: null as never, modelName: "m", chat: null, maxBach: 4 } as never),
        unknown("startServer", "maxBach", "maxBatch"));
    } finally {
      await model.dispose();
    }
    await refuses(() => startDemoServer({ port: 0, page: new Map(), modelFolder: null, modelname: "x" } as never),
      unknown("startDemoServer", "modelname", "modelName"));
    await refuses(() => renderTrainingReport([{ step: 1, loss: 1 }], { titel: "x" } as never), unknown("renderTrainingReport", "titel", "title"));
  });
});
