/**
 * Where an induction-heads model keeps the token it must recall, and how much of it is left at the end.
 *
 *   node --import tsx scripts/induction-memory.ts MODEL_DIR [LENGTH=65536] [TRIGGER_AT=10] [--backend cpu|webgpu]
 *
 * Builds one sequence of LENGTH random tokens with the trigger at TRIGGER_AT and again at the end (as the task
 * does), runs the model with a SelectionRecorder attached, and prints the prediction, then per layer the five
 * channels that keep most of their state over the gap between the recalled token and the end: Δ at the token
 * written, ΣΔ over the gap (and after 1024, 4096, ... tokens of it) and log(retention) = −min|A| · ΣΔ, the
 * share of the written value the slowest of the channel's states still holds. docs/experiments-archive.md shows
 * what it found.
 */
import { loadModel, SelectionRecorder } from "../src/index.ts";

const args = process.argv.slice(2);
const backendAt = args.indexOf("--backend");
const backend = backendAt >= 0 ? args.splice(backendAt, 2)[1] : "cpu";
const [dir, lenText = "65536", atText = "10"] = args;
const L = Number(lenText), p = Number(atText);
if (!dir || !Number.isInteger(L) || !Number.isInteger(p) || p < 0 || p + 2 >= L || (backend !== "cpu" && backend !== "webgpu")) {
  console.error("usage: node --import tsx scripts/induction-memory.ts MODEL_DIR [LENGTH] [TRIGGER_AT] [--backend cpu|webgpu]");
  process.exit(2);
}

const model = await loadModel(dir, { backend: backend as "cpu" | "webgpu" });
const lm = model.lm;
const b = lm.backend;
let s = 12345;
const ids = new Int32Array(L).map(() => {
  s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
  return 1 + (s % (lm.config.vocabSize - 1)); // 0 is the trigger
});
ids[p] = 0;
ids[L - 1] = 0;
const rec = await SelectionRecorder.attach(lm);
const h = lm.hidden(b.fromI32(ids, [L]), { batch: 1, seqLen: L }, null);
const lastRow = b.takeRows(h, [L - 1]);
const logits = await b.readF32(lm.logits(lastRow));
const pred = logits.indexOf(Math.max(...logits));
console.log(`length ${L}, trigger at ${p}: the token to recall is ${ids[p + 1]}, the model predicts ${pred}`);
const trace = await rec.trace();
const E = trace.channels;
for (let l = 0; l < trace.layers; l++) {
  const delta = trace.delta[l]!;
  const A = (await b.readF32(lm.weights.layers[l]!.mixer.A_log)).map((v) => Math.exp(v)); // |A|
  const N = A.length / E;
  const rows = Array.from({ length: E }, (_, e) => {
    let sum = 0;
    const marks: string[] = [];
    for (let t = p + 2, next = 1024; t < L - 1; t++) {
      sum += delta[t * E + e]!;
      if (t - p - 1 === next) {
        marks.push(`${next}: ${sum.toExponential(2)}`);
        next *= 4;
      }
    }
    const minA = Math.min(...A.subarray(e * N, (e + 1) * N));
    return { e, write: delta[(p + 1) * E + e]!, sum, minA, logKeep: -minA * sum, marks };
  }).sort((x, y) => y.logKeep - x.logKeep);
  console.log(`layer ${l}: the channels that keep most over the gap`);
  for (const r of rows.slice(0, 5)) {
    console.log(`  channel ${r.e}: Δ at the written token ${r.write.toExponential(2)}, ΣΔ over the gap ${r.sum.toExponential(2)}` +
      ` (after ${r.marks.join(", ") || "-"}), min|A| ${r.minA.toFixed(3)}, log retention ${r.logKeep.toFixed(2)}`);
  }
}
rec.detach();
await model.dispose();
