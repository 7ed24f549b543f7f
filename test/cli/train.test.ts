/**
 * `mamba-ts train` and `mamba-ts eval` as users run them (child processes), on runs of a few steps: metrics.json,
 * report.html and the checkpoint folder, eval's accuracy against the library's evaluation of the same checkpoint, resume,
 * and bad options (one `mamba-ts: error:` line, exit code 2).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { loadModel } from "../../src/index.ts";
import { latestCheckpoint } from "../../src/train/checkpoint.ts";
import { makeTask } from "../../src/train/tasks/task.ts";
import { evaluateAccuracy } from "../../src/train/trainer.ts";
import { cli } from "../helpers/cli.ts";


const SMALL = ["--seq-len", "12", "--batch-size", "2", "--eval-batches", "2", "--checkpoint-every", "2"];

test("train writes checkpoints and metrics.json; eval reports the same accuracy as the library; resume is checked", { timeout: 600_000 }, async () => {
  const dir = path.join(await fs.mkdtemp(path.join(os.tmpdir(), "mamba-ts-cli-train-")), "run");
  const r = await cli(["train", "--task", "selective-copying", "--mixer", "lti", "--out", dir, "--steps", "3", "--seed", "5",
    "--weight-decay", "0.25", "--lr", "0.004", "--min-lr", "0.001", "--warmup-steps", "1", ...SMALL]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^selective-copying lti: accuracy \d\.\d{4} on 16 held-out scored positions after 3 steps/);
  const m = JSON.parse(await fs.readFile(path.join(dir, "metrics.json"), "utf8"));
  assert.equal(m.task, "selective-copying");
  assert.equal(m.mixer, "lti");
  assert.equal(m.complete, true);
  assert.equal(m.steps, 3);
  assert.equal(m.seqLen, 12);
  assert.ok(m.accuracy >= 0 && m.accuracy <= 1);
  const page = await fs.readFile(path.join(dir, "report.html"), "utf8");
  assert.match(page, /selective-copying, lti, 2 layers/);
  assert.match(page, /heldout_accuracy/);
  const folder = (await latestCheckpoint(dir))!;
  assert.equal(path.basename(folder), "checkpoint-3");
  const names = (await fs.readdir(folder)).sort();
  assert.deepEqual(names, ["config.json", "model.safetensors", "optimizer.safetensors", "trainer.json"]);
  const state = JSON.parse(await fs.readFile(path.join(folder, "trainer.json"), "utf8"));
  assert.equal(state.options.optim.weightDecay, 0.25, "--weight-decay reaches the optimizer");
  assert.equal(state.options.optim.lr * state.options.optim.minLrRatio, 0.001, "--min-lr ends the cosine");
  assert.equal(state.options.optim.warmupSteps, 1, "--warmup-steps reaches the schedule");
  assert.equal(state.history[0].lr, 0.004, "warmup of one step: the first step runs at the peak");

  // the library's evaluation of the checkpoint: the same held-out data (training seed), the same accuracy
  const model = await loadModel(folder, { backend: "cpu" });
  const lib = await evaluateAccuracy(model.lm, makeTask({ name: "selective-copying", seqLen: 12, numTokens: 4, vocabSize: 8 }), 5, 2, 2);
  assert.equal(lib.accuracy, m.accuracy);
  const e = await cli(["eval", "--task", "selective-copying", "--model", dir, "--batches", "2", "--batch-size", "2"]);
  assert.equal(e.code, 0, e.stderr);
  assert.match(e.stdout, new RegExp(`^accuracy: ${m.accuracy.toFixed(4)} \\(selective-copying, seq-len 12, num-tokens 4, ${lib.correct}/16 `));
  const longer = await cli(["eval", "--task", "selective-copying", "--model", folder, "--seq-len", "40", "--batches", "1", "--batch-size", "2"]);
  assert.equal(longer.code, 0, longer.stderr);
  const lib40 = await evaluateAccuracy(model.lm, makeTask({ name: "selective-copying", seqLen: 40, numTokens: 4, vocabSize: 8 }), 5, 1, 2);
  assert.match(longer.stdout, new RegExp(`^accuracy: ${lib40.accuracy.toFixed(4)} \\(selective-copying, seq-len 40, `));
  await model.dispose();

  const again = await cli(["train", "--task", "selective-copying", "--out", dir]);
  assert.equal(again.code, 2);
  assert.match(again.stderr, /^mamba-ts: error: .* already holds a training run; continue it with --resume/m);
  const conflict = await cli(["train", "--resume", "--out", dir, "--mixer", "s6"]);
  assert.equal(conflict.code, 2);
  assert.match(conflict.stderr, /^mamba-ts: error: --resume: the run in .* was started with --mixer lti, not s6/m);
  const wd = await cli(["train", "--resume", "--out", dir, "--weight-decay", "0.1"]);
  assert.equal(wd.code, 2);
  assert.match(wd.stderr, /^mamba-ts: error: --resume: the run in .* was started with --weight-decay 0.25, not 0.1/m);
  const minLr = await cli(["train", "--resume", "--out", dir, "--min-lr", "0.002"]);
  assert.equal(minLr.code, 2);
  assert.match(minLr.stderr, /^mamba-ts: error: --resume: the run in .* was started with --min-lr 0.001, not 0.002/m);
});

test("train --state-passing --eval-lengths: recorded in metrics.json and the report, checked on resume", { timeout: 600_000 }, async () => {
  const dir = path.join(await fs.mkdtemp(path.join(os.tmpdir(), "mamba-ts-cli-train-")), "run");
  const r = await cli(["train", "--task", "induction-heads", "--out", dir, "--steps", "4", "--state-passing",
    "--eval-lengths", "24,64", ...SMALL]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /step 2: held-out accuracy at length 24: \d\.\d{4}, 64: \d\.\d{4}/);
  const m = JSON.parse(await fs.readFile(path.join(dir, "metrics.json"), "utf8"));
  assert.equal(m.statePassing, true);
  assert.deepEqual(m.lengthEvals.map((e: { step: number; seqLen: number }) => [e.step, e.seqLen]), [[2, 24], [2, 64], [4, 24], [4, 64]]);
  for (const e of m.lengthEvals) assert.equal(e.scored, 16);
  assert.match(await fs.readFile(path.join(dir, "report.html"), "utf8"), /heldout_accuracy_L64/);
  const conflict = await cli(["train", "--resume", "--out", dir, "--eval-lengths", "24"]);
  assert.equal(conflict.code, 2);
  assert.match(conflict.stderr, /was started with --eval-lengths 24,64, not 24/);
});

test("train --keep-best: the best model at a length is kept in OUT/best, loadable by eval, checked on resume", { timeout: 600_000 }, async () => {
  const dir = path.join(await fs.mkdtemp(path.join(os.tmpdir(), "mamba-ts-cli-train-")), "run");
  const r = await cli(["train", "--task", "induction-heads", "--out", dir, "--steps", "6", "--eval-lengths", "24,64",
    "--eval-sequences", "5", "--keep-best", "64", ...SMALL]);
  assert.equal(r.code, 0, r.stderr);
  const m = JSON.parse(await fs.readFile(path.join(dir, "metrics.json"), "utf8"));
  assert.equal(m.lengthEvalSequences, 5);
  for (const e of m.lengthEvals) assert.equal(e.scored, 5, "one scored position a sequence, 5 sequences");
  // the best is the highest accuracy at 64, the later step on ties
  const at64 = (m.lengthEvals as { step: number; seqLen: number; accuracy: number }[]).filter((e) => e.seqLen === 64);
  const top = Math.max(...at64.map((e) => e.accuracy));
  const want = at64.filter((e) => e.accuracy === top).at(-1)!;
  assert.equal(m.best.step, want.step);
  assert.equal(m.best.accuracy, want.accuracy);
  const folder = (await fs.readFile(path.join(dir, "best", "latest"), "utf8")).trim();
  assert.equal(folder, `checkpoint-${want.step}`);
  const best = JSON.parse(await fs.readFile(path.join(dir, "best", folder, "best.json"), "utf8"));
  assert.equal(best.step, want.step);
  assert.equal(best.seqLen, 64);
  const ev = await cli(["eval", "--task", "induction-heads", "--model", path.join(dir, "best"), "--seq-len", "64", "--batches", "1"]);
  assert.equal(ev.code, 0, ev.stderr);
  assert.match(ev.stdout, /^accuracy: \d\.\d{4} \(induction-heads, seq-len 64/);
  if (want.step === 6) { // the final checkpoint is kept too: the same weights
    assert.deepEqual(await fs.readFile(path.join(dir, "best", folder, "model.safetensors")),
      await fs.readFile(path.join(dir, "checkpoint-6", "model.safetensors")));
  }
  const conflict = await cli(["train", "--resume", "--out", dir, "--keep-best", "24"]);
  assert.equal(conflict.code, 2);
  assert.match(conflict.stderr, /was started with --keep-best 64, not 24/);
});

test("train: bad options give one error line and exit code 2", { timeout: 600_000 }, async () => {
  const cases: [string[], RegExp][] = [
    [["train", "--task", "copying", "--out", "x"], /argument 'copying' is invalid/],
    [["train", "--task", "induction-heads", "--out", "x", "--mixer", "s4"], /argument 's4' is invalid/],
    [["train", "--task", "induction-heads", "--out", "x", "--steps", "-1"], /must be an integer >= 1/],
    [["train", "--task", "induction-heads", "--out", "x", "--seed", "1.5"], /expected an integer/],
    [["train", "--task", "induction-heads"], /required option '--out <dir>' not specified/],
    [["train", "--out", path.join(os.tmpdir(), "mamba-ts-never")], /--task is required/],
    [["train", "--resume", "--out", path.join(os.tmpdir(), "mamba-ts-never")], /--resume: no checkpoint/],
    [["train", "--task", "induction-heads", "--out", "x", "--lr", "1e-3", "--min-lr", "2e-3"], /--min-lr 0.002 is above the peak learning rate 0.001/],
    [["train", "--task", "induction-heads", "--out", "x", "--steps", "5", "--warmup-steps", "6"], /--warmup-steps 6 is more than the run's 5 steps/],
    [["eval", "--task", "induction-heads"], /required option '-m, --model <dir>' not specified/],
    [["train", "--task", "induction-heads", "--out", "x", "--state-passing", "--state-noise", "1"], /--state-passing and --state-noise are exclusive/],
    [["train", "--task", "induction-heads", "--out", "x", "--eval-lengths", "64", "--keep-best", "32"], /--keep-best 32 must be one of --eval-lengths \(64\)/],
    [["train", "--task", "induction-heads", "--out", "x", "--keep-best", "32"], /--keep-best 32 must be one of --eval-lengths \(not given\)/],
    [["train", "--task", "induction-heads", "--out", "x", "--eval-sequences", "8"], /--eval-sequences sets the sequences of --eval-lengths/],
    [["train", "--task", "induction-heads", "--out", "x", "--eval-lengths", "64", "--eval-sequences", "0"], /must be an integer >= 1/],
    [["train", "--task", "induction-heads", "--out", "x", "--eval-lengths", "64,1"], /must be comma-separated integers >= 2/],
    [["train", "--task", "text", "--data", "x", "--out", "x", "--eval-lengths", "64"], /--eval-lengths is for the synthetic tasks/],
  ];
  for (const [args, re] of cases) {
    const r = await cli(args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, /^mamba-ts: error: /);
    assert.match(lines[0]!, re);
  }
});

test("train stopped by Ctrl-C: a checkpoint, exit 130, and metrics.json with the run so far (no final accuracy)", { timeout: 600_000 }, async () => {
  const { spawn } = await import("node:child_process");
  const { cliArgs, killAfter } = await import("../helpers/cli.ts");
  const dir = path.join(await fs.mkdtemp(path.join(os.tmpdir(), "mamba-ts-cli-")), "run");
  const args = ["train", "--task", "induction-heads", "--steps", "100000", ...SMALL, "--eval-lengths", "24", "--out", dir];
  const r = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
    const child = spawn(process.execPath, cliArgs(args), { stdio: ["ignore", "pipe", "pipe"] });
    killAfter(child, 300_000, () => reject(new Error(`train did not stop within 300 s of starting; stderr:\n${stderr}`)));
    let stderr = "";
    let sent = false;
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      stderr += d;
      // after the second checkpoint (non-TTY progress lines), stop it
      if (!sent && (stderr.match(/checkpoint saved/g) ?? []).length >= 2) {
        sent = true;
        child.kill("SIGINT");
      }
    });
    child.stdout.resume();
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stderr }));
  });
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /^interrupted at step \d+; checkpoint saved in .*, continue with --resume$/m);
  assert.doesNotMatch(r.stderr, /^\s+at /m);
  const m = JSON.parse(await fs.readFile(path.join(dir, "metrics.json"), "utf8"));
  const state = JSON.parse(await fs.readFile(path.join((await latestCheckpoint(dir))!, "trainer.json"), "utf8"));
  assert.equal(m.complete, false);
  assert.equal(m.accuracy, null);
  assert.equal(m.steps, state.step, "the steps of the last checkpoint");
  assert.ok(m.steps >= 4 && m.steps < 100000);
  assert.deepEqual(m.lengthEvals, state.lengthHistory, "the length evaluations so far");
});
