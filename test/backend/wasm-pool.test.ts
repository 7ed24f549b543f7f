/**
 * The wasm engine's thread pool and its setup: conv, norm and scan give the same bits with 1, 2 and 3 threads on
 * shapes big enough to be split; a process with a live engine still exits; destroy ends the workers; where shared
 * memory is missing the reference engine runs and says so; bad options are MambaErrors.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { cols } from "../../src/backend/backend.ts";
import { createWasmCpuBackend } from "../../src/backend/wasm/index.ts";
import { createCpuBackend, describeBackend } from "../../src/backend/wasm/create.ts";
import { MambaError } from "../../src/errors.ts";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

function rand(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32) - 0.5);
}
const bits = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);

test("conv, norm and scan: the same bits with 1, 2 and 3 threads", { timeout: 60_000 }, async () => {
  const B = 2, L = 40, E = 300, N = 16, K = 4, D = 520, R = 5;
  const T = B * L;
  const xz = rand(T * 2 * E, 1), convW = rand(E * K, 2), convB = rand(E, 3), convState = rand(B * (K - 1) * E, 4);
  const xdbl = rand(T * (R + 2 * N), 5), delta = rand(T * E, 6), dBias = rand(E, 7), aLog = rand(E * N, 8), Dv = rand(E, 9);
  const ssm = rand(B * E * N, 10), nx = rand(T * D, 11), nr = rand(T * D, 12), nw = rand(D, 13);
  const results: Uint32Array[][] = [];
  for (const threads of [1, 2, 3]) {
    const b = await createWasmCpuBackend({ threads });
    const cs = b.fromF32(convState, [B, K - 1, E]);
    const xzt = b.fromF32(xz, [T, 2 * E]);
    const x = b.causalConv1dSilu(cols(xzt, 0, E), b.fromF32(convW, [E, 1, K]), b.fromF32(convB, [E]), cs, { batch: B, seqLen: L });
    const xd = b.fromF32(xdbl, [T, R + 2 * N]);
    const st = b.fromF32(ssm, [B, E, N]);
    const y = b.selectiveScan({
      batch: B, seqLen: L, u: x, delta: b.fromF32(delta, [T, E]), deltaBias: b.fromF32(dBias, [E]), A_log: b.fromF32(aLog, [E, N]),
      B: cols(xd, R, N), C: cols(xd, R + N, N), D: b.fromF32(Dv, [E]), z: cols(xzt, E, E), state: st,
    });
    const n = b.addRmsNorm(b.fromF32(nx, [T, D]), b.fromF32(nr, [T, D]), b.fromF32(nw, [D]), 1e-5);
    results.push([
      bits(await b.readF32(x)), bits(await b.readF32(cs)), bits(await b.readF32(y)), bits(await b.readF32(st)),
      bits(await b.readF32(n.out)), bits(await b.readF32(n.residual)),
    ]);
    await b.destroy();
  }
  const names = ["conv out", "conv state", "scan y", "scan state", "norm out", "norm residual"];
  for (let t = 1; t < results.length; t++) {
    for (let i = 0; i < names.length; i++) assert.deepEqual(results[t]![i], results[0]![i], `${names[i]}, ${t + 1} threads against 1`);
  }
});

test("a process that never destroys its engine still exits; destroy ends the workers", { timeout: 60_000 }, () => {
  const code = `
    const { createWasmCpuBackend } = await import(${JSON.stringify(path.join(root, "src/backend/wasm/index.ts"))});
    const a = await createWasmCpuBackend({ threads: 3 });
    const b = await createWasmCpuBackend({ threads: 2 });
    a.matmul(a.fromF32(new Float32Array(64 * 512).fill(1), [64, 512]), a.fromF32(new Float32Array(512 * 512).fill(1), [512, 512]), null);
    await b.destroy();
    console.log("done");`;
  const r = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", code], { cwd: root, encoding: "utf8", timeout: 30_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), "done");
});

test("without shared memory (a page without cross-origin isolation) the reference engine runs, and says so", { timeout: 30_000 }, async () => {
  const g = globalThis as { crossOriginIsolated?: boolean };
  const before = g.crossOriginIsolated;
  g.crossOriginIsolated = false;
  try {
    const notices: string[] = [];
    const b = await createCpuBackend({ onNotice: (m) => notices.push(m) });
    assert.equal(describeBackend(b), "cpu (reference)");
    assert.match(notices.join("\n"), /reference: no shared memory/);
    await b.destroy();
  } finally {
    if (before === undefined) delete g.crossOriginIsolated;
    else g.crossOriginIsolated = before;
  }
});

test("bad options are MambaErrors", async () => {
  for (const threads of [0, 1.5, -1, 1000]) await assert.rejects(createCpuBackend({ threads }), MambaError, String(threads));
  await assert.rejects(createCpuBackend({ simd: "avx" as never }), MambaError);
  const ref = await createCpuBackend({ reference: true });
  assert.equal(describeBackend(ref), "cpu (reference)");
});
