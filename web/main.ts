/**
 * The demo page: loads a model (the folder the demo server names in demo.json, `?model=<url>`, or a folder the
 * user picks), streams a continuation of the prompt on WebGPU (or the CPU), and shows for every token and layer
 * how large its Δ was and how much of the SSM state survived it, recorded by a SelectionRecorder.
 *
 * URL parameters: model=<base url of a model folder>, backend=auto|webgpu|cpu.
 * For tests, the page reports itself in <body data-state> (loading, ready, generating, done, error) and in
 * window.mambaDemo.
 */
import {
  type BackendName, type MambaModel, SelectionRecorder, type SelectionTrace,
  TextStreamer, type Tokenizer, byteLevelTokenizerJson, createModel, describeBackend, filesFromPicked,
  loadModelFromFiles, tokenizerFromJson,
} from "../src/browser.ts";
import { FAMILY_NAMES } from "../src/config.ts";
import { FALLBACK_SEED, FALLBACK_SIZES } from "./fallback.ts";
import { type HeatmapData, drawHeatmap, tokenLabel } from "./heatmap.ts";

interface DemoInfo {
  /** base URL of the model folder the server serves, or null when it has none */
  model: { url: string; name: string } | null;
  /** why there is no model, when there is none */
  message?: string;
}

interface Session {
  model: MambaModel;
  tokenizer: Tokenizer;
  name: string;
  /** the backend in use and why, in words */
  backendNote: string;
}

interface Run {
  promptIds: number[];
  newIds: number[];
  /** the text each token added (a byte of a longer character adds "") */
  pieces: string[];
  trace: SelectionTrace | null;
}

/** What tests read. */
interface DemoState {
  state: string;
  backend: string | null;
  /** the engine in use, as describeBackend says it (what the status line shows), e.g. "cpu (wasm simd relaxed, 2 threads)" */
  engine: string | null;
  model: string | null;
  /** the model family (config.family): "mamba", "mamba2" or "falcon-mamba" */
  family: string | null;
  /** what one Δ of a layer belongs to: a channel (Mamba-1, d_inner of them) or a head (Mamba-2, H of them) */
  deltaUnit: "channel" | "head" | null;
  /** how many Δ a layer has per token (d_inner, or H for Mamba-2); the one-channel input's maximum is this - 1 */
  deltaCount: number;
  fallback: boolean;
  promptIds: number[];
  newIds: number[];
  tokensPerSecond: number | null;
  traceTokens: number;
  /** Δ per token and layer as recorded: how many values (channels or heads) each holds */
  traceChannels: number;
  /** per layer, per token read: the share of the state kept (what the lower map shows) */
  keep: number[][];
  error: string | null;
}

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const el = {
  status: $("status"), modelInfo: $("model-info"), notice: $("notice"), folder: $<HTMLInputElement>("folder"),
  prompt: $<HTMLTextAreaElement>("prompt"), maxNew: $<HTMLInputElement>("max-new"),
  temperature: $<HTMLInputElement>("temperature"), seed: $<HTMLInputElement>("seed"),
  record: $<HTMLInputElement>("record"), generate: $<HTMLButtonElement>("generate"), stop: $<HTMLButtonElement>("stop"),
  stats: $("stats"), text: $("text"), maps: $("maps"), metric: $<HTMLSelectElement>("metric"),
  layer: $<HTMLSelectElement>("layer"), channelMode: $<HTMLSelectElement>("channel-mode"),
  channel: $<HTMLInputElement>("channel"), channelWord: $("channel-word"), channelMean: $<HTMLOptionElement>("channel-mean"),
  channelOne: $<HTMLOptionElement>("channel-one"), deltaTitle: $("delta-title"), scale: $<HTMLSelectElement>("scale"), deltaMap: $<HTMLCanvasElement>("delta-map"),
  keepMap: $<HTMLCanvasElement>("keep-map"),
};

const params = new URLSearchParams(location.search);
const backendPref = (params.get("backend") ?? "auto") as BackendName;
const demo: DemoState = {
  state: "loading", backend: null, engine: null, model: null, family: null, deltaUnit: null, deltaCount: 0,
  fallback: false, promptIds: [], newIds: [], tokensPerSecond: null, traceTokens: 0, traceChannels: 0, keep: [], error: null,
};
(globalThis as { mambaDemo?: DemoState }).mambaDemo = demo;

let session: Session | null = null;
let run: Run | null = null;
let stopRequested = false;

function setState(state: string): void {
  demo.state = state;
  document.body.dataset.state = state;
  const busy = state === "loading" || state === "generating";
  el.generate.disabled = busy || session === null;
  el.stop.disabled = state !== "generating";
  el.folder.disabled = busy;
}

function notice(text: string | null, kind: "info" | "error" = "info"): void {
  el.notice.hidden = text === null;
  el.notice.textContent = text ?? "";
  el.notice.className = kind === "error" ? "error" : "";
}

function fail(err: unknown): void {
  const message = err instanceof Error ? err.message : String(err);
  demo.error = message;
  const onGpu = session?.model.backend.name === "webgpu" || backendPref === "webgpu";
  notice(onGpu ? `${message} (add ?backend=cpu to the address to run on the CPU)` : message, "error");
  console.error(err);
  setState("error");
}

function showSession(s: Session): void {
  const c = s.model.config;
  // Mamba-2's Δ is one scalar per head ([T, H]); Mamba-1's (and Falcon-Mamba's) one per inner channel ([T, E])
  const heads = c.family === "mamba2" ? c.mamba2!.numHeads : null;
  const unit = heads === null ? "channel" : "head";
  const count = heads ?? c.intermediateSize;
  el.modelInfo.textContent = `${s.name} · ${FAMILY_NAMES[c.family]} · ${c.numLayers} layers · d_model ${c.hiddenSize}` +
    ` · d_inner ${c.intermediateSize}` + (heads === null ? "" : ` · ${heads} heads of ${c.mamba2!.headDim}`) +
    ` · d_state ${c.stateSize} · vocab ${c.vocabSize} · weights ${s.model.info.dtype}`;
  const engine = describeBackend(s.model.backend);
  el.status.innerHTML = "";
  const b = document.createElement("span");
  b.className = "backend";
  b.textContent = engine;
  el.status.append("backend: ", b, ` — ${s.backendNote}`);
  el.layer.replaceChildren(new Option("mean over layers", "mean"),
    ...Array.from({ length: c.numLayers }, (_, i) => new Option(`layer ${i}`, String(i))));
  el.channelWord.textContent = unit;
  el.channelMean.textContent = `mean over ${unit}s`;
  el.channelOne.textContent = `one ${unit}:`;
  el.channel.max = String(count - 1);
  el.channel.title = `${unit} 0 to ${count - 1}`;
  if (Number(el.channel.value) > count - 1) el.channel.value = String(count - 1);
  el.deltaTitle.textContent = heads === null ? "Δ per token and layer" : "Δ per token and layer (one Δ per head)";
  demo.backend = s.model.backend.name;
  demo.engine = engine;
  demo.model = s.name;
  demo.family = c.family;
  demo.deltaUnit = unit;
  demo.deltaCount = count;
}

/** The backend in use, said plainly: which one, and why not WebGPU when it is the CPU. */
function backendNote(model: MambaModel, notices: string[]): string {
  if (model.backend.name === "webgpu") return "running on the GPU through navigator.gpu";
  const why = notices
    .map((n) => n.replace(/^backend: cpu\s*/, "").replace(/^\((.*)\)$/, "$1").replace(/^(no WebGPU: )?(WebGPU: )?/, ""))
    .find((n) => n.length > 0);
  if (backendPref === "cpu") return "the CPU was asked for (?backend=cpu)";
  return `WebGPU is not in use${why ? `: ${why}` : ""}; running on the CPU`;
}

async function replaceSession(load: (onNotice: (m: string) => void) => Promise<Omit<Session, "backendNote">>): Promise<void> {
  setState("loading");
  const notices: string[] = [];
  const next = await load((m) => notices.push(m));
  const old = session;
  session = { ...next, backendNote: backendNote(next.model, notices) };
  await old?.model.dispose();
  showSession(session);
  setState("ready");
}

async function openUrl(url: string, name: string): Promise<void> {
  el.status.textContent = `loading ${name}…`;
  await replaceSession(async (onNotice) => {
    const { model, tokenizer } = await loadModelFromFiles(url, {
      backend: backendPref, onNotice,
      onProgress: (p) => {
        const mb = (n: number) => (n / 1e6).toFixed(1);
        el.status.textContent = `loading ${p.file}: ${mb(p.loaded)}${p.total ? ` / ${mb(p.total)}` : ""} MB`;
      },
    });
    if (!tokenizer) throw new Error(`${name} has no tokenizer.json: the demo needs it to read the prompt`);
    return { model, tokenizer, name };
  });
  demo.fallback = false;
}

async function openPicked(files: FileList): Promise<void> {
  const picked = filesFromPicked(Array.from(files));
  const folder = (files[0] as File & { webkitRelativePath?: string } | undefined)?.webkitRelativePath?.split("/")[0] ?? "picked folder";
  await replaceSession(async (onNotice) => {
    const { model, tokenizer } = await loadModelFromFiles(picked, { backend: backendPref, onNotice });
    if (!tokenizer) throw new Error(`the folder ${folder} has no tokenizer.json: the demo needs it to read the prompt`);
    return { model, tokenizer, name: folder };
  });
  demo.fallback = false;
  notice(null);
}

/** A small untrained model and the byte-level tokenizer: for when no model folder is installed. */
async function openFallback(why: string): Promise<void> {
  await replaceSession(async (onNotice) => {
    const model = await createModel(FALLBACK_SIZES, { seed: FALLBACK_SEED, backend: backendPref, onNotice });
    return { model, tokenizer: tokenizerFromJson(byteLevelTokenizerJson()), name: "untrained 4-layer model (random weights)" };
  });
  demo.fallback = true;
  notice(`${why} Running a small untrained model instead (random weights, byte-level tokenizer): its text is noise, ` +
    "but Δ and the maps below are computed for real. Open a model folder (config.json, model.safetensors, " +
    "tokenizer.json) to load another.");
}

const yieldToBrowser = () => new Promise<void>((resolve) => {
  const ch = new MessageChannel();
  ch.port1.onmessage = () => resolve();
  ch.port2.postMessage(null);
});

function readInt(input: HTMLInputElement, name: string, min: number): number {
  const v = Number(input.value);
  if (!Number.isInteger(v) || v < min) throw new Error(`${name} must be an integer >= ${min}`);
  return v;
}

async function generate(): Promise<void> {
  const s = session!;
  const maxNewTokens = readInt(el.maxNew, "new tokens", 0);
  const seed = readInt(el.seed, "seed", 0);
  const temperature = Number(el.temperature.value);
  if (!(temperature >= 0)) throw new Error("temperature must be a number >= 0");
  const prompt = s.tokenizer.encode(el.prompt.value);
  if (prompt.length === 0 && s.model.config.bosTokenId === null) throw new Error("the prompt is empty");
  for (const id of prompt) {
    if (id >= s.model.config.vocabSize) {
      throw new Error(`the tokenizer gave id ${id}, outside the model's vocabulary (${s.model.config.vocabSize}): they do not belong together`);
    }
  }
  notice(demo.fallback ? el.notice.textContent : null);
  demo.error = null;
  setState("generating");
  stopRequested = false;
  const streamer = new TextStreamer(s.tokenizer);
  run = { promptIds: Array.from(prompt), newIds: [], pieces: Array.from(prompt, (id) => streamer.push(id)), trace: null };
  demo.promptIds = run.promptIds;
  demo.newIds = run.newIds;
  renderText();
  const recorder = el.record.checked ? await SelectionRecorder.attach(s.model.lm) : null;
  const start = performance.now();
  let firstAt = 0, lastDraw = start;
  try {
    for await (const id of s.model.stream(prompt, { maxNewTokens, temperature, seed })) {
      const now = performance.now();
      if (run.newIds.length === 0) firstAt = now;
      run.newIds.push(id);
      run.pieces.push(streamer.push(id));
      appendToken(run.promptIds.length + run.newIds.length - 1);
      showStats(start, firstAt, now);
      if (recorder && now - lastDraw > 250) {
        run.trace = await recorder.trace();
        renderMaps();
        lastDraw = performance.now();
      }
      if (stopRequested) break;
      await yieldToBrowser();
    }
    showStats(start, firstAt, performance.now());
    if (recorder) run.trace = await recorder.trace();
  } finally {
    recorder?.detach();
  }
  demo.traceTokens = run.trace?.tokens ?? 0;
  demo.traceChannels = run.trace?.channels ?? 0;
  demo.keep = run.trace?.keep.map((k) => Array.from(k)) ?? [];
  renderText();
  renderMaps();
  setState("done");
}

function showStats(start: number, firstAt: number, now: number): void {
  const n = run!.newIds.length;
  const prefillMs = firstAt > 0 ? firstAt - start : now - start;
  const rate = n > 1 ? (n - 1) / ((now - firstAt) / 1000) : null;
  demo.tokensPerSecond = rate;
  el.stats.textContent = `${run!.promptIds.length} prompt tokens · first token after ${prefillMs.toFixed(0)} ms · ` +
    `${n} new token${n === 1 ? "" : "s"}` + (rate !== null ? ` · ${rate.toFixed(1)} tokens/s` : "") +
    ` · ${describeBackend(session!.model.backend)}` + (el.record.checked ? " · recording Δ" : "");
}

// ---- what the maps and the text colouring show ----

/** Per token, the value of one measure for one layer (or the mean over layers); NaN where not recorded. */
function tokenValues(metric: "delta" | "write", layer: number | "mean"): Float64Array {
  const total = run!.promptIds.length + run!.newIds.length;
  const out = new Float64Array(total).fill(NaN);
  const tr = run!.trace;
  if (!tr || tr.tokens === 0) return out;
  const layers = layer === "mean" ? Array.from({ length: tr.layers }, (_, i) => i) : [layer];
  const rows = layers.map((l) => layerValues(metric, l));
  for (let t = 0; t < total; t++) out[t] = rows.reduce((a, r) => a + r[t]!, 0) / rows.length;
  return out;
}

function layerValues(metric: "delta" | "write", l: number): Float64Array {
  const tr = run!.trace!;
  const total = run!.promptIds.length + run!.newIds.length;
  const E = tr.channels;
  const one = el.channelMode.value === "one";
  const c = Math.min(E - 1, Math.max(0, Number(el.channel.value) | 0));
  const out = new Float64Array(total).fill(NaN);
  const n = Math.min(total, tr.tokens);
  for (let t = 0; t < n; t++) {
    if (metric === "delta") {
      if (one) out[t] = tr.delta[l]![t * E + c]!;
      else {
        let s = 0;
        for (let e = 0; e < E; e++) s += tr.delta[l]![t * E + e]!;
        out[t] = s / E;
      }
    } else {
      out[t] = 1 - (one ? tr.keepChannel[l]![t * E + c]! : tr.keep[l]![t]!);
    }
  }
  return out;
}

function renderText(): void {
  const r = run!;
  el.text.replaceChildren();
  for (let i = 0; i < r.pieces.length; i++) el.text.append(tokenSpan(i));
  colourText();
}

function tokenSpan(i: number): HTMLSpanElement {
  const r = run!;
  const span = document.createElement("span");
  span.textContent = r.pieces[i]!;
  if (i >= r.promptIds.length) span.className = "gen";
  return span;
}

function appendToken(i: number): void {
  el.text.append(tokenSpan(i));
}

function colourText(): void {
  const r = run;
  if (!r) return;
  const metric = el.metric.value as "delta" | "write";
  const layer = el.layer.value === "mean" ? "mean" : Number(el.layer.value);
  const vals = tokenValues(metric, layer);
  const scaled = Array.from(vals, (v) => (metric === "delta" ? Math.log10(v) : v));
  const finite = scaled.filter(Number.isFinite);
  const lo = Math.min(...finite), hi = Math.max(...finite);
  const spans = el.text.children;
  for (let i = 0; i < spans.length; i++) {
    const span = spans[i] as HTMLSpanElement;
    const v = scaled[i]!;
    const id = i < r.promptIds.length ? r.promptIds[i]! : r.newIds[i - r.promptIds.length]!;
    if (!Number.isFinite(v)) {
      span.style.background = "";
      span.classList.toggle("unread", r.trace !== null);
      span.title = `token ${id}: not read by the model yet (the last token is only sampled)`;
      continue;
    }
    const t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
    span.classList.remove("unread");
    span.style.background = `rgba(235, 120, 30, ${(0.06 + 0.8 * t).toFixed(3)})`;
    span.title = `token ${id}: ${metric === "delta" ? `Δ = ${vals[i]!.toPrecision(3)}` : `writes ${(100 * vals[i]!).toFixed(1)}% of the state`}`;
  }
}

function renderMaps(): void {
  const r = run;
  if (!r || !r.trace || r.trace.tokens === 0) {
    el.maps.hidden = !r?.trace;
    return;
  }
  el.maps.hidden = false;
  const tr = r.trace;
  const ids = [...r.promptIds, ...r.newIds];
  const colLabels = ids.map((id) => tokenLabel(session!.tokenizer.decode([id])));
  const rowLabels = Array.from({ length: tr.layers }, (_, l) => `layer ${l}`);
  const width = el.maps.clientWidth || 1000;
  const perRow = el.scale.value === "row";
  const delta: HeatmapData = {
    rowLabels, colLabels, log: true, format: (v) => v.toPrecision(2), perRow,
    values: rowLabels.map((_, l) => layerValues("delta", l)),
  };
  const kept: HeatmapData = {
    rowLabels, colLabels, log: false, format: (v) => `${(100 * v).toFixed(1)}%`, perRow,
    values: rowLabels.map((_, l) => layerValues("write", l).map((w) => 1 - w)),
  };
  drawHeatmap(el.deltaMap, delta, width);
  drawHeatmap(el.keepMap, kept, width);
  colourText();
}

// ---- wiring ----

el.generate.addEventListener("click", () => void generate().catch(fail));
el.stop.addEventListener("click", () => { stopRequested = true; });
el.folder.addEventListener("change", () => {
  if (el.folder.files && el.folder.files.length > 0) void openPicked(el.folder.files).catch(fail);
});
for (const input of [el.metric, el.layer, el.channelMode, el.channel, el.scale]) {
  input.addEventListener("change", () => {
    el.channel.disabled = el.channelMode.value !== "one";
    if (run) renderMaps();
  });
}
window.addEventListener("resize", () => { if (run?.trace) renderMaps(); });

async function startPage(): Promise<void> {
  const url = params.get("model");
  if (url) return openUrl(url, url);
  let info: DemoInfo | null = null;
  try {
    const res = await fetch("demo.json");
    if (res.ok) info = await res.json() as DemoInfo;
  } catch {
    info = null;
  }
  if (info?.model) return openUrl(info.model.url, info.model.name);
  return openFallback(info?.message ?? "No model folder was given (add ?model=<url of a model folder> to the address).");
}

void startPage().catch(fail);
