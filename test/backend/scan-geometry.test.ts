/**
 * How the WebGPU scan backward splits its work (pure functions, no GPU): the lanes kernel's segments (about 32
 * steps, shorter when that would leave the GPU under-filled, never more than workgroup memory holds) and the
 * scratch layout both chunk kernels share.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  lanesMinBytes, lanesPossible, scanBwdGeometry, scanBwdLanesGeometry,
} from "../../src/backend/webgpu/kernels/backward/scan/index.ts";
import { lanesShape, lanesWorkgroupBytes } from "../../src/backend/webgpu/kernels/backward/scan/chunk-lanes.ts";

const KB32 = 32768;

test("lanes geometry: segments of 32 steps where the GPU stays filled, shorter where it would not", () => {
  const big = scanBwdLanesGeometry(8, 2048, 1536, 16, 8, KB32, 0, 32);
  assert.equal(big.kernel, "lanes");
  assert.equal(big.lanes, 2);
  assert.equal(big.chunkLen, 32);
  assert.equal(big.nC, 64);
  assert.equal(big.G, Math.ceil(1536 / lanesShape(16, 32).CW));
  assert.equal(big.Gp, big.G, "one dB|dC partial per row and workgroup");
  // one short sequence of few channels: shorter segments, so that more workgroups run
  const small = scanBwdLanesGeometry(1, 256, 64, 16, 8, KB32, 0, 32);
  assert.ok(small.chunkLen < 32 && small.chunkLen >= 8, `segment ${small.chunkLen}`);
  // a sequence shorter than a segment is one segment
  const one = scanBwdLanesGeometry(2, 5, 33, 16, 8, KB32, 0, 32);
  assert.equal(one.nC, 1);
  assert.equal(one.chunkLen, 5);
});

test("lanes geometry: a requested segment is rounded up to whole sub-tiles and bounded by workgroup memory", () => {
  assert.equal(scanBwdLanesGeometry(4, 4096, 1536, 16, 8, KB32, 40, 32, false, 4).chunkLen, 40);
  assert.equal(scanBwdLanesGeometry(4, 4096, 1536, 16, 8, KB32, 37, 32, false, 4).chunkLen, 40);
  // 2 lanes keep twice the states a lane: 32 KiB holds 4 saved sub-tile starts, not 8
  assert.equal(scanBwdLanesGeometry(4, 4096, 1536, 16, 8, KB32, 64, 32).chunkLen, 32);
  assert.ok(lanesWorkgroupBytes(16, 32, 8, 4) <= KB32 && lanesWorkgroupBytes(16, 32, 8, 8) > KB32);
  const tight = lanesWorkgroupBytes(16, 32, 8, 2, 4); // room for 2 saved sub-tile states, not 4
  const g = scanBwdLanesGeometry(4, 4096, 1536, 16, 8, tight, 1024, 32, false, 4);
  assert.equal(g.chunkLen, 16);
  assert.ok(lanesWorkgroupBytes(16, 32, 8, g.chunkLen / 8, 4) <= tight);
  assert.ok(lanesMinBytes(16, 32, 8, 4) <= tight);
});

test("lanes kernel: needs subgroup blocks of 2 (by default) to 32 lanes; odd state sizes pad to whole lanes", () => {
  assert.equal(lanesPossible(0), false);
  assert.equal(lanesPossible(1), false);
  for (const w of [2, 4, 8, 16, 32]) assert.equal(lanesPossible(w), true);
  assert.equal(lanesPossible(64), false);
  assert.equal(lanesPossible(2, 4), false, "4 lanes a channel need blocks of 4");
  assert.equal(lanesPossible(4, 8), false, "8 lanes a channel need blocks of 8");
  assert.equal(lanesPossible(8, 8), true);
  assert.equal(lanesPossible(8, 3), false);
  assert.deepEqual(lanesShape(16, 32, 8), { SP: 2, Vp: 4, WGT: 128, CW: 16 });
  assert.equal(scanBwdLanesGeometry(1, 4096, 1536, 16, 8, KB32, 0, 32, false, 8).lanes, 8);
  assert.deepEqual(lanesShape(16, 32, 4), { SP: 4, Vp: 8, WGT: 128, CW: 32 });
  assert.deepEqual(lanesShape(16, 32), { SP: 8, Vp: 16, WGT: 128, CW: 64 });
  assert.deepEqual(lanesShape(16, 32, 2, 8), { SP: 8, Vp: 16, WGT: 256, CW: 128 }, "eight blocks: 256 lanes, 128 channels");
  assert.equal(scanBwdLanesGeometry(1, 4096, 1536, 16, 8, KB32, 0, 32, false, 2, 8).G, 12);
  assert.equal(scanBwdLanesGeometry(1, 4096, 1536, 16, 8, KB32, 0, 32, false, 2, 8).blocks, 8);
  assert.equal(lanesPossible(32, 2, 3), false, "blocks a workgroup: 1, 2, 4 or 8");
  assert.ok(lanesWorkgroupBytes(16, 32, 8, 4, 2, 8) > lanesWorkgroupBytes(16, 32, 8, 4, 2, 4));
  assert.equal(lanesShape(5, 32, 4).SP, 2); // 8 state slots for 5 states
  assert.equal(lanesShape(5, 32).SP, 3); // 6 state slots for 5 states
  assert.equal(lanesShape(3, 8, 4).Vp % (8 / 4), 0, "terms padded to a multiple of the channels a block holds");
  assert.equal(lanesShape(3, 8).Vp % (8 / 2), 0);
});

test("scratch layout: chunk states only where there are chunks or an initial state; partials after them", () => {
  const g = scanBwdGeometry(2, 100, 40, 16, 8, 32, 32);
  assert.equal(g.kernel, "channel");
  assert.equal(g.nC, 4);
  assert.equal(g.oX - g.oS, 2 * 4 * 16 * 40);
  assert.equal(g.sxFloats, g.oP + 40 * 18);
  assert.equal(g.oA, 2 * 100 * g.Gp * 32);
  assert.equal(g.partFloats, g.oDE + 2 * 4 * 2 * 40);
  const single = scanBwdGeometry(2, 10, 40, 16, 8, 32, 32);
  assert.equal(single.nC, 1);
  assert.equal(single.oX, 0, "one chunk and no initial state: no chunk states");
  assert.equal(scanBwdGeometry(2, 10, 40, 16, 8, 32, 32, true).oX, 2 * 16 * 40, "an initial state needs S[b, 0]");
});
