/**
 * The selection observer: attaching a SelectionRecorder changes no output (logits, greedy ids), and what it records
 * is Δ = softplus(dt_proj(x_proj(x)) + bias) and keep = mean_{e,n} exp(Δ·A), both recomputed here in float64 from
 * the checkpoint's own weights and the mixer input x of each layer (the activations the training forward keeps).
 * Step mode records the same Δ as a full forward over the same tokens.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { loadModel } from "../../src/index.ts";
import type { LMActivations, MixerActivations } from "../../src/model/mamba.ts";
import { SelectionRecorder } from "../../src/model/observer.ts";
import { readF32Tensors, assertClose, expected, fixture } from "../helpers/fixtures.ts";

const folder = fixture("hf-mamba", "tiny");
const softplus = (v: number) => (v > 20 ? v : Math.log1p(Math.exp(v)));

test("observer: logits unchanged, Δ and keep equal an independent float64 computation (cpu, tiny fixture)", async () => {
  const model = await loadModel(folder, { backend: "cpu" });
  const lm = model.lm;
  const b = lm.backend;
  const { intermediateSize: E, stateSize: N, timeStepRank: R, numLayers } = model.config;
  const exp = await expected(folder);
  const ids = exp.get("input_ids")!;
  const [batch, seqLen] = ids.shape as [number, number];
  const T = batch * seqLen;

  const plain = await model.forward(ids.i32, { batch, seqLen });
  assert.equal(lm.observer, null);
  const rec = await SelectionRecorder.attach(lm);
  assert.equal(lm.observer, rec);
  const observed = await model.forward(ids.i32, { batch, seqLen });
  assert.deepEqual(observed.logits, plain.logits, "logits with the observer differ from those without");
  const trace = await rec.trace();
  rec.detach();
  assert.equal(lm.observer, null);
  assert.equal(trace.layers, numLayers);
  assert.equal(trace.channels, E);
  assert.equal(trace.tokens, T);

  // the mixer inputs x of every layer, as the training forward keeps them
  const keep: LMActivations = { layers: [], residualF: null as never };
  const idt = b.fromI32(ids.i32, [T]);
  b.dispose(lm.hidden(idt, { batch, seqLen }, null, keep));
  const w = await readF32Tensors(`${folder}/model.safetensors`);
  for (let l = 0; l < numLayers; l++) {
    const x = await b.readF32((keep.layers[l]!.mixer as MixerActivations).x); // [T, E] (a Mamba-1 model)
    const p = `backbone.layers.${l}.mixer.`;
    const xW = w.get(p + "x_proj.weight")!; // [R + 2N, E]
    const dtW = w.get(p + "dt_proj.weight")!; // [E, R]
    const dtB = w.get(p + "dt_proj.bias")!; // [E]
    const Alog = w.get(p + "A_log")!; // [E, N]
    const wantDelta = new Float64Array(T * E);
    const wantKeepE = new Float64Array(T * E);
    const wantKeep = new Float64Array(T);
    for (let t = 0; t < T; t++) {
      const dt = new Float64Array(R);
      for (let r = 0; r < R; r++) {
        let s = 0;
        for (let e = 0; e < E; e++) s += xW[r * E + e]! * x[t * E + e]!;
        dt[r] = s;
      }
      for (let e = 0; e < E; e++) {
        let s = dtB[e]!;
        for (let r = 0; r < R; r++) s += dtW[e * R + r]! * dt[r]!;
        const d = softplus(s);
        wantDelta[t * E + e] = d;
        let k = 0;
        for (let n = 0; n < N; n++) k += Math.exp(-d * Math.exp(Alog[e * N + n]!));
        wantKeepE[t * E + e] = k / N;
        wantKeep[t] += k / N / E;
      }
    }
    assertClose(trace.delta[l]!, wantDelta, 1e-5, `layer ${l} delta`);
    assertClose(trace.keepChannel[l]!, wantKeepE, 1e-5, `layer ${l} keep per channel`);
    assertClose(trace.keep[l]!, wantKeep, 1e-5, `layer ${l} keep`);
    // the values are informative: Δ varies with the token, and keep lies strictly inside (0, 1)
    assert.ok(Math.max(...wantDelta) - Math.min(...wantDelta) > 1e-3, "delta does not vary");
    for (const k of trace.keep[l]!) assert.ok(k > 0 && k < 1, `keep ${k} outside (0, 1)`);
  }
  await model.dispose();
});

test("observer: generation gives the same ids; step-mode Δ equals a full forward's Δ over the same tokens", async () => {
  const model = await loadModel(folder, { backend: "cpu" });
  const exp = await expected(folder);
  const prompt = exp.get("greedy_prompt")!.i32;
  const opts = { maxNewTokens: 12, temperature: 0, stopTokens: [] };
  const plain = await model.generate(prompt, opts);

  const rec = await SelectionRecorder.attach(model.lm);
  await assert.rejects(SelectionRecorder.attach(model.lm), /already attached/);
  const observed = await model.generate(prompt, opts);
  assert.deepEqual(Array.from(observed), Array.from(plain));
  const stepTrace = await rec.trace();
  // the last new token is returned, never read by the model
  assert.equal(stepTrace.tokens, observed.length - 1);

  rec.clear();
  const seq = observed.subarray(0, observed.length - 1);
  await model.forward(seq, { batch: 1, seqLen: seq.length });
  const fullTrace = await rec.trace();
  rec.detach();
  assert.equal(fullTrace.tokens, seq.length);
  for (let l = 0; l < fullTrace.layers; l++) {
    assertClose(stepTrace.delta[l]!, fullTrace.delta[l]!, 1e-5, `layer ${l} delta, step vs forward`);
    assertClose(stepTrace.keep[l]!, fullTrace.keep[l]!, 1e-5, `layer ${l} keep, step vs forward`);
  }
  await model.dispose();
});
