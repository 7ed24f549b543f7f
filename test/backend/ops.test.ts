/**
 * Every op of every available backend against the CPU reference, on random shapes chosen to hit the edges:
 * sizes that are not multiples of a workgroup, L = 1, batch > 1, odd E and N, column windows of wider matrices,
 * states carried across chunks, f16 / bf16 weights against their float32 widening.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import type { Backend, SampleRequest, Tensor, TensorOrCols } from "../../src/backend/backend.ts";
import { cols } from "../../src/backend/backend.ts";
import { CpuBackend } from "../../src/backend/cpu/index.ts";
import { Rng } from "../../src/generate/rng.ts";
import { type HostTensor, toBF16Bits, toF16Bits } from "../../src/io/tensor.ts";
import { MambaError } from "../../src/errors.ts";
import { assertClose } from "../helpers/fixtures.ts";
import { backendCases, releaseWebgpu, unavailable } from "../helpers/backends.ts";

const ref = new CpuBackend();

function rand(rng: Rng, n: number, lo = -1, hi = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = lo + (hi - lo) * rng.next();
  return a;
}

/** Rows [t0, t1) of every sequence of a [B, L, width] array. */
function sliceSeq(a: Float32Array, B: number, L: number, width: number, t0: number, t1: number): Float32Array {
  const out = new Float32Array(B * (t1 - t0) * width);
  for (let b = 0; b < B; b++) out.set(a.subarray((b * L + t0) * width, (b * L + t1) * width), b * (t1 - t0) * width);
  return out;
}

/** A [rows, width] matrix placed at column `off` of a wider [rows, ld] matrix of noise: a column window. */
function windowed(bk: Backend, rng: Rng, data: Float32Array, rows: number, width: number, ld: number, off: number): TensorOrCols {
  if (ld === width) return bk.fromF32(data, [rows, width]);
  const wide = rand(rng, rows * ld, -9, 9);
  for (let r = 0; r < rows; r++) wide.set(data.subarray(r * width, (r + 1) * width), r * ld + off);
  return cols(bk.fromF32(wide, [rows, ld]), off, width);
}

function weightTensor(data: Float32Array, shape: number[], dtype: "F32" | "F16" | "BF16"): HostTensor {
  if (dtype === "F32") return { dtype, shape, data };
  return { dtype, shape, data: dtype === "F16" ? toF16Bits(data) : toBF16Bits(data) };
}

const tensorOf = (x: TensorOrCols): Tensor => ((x as { tensor?: Tensor }).tensor ?? (x as Tensor));

for (const c of backendCases) {
  describe(`ops on ${c.name}`, { timeout: 900_000 }, () => {
    let b: Backend | null = null;
    before(async () => {
      b = await c.get();
    });
    const it = (name: string, fn: (bk: Backend) => Promise<void>) =>
      test(name, async (t) => {
        if (!b) return unavailable(t, c.reason());
        await fn(b);
      });

    it("matmul: tiled and matrix-vector paths, column windows, bias, f16/bf16 weights", async (bk) => {
      const cases = [
        { T: 1, K: 8, N: 5, ld: 8, off: 0, bias: true },
        { T: 3, K: 12, N: 7, ld: 20, off: 4, bias: false },
        { T: 8, K: 36, N: 301, ld: 40, off: 4, bias: true },
        { T: 2, K: 1000, N: 37, ld: 1000, off: 0, bias: true }, // matrix-vector: 8 vec4s a lane, loaded at once
        { T: 1, K: 4100, N: 19, ld: 4104, off: 4, bias: false }, // matrix-vector: 128 lanes a row, 9 vec4s a lane, the last partial
        { T: 2, K: 4096, N: 9, ld: 4096, off: 0, bias: true }, // matrix-vector: 64 lanes a row, 16 vec4s a lane (1.4b's out_proj)
        { T: 1, K: 16400, N: 3, ld: 16400, off: 0, bias: false }, // matrix-vector: 256 lanes a row, 17 vec4s a lane, in batches
        { T: 5, K: 17, N: 33, ld: 17, off: 0, bias: true }, // K % 4 != 0: tiled even for few rows
        { T: 70, K: 36, N: 130, ld: 50, off: 13, bias: true },
        { T: 9, K: 1, N: 11, ld: 1, off: 0, bias: false }, // K = 1 (the LTI mixer's ones · dtᵀ)
        { T: 20, K: 300, N: 50, ld: 310, off: 5, bias: true }, // one tile along a long K: split over workgroups
        { T: 260, K: 20, N: 16500, ld: 20, off: 0, bias: true }, // enough tiles for the 128 x 128 kernel
        { T: 300, K: 68, N: 16400, ld: 72, off: 4, bias: true }, // 128 x 128 tiles, a 4-aligned column window
        { T: 131, K: 52, N: 16390, ld: 57, off: 5, bias: false }, // 128 x 128 tiles, a window not 4-aligned
      ];
      let seed = 1;
      for (const s of cases) {
        for (const dtype of ["F32", "F16", "BF16"] as const) {
          const rng = new Rng(seed++);
          const xh = rand(rng, s.T * s.K);
          const wh = rand(rng, s.N * s.K);
          const bh = rand(rng, s.N);
          const w = weightTensor(wh, [s.N, s.K], dtype);
          const run = async (k: Backend) => {
            const x = windowed(k, new Rng(seed), xh, s.T, s.K, s.ld, s.off);
            const wt = k.upload(w);
            const bt = s.bias ? k.fromF32(bh, [s.N]) : null;
            const y = k.matmul(x, wt, bt);
            assert.deepEqual([...y.shape], [s.T, s.N]);
            const out = await k.readF32(y);
            k.dispose(tensorOf(x), wt, bt, y);
            return out;
          };
          assertClose(await run(bk), await run(ref), 1e-4, `matmul ${JSON.stringify(s)} ${dtype}`);
        }
      }
    });

    it("addRmsNorm: with and without residual, rows wider than a workgroup", async (bk) => {
      for (const [T, D, withRes] of [[3, 37, true], [1, 5, false], [4, 300, true], [2, 768, false]] as const) {
        const rng = new Rng(T * 1000 + D);
        const xh = rand(rng, T * D, -3, 3);
        const rh = rand(rng, T * D, -3, 3);
        const wh = rand(rng, D, 0.5, 1.5);
        const run = async (k: Backend) => {
          const x = k.fromF32(xh, [T, D]);
          const r = withRes ? k.fromF32(rh, [T, D]) : null;
          const w = k.fromF32(wh, [D]);
          const o = k.addRmsNorm(x, r, w, 1e-5);
          const out = [await k.readF32(o.out), await k.readF32(o.residual)];
          k.dispose(x, r, w, o.out, o.residual);
          return out;
        };
        const [got, want] = [await run(bk), await run(ref)];
        assertClose(got[0]!, want[0]!, 1e-5, `addRmsNorm out T=${T} D=${D}`);
        assertClose(got[1]!, want[1]!, 1e-6, `addRmsNorm residual T=${T} D=${D}`);
      }
    });

    it("embedding: f32 and half-precision tables", async (bk) => {
      const rng = new Rng(7);
      const [V, D] = [11, 9];
      const table = rand(rng, V * D);
      const ids = Int32Array.from([3, 0, 10, 3, 7]);
      for (const dtype of ["F32", "F16", "BF16"] as const) {
        const run = async (k: Backend) => {
          const tb = k.upload(weightTensor(table, [V, D], dtype));
          const it = k.fromI32(ids, [ids.length]);
          const o = k.embedding(tb, it);
          const out = await k.readF32(o);
          k.dispose(tb, it, o);
          return out;
        };
        assertClose(await run(bk), await run(ref), 0, `embedding ${dtype}`);
      }
    });

    it("causalConv1dSilu: windows, L = 1, L < K - 1, batch > 1, state carried over chunks, no state", async (bk) => {
      // windows of 2E + 1 at E (unaligned: WebGPU's kernel of a thread a value); channels and windows on 4-float
      // boundaries take its kernel of 4 channels by runs of 8 positions (runs cut short, one run, K past 4)
      for (const { B, L, E, K, bias, chunks, ld = 2 * E + 1, off = E, state = true } of [
        { B: 2, L: 7, E: 5, K: 4, bias: true, chunks: [7] },
        { B: 1, L: 1, E: 3, K: 4, bias: false, chunks: [1] },
        { B: 3, L: 9, E: 7, K: 4, bias: true, chunks: [2, 1, 4, 2] },
        { B: 2, L: 6, E: 300, K: 3, bias: true, chunks: [1, 1, 4] },
        { B: 2, L: 21, E: 12, K: 4, bias: true, chunks: [21], ld: 28, off: 8 },
        { B: 3, L: 19, E: 8, K: 4, bias: false, chunks: [2, 9, 1, 7], ld: 16, off: 4 },
        { B: 1, L: 40, E: 264, K: 6, bias: true, chunks: [17, 23], ld: 264, off: 0 },
        { B: 2, L: 11, E: 16, K: 4, bias: true, chunks: [11], ld: 24, off: 8, state: false },
        { B: 2, L: 11, E: 5, K: 4, bias: true, chunks: [11], state: false },
      ]) {
        const rng = new Rng(B * 100 + L * 10 + E);
        const xh = rand(rng, B * L * E, -2, 2);
        const wh = rand(rng, E * K);
        const bh = rand(rng, E);
        const sh = rand(rng, B * (K - 1) * E, -2, 2);
        // reference: one pass of the whole sequence from the same initial state
        const want = await (async () => {
          const s = state ? ref.fromF32(sh, [B, K - 1, E]) : null;
          const y = ref.causalConv1dSilu(ref.fromF32(xh, [B * L, E]), ref.fromF32(wh, [E, 1, K]), bias ? ref.fromF32(bh, [E]) : null, s, { batch: B, seqLen: L });
          return { y: await ref.readF32(y), s: s ? await ref.readF32(s) : null };
        })();
        const w = bk.fromF32(wh, [E, 1, K]);
        const bt = bias ? bk.fromF32(bh, [E]) : null;
        const s = state ? bk.fromF32(sh, [B, K - 1, E]) : null;
        const parts: Float32Array[] = [];
        let t0 = 0;
        for (const len of chunks) {
          const x = windowed(bk, rng, sliceSeq(xh, B, L, E, t0, t0 + len), B * len, E, ld, off);
          const y = bk.causalConv1dSilu(x, w, bt, s, { batch: B, seqLen: len });
          parts.push(await bk.readF32(y));
          bk.dispose(tensorOf(x), y);
          t0 += len;
        }
        // reassemble [B, L, E] from the chunks' [B, len, E]
        const got = new Float32Array(B * L * E);
        t0 = 0;
        chunks.forEach((len, i) => {
          for (let bb = 0; bb < B; bb++) got.set(parts[i]!.subarray(bb * len * E, (bb + 1) * len * E), (bb * L + t0) * E);
          t0 += len;
        });
        const what = `conv B=${B} L=${L} E=${E} K=${K} chunks=${chunks} ld=${ld} off=${off} state=${state}`;
        assertClose(got, want.y, 1e-5, what);
        if (s) assertClose(await bk.readF32(s), want.s!, 0, `${what} state`);
        bk.dispose(w, bt, s);
      }
    });

    it("selectiveScan: odd E and N, L = 1, batch > 1, windows, with and without z, split sequences, carried state", async (bk) => {
      const cases = [
        { B: 1, L: 1, E: 5, N: 3, z: true, chunks: [1] },
        { B: 2, L: 9, E: 5, N: 3, z: true, chunks: [3, 1, 5] },
        { B: 3, L: 6, E: 130, N: 16, z: false, chunks: [6] },
        { B: 1, L: 200, E: 7, N: 5, z: true, chunks: [200] }, // long enough to be split into chunks
        { B: 2, L: 300, E: 3, N: 16, z: true, chunks: [1, 170, 129] },
        { B: 2, L: 1, E: 257, N: 16, z: true, chunks: [1] },
        { B: 70, L: 1, E: 9, N: 33, z: false, chunks: [1] }, // step mode: lanes of a channel past N, many rows
      ];
      for (const s of cases) {
        const { B, L, E, N } = s;
        const R = 2;
        const rng = new Rng(B * 7 + L * 3 + E * 11 + N);
        const uh = rand(rng, B * L * E, -2, 2);
        const dh = rand(rng, B * L * E, -4, 1.5);
        const biasH = rand(rng, E, -1, 1);
        const Ah = new Float32Array(E * N).map((_, i) => Math.log((i % N) + 1) + 0.3 * (rng.next() - 0.5));
        const Bh = rand(rng, B * L * N);
        const Ch = rand(rng, B * L * N);
        const Dh = rand(rng, E);
        const zh = rand(rng, B * L * E, -3, 3);
        const sh = rand(rng, B * E * N);
        const run = async (k: Backend, chunks: number[]) => {
          const st = k.fromF32(sh, [B, E, N]);
          const params = { deltaBias: k.fromF32(biasH, [E]), A_log: k.fromF32(Ah, [E, N]), D: k.fromF32(Dh, [E]) };
          const y = new Float32Array(B * L * E);
          let t0 = 0;
          for (const len of chunks) {
            const rows = B * len;
            // delta | B | C in one wide matrix as x_proj lays them out, z as the second half of in_proj
            const xdbl = new Float32Array(rows * (R + E + 2 * N));
            const dl = sliceSeq(dh, B, L, E, t0, t0 + len), bl = sliceSeq(Bh, B, L, N, t0, t0 + len), cl = sliceSeq(Ch, B, L, N, t0, t0 + len);
            for (let r = 0; r < rows; r++) {
              xdbl.set(dl.subarray(r * E, (r + 1) * E), r * (R + E + 2 * N) + R);
              xdbl.set(bl.subarray(r * N, (r + 1) * N), r * (R + E + 2 * N) + R + E);
              xdbl.set(cl.subarray(r * N, (r + 1) * N), r * (R + E + 2 * N) + R + E + N);
            }
            const wide = k.fromF32(xdbl, [rows, R + E + 2 * N]);
            const z = s.z ? windowed(k, rng, sliceSeq(zh, B, L, E, t0, t0 + len), rows, E, 2 * E, E) : null;
            const u = k.fromF32(sliceSeq(uh, B, L, E, t0, t0 + len), [B, len, E]);
            const out = k.selectiveScan({
              batch: B, seqLen: len, u, delta: cols(wide, R, E), ...params,
              B: cols(wide, R + E, N), C: cols(wide, R + E + N, N), z, state: st,
            });
            const part = await k.readF32(out);
            for (let bb = 0; bb < B; bb++) y.set(part.subarray(bb * len * E, (bb + 1) * len * E), (bb * L + t0) * E);
            k.dispose(wide, z ? tensorOf(z) : null, u, out);
            t0 += len;
          }
          const state = await k.readF32(st);
          k.dispose(st, params.deltaBias, params.A_log, params.D);
          return { y, state };
        };
        const want = await run(ref, [L]);
        const got = await run(bk, s.chunks);
        const what = `scan ${JSON.stringify(s)}`;
        assertClose(got.y, want.y, 1e-4, what);
        assertClose(got.state, want.state, 1e-4, `${what} final state`);
      }
    });

    it("selectiveScan without a state: zeros before the first position, nothing returned", async (bk) => {
      for (const [B, L, E, N] of [[2, 70, 9, 4], [3, 1, 9, 4]] as const) {
        const rng = new Rng(99 + L);
        const data = [rand(rng, B * L * E), rand(rng, B * L * E, -3, 1), rand(rng, E), rand(rng, E * N, 0, 1),
          rand(rng, B * L * N), rand(rng, B * L * N), rand(rng, E)];
        const run = async (k: Backend) => {
          const [u, d, bias, A, Bm, Cm, D] = data.map((x, i) => k.fromF32(x, i === 3 ? [E, N] : i === 2 || i === 6 ? [E] : [B * L, x.length / (B * L)]));
          const y = k.selectiveScan({ batch: B, seqLen: L, u: u!, delta: d!, deltaBias: bias!, A_log: A!, B: Bm!, C: Cm!, D: D!, z: null, state: null });
          return k.readF32(y);
        };
        assertClose(await run(bk), await run(ref), 1e-4, `scan without state, L = ${L}`);
      }
    });

    // temperature 1 and no cut or penalty; the settings below change one or two of these
    const plainSampling = { temperature: 1, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1 };

    it("sample: greedy, temperature, top-k, top-p, min-p, repetition penalty, padded rows", async (bk) => {
      await sampleMatches(bk, 4, 50, 53, 4, 1);
      // a vocabulary of many logits a thread (5001 over 128 threads: 40 each, the last partly past the row)
      await sampleMatches(bk, 2, 5001, 5004, 1, 5001);
    });

    it("sample: the GPU's short list of the best tokens and its full search agree where the list runs out", async (bk) => {
      // 20,000 logits over 30 nats: about 1700 within 2.5 nats of the best, 3300 within 5. The GPU collects the first
      // ones into a sorted list; top-k past it, top-p and min-p cuts past it, and draws past it need the search.
      await sampleMatches(bk, 1, 20000, 20000, 4, 20001, [
        { ...plainSampling, topK: 3000 }, { ...plainSampling, topK: 100 },
        { ...plainSampling, topP: 0.95 }, { ...plainSampling, topP: 0.5 },
        { ...plainSampling, minP: 0.05 }, { ...plainSampling, minP: 0.2 },
        plainSampling,
      ], 15);
    });

    async function sampleMatches(
      bk: Backend, rows: number, V: number, width: number, reps: number, seed0: number, only?: Omit<SampleRequest, "vocabSize" | "history" | "uniforms">[], spread = 6,
    ): Promise<void> {
      const settings = only ?? [
        { ...plainSampling, temperature: 0 },
        { ...plainSampling, temperature: 0, repetitionPenalty: 1.5 },
        plainSampling,
        { ...plainSampling, temperature: 0.7, topK: 5 },
        { ...plainSampling, temperature: 1.3, topP: 0.8 },
        { ...plainSampling, minP: 0.1 },
        { temperature: 0.9, topK: 20, topP: 0.9, minP: 0.05, repetitionPenalty: 1.2 },
        { ...plainSampling, temperature: 50 }, // nearly flat: every token a candidate
      ];
      let seed = seed0;
      for (const st of settings) {
        for (let rep = 0; rep < reps; rep++) {
          const rng = new Rng(seed++);
          const logits = rand(rng, rows * width, -spread, spread);
          const uniforms = rand(rng, rows, 0, 1);
          const history = Array.from({ length: rows }, () => Int32Array.from({ length: 12 }, () => rng.int(V)));
          const req = { vocabSize: V, ...st, history, uniforms };
          const run = async (k: Backend) => {
            const lt = k.fromF32(logits, [rows, width]);
            const ids = k.sample(lt, req);
            const out = await k.readI32(ids);
            k.dispose(lt, ids);
            return Array.from(out);
          };
          const got = await run(bk);
          assert.deepEqual(got, await run(ref), `sample V ${V} ${JSON.stringify(st)} rep ${rep}`);
          assert.ok(got.every((id) => id >= 0 && id < V), "ids stay below vocabSize");
        }
      }
    }

    it("concat0, takeRows, copyInto, zeros and round trips", async (bk) => {
      const rng = new Rng(5);
      const a = rand(rng, 2 * 3 * 5), c = rand(rng, 1 * 3 * 5);
      const ta = bk.fromF32(a, [2, 3, 5]), tc = bk.fromF32(c, [1, 3, 5]);
      const cat = bk.concat0([ta, tc]);
      assert.deepEqual([...cat.shape], [3, 3, 5]);
      assert.deepEqual(Array.from(await bk.readF32(cat)), [...a, ...c]);
      const rows = [4, 0, 1, 2, 8];
      const taken = bk.takeRows(cat, rows);
      const all = [...a, ...c];
      assert.deepEqual(Array.from(await bk.readF32(taken)), rows.flatMap((r) => all.slice(r * 5, r * 5 + 5)));
      const z = bk.zeros([2, 7]);
      assert.deepEqual(Array.from(await bk.readF32(z)), new Array(14).fill(0));
      const src = bk.fromF32(rand(rng, 14), [2, 7]);
      bk.copyInto(z, src);
      assert.deepEqual(Array.from(await bk.readF32(z)), Array.from(await bk.readF32(src)));
      const ints = Int32Array.from([5, -3, 2 ** 30, 0, 7]);
      const ti = bk.fromI32(ints, [5]);
      assert.deepEqual(Array.from(await bk.readI32(bk.concat0([ti, ti]))), [...ints, ...ints]);
      const half = bk.upload({ dtype: "BF16", shape: [3], data: toBF16Bits(Float32Array.of(1.5, -2, 0.25)) });
      assert.deepEqual(Array.from(await bk.readF32(half)), [1.5, -2, 0.25]);
      bk.dispose(ta, tc, cat, taken, z, src, ti, half);
    });

    if (c.name === "webgpu") {
      it("clear errors: a buffer over the device's limits, a tensor of another backend", async (bk) => {
        assert.throws(() => bk.zeros([2 ** 20, 2 ** 12]), (e: unknown) => e instanceof MambaError && /allows at most/.test(e.message));
        const cpuTensor = ref.fromF32(new Float32Array(4), [2, 2]);
        assert.throws(() => bk.addRmsNorm(cpuTensor, null, cpuTensor, 1e-5), (e: unknown) => e instanceof MambaError && /another backend/.test(e.message));
        // the backend still works afterwards
        const t = bk.fromF32(Float32Array.of(1, 2), [2]);
        assert.deepEqual(Array.from(await bk.readF32(t)), [1, 2]);
      });
    }
  });
}

after(releaseWebgpu);
