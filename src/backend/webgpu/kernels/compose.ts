/**
 * How a kernel is written: as parts that compose. A kernel's WGSL is its constants, its parameters, its bindings,
 * its module-scope declarations (workgroup memory, helper functions) and one phase function. `standaloneWgsl`
 * makes a kernel of one phase (a dispatch of its own); `composedWgsl` puts several phases in one kernel, where a
 * name two phases share (a constant, a binding) must mean the same thing in both. So the fused decode's kernels
 * run one by one (a dispatch each) or together in one dispatch whose workgroups wait for each other through
 * counters (./decode/layer.ts).
 *
 * Bindings and parameters go by name: the launcher passes its buffers as a record (`bindingsByName`) and its
 * parameter values as another (`paramBlock`), and the uniform block's layout and the binding numbers follow from
 * the parts, so that a launcher cannot pass them in an order the WGSL does not expect.
 */
import { type Buf, Params } from "../gpu.ts";

export type ParamType = "u32" | "f32";

export interface WgslParts {
  /** constants: name and WGSL value ("256u") */
  consts: [string, string][];
  /** the uniform block's fields, read as `p.<name>` */
  params: [string, ParamType][];
  /** storage bindings: name and the declaration after `@group(0) @binding(n)` */
  bindings: [string, string][];
  /** workgroup memory and helper functions */
  decls: string;
  /** the phase function */
  fn: string;
}

function merge<T>(what: string, lists: [string, T][][]): [string, T][] {
  const out = new Map<string, T>();
  for (const list of lists) {
    for (const [name, v] of list) {
      const had = out.get(name);
      if (had !== undefined && had !== v) throw new Error(`composed kernel: ${what} '${name}' differs between phases (${String(had)} / ${String(v)})`);
      out.set(name, v);
    }
  }
  return [...out];
}

/** The binding names of a composition, in binding order (the launcher passes its buffers in this order). */
export function composedBindings(parts: readonly WgslParts[]): string[] {
  return merge("binding", parts.map((p) => p.bindings)).map(([name]) => name);
}

/** The parameter names of a composition, in the uniform block's order. */
export function composedParams(parts: readonly WgslParts[]): [string, ParamType][] {
  return merge("parameter", parts.map((p) => p.params));
}

/** One kernel of the given phases and `main`, the entry point that calls them. */
export function composedWgsl(parts: readonly WgslParts[], main: string): string {
  const consts = merge("constant", parts.map((p) => p.consts));
  const params = composedParams(parts);
  const bindings = merge("binding", parts.map((p) => p.bindings));
  return [
    ...consts.map(([n, v]) => `const ${n} = ${v};`),
    `struct P { ${params.map(([n, t]) => `${n}: ${t}`).join(", ")} }`,
    ...bindings.map(([, decl], i) => `@group(0) @binding(${i}) ${decl};`),
    `@group(0) @binding(${bindings.length}) var<uniform> p: P;`,
    ...parts.map((p) => p.decls),
    ...parts.map((p) => p.fn),
    main,
  ].join("\n");
}

/** A kernel of one phase: `main` calls `call` (e.g. "mixerIn(lid.x, wg.x, nwg.x)") with the usual builtins (and
 *  `gid`, the global invocation id, where the call uses it). */
export function standaloneWgsl(parts: WgslParts, workgroupSize: string, call: string): string {
  const gid = /\bgid\b/.test(call) ? "@builtin(global_invocation_id) gid: vec3<u32>,\n    " : "";
  return composedWgsl([parts], `@compute @workgroup_size(${workgroupSize})
fn main(${gid}@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>) {
  ${call};
}`);
}

/** Each single kernel's binding names, worked out once (a launcher asks on every dispatch). */
const namesOfParts = new WeakMap<WgslParts, string[]>();

/** The buffers of a kernel's bindings (one phase's parts, or a composition's), in binding order, from a record by
 *  name (a missing or unknown name is an error). */
export function bindingsByName(parts: WgslParts | readonly WgslParts[], bufs: Record<string, Buf>): Buf[] {
  let names: string[];
  if (Array.isArray(parts)) names = composedBindings(parts);
  else {
    const one = parts as WgslParts;
    names = namesOfParts.get(one) ?? composedBindings([one]);
    namesOfParts.set(one, names);
  }
  for (const name of Object.keys(bufs)) {
    if (!names.includes(name)) throw new Error(`composed kernel: no binding '${name}' (bindings: ${names.join(", ")})`);
  }
  return names.map((name) => {
    const b = bufs[name];
    if (!b) throw new Error(`composed kernel: no buffer for binding '${name}'`);
    return b;
  });
}

/** The uniform block of a composition, from a record of values by name (a missing one is an error). */
export function paramBlock(params: readonly [string, ParamType][], values: Record<string, number | boolean>): Params {
  const out = new Params();
  for (const [name, type] of params) {
    const v = values[name];
    if (v === undefined) throw new Error(`composed kernel: no value for parameter '${name}'`);
    if (type === "f32") out.f32(Number(v));
    else out.u32(typeof v === "boolean" ? (v ? 1 : 0) : v);
  }
  return out;
}
