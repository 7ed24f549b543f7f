// Prints what the WebGPU adapter offers with and without Dawn's f16 / unsafe-API toggles (Node, `webgpu` package).
import { create } from "webgpu";
const sets = (process.argv[2] ?? "disable_workgroup_init;allow_unsafe_apis,vulkan_enable_f16_on_nvidia").split(";");
const keep = [];
for (const toggles of sets) {
  const gpu = create([`enable-dawn-features=${toggles}`]);
  keep.push(gpu);
  const adapter = await gpu.requestAdapter();
  if (!adapter) { console.log(`[${toggles}] no adapter`); continue; }
  console.log(`[${toggles}] ${adapter.info.vendor} ${adapter.info.architecture} ${adapter.info.description}`);
  console.log("  features:", [...adapter.features].sort().join(", "));
  const feats = [...adapter.features].filter((f) => f.includes("subgroup-matrix") || f === "shader-f16" || f === "subgroups");
  const device = await adapter.requestDevice({ requiredFeatures: feats });
  const info = await adapter.requestAdapterInfo?.() ?? adapter.info;
  const cfgs = info.subgroupMatrixConfigs ?? adapter.info.subgroupMatrixConfigs;
  if (cfgs) console.log("  subgroupMatrixConfigs:", [...cfgs].map((c) => `${c.componentType}->${c.resultComponentType} ${c.M}x${c.N}x${c.K}`).join(", "));
  console.log("  subgroup sizes:", info.subgroupMinSize, info.subgroupMaxSize);
  device.destroy();
}
