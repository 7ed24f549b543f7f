/**
 * How a WGSL kernel is declared: a name, a function from its shape (the compile-time values: sizes, weight
 * storage, variant flags; plain data, never buffers) to its WGSL, and an example shape. Gpu.kernel(def, shape)
 * memoizes the text by the shape's value and caches pipelines by the text itself, so two shapes that generate the
 * same WGSL share a pipeline, and no hand-built key can leave out a value the text depends on.
 *
 * Every definition registers itself by name, so that scripts/print-wgsl.ts can list the kernels and print any of
 * them for a shape of one's choosing. This module needs no GPU.
 */

export interface KernelDef<S> {
  /** unique among kernels (print-wgsl's name for it) */
  readonly name: string;
  /** the kernel's WGSL for a shape; must depend on nothing but the shape */
  readonly wgsl: (shape: S) => string;
  /** the pipeline's label (profiles, kernelNames): by default the name */
  readonly label?: (shape: S) => string;
  /** a shape the kernel compiles for (print-wgsl's default) */
  readonly example: S;
  /** optional device features its WGSL needs (callers check them first); a device without them cannot compile it */
  readonly features?: readonly string[];
}

const registry = new Map<string, KernelDef<never>>();
/** names declared more than once (the first declaration stays listed; a test requires none) */
const repeated: string[] = [];

/** Declares a kernel. */
export function defineKernel<S>(def: KernelDef<S>): KernelDef<S> {
  if (registry.has(def.name)) repeated.push(def.name);
  else registry.set(def.name, def as unknown as KernelDef<never>);
  return def;
}

/** The kernels declared so far (those of the modules imported), by name. */
export function declaredKernels(): ReadonlyMap<string, KernelDef<unknown>> {
  return registry as unknown as ReadonlyMap<string, KernelDef<unknown>>;
}

/** Names that more than one kernel declared. */
export function repeatedKernelNames(): readonly string[] {
  return repeated;
}

/** A shape's memo key: its value as JSON. (Equal shapes built with their keys in another order get two memo
 *  entries, but still one pipeline: pipelines are cached by their text.) */
export function shapeKey(shape: unknown): string {
  return JSON.stringify(shape) ?? "undefined";
}
