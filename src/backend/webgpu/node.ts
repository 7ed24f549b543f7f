/**
 * The Node.js entry of the WebGPU backend: the `webgpu` npm package (Dawn) supplies the GPU object that browsers
 * expose as `navigator.gpu`. Only this file imports it, so the rest of the backend runs unchanged in browsers. The
 * package is an optional dependency (about 130 MB of Dawn builds): it is imported only when a GPU object is first
 * asked for, and its absence is a MambaError that says how to install it.
 */
import { MambaError } from "../../errors.ts";

/** Dawn's GPU objects by their toggles (nodeGpu). */
const gpus = new Map<string, GPU>();

/**
 * The package's name, in a variable: a bundler building a page from the browser entry (which reaches this file
 * behind a check for Node) then neither looks for the package nor tries to pack Dawn's Node-only modules (with
 * `import("webgpu")` written out, esbuild fails on them whenever `webgpu` is installed).
 */
const DAWN_PACKAGE = "webgpu";

/** The `webgpu` package, imported on first use; a MambaError when it is not installed or does not load here. */
async function importDawn(): Promise<typeof import("webgpu")> {
  try {
    return await import(DAWN_PACKAGE) as typeof import("webgpu");
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const message = String(e?.message ?? err).split("\n")[0];
    if (e?.code === "ERR_MODULE_NOT_FOUND" && /['"]webgpu['"]/.test(message)) {
      throw new MambaError("WebGPU in Node needs the optional package 'webgpu' (Dawn), which is not installed: " +
        "run `npm install webgpu`, or use the CPU backend");
    }
    throw new MambaError(`WebGPU in Node: the 'webgpu' package (Dawn) did not load on ${process.platform}-${process.arch} ` +
      `(${message}); reinstall it with \`npm install webgpu\`, or use the CPU backend`);
  }
}

/**
 * Dawn toggles this backend runs with in Node, where it owns the process (browsers decide their own):
 *  - disable_workgroup_init: Dawn zero-fills every workgroup's shared memory before a kernel starts; no kernel
 *    here reads shared memory it has not written, and the fill cost about 20 us a layer in decode;
 *  - disable_robustness: Dawn clamps every buffer index in shaders; every read here is bounds-checked already.
 * and two that the half-precision products need (unless WebGpuOptions.unsafeApis is false):
 *  - vulkan_enable_f16_on_nvidia: Dawn hides 'shader-f16' on NVIDIA's Vulkan driver unless asked;
 *  - allow_unsafe_apis: Dawn's experimental features that are not yet validated to the web's safety standard,
 *    among them chromium-experimental-subgroup-matrix (the tensor cores). Harmless in a process of one's own.
 * MAMBA_TS_DAWN_TOGGLES replaces the list (comma-separated; empty for none), whatever unsafeApis says.
 * And one it runs without:
 *  - timestamp_quantization: Dawn rounds GPU timestamps (to 65.5 us on the H200), a browser's guard against
 *    timing attacks; it made per-kernel profiles count a 10 us kernel as 0 or 65 us.
 * MAMBA_TS_DAWN_DISABLED_TOGGLES replaces that list.
 */
const DEFAULT_TOGGLES = "disable_workgroup_init,disable_robustness";
const UNSAFE_TOGGLES = "allow_unsafe_apis,vulkan_enable_f16_on_nvidia";
const DEFAULT_DISABLED_TOGGLES = "timestamp_quantization";

/** The Dawn toggles a GPU object is created with: enabled and disabled, comma-separated. */
export function dawnToggles(unsafeApis = true): { enabled: string; disabled: string } {
  return {
    enabled: process.env.MAMBA_TS_DAWN_TOGGLES ?? (unsafeApis ? `${DEFAULT_TOGGLES},${UNSAFE_TOGGLES}` : DEFAULT_TOGGLES),
    disabled: process.env.MAMBA_TS_DAWN_DISABLED_TOGGLES ?? DEFAULT_DISABLED_TOGGLES,
  };
}

/**
 * Dawn's GPU object for a set of toggles (dawnToggles), created once per process and set: toggles are fixed when
 * the object is made, so a backend asking for another set gets an object of its own. Dawn crashes the process if
 * such an object is garbage-collected while any adapter, device or buffer lives, so the module keeps each
 * referenced for the process's lifetime.
 */
export async function nodeGpu(unsafeApis = true): Promise<GPU> {
  const { enabled, disabled } = dawnToggles(unsafeApis);
  const key = `${enabled}|${disabled}`;
  const known = gpus.get(key);
  if (known) return known;
  const { create } = await importDawn();
  const made = gpus.get(key) ?? create([
    ...(enabled ? [`enable-dawn-features=${enabled}`] : []),
    ...(disabled ? [`disable-dawn-features=${disabled}`] : []),
  ]);
  gpus.set(key, made);
  return made;
}

/**
 * Whether this machine may have a GPU, judged without asking Dawn: enumerating adapters on a machine with only a
 * software Vulkan driver makes Dawn print warnings to stderr that nothing can silence, which a backend chosen
 * automatically must not cost. On Linux a GPU shows as a DRM render node or NVIDIA's device files (WSL: /dev/dxg);
 * elsewhere the answer is yes and Dawn decides.
 */
export function mayHaveGpu(): boolean {
  if (process.platform !== "linux") return true;
  // node:fs through getBuiltinModule: a static import would pull a Node module into browser bundles
  const fs = (process as { getBuiltinModule?: (id: string) => unknown }).getBuiltinModule?.("node:fs") as
    typeof import("node:fs") | undefined;
  if (!fs) return true;
  try {
    if (fs.readdirSync("/dev/dri").some((f) => f.startsWith("renderD"))) return true;
  } catch {
    // no /dev/dri
  }
  return ["/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg"].some((f) => fs.existsSync(f));
}
