/** Widens packed f16 / bf16 values (two per u32), or Q8_0 / Q4_0 blocks, to f32: out[i] = element i. */
import type { Buf, Gpu } from "../gpu.ts";
import { grid } from "../gpu.ts";
import { type WeightStorage, weightReader } from "./weights.ts";
import { defineKernel } from "../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "./compose.ts";

// w packed halves or blocks, as u32 | out [n] f32; a thread a value
const parts = (ws: WeightStorage): WgslParts => ({
  consts: [],
  params: [["n", "u32"], ["groupsX", "u32"]],
  bindings: [["w", "var<storage, read> w: array<u32>"], ["out", "var<storage, read_write> out: array<f32>"]],
  decls: weightReader(ws),
  fn: /* wgsl */ `
fn widen(gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (i < p.n) { out[i] = weight(i); }
}`,
});
export type PackedStorage = Exclude<WeightStorage, "f32">;
const PARTS: Record<PackedStorage, WgslParts> = {
  f16: parts("f16"), bf16: parts("bf16"), q8_0: parts("q8_0"), q4_0: parts("q4_0"),
};

const widenKernel = defineKernel({
  name: "widen", wgsl: (ws: PackedStorage) => standaloneWgsl(PARTS[ws], "256", "widen(gid)"), label: (ws) => `widen_${ws}`, example: "f16",
});

export function widen(gpu: Gpu, src: Buf, ws: PackedStorage, n: number, out: Buf): void {
  const k = gpu.kernel(widenKernel, ws);
  const [gx, gy] = grid(Math.ceil(n / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(PARTS[ws], { w: src, out }),
    paramBlock(PARTS[ws].params, { n, groupsX: gx }), [gx, gy]);
}
