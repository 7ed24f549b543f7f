/**
 * The state API: continuing from a MambaState gives the tokens of the uninterrupted run (greedy, and seeded
 * sampling with top-k and a repetition penalty), for a state prefilled in one part or two, advanced by generation
 * in pieces, restored from bytes, and moved between the CPU and WebGPU backends (the tiny fixture model). States
 * passed in are never changed unless advanceState asks; loadState refuses another model's, truncated and damaged
 * states with one MambaError each and the model stays usable; lists of states are batched rows that give each
 * row's answer alone. The reference for every continuation is the plain generate() of the whole text, itself
 * checked against an independent float64 implementation for greedy decoding.
 */
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { type GenerateOptions, MambaError, type MambaModel, type MambaState, loadModel, makeConfig, modelFromTensors } from "../../src/index.ts";
import { naiveGreedy } from "../helpers/naive.ts";
import { TestRng, perturbedParameters } from "../helpers/random.ts";
import { fixture } from "../helpers/fixtures.ts";
import { gpuTest, releaseWebgpu, webgpuBackend } from "../helpers/backends.ts";

const cfg = makeConfig({ vocabSize: 48, hiddenSize: 12, numLayers: 2, stateSize: 5, intermediateSize: 20, convKernel: 4, tieEmbeddings: false, useConvBias: true });
const params = perturbedParameters(cfg, 31);
const otherCfg = makeConfig({ vocabSize: 48, hiddenSize: 12, numLayers: 2, stateSize: 6, intermediateSize: 20, convKernel: 4, tieEmbeddings: false });
const rng = new TestRng(9);
const prompt = rng.ids(11, cfg.vocabSize);
const N = 12;
const greedy: GenerateOptions = { maxNewTokens: N, stopTokens: [] };
const sampled: GenerateOptions = { maxNewTokens: N, stopTokens: [], temperature: 1.1, topK: 12, repetitionPenalty: 1.3, seed: 5 };
const fresh = () => modelFromTensors(cfg, params, { backend: "cpu" });

const tail = (ids: Int32Array, from: number) => Array.from(ids.subarray(from));

async function rejectsWith(p: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof MambaError, `expected a MambaError, got ${String(err)}`);
    assert.match(err.message, pattern);
    return true;
  });
}

describe("state API on the CPU", { timeout: 120_000 }, () => {
  test("prefill then generate from the state == generate of the prompt (greedy == the float64 reference; sampled)", async () => {
    const model = await fresh();
    const whole = await model.generate(prompt, greedy);
    assert.deepEqual(Array.from(whole), naiveGreedy(cfg, params, prompt, N));
    const state = await model.prefill(prompt);
    assert.equal(state.length, prompt.length);
    const bytes = await state.toBytes();
    assert.deepEqual(Array.from(await model.generate(Int32Array.of(), { ...greedy, state })), tail(whole, prompt.length));
    const wholeSampled = await model.generate(prompt, sampled);
    assert.deepEqual(Array.from(await model.generate(Int32Array.of(), { ...sampled, state })), tail(wholeSampled, prompt.length));
    // the state was not changed by either: the same again
    assert.deepEqual(Array.from(await model.generate(Int32Array.of(), { ...sampled, state })), tail(wholeSampled, prompt.length));
    await model.generate(prompt.subarray(0, 3), { ...sampled, state });
    for await (const _ of model.stream(Int32Array.of(), { ...sampled, state })) { /* read it all */ }
    await model.prefill(prompt, { state });
    assert.deepEqual(await state.toBytes(), bytes, "the state's bytes are as they were");
    state.dispose();
    await model.dispose();
  });

  test("a state prefilled in two parts, and a non-empty prompt after a state, == the whole prompt at once", async () => {
    const model = await fresh();
    for (const cut of [1, 4, prompt.length - 1]) {
      const first = await model.prefill(prompt.subarray(0, cut));
      const both = await model.prefill(prompt.subarray(cut), { state: first });
      assert.equal(first.length, cut, "the first state is left as it was");
      for (const o of [greedy, sampled]) {
        const whole = await model.generate(prompt, o);
        assert.deepEqual(Array.from(await model.generate(Int32Array.of(), { ...o, state: both })), tail(whole, prompt.length), `cut ${cut}`);
        // the rest of the prompt as generate's first argument: returned in front of the new ids
        const out = await model.generate(prompt.slice(cut), { ...o, state: first });
        assert.deepEqual(Array.from(out), tail(whole, cut), `cut ${cut}, rest as the prompt`);
      }
      first.dispose();
      both.dispose();
    }
    await model.dispose();
  });

  test("advanceState in pieces (greedy and seeded sampling with a repetition penalty) == one uninterrupted run", async () => {
    const model = await fresh();
    for (const o of [greedy, sampled]) {
      const whole = tail(await model.generate(prompt, o), prompt.length);
      const state = await model.prefill(prompt);
      const pieces: number[] = [];
      for (const n of [3, 1, 5, 3]) {
        const before = state.length;
        pieces.push(...await model.generate(Int32Array.of(), { ...o, maxNewTokens: n, state, advanceState: true }));
        assert.equal(state.length, before + n);
      }
      assert.deepEqual(pieces, whole);
      if (o.temperature) assert.deepEqual(state.sampler, { seed: 5, stream: 0, draws: N });
      // the advanced state still equals the whole text read at once, for what follows
      const all = await model.generate(prompt, { ...o, maxNewTokens: N + 6 });
      const next = await model.generate(Int32Array.of(), { ...o, maxNewTokens: 6, state });
      assert.deepEqual(Array.from(next), tail(all, prompt.length + N));
      state.dispose();
    }
    await model.dispose();
  });

  test("a stop token ends an advanced state after the stop token; stream() with a state yields generate()'s ids", async () => {
    const model = await fresh();
    const whole = tail(await model.generate(prompt, greedy), prompt.length);
    const stop = whole[4]!;
    const state = await model.prefill(prompt);
    const first = Array.from(await model.generate(Int32Array.of(), { ...greedy, stopTokens: [stop], state, advanceState: true }));
    assert.deepEqual(first, whole.slice(0, whole.indexOf(stop) + 1));
    const rest = Array.from(await model.generate(Int32Array.of(), { ...greedy, maxNewTokens: N - first.length, state }));
    assert.deepEqual([...first, ...rest], whole);
    const streamed: number[] = [];
    for await (const id of model.stream(Int32Array.of(), { ...sampled, state })) streamed.push(id);
    assert.deepEqual(streamed, Array.from(await model.generate(Int32Array.of(), { ...sampled, state })));
    state.dispose();
    await model.dispose();
  });

  test("an aborted generation leaves a state it was to advance as it was", async () => {
    const model = await fresh();
    const state = await model.prefill(prompt);
    const bytes = await state.toBytes();
    const ctrl = new AbortController();
    const reason = new Error("enough");
    let n = 0;
    await assert.rejects((async () => {
      for await (const _ of model.stream(Int32Array.of(), { ...sampled, maxNewTokens: 50, state, advanceState: true, signal: ctrl.signal })) {
        if (++n === 3) ctrl.abort(reason);
      }
    })(), (e) => e === reason);
    assert.deepEqual(await state.toBytes(), bytes);
    assert.equal(state.length, prompt.length);
    state.dispose();
    await model.dispose();
  });

  test("clone is independent; toBytes -> loadState continues exactly; bytes are deterministic", async () => {
    const model = await fresh();
    const state = await model.prefill(prompt);
    const fork = state.clone();
    await model.generate(Int32Array.of(), { ...sampled, maxNewTokens: 4, state: fork, advanceState: true });
    assert.equal(state.length, prompt.length);
    assert.equal(fork.length, prompt.length + 4);
    const bytes = await fork.toBytes();
    assert.deepEqual(await fork.toBytes(), bytes);
    const again = await model.loadState(bytes);
    assert.deepEqual(again.sampler, fork.sampler);
    assert.equal(again.length, fork.length);
    assert.deepEqual(await again.toBytes(), bytes);
    const want = await model.generate(Int32Array.of(), { ...sampled, state: fork });
    assert.deepEqual(Array.from(await model.generate(Int32Array.of(), { ...sampled, state: again })), Array.from(want));
    // the fork continued where the uninterrupted sampled run is
    const whole = tail(await model.generate(prompt, { ...sampled, maxNewTokens: 4 + N }), prompt.length + 4);
    assert.deepEqual(Array.from(want), whole);
    fork.dispose();
    fork.dispose(); // twice is fine
    await rejectsWith(fork.toBytes(), /disposed/);
    await rejectsWith(model.generate(Int32Array.of(), { state: fork }), /disposed/);
    assert.throws(() => fork.clone(), MambaError);
    state.dispose();
    again.dispose();
    await model.dispose();
  });

  test("a list of states is a batch of rows: each row == its state alone (greedy and sampled, advanced too)", async () => {
    const model = await fresh();
    const prompts = [rng.ids(3, cfg.vocabSize), rng.ids(7, cfg.vocabSize), rng.ids(7, cfg.vocabSize)];
    const extra = [Int32Array.of(), rng.ids(2, cfg.vocabSize), Int32Array.of()];
    for (const o of [greedy, sampled]) {
      const states = await Promise.all(prompts.map((p) => model.prefill(p)));
      const rows = await model.generate(extra, { ...o, state: states });
      for (let r = 0; r < prompts.length; r++) {
        const alone = await model.generate([...Array(r).fill(extra[r]), extra[r]!], { ...o, state: [...Array(r).fill(0).map(() => states[r]!.clone()), states[r]!] });
        assert.deepEqual(Array.from(rows[r]!), Array.from(alone[r]!), `row ${r}`);
      }
      // advanced as a batch, each state then continues as its row would
      const whole = await model.generate(extra, { ...o, maxNewTokens: 2 * N, state: states });
      await model.generate(extra, { ...o, state: states, advanceState: true });
      const next = await model.generate(prompts.map(() => Int32Array.of()), { ...o, state: states });
      for (let r = 0; r < prompts.length; r++) assert.deepEqual(Array.from(next[r]!), tail(whole[r]!, extra[r]!.length + N), `advanced row ${r}`);
      // a streamed batch yields the same rows
      const streamed: number[][] = prompts.map(() => []);
      for await (const ev of model.stream(prompts.map(() => Int32Array.of()), { ...o, state: states })) streamed[ev.row]!.push(ev.id);
      assert.deepEqual(streamed, next.map((x) => Array.from(x)));
      for (const s of states) s.dispose();
    }
    await model.dispose();
  });

  test("loadState refuses another model's, a truncated, a damaged state (one MambaError each); the model stays usable", async () => {
    const model = await fresh();
    const other = await modelFromTensors(otherCfg, perturbedParameters(otherCfg, 2), { backend: "cpu" });
    const state = await model.prefill(prompt);
    const bytes = await state.toBytes();
    const want = Array.from(await model.generate(Int32Array.of(), { ...greedy, state }));
    await rejectsWith(other.loadState(bytes), /another model.*stateSize 5 here 6/);
    await rejectsWith(model.loadState((await (await other.prefill(prompt)).toBytes())), /another model/);
    for (const n of [0, 10, 40, bytes.length - 1, bytes.length - 100]) await rejectsWith(model.loadState(bytes.subarray(0, n)), /truncated/);
    for (const at of [bytes.length - 2, bytes.length - 300, 200]) {
      const damaged = bytes.slice();
      damaged[at] ^= 0x10;
      await rejectsWith(model.loadState(damaged), /damaged/);
    }
    await rejectsWith(model.loadState(new TextEncoder().encode("not a state at all, just some text")), /not a mamba-ts state/);
    await rejectsWith(model.loadState(Uint8Array.from([...bytes, 0, 0])), /damaged.*after its end/);
    await rejectsWith(model.loadState("bytes" as unknown as Uint8Array), /Uint8Array/);
    // a state of another model passed to generate or prefill
    const foreign = await other.prefill(prompt);
    await rejectsWith(model.generate(Int32Array.of(), { state: foreign }), /another model/);
    await rejectsWith(model.prefill(prompt, { state: foreign }), /another model/);
    await rejectsWith(model.generate([Int32Array.of()], { state: state }), /one state for a list/);
    await rejectsWith(model.generate(Int32Array.of(), { state: [state] }), /need a list/);
    await rejectsWith(model.generate([Int32Array.of(), Int32Array.of()], { state: [state, state], advanceState: true }), /given twice/);
    await rejectsWith(model.generate(Int32Array.of(), { state: {} as MambaState }), /MambaState/);
    await rejectsWith(model.prefill(Int32Array.of()), /no ids/);
    await rejectsWith(model.prefill(Int32Array.of(1, 99)), /token id 99/);
    // still right
    assert.deepEqual(Array.from(await model.generate(Int32Array.of(), { ...greedy, state: await model.loadState(bytes) })), want);
    assert.deepEqual(Array.from(await model.generate(prompt, greedy)), naiveGreedy(cfg, params, prompt, N));
    await other.dispose();
    await model.dispose();
  });
});

test("Mamba-2: states of [1, H, P, N] continue exactly (two-part prefill, advanced, through bytes)", { timeout: 60_000 }, async () => {
  const { createModel } = await import("../../src/index.ts");
  const model = await createModel({ family: "mamba2", vocabSize: 40, hiddenSize: 32, numLayers: 2, mamba2: { headDim: 16, nGroups: 1 } } as Parameters<typeof createModel>[0], { backend: "cpu", seed: 3 });
  assert.deepEqual(model.stateLayout().layers[0]!.map((t) => t.shape.length), [3, 4]);
  const p = Int32Array.of(1, 5, 9, 3, 7, 2);
  for (const o of [greedy, { ...sampled, repetitionPenalty: 1 }]) {
    const whole = tail(await model.generate(p, o), p.length);
    const first = await model.prefill(p.subarray(0, 2));
    const both = await model.prefill(p.subarray(2), { state: first });
    const a = await model.generate(Int32Array.of(), { ...o, state: both, maxNewTokens: 5, advanceState: true });
    const loaded = await model.loadState(await both.toBytes());
    const b = await model.generate(Int32Array.of(), { ...o, state: loaded, maxNewTokens: N - 5 });
    assert.deepEqual([...a, ...b], whole);
  }
  await model.dispose();
});

describe("states between the CPU and WebGPU (tiny fixture model)", { timeout: 300_000 }, () => {
  after(releaseWebgpu);
  const folder = fixture("hf-mamba", "tiny");
  const text = Int32Array.of(3, 17, 42, 9, 77, 5, 61, 23, 8);
  const n = 8;
  const moves: [string, "cpu" | "webgpu", "cpu" | "webgpu"][] = [["CPU -> WebGPU", "cpu", "webgpu"], ["WebGPU -> CPU", "webgpu", "cpu"]];
  for (const [name, fromName, toName] of moves) {
    test(`${name}: a state saved on one continues on the other as the uninterrupted run does`, async (t) => {
      if (!(await gpuTest(t))) return;
      const gpu = await webgpuBackend();
      const load = async (which: "cpu" | "webgpu"): Promise<MambaModel> => loadModel(folder, { backend: which === "cpu" ? "cpu" : gpu! });
      const cpuModel = await load("cpu");
      const source = fromName === "cpu" ? cpuModel : await load("webgpu");
      const target = toName === "cpu" ? cpuModel : await load("webgpu");
      try {
        for (const o of [{ maxNewTokens: n, stopTokens: [] }, { maxNewTokens: n, stopTokens: [], temperature: 0.9, seed: 3 }] as GenerateOptions[]) {
          const state = await source.prefill(text.subarray(0, 4));
          await source.generate(Int32Array.of(), { ...o, maxNewTokens: 3, state, advanceState: true });
          const moved = await target.loadState(await state.toBytes());
          const want = tail(await cpuModel.generate(text.subarray(0, 4), { ...o, maxNewTokens: 3 + n }), 7);
          const wantTarget = tail(await target.generate(text.subarray(0, 4), { ...o, maxNewTokens: 3 + n }), 7);
          const got = Array.from(await target.generate(Int32Array.of(), { ...o, state: moved }));
          assert.deepEqual(got, wantTarget, "continued on the target == the target's uninterrupted run");
          assert.deepEqual(got, want, "== the CPU's uninterrupted run");
          state.dispose();
          moved.dispose();
        }
      } finally {
        // the shared WebGPU backend stays alive for the next test (released after all)
        await cpuModel.dispose();
      }
    });
  }
});
