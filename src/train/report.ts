/**
 * A training run's report: DIR/report.html, one self-contained page (uPlot and its CSS inlined, no network) with
 * the loss and accuracy curves over steps, a chart for each other metric (learning rate, gradient norm, ...), and
 * a table of the last and best values. Written atomically (temp file + rename), so a reader never sees half a
 * report; calling it again after more steps replaces it.
 *
 *   await writeTrainingReport(runDir, history, { title: "selective copying, 2 layers" });
 *
 * history: one record per logged step, `{ step, loss, accuracy, ... }`. Metrics whose name contains "loss" share
 * the loss chart, those containing "acc" the accuracy chart; a record may omit a metric (an eval every N steps).
 * Non-finite values (a diverged loss) are left out of the curves and listed under the table.
 */
import { promises as fs } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { MambaError, check, checkKeys, optionKeys } from "../errors.ts";
import { writeFileAtomic } from "../io/safetensors.ts";

export interface MetricsRecord {
  step: number;
  [metric: string]: number | null | undefined;
}

export interface TrainingReportOptions {
  title?: string;
  /** shown above the charts: preset, sizes, seed, wall time, ... */
  details?: Record<string, string | number | boolean>;
}
const REPORT_OPTION_KEYS = optionKeys<TrainingReportOptions>({ title: true, details: true });

interface Chart {
  title: string;
  /** which way is better: down for losses, up for accuracies, neither for the rest */
  better: "lower" | "higher" | null;
  /** the y axis is a fraction shown in percent */
  percent: boolean;
  series: string[];
}

const require = createRequire(import.meta.url);
let uplotAssets: Promise<{ js: string; css: string }> | null = null;

function loadUplot(): Promise<{ js: string; css: string }> {
  uplotAssets ??= Promise.all([
    fs.readFile(require.resolve("uplot/dist/uPlot.iife.min.js"), "utf8"),
    fs.readFile(require.resolve("uplot/dist/uPlot.min.css"), "utf8"),
  ]).then(([js, css]) => ({ js, css }));
  return uplotAssets;
}

/** Metric names in first-seen order, and the charts they go to. */
function planCharts(history: MetricsRecord[]): Chart[] {
  const names: string[] = [];
  for (const r of history) for (const k of Object.keys(r)) if (k !== "step" && !names.includes(k)) names.push(k);
  const loss = names.filter((n) => /loss/i.test(n));
  const acc = names.filter((n) => /acc/i.test(n) && !loss.includes(n));
  const charts: Chart[] = [];
  if (loss.length) charts.push({ title: "Loss", better: "lower", percent: false, series: loss });
  if (acc.length) charts.push({ title: "Accuracy", better: "higher", percent: true, series: acc });
  for (const n of names) {
    if (loss.includes(n) || acc.includes(n)) continue;
    charts.push({ title: n, better: null, percent: false, series: [n] });
  }
  return charts;
}

function checkHistory(history: unknown): asserts history is MetricsRecord[] {
  check(Array.isArray(history), "writeTrainingReport: the history must be an array of { step, ...metrics } records");
  history.forEach((r, i) => {
    check(r !== null && typeof r === "object" && !Array.isArray(r), `writeTrainingReport: record ${i} is not an object`);
    const rec = r as Record<string, unknown>;
    check(typeof rec.step === "number" && Number.isFinite(rec.step), `writeTrainingReport: record ${i} has no finite 'step'`);
    for (const [k, v] of Object.entries(rec)) {
      check(v === undefined || v === null || typeof v === "number",
        `writeTrainingReport: record ${i}: '${k}' must be a number, got ${JSON.stringify(v)}`);
    }
  });
}

const escapeHtml = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
/** JSON safe inside a <script> element */
const scriptJson = (v: unknown) => JSON.stringify(v).replace(/</g, "\\u003c");

function fmt(v: number, percent: boolean): string {
  if (percent) return `${(100 * v).toFixed(2)}%`;
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : v.toPrecision(5);
}

/** The report's HTML. */
export async function renderTrainingReport(history: MetricsRecord[], options: TrainingReportOptions = {}): Promise<string> {
  checkKeys("renderTrainingReport", options, REPORT_OPTION_KEYS);
  checkHistory(history);
  const rows = [...history].sort((a, b) => a.step - b.step);
  const charts = planCharts(rows);
  const steps = rows.map((r) => r.step);
  const nonFinite: string[] = [];
  const columns = new Map<string, (number | null)[]>();
  for (const c of charts) {
    for (const name of c.series) {
      columns.set(name, rows.map((r) => {
        const v = r[name];
        if (v === undefined || v === null) return null;
        if (!Number.isFinite(v)) { nonFinite.push(`${name} = ${v} at step ${r.step}`); return null; }
        return v;
      }));
    }
  }
  const summary = charts.flatMap((c) => c.series.map((name) => {
    const col = columns.get(name)!;
    let last: number | null = null, lastStep = 0, best: number | null = null, bestStep = 0;
    col.forEach((v, i) => {
      if (v === null) return;
      last = v; lastStep = steps[i]!;
      if (c.better && (best === null || (c.better === "lower" ? v < best : v > best))) { best = v; bestStep = steps[i]!; }
    });
    return { name, percent: c.percent, last, lastStep, best, bestStep, bestLabel: c.better === "lower" ? "lowest" : "highest" };
  }));
  const title = options.title ?? "Training run";
  const details = Object.entries(options.details ?? {});
  const { js, css } = await loadUplot();
  const data = { steps, charts, columns: Object.fromEntries(columns) };

  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)}</title>
<style>${css}</style>
<style>
  body { font-family: system-ui, "DejaVu Sans", sans-serif; color: #1d1f21; background: #fbfbfa; max-width: 1000px; margin: 0 auto; padding: 16px 20px 40px; }
  h1 { font-size: 22px; margin: 0 0 4px; }
  h2 { font-size: 16px; margin: 22px 0 6px; }
  .muted { color: #6a6f75; font-size: 13px; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; font-size: 14px; margin: 10px 0; }
  dt { color: #6a6f75; }
  table { border-collapse: collapse; font-size: 14px; margin: 8px 0; }
  th, td { padding: 4px 12px; border-bottom: 1px solid #dcdde0; text-align: right; }
  th:first-child, td:first-child { text-align: left; }
  .chart { background: #fff; border: 1px solid #dcdde0; border-radius: 6px; padding: 6px; }
  .warn { color: #a04000; font-size: 14px; }
</style>
</head>
<body>
<h1>${escapeHtml(title)}</h1>
<div class="muted">${rows.length} logged step${rows.length === 1 ? "" : "s"}${rows.length ? `, steps ${steps[0]} to ${steps[steps.length - 1]}` : ""} · written ${escapeHtml(new Date().toISOString())}</div>
${details.length ? `<dl>${details.map(([k, v]) => `<dt>${escapeHtml(k)}</dt><dd>${escapeHtml(String(v))}</dd>`).join("")}</dl>` : ""}
${summary.length ? `<table>
<tr><th>metric</th><th>last</th><th>at step</th><th>best</th><th>at step</th></tr>
${summary.map((s) => `<tr><td>${escapeHtml(s.name)}</td><td>${s.last === null ? "–" : fmt(s.last, s.percent)}</td><td>${s.last === null ? "" : s.lastStep}</td>` +
    `<td>${s.best === null ? "–" : `${fmt(s.best, s.percent)} <span class="muted">(${s.bestLabel})</span>`}</td><td>${s.best === null ? "" : s.bestStep}</td></tr>`).join("\n")}
</table>` : `<p class="muted">No metrics logged yet.</p>`}
${nonFinite.length ? `<p class="warn">Not plotted (not finite): ${escapeHtml(nonFinite.slice(0, 20).join("; "))}${nonFinite.length > 20 ? ` and ${nonFinite.length - 20} more` : ""}</p>` : ""}
<div id="charts"></div>
<script>${js}</script>
<script>
const data = ${scriptJson(data)};
const colours = ["#2f6f9f", "#d9822b", "#3a9a5b", "#b03a48", "#7a5aa6", "#8c6d3f"];
const root = document.getElementById("charts");
for (const chart of data.charts) {
  const h = document.createElement("h2");
  h.textContent = chart.title;
  const box = document.createElement("div");
  box.className = "chart";
  root.append(h, box);
  const fmt = (v) => v == null ? "–" : chart.percent ? (100 * v).toFixed(1) + "%" : Math.abs(v) < 1e-3 && v !== 0 ? v.toExponential(2) : +v.toPrecision(4) + "";
  const opts = {
    width: Math.max(320, root.clientWidth - 14),
    height: 260,
    scales: { x: { time: false } },
    axes: [{ label: "step" }, { values: (u, ticks) => ticks.map(fmt), size: 60 }],
    series: [{ label: "step" }, ...chart.series.map((name, i) => ({
      label: name, stroke: colours[i % colours.length], width: 1.5, spanGaps: true,
      value: (u, v) => fmt(v), points: { show: data.steps.length < 60 },
    }))],
  };
  new uPlot(opts, [data.steps, ...chart.series.map((name) => data.columns[name])], box);
}
document.body.dataset.charts = String(data.charts.length);
</script>
</body>
</html>
`;
}

/** Writes DIR/report.html atomically and returns its path. */
export async function writeTrainingReport(dir: string, metricsHistory: MetricsRecord[], options: TrainingReportOptions = {}): Promise<string> {
  const html = await renderTrainingReport(metricsHistory, options);
  try {
    await fs.mkdir(dir, { recursive: true });
  } catch (err) {
    throw new MambaError(`cannot create ${dir}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  const file = path.join(dir, "report.html");
  await writeFileAtomic(file, html);
  return file;
}
