/**
 * The host-side index of the WebGPU embedding backward: the count of distinct ids, then for every distinct id
 * (ascending), where it occurs, in increasing position. Checked against a plain reference built with a Map, on random and edge inputs.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { positionsById } from "../../src/backend/webgpu/kernels/backward/embedding-backward.ts";
import { TestRng } from "../helpers/random.ts";

function reference(ids: Int32Array): { csr: number[]; nU: number } {
  const byId = new Map<number, number[]>();
  ids.forEach((id, t) => byId.set(id, [...(byId.get(id) ?? []), t]));
  const sorted = [...byId.keys()].sort((a, b) => a - b);
  const offsets: number[] = [];
  const positions: number[] = [];
  for (const id of sorted) {
    offsets.push(positions.length);
    positions.push(...byId.get(id)!);
  }
  offsets.push(ids.length);
  return { csr: [sorted.length, ...sorted, ...offsets, ...positions], nU: sorted.length };
}

test("positionsById lists each distinct id's positions in order, as the reference does", () => {
  const r = new TestRng(17);
  const cases = [
    new Int32Array(0), Int32Array.of(5), Int32Array.of(3, 3, 3), Int32Array.of(0, 9, 0, 9, 4),
    Int32Array.from({ length: 1000 }, () => Math.floor(r.next() * 16)),
    Int32Array.from({ length: 4097 }, () => Math.floor(r.next() * 50280)),
  ];
  for (const ids of cases) {
    const got = positionsById(ids);
    const want = reference(ids);
    assert.equal(got.nU, want.nU, `distinct ids of ${ids.length}`);
    assert.deepEqual([...got.csr], want.csr, `csr of ${ids.length} ids`);
  }
  assert.throws(() => positionsById(Int32Array.of(1, -2)), RangeError);
});
