/**
 * The wasm CPU engine's ops against the reference CPU backend, on random shapes including edge sizes (K and N not
 * multiples of 4, 8 or 16, one row, column windows), for f32, f16 and bf16 weights, with both SIMD builds and 1, 2
 * and 3 threads; and the same bits whatever the thread count.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { CpuBackend } from "../../src/backend/cpu/index.ts";
import { cols, type Backend, type Tensor } from "../../src/backend/backend.ts";
import { createWasmCpuBackend } from "../../src/backend/wasm/index.ts";
import { wasmEngines } from "../helpers/wasm-engines.ts";
import { toBF16Bits, toF16Bits, type HostTensor } from "../../src/io/tensor.ts";
import { assertClose } from "../helpers/fixtures.ts";

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296 - 0.5;
  };
}
const rand = (r: () => number, n: number, scale = 1) => Float32Array.from({ length: n }, () => r() * scale);

const ref = new CpuBackend();
const engines = wasmEngines();

const read = (b: Backend, t: Tensor) => b.readF32(t);

/** The half-precision weights as the reference sees them (widened to f32 on upload). */
function weight(dtype: "F32" | "F16" | "BF16", w: Float32Array, shape: number[]): HostTensor {
  if (dtype === "F32") return { dtype, shape, data: w };
  return { dtype, shape, data: dtype === "F16" ? toF16Bits(w) : toBF16Bits(w) };
}

describe("wasm engine ops against the reference", { timeout: 120_000 }, () => {
  test("the engines run the kernels they are asked for", () => {
    assert.match(engines[0]!.b.engine, /^cpu \(wasm simd relaxed, 1 thread\)$/);
    assert.match(engines.find((e) => e.name === "plain, 3 threads")!.b.engine, /^cpu \(wasm simd plain, 3 threads\)$/);
    for (const e of engines) assert.deepEqual(e.b.referenceOps, []);
  });

  // rows T, inputs K, outputs N; a window of the input's columns when ld > K
  const shapes: [number, number, number, number][] = [
    [1, 1, 1, 1], [1, 3, 5, 3], [1, 64, 37, 64], [2, 17, 9, 17], [3, 16, 16, 20], [5, 33, 31, 40],
    [7, 100, 67, 100], [1, 768, 131, 768], [13, 48, 260, 48], [130, 70, 45, 90], [4, 5, 1027, 9],
  ];
  for (const dtype of ["F32", "F16", "BF16"] as const) {
    test(`matmul, ${dtype} weights: random shapes, column windows, bias or none`, async () => {
      const r = rng(dtype.length * 7 + 1);
      for (const [T, K, N, ld] of shapes) {
        const x = rand(r, T * ld);
        const w = rand(r, N * K);
        const bias = r() > 0 ? rand(r, N) : null;
        const col0 = ld - K;
        const run = (b: Backend) => {
          const xt = b.fromF32(x, [T, ld]);
          const y = b.matmul(col0 > 0 ? cols(xt, col0, K) : xt, b.upload(weight(dtype, w, [N, K])), bias ? b.fromF32(bias, [N]) : null);
          return read(b, y);
        };
        const want = await run(ref);
        let first: Float32Array | null = null;
        for (const e of engines) {
          const got = await run(e.b);
          assertClose(got, want, 2e-5 * Math.sqrt(K) + 1e-6, `${dtype} T ${T} K ${K} N ${N} ld ${ld} (${e.name})`);
          if (e.name.startsWith("relaxed")) {
            if (first) assert.deepEqual(new Uint32Array(got.buffer), new Uint32Array(first.buffer), `bits, ${e.name}`);
            else first = got;
          }
        }
      }
    });
  }

  test("matmul: the same bits with 1, 2 and 3 threads on a product big enough to be split", async () => {
    const r = rng(3);
    const [T, K, N] = [37, 96, 301];
    const x = rand(r, T * K), w = rand(r, N * K);
    const bits: Uint32Array[] = [];
    for (const threads of [1, 2, 3]) {
      const b = await createWasmCpuBackend({ threads });
      for (const dtype of ["F32", "F16"] as const) {
        const y = await b.readF32(b.matmul(b.fromF32(x, [T, K]), b.upload(weight(dtype, w, [N, K])), null));
        bits.push(new Uint32Array(y.buffer));
      }
      await b.destroy();
    }
    for (let i = 2; i < bits.length; i++) assert.deepEqual(bits[i], bits[i % 2], `run ${i}`);
  });

  test("matmul, one row over f16 weights with subnormal and zero halves, small and large activations: the bits of the many-row product", async () => {
    const r = rng(23);
    for (const [K, N, every] of [[5, 3, 7], [37, 19, 7], [64, 41, 23], [203, 17, 97]] as const) {
      const w = rand(r, N * K, 0.1);
      // subnormal halves (|w| < 2^-14) and zeros: scattered (one in `every`) and in a run of 16
      for (let i = 0; i < w.length; i += every) w[i] = (r() > 0 ? 1 : -1) * (1 + Math.floor((r() + 0.5) * 1023)) * 2 ** -24;
      for (let i = 0; i < Math.min(16, w.length); i++) w[i] = i % 2 ? 0 : -(2 ** -20);
      if (w.length > 3) w[3] = -0;
      for (const xScale of [1, 1e-30, 2 ** 15, 4e4]) {
        const x = rand(r, K, xScale);
        x[0] = 0;
        if (K > 2) x[2] = 2 ** -130; // a subnormal activation
        for (const e of engines) {
          const b = e.b;
          const wt = b.upload(weight("F16", w, [N, K]));
          const one = await b.readF32(b.matmul(b.fromF32(x, [1, K]), wt, null));
          const x4 = new Float32Array(4 * K);
          for (let t = 0; t < 4; t++) x4.set(x, t * K);
          const four = await b.readF32(b.matmul(b.fromF32(x4, [4, K]), wt, null));
          const label = `K ${K} N ${N} x scale ${xScale} (${e.name})`;
          assert.deepEqual(new Uint32Array(one.buffer), new Uint32Array(four.buffer, 0, N), `bits, ${label}`);
          const want = await ref.readF32(ref.matmul(ref.fromF32(x, [1, K]), ref.upload(weight("F16", w, [N, K])), null));
          const largest = Math.max(...x.map(Math.abs));
          assertClose(one, want, (2e-5 * Math.sqrt(K) + 1e-6) * Math.max(1, largest), label);
        }
      }
    }
  });

  for (const dtype of ["F32", "F16", "BF16"] as const) {
    test(`embedding, ${dtype} table: rows gathered and widened exactly as the reference widens them`, async () => {
      const r = rng(11);
      for (const [V, D] of [[7, 1], [50, 13], [300, 64]]) {
        const table = rand(r, V * D);
        const ids = Int32Array.from({ length: 19 }, (_, i) => (i * 31 + 3) % V);
        const run = async (b: Backend) => b.readF32(b.embedding(b.upload(weight(dtype, table, [V, D])), b.fromI32(ids, [ids.length])));
        const want = await run(ref);
        for (const e of engines) assert.deepEqual(await run(e.b), want, `${dtype} V ${V} D ${D} (${e.name})`);
      }
    });
  }

  test("f16 and bf16 widening in the kernels: every finite half pattern exactly as the reference widens it", async () => {
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    for (const dtype of ["F16", "BF16"] as const) {
      const host: HostTensor = { dtype, shape: [1024, 64], data: all };
      const want = await ref.readF32(ref.upload(host));
      for (const e of engines) {
        const b = e.b;
        const got = await b.readF32(b.embedding(b.upload(host), b.fromI32(Int32Array.from({ length: 1024 }, (_, i) => i), [1024])));
        for (let i = 0; i < 65536; i++) {
          const finite = dtype === "F16" ? (i & 0x7c00) !== 0x7c00 : (i & 0x7f80) !== 0x7f80;
          if (finite && !Object.is(got[i], want[i])) assert.fail(`${dtype} pattern 0x${i.toString(16)}: ${got[i]} != ${want[i]} (${e.name})`);
        }
      }
    }
  });

  test("embedding: an id outside the table is a MambaError", async () => {
    const b = engines[0]!.b;
    const table = b.fromF32(new Float32Array(12), [3, 4]);
    assert.throws(() => b.embedding(table, b.fromI32(Int32Array.of(0, 3), [2])), /outside the table/);
  });

  test("addRmsNorm: with and without a residual, D not a multiple of 4", async () => {
    const r = rng(5);
    for (const [T, D] of [[1, 1], [3, 7], [9, 64], [40, 130]]) {
      const x = rand(r, T * D), res = rand(r, T * D), w = rand(r, D);
      for (const withRes of [true, false]) {
        const run = async (b: Backend) => {
          const o = b.addRmsNorm(b.fromF32(x, [T, D]), withRes ? b.fromF32(res, [T, D]) : null, b.fromF32(w, [D]), 1e-5);
          return [await b.readF32(o.out), await b.readF32(o.residual)] as const;
        };
        const [wo, wr] = await run(ref);
        for (const e of engines) {
          const [go, gr] = await run(e.b);
          assertClose(go, wo, 1e-5, `out T ${T} D ${D} (${e.name})`);
          assert.deepEqual(gr, wr, `residual T ${T} D ${D} (${e.name})`);
        }
      }
    }
  });

  test("causalConv1dSilu: a column window, with and without state and bias, K 4 and 3", async () => {
    const r = rng(9);
    for (const [B, L, E, K] of [[1, 1, 5, 4], [2, 7, 13, 4], [1, 33, 64, 4], [2, 5, 9, 3]]) {
      const ld = 2 * E + 1;
      const x = rand(r, B * L * ld), w = rand(r, E * K), bias = rand(r, E), state = rand(r, B * (K - 1) * E);
      for (const withState of [true, false]) {
        const run = async (b: Backend) => {
          const st = withState ? b.fromF32(state, [B, K - 1, E]) : null;
          const y = b.causalConv1dSilu(cols(b.fromF32(x, [B * L, ld]), 1, E), b.fromF32(w, [E, 1, K]), withState ? b.fromF32(bias, [E]) : null, st, { batch: B, seqLen: L });
          return [await b.readF32(y), st ? await b.readF32(st) : new Float32Array(0)] as const;
        };
        const [wy, ws] = await run(ref);
        for (const e of engines) {
          const [gy, gs] = await run(e.b);
          assertClose(gy, wy, 1e-5, `y B ${B} L ${L} E ${E} K ${K} (${e.name})`);
          assert.deepEqual(gs, ws, `state (${e.name})`);
        }
      }
    }
  });

  test("selectiveScan: windows for delta, B, C and z, with and without state; the state carried on", async () => {
    const r = rng(13);
    for (const [B, L, E, N] of [[1, 1, 5, 16], [2, 9, 13, 16], [1, 40, 64, 8], [3, 3, 6, 4]]) {
      const T = B * L, R = 3;
      const xdbl = rand(r, T * (R + 2 * N)), xz = rand(r, T * 2 * E), u = rand(r, T * E), delta = rand(r, T * E);
      const dBias = rand(r, E), aLog = rand(r, E * N), D = rand(r, E), state = rand(r, B * E * N);
      for (const withState of [true, false]) {
        const run = async (b: Backend) => {
          const xd = b.fromF32(xdbl, [T, R + 2 * N]);
          const st = withState ? b.fromF32(state, [B, E, N]) : null;
          const args = {
            batch: B, seqLen: L, u: b.fromF32(u, [B, L, E]), delta: b.fromF32(delta, [T, E]), deltaBias: b.fromF32(dBias, [E]),
            A_log: b.fromF32(aLog, [E, N]), B: cols(xd, R, N), C: cols(xd, R + N, N), D: b.fromF32(D, [E]),
            z: cols(b.fromF32(xz, [T, 2 * E]), E, E), state: st,
          };
          const y1 = await b.readF32(b.selectiveScan(args));
          const y2 = await b.readF32(b.selectiveScan(args)); // continues from the state the first call left
          return [y1, y2, st ? await b.readF32(st) : new Float32Array(0)] as const;
        };
        const want = await run(ref);
        for (const e of engines) {
          const got = await run(e.b);
          for (let i = 0; i < 3; i++) assertClose(got[i]!, want[i]!, 1e-4, `part ${i} B ${B} L ${L} E ${E} N ${N} (${e.name})`);
        }
      }
    }
  });

  test("greedy sample: each row's first largest value, ids >= vocabSize never drawn", async () => {
    const r = rng(17);
    const V = 203, rows = 5;
    const logits = rand(r, rows * V);
    logits[7] = 9; logits[9] = 9; // a tie in row 0: the first wins
    logits[V + 202] = 50; // row 1's largest is a padding id
    const req = { vocabSize: 200, temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, history: null, uniforms: new Float32Array(rows) };
    const want = await ref.readI32(ref.sample(ref.fromF32(logits, [rows, V]), req));
    for (const e of engines) assert.deepEqual(await e.b.readI32(e.b.sample(e.b.fromF32(logits, [rows, V]), req)), want, e.name);
    assert.equal(want[0], 7);
  });

  test("half-precision weights: a reference op reads them widened; a write widens them for good", async () => {
    const b = engines[1]!.b;
    const r = rng(19);
    const w = rand(r, 8 * 64);
    const host = weight("F16", w, [8, 64]);
    const t = b.upload(host);
    const wide = await b.readF32(t);
    assert.deepEqual(wide, await ref.readF32(ref.upload(host)));
    b.addScaled(t, b.fromF32(new Float32Array(8 * 64).fill(1), [8, 64]), 0.5);
    const after1 = await b.readF32(t);
    assert.deepEqual(after1, wide.map((v) => Math.fround(v + 0.5)));
    const y = await b.readF32(b.matmul(b.fromF32(new Float32Array(64).fill(1), [1, 64]), t, null));
    const yr = await ref.readF32(ref.matmul(ref.fromF32(new Float32Array(64).fill(1), [1, 64]), ref.fromF32(after1, [8, 64]), null));
    assertClose(y, yr, 1e-4, "product after the write");
  });

  test("dispose returns blocks that later tensors reuse", async () => {
    const b = engines[0]!.b;
    const before1 = b.rt.used;
    const t = b.zeros([1000]);
    assert.ok(b.rt.used > before1);
    b.dispose(t, t);
    assert.equal(b.rt.used, before1);
    assert.throws(() => b.matmul(t, b.fromF32(new Float32Array(1000), [1, 1000]), null), /disposed/);
  });
});
