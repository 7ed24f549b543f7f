/**
 * Meeting inside one dispatch against dependent dispatches, on the WebGPU adapter at hand (BENCHMARKS.md, runs
 * 69 – 73): the time of an empty dependent dispatch, and of G workgroups meeting at a counter in memory (an atomic
 * add, then polls), over 200 meetings in one dispatch. Each round every workgroup writes values and, after the
 * meeting, checks another's: with plain loads and stores (atomicData=false) and through atomics. A count of errors
 * above 0 means that plain loads saw stale values; "timeout" that the workgroups did not all run at once.
 *
 *   GS=1,32,96,132,264 node --import tsx bench/grid-sync-probe.ts
 */
import { createWebGpuBackend } from "../src/backend/webgpu/index.ts";
import { type Gpu, Params } from "../src/backend/webgpu/gpu.ts";
import { defineKernel } from "../src/backend/webgpu/kernel-def.ts";
const be = (await createWebGpuBackend({})) as unknown as { gpu: Gpu };
const gpu = be.gpu;
console.log(gpu.description, "maxSB/stage", gpu.limits.maxStorageBuffersPerShaderStage, "wgmem", gpu.limits.maxComputeWorkgroupStorageSize);
const WG = 256;
const code = (atomicData: boolean) => `
const WG = 256u;
struct P { rounds: u32, limit: u32 }
@group(0) @binding(0) var<storage, read_write> ctl: array<atomic<u32>>;
@group(0) @binding(1) var<storage, read_write> data: array<${atomicData ? "atomic<u32>" : "u32"}>;
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = lid.x; let G = nwg.x;
  for (var r = 0u; r < p.rounds; r++) {
    let o = (r % 2u) * G * WG;
    ${atomicData ? "atomicStore(&data[o + wg.x * WG + t], r * G + wg.x + 1u);" : "data[o + wg.x * WG + t] = r * G + wg.x + 1u;"}
    storageBarrier();
    if (t == 0u) {
      atomicAdd(&ctl[0], 1u);
      let goal = (r + 1u) * G;
      var n = 0u;
      loop {
        if (atomicLoad(&ctl[0]) >= goal) { break; }
        n++;
        if (n > p.limit) { atomicStore(&ctl[2], 1u); break; }
      }
    }
    workgroupBarrier();
    storageBarrier();
    let src = (wg.x + 1u + r) % G;
    let v = ${atomicData ? "atomicLoad(&data[o + src * WG + t])" : "data[o + src * WG + t]"};
    if (v != r * G + src + 1u) { atomicAdd(&ctl[1], 1u); }
  }
}`;
const empty = `
@group(0) @binding(0) var<storage, read_write> a: array<u32>;
@group(0) @binding(1) var<uniform> p: vec4<u32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) { if (g.x == 0u) { a[p.x] = a[p.x] + 1u; } }`;
const Gs = (process.env.GS ?? "1,8,32,64,96,132,264").split(",").map(Number);
const ctl = gpu.allocClean(16);
const data = gpu.allocClean(2 * Math.max(...Gs) * WG * 4);
const M = 200;
/** GPU ms of what fn encodes (the adapter must have timestamp queries) */
async function timed(fn: () => void): Promise<number> {
  const ms = await gpu.timePass(fn);
  if (ms === null) throw new Error("this adapter has no timestamp queries");
  return ms;
}
const kEmpty = gpu.kernel(defineKernel({ name: "probe_empty", wgsl: () => empty, example: null }), null);
const barKernel = defineKernel({ name: "probe_bar", wgsl: code, label: (atomicData) => `probe_bar_${atomicData}`, example: false });
for (let rep = 0; rep < 3; rep++) {
  const tE = await timed(() => { for (let i = 0; i < M; i++) gpu.dispatch(kEmpty, [ctl], new Params().u32(3), [1]); });
  console.log(`empty dispatches: ${(tE * 1000 / M).toFixed(2)} us each`);
}
for (const atomicData of [false, true]) {
  const k = gpu.kernel(barKernel, atomicData);
  for (const G of Gs) {
    for (let rep = 0; rep < 2; rep++) {
      gpu.device.queue.writeBuffer(ctl.gpu, 0, new Uint32Array(4));
      const t = await timed(() => gpu.dispatch(k, [ctl, data], new Params().u32(M).u32(1 << 22), [G]));
      const c = new Uint32Array(await gpu.read(ctl, 16));
      console.log(`atomicData=${atomicData} G=${G}: ${(t * 1000 / M).toFixed(2)} us a barrier; count ${c[0]} (want ${G * M}) errors ${c[1]} timeout ${c[2]}`);
    }
  }
}
await gpu.destroy();
process.exit(0);
