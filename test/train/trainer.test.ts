/**
 * Training on the CPU: seeded runs repeat bit for bit, a resumed run (in process, and after a SIGKILL of a
 * child process in the middle of its checkpointing) ends with the same weight bytes as a straight run,
 * checkpoints load with loadModel and give the trainer's own outputs, and gradient accumulation adds up.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { CpuBackend } from "../../src/backend/cpu/index.ts";
import { EVAL_SALT, Trainer, evaluateAccuracy } from "../../src/train/trainer.ts";
import { latestCheckpoint } from "../../src/train/checkpoint.ts";
import { loadModel } from "../../src/index.ts";
import { forwardBackward } from "../../src/train/backprop.ts";
import { namedTensors, zerosLike } from "../../src/train/params.ts";
import { makeTask, scoreLogits } from "../../src/train/tasks/task.ts";
import { Rng } from "../../src/generate/rng.ts";
import { tinyOptions } from "./helpers/tiny-run.ts";

const here = path.dirname(fileURLToPath(import.meta.url));
const tmp = () => fs.mkdtemp(path.join(os.tmpdir(), "mamba-ts-train-"));

async function run(steps: number, o = tinyOptions()): Promise<{ losses: number[]; t: Trainer }> {
  const t = Trainer.create(new CpuBackend(), o);
  const losses: number[] = [];
  for (let i = 0; i < steps; i++) losses.push((await t.trainStep()).loss);
  return { losses, t };
}

async function bytesOf(folder: string, file: string): Promise<Buffer> {
  return fs.readFile(path.join(folder, file));
}

test("the same seed gives the same losses and weights; another seed does not", async () => {
  const a = await run(5), b = await run(5), c = await run(5, tinyOptions({ seed: 8 }));
  assert.deepEqual(a.losses, b.losses);
  assert.notDeepEqual(a.losses, c.losses);
  const pa = await a.t.parameters(), pb = await b.t.parameters();
  for (const [k, v] of pa) assert.deepEqual(v.data, pb.get(k)!.data, k);
  assert.ok(a.losses.every(Number.isFinite));
});

test("training lowers the loss of a tiny run", async () => {
  const { losses } = await run(30, tinyOptions({ steps: 30 }));
  const first = (losses[0]! + losses[1]! + losses[2]!) / 3, last = (losses[27]! + losses[28]! + losses[29]!) / 3;
  assert.ok(last < first - 0.1, `loss ${first} -> ${last}`);
});

test("resume: N steps straight == N/2 steps, save, resume, N/2 more (weights and optimizer to the bit)", async () => {
  const o = tinyOptions({ steps: 8, checkpointEvery: 0 });
  const d1 = await tmp(), d2 = await tmp();
  const straight = await run(8, o);
  const f1 = await straight.t.save(d1);
  const half = await run(4, o);
  await half.t.save(d2);
  const resumed = await Trainer.resume(new CpuBackend(), d2);
  assert.equal(resumed.step, 4);
  const tail: number[] = [];
  while (!resumed.finished) tail.push((await resumed.trainStep()).loss);
  assert.deepEqual(tail, straight.losses.slice(4));
  const f2 = await resumed.save(d2);
  for (const f of ["model.safetensors", "optimizer.safetensors"]) assert.ok((await bytesOf(f1, f)).equals(await bytesOf(f2, f)), f);
  assert.deepEqual((await fs.readdir(d2)).sort(), ["checkpoint-8", "latest"], "older checkpoints are removed");
});

test("state passing: each batch starts from the last one's final states; resume continues it to the bit", async () => {
  const o = tinyOptions({ steps: 6, accumulation: 1, checkpointEvery: 0, statePassing: true });
  const plain = await run(6, tinyOptions({ steps: 6, accumulation: 1, checkpointEvery: 0 }));
  const straight = await run(6, o);
  assert.equal(straight.losses[0], plain.losses[0], "the first batch starts from zeros");
  assert.notDeepEqual(straight.losses.slice(1), plain.losses.slice(1), "later batches start from carried states");
  const d1 = await tmp(), d2 = await tmp();
  const f1 = await straight.t.save(d1);
  const half = await run(3, o);
  await half.t.save(d2);
  const resumed = await Trainer.resume(new CpuBackend(), d2);
  const tail: number[] = [];
  while (!resumed.finished) tail.push((await resumed.trainStep()).loss);
  assert.deepEqual(tail, straight.losses.slice(3));
  const f2 = await resumed.save(d2);
  for (const f of ["model.safetensors", "optimizer.safetensors"]) assert.ok((await bytesOf(f1, f)).equals(await bytesOf(f2, f)), f);
  assert.throws(() => Trainer.create(new CpuBackend(), { ...o, stateNoise: 1 }), /exclusive/);
});

test("evaluateLengths: 16 sequences a length, recorded and checkpointed, without touching training", async () => {
  const o = tinyOptions({ steps: 4, accumulation: 1, checkpointEvery: 0, evalLengths: [12, 40] });
  const plain = await run(4, tinyOptions({ steps: 4, accumulation: 1, checkpointEvery: 0 }));
  const t = Trainer.create(new CpuBackend(), o);
  const losses: number[] = [];
  for (let i = 0; i < 4; i++) {
    losses.push((await t.trainStep()).loss);
    if (i === 1) {
      const rows = await t.evaluateLengths();
      assert.deepEqual(rows.map((r) => [r.step, r.seqLen]), [[2, 12], [2, 40]]);
      for (const r of rows) {
        assert.equal(r.scored, 16 * o.task.numTokens, `${r.seqLen}: scored positions`);
        assert.ok(r.accuracy >= 0 && r.accuracy <= 1);
      }
      const again = await t.evaluateLengths();
      assert.deepEqual(again.map((r) => r.accuracy), rows.map((r) => r.accuracy), "the same held-out sequences");
    }
  }
  assert.deepEqual(losses, plain.losses, "evaluating between steps changes nothing in training");
  assert.equal(t.lengthHistory.length, 4);
  const d = await tmp();
  await t.save(d);
  const back = await Trainer.resume(new CpuBackend(), d);
  assert.deepEqual(back.lengthHistory, t.lengthHistory, "kept across a resume");
  assert.throws(() => Trainer.create(new CpuBackend(), { ...o, evalLengths: [1] }), /evaluation lengths/);
});

test("evaluateAccuracy: passes over the positions that carry the state score as one pass of the whole batch", async () => {
  const { t } = await run(3, tinyOptions({ steps: 3 }));
  const task = makeTask({ ...t.options.task, seqLen: 40, numTokens: 4 });
  const b = t.backend;
  // the reference: one pass over each whole batch, every position's logits, argmax at the scored ones
  let correct = 0, scored = 0;
  for (let i = 0; i < 3; i++) {
    const batch = task.batch(new Rng((5 ^ EVAL_SALT) >>> 0, i), 4);
    const h = t.lm.hidden(b.fromI32(batch.ids, [batch.ids.length]), batch.shape, null);
    const s = scoreLogits(await b.readF32(t.lm.logits(h)), batch.targets, t.lm.config.paddedVocabSize);
    correct += s.correct;
    scored += s.scored;
  }
  assert.equal(scored, 3 * 4 * 4);
  // 1 byte: one position a pass; 3000 bytes: a few; the default: the whole batch in one pass
  for (const passBytes of [1, 3000, undefined]) {
    const r = await evaluateAccuracy(t.lm, task, 5, 3, 4, undefined, { passBytes });
    assert.deepEqual([r.correct, r.scored], [correct, scored], `passBytes ${passBytes}`);
  }
});

test("a checkpoint is a model folder: loadModel gives the trainer's logits", async () => {
  const dir = await tmp();
  const { t } = await run(3, tinyOptions({ steps: 3 }));
  const folder = await t.save(dir);
  assert.equal(await latestCheckpoint(dir), folder);
  const cfg = JSON.parse(await fs.readFile(path.join(folder, "config.json"), "utf8"));
  assert.equal(cfg.model_type, "mamba");
  assert.deepEqual(cfg.architectures, ["MambaForCausalLM"]);
  const model = await loadModel(folder, { backend: new CpuBackend() }); // the engine the trainer ran: the same bits
  const batch = makeTask(t.options.task).batch(new Rng(1), 2);
  const got = (await model.forward(batch.ids, batch.shape)).logits;
  const b = t.backend;
  const h = t.lm.hidden(b.fromI32(batch.ids, [batch.ids.length]), batch.shape, null);
  assert.deepEqual(got, await b.readF32(t.lm.logits(h)));
  await model.dispose();
});

test("lti runs train, save and load too", async () => {
  const dir = await tmp();
  const { t, losses } = await run(3, tinyOptions({ steps: 3, model: { ...tinyOptions().model, mixer: "lti" } }));
  assert.ok(losses.every(Number.isFinite));
  const model = await loadModel(await t.save(dir), { backend: "cpu" });
  assert.equal(model.config.mixer, "lti");
  await model.dispose();
});

test("gradient accumulation: two micro-batches at scale 1/2 give the mean of their gradients", async () => {
  const { t } = await run(0);
  const b = t.backend;
  const task = makeTask(t.options.task);
  const b1 = task.batch(new Rng(1), 3), b2 = task.batch(new Rng(2), 3);
  const up = (x: Int32Array) => b.fromI32(x, [x.length]);
  const gsum = zerosLike(b, t.lm.weights), g1 = zerosLike(b, t.lm.weights), g2 = zerosLike(b, t.lm.weights);
  forwardBackward(t.lm, b, up(b1.ids), up(b1.targets), b1.shape, gsum, 0.5);
  forwardBackward(t.lm, b, up(b2.ids), up(b2.targets), b2.shape, gsum, 0.5);
  forwardBackward(t.lm, b, up(b1.ids), up(b1.targets), b1.shape, g1, 1);
  forwardBackward(t.lm, b, up(b2.ids), up(b2.targets), b2.shape, g2, 1);
  const [ns, n1, n2] = [gsum, g1, g2].map((g) => namedTensors(t.config, g));
  for (const [name, ts] of ns!) {
    const s = await b.readF32(ts), x = await b.readF32(n1!.get(name)!), y = await b.readF32(n2!.get(name)!);
    s.forEach((v, i) => assert.ok(Math.abs(v - (x[i]! + y[i]!) / 2) <= 1e-6 + 1e-5 * Math.abs(v), `${name}[${i}]`));
  }
});

test("SIGKILL of a training process at any moment leaves the last checkpoint intact; resuming ends on the same bytes", { timeout: 600_000 }, async () => {
  const child = path.join(here, "helpers", "tiny-run.ts");
  const straightDir = await tmp();
  const killedDir = await tmp();
  const runChild = (dir: string, args: string[], killAfter: number | null) => new Promise<number | null>((resolve, reject) => {
    const p = spawn(process.execPath, ["--import", "tsx", child, dir, ...args], { stdio: ["ignore", "pipe", "inherit"] });
    // a bound on each run: a child still running after 120 s is killed and the test fails, saying so
    const bound = setTimeout(() => {
      p.kill("SIGKILL");
      reject(new Error(`the training child (${args.join(" ") || "fresh run"}) ran past 120 s`));
    }, 120_000);
    p.on("exit", () => clearTimeout(bound));
    let saved = 0;
    p.stdout.on("data", (d: Buffer) => {
      saved += (d.toString().match(/step \d+/g) ?? []).length;
      // kill at a moment unrelated to step boundaries: a short, varying delay after the k-th save
      if (killAfter !== null && saved >= killAfter) setTimeout(() => p.kill("SIGKILL"), 3 + (saved % 7));
    });
    p.on("error", reject);
    p.on("exit", (code, signal) => resolve(signal === "SIGKILL" ? null : code));
  });
  assert.equal(await runChild(straightDir, [], null), 0);
  assert.equal(await runChild(killedDir, [], 12), null, "the child was killed");
  const mid = await latestCheckpoint(killedDir);
  assert.ok(mid, "a checkpoint survived");
  const step = Number(/checkpoint-(\d+)$/.exec(mid)![1]);
  assert.ok(step >= 12 && step < 40, `killed at step ${step}`);
  const m = await loadModel(mid, { backend: "cpu" }); // complete and loadable
  await m.dispose();
  // leftovers of an interrupted write (a half-written folder, a temp pointer file) are ignored, then removed
  await fs.mkdir(path.join(killedDir, "checkpoint-99.tmp"));
  await fs.writeFile(path.join(killedDir, "checkpoint-99.tmp", "model.safetensors"), "partial");
  await fs.writeFile(path.join(killedDir, "latest.123.456.tmp"), "checkpoint-99");
  assert.equal(await runChild(killedDir, ["resume"], 5), null, "killed again after resuming");
  const mid2 = (await latestCheckpoint(killedDir))!;
  assert.ok(Number(/checkpoint-(\d+)$/.exec(mid2)![1]) >= step + 5);
  assert.equal(await runChild(killedDir, ["resume"], null), 0);
  assert.deepEqual((await fs.readdir(killedDir)).sort(), ["checkpoint-40", "latest"]);
  const a = (await latestCheckpoint(straightDir))!, b = (await latestCheckpoint(killedDir))!;
  assert.equal(path.basename(a), "checkpoint-40");
  assert.equal(path.basename(b), "checkpoint-40");
  for (const f of ["model.safetensors", "optimizer.safetensors"]) assert.ok((await bytesOf(a, f)).equals(await bytesOf(b, f)), f);
});
