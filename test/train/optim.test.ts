/** The schedule, which parameters decay, and AdamW's clipping against a direct computation. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { CpuBackend } from "../../src/backend/cpu/index.ts";
import { AdamW, DEFAULT_OPTIM, decays, learningRate } from "../../src/train/optim.ts";
import { TestRng } from "../helpers/random.ts";

test("warmup rises linearly to lr, then a cosine falls to lr · minLrRatio", () => {
  const o = { ...DEFAULT_OPTIM, lr: 1e-3, minLrRatio: 0.1, warmupSteps: 10 };
  assert.ok(Math.abs(learningRate(o, 1, 110) - 1e-4) < 1e-12);
  assert.ok(Math.abs(learningRate(o, 5, 110) - 5e-4) < 1e-12);
  assert.ok(Math.abs(learningRate(o, 10, 110) - 1e-3) < 1e-12);
  assert.ok(Math.abs(learningRate(o, 60, 110) - (1e-4 + 0.5 * 9e-4)) < 1e-12, "half way: the mean of lr and min");
  assert.ok(Math.abs(learningRate(o, 110, 110) - 1e-4) < 1e-12);
  for (let s = 11; s < 110; s++) assert.ok(learningRate(o, s + 1, 110) <= learningRate(o, s, 110));
  assert.equal(learningRate({ ...o, warmupSteps: 0, minLrRatio: 1 }, 7, 100), 1e-3, "constant");
});

test("weight decay: matrices yes; A_log, D, biases, norms, LTI constants no", () => {
  for (const n of ["backbone.embeddings.weight", "lm_head.weight", "backbone.layers.0.mixer.in_proj.weight",
    "backbone.layers.1.mixer.x_proj.weight", "backbone.layers.0.mixer.dt_proj.weight", "backbone.layers.0.mixer.out_proj.weight",
    "backbone.layers.0.mixer.conv1d.weight"]) assert.ok(decays(n), n);
  for (const n of ["backbone.layers.0.mixer.A_log", "backbone.layers.0.mixer.D", "backbone.layers.0.mixer.dt_proj.bias",
    "backbone.layers.0.mixer.conv1d.bias", "backbone.layers.0.norm.weight", "backbone.norm_f.weight",
    "backbone.layers.0.mixer.dt_lti", "backbone.layers.0.mixer.B_lti", "backbone.layers.0.mixer.C_lti",
    "backbone.layers.0.mixer.in_proj.bias"]) assert.ok(!decays(n), n);
});

test("AdamW clips to the global norm over all gradients and returns the norm before clipping", async () => {
  const b = new CpuBackend();
  const r = new TestRng(1);
  const p1 = r.f32(5), p2 = r.f32(3), g1 = r.f32(5, 10), g2 = r.f32(3, 10);
  const params = new Map([["a.weight", b.fromF32(p1, [5])], ["a.bias", b.fromF32(p2, [3])]]);
  const grads = new Map([["a.weight", b.fromF32(g1, [5])], ["a.bias", b.fromF32(g2, [3])]]);
  const cfg = { ...DEFAULT_OPTIM, warmupSteps: 0, clipNorm: 1, weightDecay: 0.1 };
  const opt = new AdamW(b, cfg, params);
  const norm = await opt.step(grads, 1, 0.01);
  const want = Math.sqrt([...g1, ...g2].reduce((s, v) => s + v * v, 0));
  assert.ok(Math.abs(norm - want) < 1e-4 * want);
  // step 1 of Adam moves every parameter by lr · sign(g) (bias-corrected m/sqrt(v) = g/|g|), scale-free; so check
  // the clipped moments instead: m = (1 - beta1) · g · clip
  const clip = 1 / (want + 1e-6);
  const m = await b.readF32(opt.m.get("a.weight")!);
  m.forEach((v, i) => assert.ok(Math.abs(v - (1 - cfg.beta1) * g1[i]! * clip) < 1e-7));
  const pw = await b.readF32(params.get("a.weight")!), pb = await b.readF32(params.get("a.bias")!);
  pw.forEach((v, i) => assert.ok(Math.abs(v - (p1[i]! * (1 - 0.01 * 0.1) - 0.01 * Math.sign(g1[i]!))) < 1e-5), "decayed");
  pb.forEach((v, i) => assert.ok(Math.abs(v - (p2[i]! - 0.01 * Math.sign(g2[i]!))) < 1e-5), "bias not decayed");
});
