/**
 * The public MambaModel API: every bad request is a MambaError that names the problem, and leaves the model
 * giving the right answers (checked against an independent float64 reference of the same parameters); concurrent
 * calls give the sequential results; AbortSignal stops generation with its reason; stream() yields what
 * generate() returns; a disposed model refuses work.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { type GenerateOptions, MambaError, type MambaModel, createModel, makeConfig, modelFromTensors } from "../../src/index.ts";
import { initParameters } from "../../src/model/init.ts";
import { assertClose } from "../helpers/fixtures.ts";
import { naiveForward, naiveGreedy } from "../helpers/naive.ts";
import { TestRng, perturbedParameters } from "../helpers/random.ts";

const sizes = { vocabSize: 40, hiddenSize: 8, numLayers: 2, stateSize: 4, intermediateSize: 12, convKernel: 3, tieEmbeddings: false };
const SEED = 6;
const cfg = makeConfig(sizes);
// parameters off their defaults, so that greedy output is not a run of one id
const params = perturbedParameters(cfg, SEED);
const V = cfg.vocabSize;

const fresh = () => modelFromTensors(cfg, params, { backend: "cpu" });
const rng = new TestRng(77);
const probeIds = rng.ids(2 * 6, V);
const probeRef = naiveForward(cfg, params, probeIds, 2, 6).logits;
const prompt = Int32Array.of(3, 14, 15, 9);
const greedyRef = naiveGreedy(cfg, params, prompt, 6);

/** The model still computes the right logits and greedy ids. */
async function stillCorrect(model: MambaModel): Promise<void> {
  const out = await model.forward(probeIds, { batch: 2, seqLen: 6 });
  assertClose(out.logits, probeRef, 1e-4, "logits after a rejected call");
  const ids = await model.generate(prompt, { maxNewTokens: 6, stopTokens: [] });
  assert.deepEqual(Array.from(ids), greedyRef);
}

async function rejectsWith(p: Promise<unknown>, ...patterns: RegExp[]): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof MambaError, `expected a MambaError, got ${String(err)}`);
    for (const pat of patterns) assert.match(err.message, pat);
    return true;
  });
}

test("createModel builds initParameters' model; a fresh model agrees with the reference (the baseline below)", async () => {
  const created = await createModel(sizes, { backend: "cpu", seed: SEED });
  const init = initParameters(cfg, { seed: SEED });
  assertClose((await created.forward(probeIds, { batch: 2, seqLen: 6 })).logits, naiveForward(cfg, init, probeIds, 2, 6).logits, 1e-4, "createModel");
  await created.dispose();
  assert.ok(new Set(greedyRef.slice(prompt.length)).size >= 2, `greedy reference is degenerate: ${greedyRef}`);
  const model = await fresh();
  await stillCorrect(model);
  const h = await model.forward(probeIds, { batch: 2, seqLen: 6 }, { hiddenStates: true });
  assertClose(h.lastHiddenState!, naiveForward(cfg, params, probeIds, 2, 6).hidden, 1e-4, "hidden states");
  assert.equal((await model.forward(probeIds, { batch: 2, seqLen: 6 })).lastHiddenState, undefined);
  await model.dispose();
});

test("a backend made beforehand can be given instead of a name; the model runs on it and owns it", async () => {
  const { CpuBackend } = await import("../../src/backend/cpu/index.ts");
  const backend = new CpuBackend();
  const model = await createModel(sizes, { backend, seed: SEED });
  assert.equal(model.backend, backend);
  const init = initParameters(cfg, { seed: SEED });
  assertClose((await model.forward(probeIds, { batch: 2, seqLen: 6 })).logits, naiveForward(cfg, init, probeIds, 2, 6).logits, 1e-4, "given backend");
  await model.dispose();
});

describe("forward rejects bad requests, then still works", () => {
  const cases: [string, () => [unknown, unknown], RegExp[]][] = [
    ["too few ids", () => [probeIds.subarray(0, 11), { batch: 2, seqLen: 6 }], [/11 values/, /batch 2 x seqLen 6/]],
    ["too many ids", () => [probeIds, { batch: 1, seqLen: 6 }], [/12 values/]],
    ["batch 0", () => [probeIds, { batch: 0, seqLen: 12 }], [/positive integers/]],
    ["negative batch", () => [probeIds, { batch: -2, seqLen: -6 }], [/positive integers/]],
    ["fractional batch", () => [probeIds, { batch: 1.5, seqLen: 8 }], [/positive integers/]],
    ["NaN seqLen", () => [probeIds, { batch: 2, seqLen: NaN }], [/positive integers/]],
    ["string batch", () => [probeIds, { batch: "2", seqLen: 6 }], [/positive integers/]],
    ["no shape", () => [probeIds, undefined], [/positive integers/]],
    ["negative id", () => [Int32Array.of(1, -1, 2), { batch: 1, seqLen: 3 }], [/token id -1 at position 1/, /\[0, 40\)/]],
    ["id = vocab size", () => [Int32Array.of(V), { batch: 1, seqLen: 1 }], [/token id 40 at position 0/]],
    ["huge id", () => [Int32Array.of(0, 0, 2 ** 31 - 1), { batch: 1, seqLen: 3 }], [/2147483647/]],
    ["Float32Array ids", () => [Float32Array.from(probeIds), { batch: 2, seqLen: 6 }], [/Int32Array/]],
    ["plain array ids", () => [Array.from(probeIds), { batch: 2, seqLen: 6 }], [/Int32Array/]],
    ["Uint32Array ids", () => [Uint32Array.from(probeIds), { batch: 2, seqLen: 6 }], [/Int32Array/]],
  ];
  for (const [name, args, patterns] of cases) {
    test(name, async () => {
      const model = await fresh();
      const [ids, shape] = args();
      await rejectsWith(model.forward(ids as Int32Array, shape as { batch: number; seqLen: number }), ...patterns);
      await stillCorrect(model);
      await model.dispose();
    });
  }
});

describe("generate rejects bad requests, then still works", () => {
  const opts: [string, unknown, RegExp][] = [
    ["negative maxNewTokens", { maxNewTokens: -1 }, /maxNewTokens/],
    ["fractional maxNewTokens", { maxNewTokens: 2.5 }, /maxNewTokens/],
    ["infinite maxNewTokens", { maxNewTokens: Infinity }, /maxNewTokens/],
    ["string maxNewTokens", { maxNewTokens: "3" }, /maxNewTokens/],
    ["negative temperature", { temperature: -0.5 }, /temperature/],
    ["NaN temperature", { temperature: NaN }, /temperature/],
    ["topP 0", { topP: 0 }, /topP/],
    ["topP > 1", { topP: 1.5 }, /topP/],
    ["minP 1", { minP: 1 }, /minP/],
    ["negative minP", { minP: -0.1 }, /minP/],
    ["negative topK", { topK: -1 }, /topK/],
    ["fractional topK", { topK: 2.5 }, /topK/],
    ["repetitionPenalty 0", { repetitionPenalty: 0 }, /repetitionPenalty/],
    ["fractional seed", { seed: 0.5 }, /seed/],
    ["unknown option", { max_new_tokens: 5 }, /generate: unknown option 'max_new_tokens' \(did you mean 'maxNewTokens'\?\)/],
    ["misspelled option", { temprature: 1 }, /generate: unknown option 'temprature' \(did you mean 'temperature'\?\)/],
    ["stop token = vocab size", { stopTokens: [V] }, /stopTokens/],
    ["negative stop token", { stopTokens: [3, -1] }, /stopTokens/],
    ["fractional stop token", { stopTokens: [1.5] }, /stopTokens/],
    ["stop tokens not a list", { stopTokens: 3 }, /stopTokens/],
    ["signal not an AbortSignal", { signal: { aborted: false } }, /signal/],
    ["options not an object", "fast", /options/],
  ];
  for (const [name, o, pattern] of opts) {
    test(name, async () => {
      const model = await fresh();
      await rejectsWith(model.generate(prompt, o as GenerateOptions), pattern);
      await rejectsWith(model.generate([prompt, prompt], o as GenerateOptions), pattern);
      // stream checks the same options, when iterated
      await rejectsWith((async () => { for await (const _ of model.stream(prompt, o as GenerateOptions)) { /* none */ } })(), pattern);
      await stillCorrect(model);
      await model.dispose();
    });
  }

  const prompts: [string, unknown, RegExp[]][] = [
    ["prompt id out of range", Int32Array.of(1, V + 3), [/token id 43 at position 1/]],
    ["negative prompt id", Int32Array.of(-5), [/token id -5/]],
    ["Float32Array prompt", Float32Array.of(1, 2), [/Int32Array/]],
    ["plain array prompt", [1, 2], [/Int32Array/]],
    ["second prompt of a batch out of range", [prompt, Int32Array.of(0, 99)], [/prompt 1/, /token id 99/]],
    ["empty list of prompts", [], [/no prompts/]],
    ["empty prompt and no bos token", new Int32Array(0), [/empty/, /bos/]],
  ];
  for (const [name, p, patterns] of prompts) {
    test(name, async () => {
      const model = await fresh();
      await rejectsWith(model.generate(p as Int32Array, { maxNewTokens: 3 }), ...patterns);
      await stillCorrect(model);
      await model.dispose();
    });
  }
});

test("maxNewTokens 0 returns the prompt; a batch of one returns a list of one", async () => {
  const model = await fresh();
  assert.deepEqual(Array.from(await model.generate(prompt, { maxNewTokens: 0 })), Array.from(prompt));
  const one = await model.generate([prompt], { maxNewTokens: 6, stopTokens: [] });
  assert.equal(one.length, 1);
  assert.deepEqual(Array.from(one[0]!), greedyRef);
  await model.dispose();
});

test("concurrent calls (Promise.all of forward, generate, stream) give the sequential results", async () => {
  const model = await fresh();
  const sampled: GenerateOptions = { maxNewTokens: 8, stopTokens: [], temperature: 1, topK: 10, seed: 3 };
  const p2 = Int32Array.of(7), p3 = Int32Array.of(1, 2, 3, 4, 5, 6, 7);
  const collect = async () => { const a: number[] = []; for await (const id of model.stream(p3, sampled)) a.push(id); return a; };
  const calls: (() => Promise<unknown>)[] = [
    () => model.forward(probeIds, { batch: 2, seqLen: 6 }).then((r) => Array.from(r.logits)),
    () => model.generate(prompt, { maxNewTokens: 6, stopTokens: [] }).then((r) => Array.from(r)),
    () => model.generate([p2, p3], sampled).then((r) => r.map((x) => Array.from(x))),
    collect,
    () => model.forward(probeIds.subarray(0, 6), { batch: 1, seqLen: 6 }).then((r) => Array.from(r.logits)),
    () => model.generate(p3, { ...sampled, seed: 4 }).then((r) => Array.from(r)),
  ];
  const sequential: unknown[] = [];
  for (const call of calls) sequential.push(await call());
  const concurrent = await Promise.all(calls.map((call) => call()));
  assert.deepEqual(concurrent, sequential);
  assertClose(concurrent[0] as number[], probeRef, 1e-4, "concurrent forward");
  assert.deepEqual(concurrent[1], greedyRef);
  await model.dispose();
});

describe("abort", () => {
  test("an already aborted signal rejects with its reason, before any work", async () => {
    const model = await fresh();
    const reason = new Error("stop now");
    const ctrl = new AbortController();
    ctrl.abort(reason);
    await assert.rejects(model.generate(prompt, { maxNewTokens: 5, signal: ctrl.signal }), (e) => e === reason);
    await stillCorrect(model);
    await model.dispose();
  });

  test("a timer that aborts a long generation stops it, with the signal's reason; the model remains usable", async () => {
    const model = await fresh();
    const reason = new Error("timer abort");
    const ctrl = new AbortController();
    setTimeout(() => ctrl.abort(reason), 30);
    // 10^6 tokens would take minutes: only the abort can end this in time
    await assert.rejects(model.generate(prompt, { maxNewTokens: 1_000_000, stopTokens: [], signal: ctrl.signal }), (e) => e === reason);
    await assert.rejects(model.generate([prompt, prompt], { maxNewTokens: 1_000_000, signal: AbortSignal.timeout(30) }),
      (e: unknown) => (e as Error).name === "TimeoutError");
    await stillCorrect(model);
    await model.dispose();
  });

  test("aborting a stream mid-way: the ids so far are generate()'s, the next read throws the reason", async () => {
    const model = await fresh();
    const ctrl = new AbortController();
    const reason = new Error("enough");
    const got: number[] = [];
    await assert.rejects((async () => {
      for await (const id of model.stream(prompt, { maxNewTokens: 50, stopTokens: [], signal: ctrl.signal, temperature: 0.7, seed: 9 })) {
        got.push(id);
        if (got.length === 4) ctrl.abort(reason);
      }
    })(), (e) => e === reason);
    assert.equal(got.length, 4);
    const full = await model.generate(prompt, { maxNewTokens: 50, stopTokens: [], temperature: 0.7, seed: 9 });
    assert.deepEqual(got, Array.from(full.subarray(prompt.length, prompt.length + 4)));
    await stillCorrect(model);
    await model.dispose();
  });

  test("breaking out of a stream releases the model", async () => {
    const model = await fresh();
    let n = 0;
    for await (const _ of model.stream(prompt, { maxNewTokens: 100, stopTokens: [] })) if (++n === 2) break;
    await stillCorrect(model);
    await model.dispose();
  });
});

test("stream() yields the ids generate() adds (greedy, sampled, with a stop token)", async () => {
  const model = await fresh();
  const variants: GenerateOptions[] = [
    { maxNewTokens: 10, stopTokens: [] },
    { maxNewTokens: 10, stopTokens: [], temperature: 1.2, topP: 0.9, seed: 21 },
    { maxNewTokens: 10, stopTokens: [greedyRef[prompt.length + 2]!] },
  ];
  for (const o of variants) {
    const all = await model.generate(prompt, o);
    const streamed: number[] = [];
    for await (const id of model.stream(prompt, o)) streamed.push(id);
    assert.deepEqual(streamed, Array.from(all.subarray(prompt.length)));
    assert.ok(streamed.length > 0);
  }
  // the stop token case ends right after the first stop token
  const stop = greedyRef[prompt.length + 2]!;
  const stopped = await model.generate(prompt, variants[2]!);
  assert.deepEqual(Array.from(stopped), greedyRef.slice(0, greedyRef.indexOf(stop, prompt.length) + 1));
  await model.dispose();
});

test("dispose: work in flight finishes, later calls are MambaErrors, dispose twice is fine", async () => {
  const model = await fresh();
  const inFlight = model.generate(prompt, { maxNewTokens: 6, stopTokens: [] });
  const disposed = model.dispose();
  assert.deepEqual(Array.from(await inFlight), greedyRef);
  await disposed;
  await rejectsWith(model.forward(probeIds, { batch: 2, seqLen: 6 }), /disposed/);
  await rejectsWith(model.generate(prompt), /disposed/);
  await rejectsWith((async () => { for await (const _ of model.stream(prompt)) { /* none */ } })(), /disposed/);
  await model.dispose();
});
