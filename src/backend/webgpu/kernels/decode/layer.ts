/**
 * Fused decode, a whole layer in one dispatch (WebGpuTuning.decodePersistent): kernel 1 (./mixer-in.ts), kernel 2
 * (./mixer-scan.ts) and out_proj run as three phases of one kernel, whose workgroups wait for the phase before
 * theirs through counters in memory instead of at the end of a dispatch. On the H100 a dependent dispatch costs
 * 2 – 10 us before any work; a wait here about 1 us (an atomic add and a few polls of the device's cache).
 *
 * The dispatch has a workgroup per item of every phase: kernel 1's channel groups, then the scan's, then
 * out_proj's row blocks. A workgroup takes a ticket (an atomic counter) when it starts, and the ticket, not its
 * workgroup id, says which item it does; items of a later phase wait until the earlier phase's count of finished
 * items is complete. So a workgroup only ever waits for items that workgroups already running have taken, and
 * the dispatch finishes however many of its workgroups the GPU runs at once, in whatever order it starts them
 * (the tickets hand out the items in order). Meanwhile the waiting workgroups have issued their weights' loads
 * (out_proj's rows; the scan's states and dt_proj rows), so that those overlap the phase before. The last
 * workgroup to finish sets the counters back to zero for the next dispatch.
 *
 * This needs a workgroup that has started to keep running while others spin, which GPUs from NVIDIA, AMD and
 * Intel do and WebGPU does not promise. So a wait polls a bounded number of times and then sets a flag and goes on;
 * the backend reads the flag with each step's ids and fails the generation with a clear error when it is set (the
 * step's results are then wrong).
 *
 * Values pass between workgroups through atomics (xz, x_proj's fixed-point totals, y): WGSL's plain loads may be
 * served from a workgroup's own cache, which another workgroup's stores in the same dispatch do not update (a
 * probe on the H100 read stale values through plain loads, none through atomics). h, written in the last phase, is
 * read by the next dispatch only.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { type ParamType, type WgslParts, composedBindings, composedParams, composedWgsl, paramBlock } from "../compose.ts";
import { type MixerInArgs, type MixerInShape, mixerInGroups, mixerInParams, mixerInParts, mixerInShape } from "./mixer-in.ts";
import { type MixerScanArgs, type MixerScanShape, mixerScanGroups, mixerScanParams, mixerScanParts, mixerScanShape } from "./mixer-scan.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type WeightStorage, weight4Binding, weight4Reader } from "../weights.ts";

/** Polls of a wait before it gives up and flags the dispatch: seconds on a GPU, where a phase takes
 *  microseconds; on a CPU's software driver a poll takes nanoseconds and a phase milliseconds (more so where its
 *  threads outnumber the cores, and the waiting ones spin), so it polls longer there. */
export const layerSpin = (gpu: Gpu) => (gpu.softwareDriver ? 2 ** 28 : 2 ** 22);

/** Words of the counters' buffer: tickets, kernel 1's finished items, the scan's, all finished; then the flag a
 *  wait that gave up sets (at LAYER_FLAG_BYTE). */
export const LAYER_CTL_WORDS = 5;
export const LAYER_FLAG_BYTE = 16;

/** The phases' counters as a part of a layer's kernel (composed last: ctl is its last binding): a wait polls at
 *  most p.spin times, then sets the flag and goes on. */
export const layerSyncParts: WgslParts = {
  consts: [],
  params: [["spin", "u32"]],
  bindings: [["ctl", "var<storage, read_write> ctl: array<atomic<u32>>"]], // the phases' counters and the flag
  decls: /* wgsl */ `
// waits until counter word reaches goal (the phase before is finished), then its stores are seen by loads
// through atomics
fn waitFor(t: u32, word: u32, goal: u32) {
  if (t == 0u) {
    var n = 0u;
    loop {
      if (atomicLoad(&ctl[word]) >= goal) { break; }
      n++;
      if (n >= p.spin) { atomicOr(&ctl[4], 1u); break; }
    }
  }
  storageBarrier();
}
// counts this workgroup's item of a phase finished, after all its threads' stores
fn finished(t: u32, word: u32) {
  storageBarrier();
  if (t == 0u) { atomicAdd(&ctl[word], 1u); }
}`,
  fn: "",
};

/** A layer kernel's entry point: a workgroup takes a ticket k, the item it does among `items` in the phases' order,
 *  runs `body` (with t, its thread, and k), and the last workgroup to finish sets the counters back for the next
 *  dispatch (which starts after this one ends). */
export function layerEntryWgsl(items: string, body: string): string {
  return /* wgsl */ `
const ITEMS = ${items};
var<workgroup> ticket: u32;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>) {
  let t = lid.x;
  if (t == 0u) { ticket = atomicAdd(&ctl[0], 1u); }
  let k = workgroupUniformLoad(&ticket);
${body}
  // the last workgroup to finish sets the counters back for the next dispatch (which starts after this one ends)
  storageBarrier();
  if (t == 0u && atomicAdd(&ctl[3], 1u) == ITEMS - 1u) {
    for (var i = 0u; i < 4u; i++) { atomicStore(&ctl[i], 0u); }
  }
}`;
}

/** out_proj's rows an item at batch RB. */
const outRows = (RB: number) => Math.max(1, Math.floor(8 / RB));

/**
 * out_proj as a phase: an item is ORW rows of W [D, E] (ORW · RB ≤ 8), every thread a slice of the columns of all
 * of them (so y is loaded once a workgroup), the 256 partial sums of each (row, batch row) added in workgroup
 * memory. `outLoad(t, item)` issues the weights (they need nothing computed); `outApply(t, item, w)` reads y and
 * writes h [B, D] (+ bias).
 */
function outProjParts(D: number, E: number, RB: number, ws: WeightStorage): WgslParts {
  const ORW = outRows(RB);
  const E4 = E / 4;
  const OV = Math.ceil(E4 / 256);
  const consts: [string, string][] = [
    ["WG", "256u"],
    ["D", `${D}u`],
    ["E", `${E}u`],
    ["ORB", `${RB}u`], // batch rows
    ["ORW", `${ORW}u`], // rows of W an item
    ["OE4", `${E4}u`],
    ["OV", `${OV}u`], // vec4s of a row a thread
    ["OUT_ITEMS", `${Math.ceil(D / ORW)}u`],
  ];
  const params: [string, ParamType][] = [["hasOutBias", "u32"]];
  const bindings: [string, string][] = [
    ["y", "var<storage, read_write> y: array<atomic<u32>>"], // [B, E]
    ["wOut", `var<storage, read> wOut: array<${weight4Binding(ws)}>`], // [D, E]
    ["bOut", "var<storage, read> bOut: array<f32>"], // [D] (unread without hasOutBias)
    ["h", "var<storage, read_write> h: array<f32>"], // [B, D] out
  ];
  const decls = /* wgsl */ `
var<workgroup> ored: array<f32, ${256 * 8}>; // [ORW · ORB sums, WG]
struct OutW { w: array<array<vec4<f32>, OV>, ORW> }
${weight4Reader(ws, "wo4", "wOut")}
fn yLoad4(i: u32) -> vec4<f32> {
  return bitcast<vec4<f32>>(vec4<u32>(atomicLoad(&y[4u * i]), atomicLoad(&y[4u * i + 1u]), atomicLoad(&y[4u * i + 2u]),
    atomicLoad(&y[4u * i + 3u])));
}

`;
  const fn = /* wgsl */ `
fn outLoad(t: u32, item: u32) -> OutW {
  var w: OutW;
  for (var r = 0u; r < ORW; r++) {
    let row = min(item * ORW + r, D - 1u);
    for (var k = 0u; k < OV; k++) { w.w[r][k] = wo4(row * OE4 + min(t + k * WG, OE4 - 1u)); }
  }
  return w;
}

fn outApply(t: u32, item: u32, w: OutW) {
  var yv: array<array<vec4<f32>, OV>, ORB>;
  for (var k = 0u; k < OV; k++) {
    let c = t + k * WG;
    for (var b = 0u; b < ORB; b++) { yv[b][k] = select(vec4<f32>(0.0), yLoad4(b * OE4 + min(c, OE4 - 1u)), c < OE4); }
  }
  for (var r = 0u; r < ORW; r++) {
    for (var b = 0u; b < ORB; b++) {
      var s = 0.0;
      for (var k = 0u; k < OV; k++) { s += dot(w.w[r][k], yv[b][k]); }
      ored[(r * ORB + b) * WG + t] = s;
    }
  }
  workgroupBarrier();
  // ORW · ORB sums of WG values: 32 threads a sum add 8 each, then one of them the 32
  let si = t / 32u;
  let l = t % 32u;
  var s = 0.0;
  if (si < ORW * ORB) { for (var j = 0u; j < 8u; j++) { s += ored[si * WG + l * 8u + j]; } }
  workgroupBarrier();
  if (si < ORW * ORB) { ored[si * WG + l] = s; }
  workgroupBarrier();
  if (l == 0u && si < ORW * ORB) {
    let row = item * ORW + si / ORB;
    var total = 0.0;
    for (var j = 0u; j < 32u; j++) { total += ored[si * WG + j]; }
    if (row < D) { h[(si % ORB) * D + row] = total + select(0.0, bOut[min(row, arrayLength(&bOut) - 1u)], p.hasOutBias != 0u); }
  }
  workgroupBarrier(); // ored is free for the next item
}
`;
  return { consts, params, bindings, decls, fn };
}

export interface LayerArgs {
  inArgs: MixerInArgs; // with acc (fixed-point totals of x_proj)
  scanArgs: MixerScanArgs;
  wOut: Buf; wsOut: WeightStorage; bias: Buf | null; // out_proj [D, E], its bias [D]
  ctl: Buf; // LAYER_CTL_WORDS words, zero at first
  spin?: number; // polls of a wait before it gives up (default layerSpin)
}

/** The compiled shape of a layer's kernel: its kernel 1's and kernel 2's, and out_proj's weight storage. */
export interface LayerShape { ins: MixerInShape; scan: MixerScanShape; wsOut: WeightStorage }

/** The compiled shape of the layer's kernel for these arguments. */
export function layerShape(a: LayerArgs): LayerShape {
  return { ins: mixerInShape(a.inArgs), scan: mixerScanShape(a.scanArgs), wsOut: a.wsOut };
}

/** The WGSL of one layer's kernel (exported for inspection). */
export function layerWgsl(s: LayerShape, parts = layerParts(s)): string {
  return composedWgsl(parts, layerMain(s));
}

function layerParts(s: LayerShape): WgslParts[] {
  // the scan's items wait for kernel 1's once their own loads are out
  return [mixerInParts(s.ins, true), mixerScanParts(s.scan, true, "  waitFor(t, 1u, IN_GROUPS);\n"), outProjParts(s.ins.D, s.ins.E, s.ins.RB, s.wsOut),
    layerSyncParts];
}

function layerMain(s: LayerShape): string {
  return /* wgsl */ `
const IN_GROUPS = ${Math.ceil(s.ins.E / s.ins.CH)}u;
const SCAN_GROUPS = ${mixerScanGroups(s.ins.E)}u;` + layerEntryWgsl("IN_GROUPS + SCAN_GROUPS + OUT_ITEMS", `  if (k < IN_GROUPS) {
    mixerIn(t, k, IN_GROUPS);
    finished(t, 1u);
  } else if (k < IN_GROUPS + SCAN_GROUPS) {
    mixerScan(t, k - IN_GROUPS, 0u); // waits for kernel 1's items inside, after its first loads
    finished(t, 2u);
  } else {
    let item = k - IN_GROUPS - SCAN_GROUPS;
    let w = outLoad(t, item); // in flight while the scan finishes
    waitFor(t, 2u, SCAN_GROUPS);
    outApply(t, item, w);
  }`);
}

/** Workgroups of the layer's dispatch: an item of each phase. */
export function layerGroups(a: LayerArgs): number {
  return mixerInGroups(a.inArgs.E, a.inArgs.channels) + mixerScanGroups(a.inArgs.E) + Math.ceil(a.inArgs.D / outRows(a.inArgs.B));
}

/** What a device must allow for the layer's kernel: bytes of workgroup memory it declares (every declaration is
 *  4-byte scalars or arrays of them), and the storage buffers it binds. */
export function layerNeeds(a: LayerArgs): { workgroupBytes: number; storageBuffers: number } {
  const shape = layerShape(a);
  const parts = layerParts(shape);
  let words = 0;
  for (const m of layerWgsl(shape, parts).matchAll(/var<workgroup>\s+\w+\s*:\s*(?:array<\w+,\s*(\d+)>|\w+)\s*;/g)) words += Number(m[1] ?? 1);
  return { workgroupBytes: 4 * words, storageBuffers: composedBindings(parts).length };
}

const layerKernel = defineKernel({
  name: "decode_layer",
  wgsl: (s: LayerShape) => layerWgsl(s),
  label: ({ ins, scan, wsOut }) => `decode_layer_${ins.CH}_${ins.D}_${ins.E}_${ins.K}_${ins.J}_${ins.wsIn}_${ins.wsX}_${ins.loadBytes}_r${ins.RB}` +
    `${ins.acc ? `_acc${ins.acc.limit}_${ins.acc.stride}` : ""}_${scan.N}_${scan.ws}_${wsOut}`,
  example: {
    ins: { CH: 16, D: 768, E: 1536, K: 4, J: 80, wsIn: "f32", wsX: "f32", loadBytes: 256, RB: 1, acc: { limit: 16777216, stride: 256 } },
    scan: { N: 16, J: 80, RB: 1, SL: 2, ws: "f32", summed: false, stride: 256 },
    wsOut: "f32",
  },
});

/** One layer of the fused step in one dispatch. */
export function decodeLayer(gpu: Gpu, a: LayerArgs): void {
  const i = a.inArgs, s = a.scanArgs;
  if (!i.acc) throw new Error("decodeLayer: kernel 1's x_proj must go into fixed-point totals (acc)");
  if (i.D % 4 !== 0 || i.E % 4 !== 0) throw new Error(`decodeLayer: hidden size ${i.D} and inner size ${i.E} must be multiples of 4`);
  const shape = layerShape(a);
  const k = gpu.kernel(layerKernel, shape);
  const parts = layerParts(shape);
  const bufs: Record<string, Buf> = {
    h: i.h, res: i.res, lp: i.lp, wIn: i.wIn, wX: i.wX, convState: i.convState, xz: i.xz, xacc: i.Q,
    wDt: s.wDt, ssm: s.ssm, y: s.y, wOut: a.wOut, bOut: a.bias ?? gpu.dummy, ctl: a.ctl,
  };
  const values = { ...mixerInParams(i), ...mixerScanParams(s), hasOutBias: a.bias !== null, spin: a.spin ?? layerSpin(gpu) };
  gpu.dispatch(k, composedBindings(parts).map((n) => bufs[n]!), paramBlock(composedParams(parts), values), [layerGroups(a)]);
}
