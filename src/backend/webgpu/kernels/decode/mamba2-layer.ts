/**
 * Mamba-2's fused decode, a whole layer in one dispatch (decodePersistent, for layers up to M2_PERSISTENT_AUTO_MAX):
 * the layer's three kernels (../../decode-plans-mamba2.ts) run as three phases of one kernel, as Mamba-1's do in
 * ./layer.ts, whose header says why (a dependent dispatch costs 2 – 10 us on the H100, a wait through counters in
 * memory about 1 us) and how; its counters, waits and entry point are shared with it:
 *  1. in_proj (./mamba2-in.ts): an item is a workgroup's groups of in_proj's rows, taken in turn as in_proj's own
 *     kernel takes them (at most decodeM2Workgroups items), with the RMSNorm of h + residual in front (every item
 *     for itself) and the conv step + SiLU and dt's softplus behind → zxbcdt [T, E + C + H];
 *  2. the SSD step and the gate (./mamba2-ssm.ts): an item is one of the scan's workgroups (a block of a head's
 *     channels, all rows) → v [T, E] and the gated norm's sums of squares ss [T, NWG];
 *  3. out_proj with the gated norm's scale (./mamba2-out.ts): an item is a workgroup's groups of out_proj's rows,
 *     as in phase 1 → h [T, D].
 * Workgroups take tickets, which hand out the items in this order; a scan item issues its states' loads and then
 * waits until every in_proj item has finished, an out_proj item its first weights' and then waits for every scan
 * item, so that those loads overlap the phase before. zxbcdt, v and ss pass between workgroups of the dispatch, so
 * they go through atomics (the parts' shared variants); h is read by in_proj's items and written by out_proj's,
 * which start only once every in_proj item has finished. A wait that polls in vain sets the counters' flag, which
 * the backend reads with the step's ids (the step's results are then wrong, and the generation fails).
 *
 * A workgroup does one item of one phase, so the phases share their workgroup arrays: red (every phase's sums) and
 * us (in_proj's normalized rows [T, D], out_proj's copy of v [T, E]).
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { type WgslParts, bindingsByName, composedBindings, composedParams, composedWgsl, paramBlock } from "../compose.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type M2InArgs, type M2InShape, M2_IN_MAX_ROWS, m2InGroups, m2InParams, m2InParts, m2InShape, rowGroupsCount } from "./mamba2-in.ts";
import { type M2SsmArgs, type M2SsmShape, m2SsmGroups, m2SsmParts } from "./mamba2-ssm.ts";
import { type M2OutArgs, type M2OutShape, m2OutGroups, m2OutParams, m2OutParts, m2OutShape } from "./mamba2-out.ts";
import { layerEntryWgsl, layerSpin, layerSyncParts } from "./layer.ts";

/** The compiled shape of a layer's kernel: its three phases' (the scan's: all rows in one block, no out_proj), and
 *  the most items each matvec's phase takes (0: ./mamba2-in.ts's default), each looping over groups of rows as the
 *  matvecs' own kernels do. */
export interface M2LayerShape { ins: M2InShape; ssm: M2SsmShape; out: M2OutShape; workgroups: number }

/**
 * out_proj's names that in_proj's part, a matvec as well, also declares (its lanes and batches, helpers, weights,
 * bias flag), the gated norm's eps, which must not be taken for the RMSNorm's, and its count of the scan's
 * workgroups (0 without the norm, where the scan's part says how many there are): their names in the layer. A
 * name derived from one (a quantized reader's `weight4_scale`) follows it.
 */
const OUT_NAMES: Readonly<Record<string, string>> = {
  LPR: "OLPR", RPW: "ORPW", BATCH: "OBATCH", NIT: "ONIT", G: "OG", load: "oLoad", xAt: "oXAt", weight4: "oWeight4",
  w: "wOut", hasBias: "hasOutBias", eps: "gEps", NWG: "ONWG", stride: "oStride",
};

/** `name` as `names` renames it (or a name derived from a renamed one, `<name>_...`); else unchanged. */
function renamedId(name: string, names: Readonly<Record<string, string>>): string {
  const to = names[name];
  if (to !== undefined) return to;
  const cut = name.indexOf("_");
  return cut > 0 && names[name.slice(0, cut)] !== undefined ? names[name.slice(0, cut)] + name.slice(cut) : name;
}

/** WGSL text with its identifiers renamed: members and swizzles (`.w`) are left alone, parameters (`p.eps`) not. */
function renamedText(text: string, names: Readonly<Record<string, string>>): string {
  return text.replace(/(p\.|\.)?([A-Za-z_]\w*)/g,
    (m, dot: string | undefined, id: string) => (dot === "." ? m : (dot ?? "") + renamedId(id, names)));
}

/** A part with its declarations renamed (what it binds, its constants, parameters, helpers). */
function renamedParts(parts: WgslParts, names: Readonly<Record<string, string>>): WgslParts {
  const text = (t: string) => renamedText(t, names);
  return {
    consts: parts.consts.map(([n, v]) => [renamedId(n, names), text(v)]),
    params: parts.params.map(([n, t]) => [renamedId(n, names), t]),
    bindings: parts.bindings.map(([n, d]) => [renamedId(n, names), text(d)]),
    decls: text(parts.decls),
    fn: text(parts.fn),
  };
}

/** Items of each phase: in_proj's and out_proj's (D outputs) workgroups, each taking groups of rows in turn (the
 *  first a stride of the phase's items apart), the scan's workgroups. */
function m2LayerItems(s: M2LayerShape): { ins: number; ssm: number; out: number } {
  return {
    ins: rowGroupsCount(m2InGroups(s.ins), s.workgroups), ssm: m2SsmGroups(s.ssm.N, s.ssm.P, s.ssm.H),
    out: rowGroupsCount(m2OutGroups(s.out, s.ins.D), s.workgroups),
  };
}

function m2LayerParts(s: M2LayerShape): WgslParts[] {
  const { T, D, E } = s.ins;
  const items = m2LayerItems(s);
  const own: WgslParts = {
    consts: [["IN_ITEMS", `${items.ins}u`], ["SSM_ITEMS", `${items.ssm}u`], ["OUT_ITEMS", `${items.out}u`]],
    params: [],
    bindings: [],
    decls: /* wgsl */ `
var<workgroup> red: array<f32, ${256 * T}>; // every phase's sums
var<workgroup> us: array<f32, ${T * Math.max(D, E)}>; // in_proj's normalized rows [T, D], out_proj's copy of v [T, E]`,
    fn: "",
  };
  return [
    own,
    m2InParts(s.ins, true),
    // a scan item waits for in_proj's items once its states' loads are out, an out_proj item for the scan's once its
    // first weights' are
    m2SsmParts(s.ssm, true, "  waitFor(t, 1u, IN_ITEMS);\n"),
    renamedParts(m2OutParts(s.out, true, "  waitFor(t0, 2u, SSM_ITEMS);\n"), OUT_NAMES),
    layerSyncParts,
  ];
}

/** The WGSL of one layer's kernel (exported for inspection). Throws where two phases declare one name. */
export function m2LayerWgsl(s: M2LayerShape): string {
  const wgsl = composedWgsl(m2LayerParts(s), layerEntryWgsl("IN_ITEMS + SSM_ITEMS + OUT_ITEMS", `  if (k < IN_ITEMS) {
    m2In(t, vec3<u32>(k, 0u, 0u));
    finished(t, 1u);
  } else if (k < IN_ITEMS + SSM_ITEMS) {
    let i = k - IN_ITEMS;
    m2Ssm(t, vec3<u32>(i % NWG, i / NWG, 0u)); // waits for in_proj's items inside
    finished(t, 2u);
  } else {
    m2Out(t, vec3<u32>(k - IN_ITEMS - SSM_ITEMS, 0u, 0u)); // waits for the scan's items inside
  }`));
  // the phases were written as kernels of their own: a name that two of them declare would be one declaration twice
  const seen = new Set<string>();
  for (const m of wgsl.matchAll(/^(?:fn|const|struct|(?:@group\(\d+\) @binding\(\d+\) )?var(?:<[^>]*>)?)\s+(\w+)/gm)) {
    if (seen.has(m[1]!)) throw new Error(`m2LayerWgsl: '${m[1]}' is declared by two phases`);
    seen.add(m[1]!);
  }
  return wgsl;
}

const m2LayerKernel = defineKernel({
  name: "decode_m2_layer",
  wgsl: m2LayerWgsl,
  label: ({ ins, ssm, out, workgroups }) => `decode_m2_layer_${ins.T}_${ins.D}_${ins.E}_${ins.C}_${ins.H}_${ins.K}_${ins.ws}_${ins.loadBytes}_l${ins.lanes}` +
    `_${ssm.N}_${ssm.P}_${ssm.G}_${ssm.mode}_${out.ws}_${out.loadBytes}_l${out.lanes}_w${workgroups}`,
  example: {
    ins: { T: 1, D: 768, E: 1536, C: 1792, H: 24, K: 4, ws: "f32", loadBytes: 256, norm: true, lanes: 0 },
    ssm: { N: 128, P: 64, H: 24, G: 1, E: 1536, C: 1792, RB: 1, mode: "after", out: null },
    out: { T: 1, K: 1536, ws: "f32", loadBytes: 64, G: 1, GS: 1536, NWG: 192, WPG: 192, lanes: 0 },
    workgroups: 0,
  },
});

export interface M2LayerArgs {
  /** in_proj's, with the norm (x is h) */
  inArgs: M2InArgs;
  /** the scan's, zxbcdt being inArgs.out (its fused out_proj not taken) */
  ssmArgs: M2SsmArgs;
  /** out_proj's, v and ss being the scan's, y being h */
  outArgs: M2OutArgs;
  /** LAYER_CTL_WORDS words, zero at first (each dispatch leaves them so; the flag stays set) */
  ctl: Buf;
  /** polls of a wait before it gives up (default layerSpin) */
  spin?: number;
}

/** The compiled shape of a layer's kernel for these arguments. */
export function m2LayerShape(a: M2LayerArgs): M2LayerShape {
  const s = a.ssmArgs;
  return {
    ins: m2InShape(a.inArgs),
    ssm: { N: s.N, P: s.P, H: s.H, G: s.G, E: s.E, C: s.C, RB: s.B, mode: s.mode, out: null },
    out: m2OutShape(a.outArgs),
    workgroups: a.inArgs.workgroups ?? 0,
  };
}

/** Why the device cannot run a layer's kernel for these arguments (its storage buffers, its workgroup memory, its
 *  workgroups), or null where it can; the rows and sizes the kernel takes at all are checked by m2LayerDispatch. */
export function m2LayerMisfit(gpu: Gpu, a: M2LayerArgs): string | null {
  const s = m2LayerShape(a);
  const { T, D, E } = s.ins;
  const buffers = composedBindings(m2LayerParts(s)).length;
  const lim = gpu.limits;
  if (buffers > lim.maxStorageBuffersPerShaderStage) return `${buffers} storage buffers, over the device's ${lim.maxStorageBuffersPerShaderStage}`;
  // red, us; the scan's B | C quads; out_proj's r of each (row, group); the ticket
  const bytes = 4 * (256 * T + T * Math.max(D, E) + T * 2 * s.ssm.N + T * Math.max(s.out.G, 1) + 1);
  if (bytes > lim.maxComputeWorkgroupStorageSize) return `${bytes} bytes of workgroup memory, over the device's ${lim.maxComputeWorkgroupStorageSize}`;
  const items = m2LayerItems(s);
  const groups = items.ins + items.ssm + items.out;
  if (groups > lim.maxComputeWorkgroupsPerDimension) return `${groups} workgroups, over the device's ${lim.maxComputeWorkgroupsPerDimension}`;
  return null;
}

/** One layer of Mamba-2's fused step (up to 8 rows) in one dispatch, where m2LayerMisfit finds nothing. */
export function decodeM2Layer(gpu: Gpu, a: M2LayerArgs): void {
  const { inArgs: i, ssmArgs: s, outArgs: o } = a;
  if (i.T < 1 || i.T > M2_IN_MAX_ROWS || s.B !== i.T || o.T !== i.T) {
    throw new Error(`decodeM2Layer: ${i.T} rows, expected 1 to ${M2_IN_MAX_ROWS} in every phase`);
  }
  if (i.D % 4 !== 0 || i.E % 4 !== 0) throw new Error(`decodeM2Layer: hidden size ${i.D} and inner size ${i.E} must be multiples of 4`);
  if (!i.norm) throw new Error("decodeM2Layer: in_proj's phase takes the norm");
  if (s.fusedOut) throw new Error("decodeM2Layer: out_proj is the layer's last phase, not the scan's");
  if (s.zxbcdt !== i.out || o.v !== s.out || o.y !== i.x || (o.norm?.ss ?? null) !== (s.mode === "none" ? null : s.ss)) {
    throw new Error("decodeM2Layer: the phases must pass zxbcdt, v, ss and h through the same buffers");
  }
  const shape = m2LayerShape(a);
  const k = gpu.kernel(m2LayerKernel, shape);
  const parts = m2LayerParts(shape);
  const bufs: Record<string, Buf> = {
    h: i.x, res: i.norm.res, lp: i.lp, w: i.w, convState: i.convState, zxbcdt: i.out,
    ssm: s.ssm, v: s.out, ...(s.mode !== "none" ? { ss: s.ss! } : {}), wOut: o.w, bias: o.bias ?? gpu.dummy, ctl: a.ctl,
  };
  const items = m2LayerItems(shape);
  const outValues = Object.fromEntries(Object.entries(m2OutParams(o, 1, items.out)).map(([n, v]) => [renamedId(n, OUT_NAMES), v]));
  const values = { ...m2InParams(i, 1, items.ins), B: s.B, oA: s.oA, oD: s.oD, oGate: s.oGate, ...outValues, spin: a.spin ?? layerSpin(gpu) };
  gpu.dispatch(k, bindingsByName(parts, bufs), paramBlock(composedParams(parts), values), [items.ins + items.ssm + items.out]);
}
