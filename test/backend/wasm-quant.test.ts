/**
 * The CPU engine's quantized weights (Q8_0 and Q4_0 blocks kept in the wasm memory, assembly/quant.ts), on random
 * shapes with edge sizes (outputs 1 / 3 / 33 / 70, K 32 / 64 / 96 / 800, rows 1 / 2 / 5 / 9, with and without bias,
 * a column window of a wider input), bitwise the same for 1, 2 and 3 threads, in both SIMD builds:
 *  - 4 rows and more (prefill): equal, bit for bit, to the engine's own f32 product over the dequantized matrix (the
 *    kernels multiply the exact dequantized values in its order), and to the reference backend's within rounding;
 *  - 1 to 3 rows (decode: integer dot products over the rows quantized to int16 blocks): equal to their twin here
 *    (quantize the rows the same way, then the f32 op) within float rounding, and to the f32 product of the
 *    dequantized weights within the activations' rounding (half a step of each block, times the weights);
 *  - the embedding gather and every f32 read of a quantized tensor give its exact dequantized values;
 *  - llama.cpp's GGUF fixtures (test/fixtures/gguf) give their expected logits within 1e-4, through prefill and
 *    token by token (decode), and the reference backend's greedy ids, with the quantized matrices held in their
 *    blocks.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { loadModel } from "../../src/index.ts";
import { cols } from "../../src/backend/backend.ts";
import type { Backend, Tensor } from "../../src/backend/backend.ts";
import { createCpuBackend } from "../../src/backend/wasm/create.ts";
import { MambaCache } from "../../src/model/cache.ts";
import { WasmCpuBackend, WasmTensor } from "../../src/backend/wasm/index.ts";
import { type QuantType, dequantize, quantizeQ4_0, quantizeQ8_0 } from "../../src/io/quant.ts";
import { assertClose, fixture, readSafetensorsAny } from "../helpers/fixtures.ts";
import { TestRng } from "../helpers/random.ts";

const TYPES: QuantType[] = ["Q8_0", "Q4_0"];
const quantize = (type: QuantType, v: Float32Array) => (type === "Q8_0" ? quantizeQ8_0(v) : quantizeQ4_0(v));

function randn(rng: TestRng, n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (rng.next() * 2 - 1) * scale;
  return out;
}

interface Case { nOut: number; K: number; rows: number; bias: boolean; window: boolean }
const CASES: Case[] = [];
for (const nOut of [1, 3, 33, 70]) {
  for (const K of [32, 64, 96, 800]) {
    for (const rows of [1, 2, 5, 9]) CASES.push({ nOut, K, rows, bias: (nOut + K + rows) % 2 === 0, window: rows === 2 || rows === 5 });
  }
}

/** Bitwise-equality helper for f32 arrays (NaN-safe, gives the first differing index). */
function assertBitwise(a: Float32Array, b: Float32Array, what: string): void {
  assert.equal(a.length, b.length, `${what}: lengths`);
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length), ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) assert.fail(`${what}: index ${i}: ${a[i]} vs ${b[i]}`);
}

/** One case's inputs: x [rows, K] (or a window of [rows, K + 40]), quantized w [nOut, K], bias [nOut]. */
function makeCase(type: QuantType, c: Case, seed: number) {
  const rng = new TestRng(seed);
  const ld = c.window ? c.K + 40 : c.K;
  const x = randn(rng, c.rows * ld);
  const wF32 = randn(rng, c.nOut * c.K, 0.5);
  // a few blocks of zeros (scale 0) and of one large value, as real checkpoints have
  wF32.fill(0, 0, Math.min(32, wF32.length));
  if (wF32.length >= 96) wF32[70] = 40;
  const blocks = quantize(type, wF32);
  return { ld, x, blocks, wDeq: dequantize(type, blocks, c.nOut * c.K), bias: c.bias ? randn(rng, c.nOut) : null };
}

/** Round half to even, as f32x4.nearest. */
function roundEven(v: number): number {
  const r = Math.round(v);
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The decode path's twin: each row quantized to int16 blocks of 32 as assembly/quant.ts's quantizeRowI16 does
 *  (dx = max|x| / 32767 in f32, q = round_even(x · f32(1 / dx)) saturated), then the f32 op: y = sum over blocks of
 *  (exact integer sum) · f32(dw · dx) + bias, here in float64. Also gives each output's sum of |terms| (the scale
 *  of its rounding) and the bound of its difference from the f32 product of the dequantized weights (half a step
 *  of each activation block times the block's |weights|). */
function twinI16(c: Case, ld: number, col0: number, x: Float32Array, wDeq: Float32Array, bias: Float32Array | null) {
  const nb = c.K / 32;
  const y = new Float64Array(c.rows * c.nOut), mag = new Float64Array(c.rows * c.nOut), actBound = new Float64Array(c.rows * c.nOut);
  for (let t = 0; t < c.rows; t++) {
    const q = new Int32Array(c.K), dx = new Float64Array(nb);
    for (let b = 0; b < nb; b++) {
      let amax = 0;
      for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[t * ld + col0 + b * 32 + j]!));
      const d = Math.fround(amax / 32767);
      const id = d !== 0 ? Math.fround(1 / d) : 0;
      dx[b] = d;
      for (let j = 0; j < 32; j++) q[b * 32 + j] = Math.max(-32768, Math.min(32767, roundEven(Math.fround(x[t * ld + col0 + b * 32 + j]! * id))));
    }
    for (let n = 0; n < c.nOut; n++) {
      let s = bias ? bias[n]! : 0, m = bias ? Math.abs(bias[n]!) : 0, e = 0;
      for (let b = 0; b < nb; b++) {
        // the weight block's scale: wDeq = qw · dw exactly; the integer sum of qw · qx is exact in float64
        let isum = 0, iabs = 0, wabs = 0;
        for (let j = 0; j < 32; j++) {
          const k = b * 32 + j;
          isum += wDeq[n * c.K + k]! * q[k]!;
          iabs += Math.abs(wDeq[n * c.K + k]! * q[k]!);
          wabs += Math.abs(wDeq[n * c.K + k]!);
        }
        s += isum * dx[b]!;
        m += iabs * dx[b]!;
        e += wabs * dx[b]! * 0.5000001;
      }
      y[t * c.nOut + n] = s; mag[t * c.nOut + n] = m; actBound[t * c.nOut + n] = e;
    }
  }
  return { y, mag, actBound };
}

async function product(b: Backend, c: Case, ld: number, x: Float32Array, w: Tensor, bias: Float32Array | null): Promise<Float32Array> {
  const xt = b.fromF32(x, [c.rows, ld]);
  const bt = bias ? b.fromF32(bias, [c.nOut]) : null;
  const y = b.matmul(c.window ? cols(xt, 17, c.K) : xt, w, bt);
  const out = await b.readF32(y);
  b.dispose(xt, bt, y);
  return out;
}

describe("quantized products, gather and dequantization (wasm engine)", { timeout: 240_000 }, () => {
  for (const simd of ["auto", "plain"] as const) {
    test(`matmul over Q8_0 / Q4_0 equals the f32 product of the dequantized weights (${simd} simd, 1-3 threads)`, async () => {
      const ref = await createCpuBackend({ reference: true });
      const engines = await Promise.all([1, 2, 3].map((threads) => createCpuBackend({ threads, simd })));
      try {
        for (const type of TYPES) {
          for (let i = 0; i < CASES.length; i++) {
            const c = CASES[i]!;
            const what = `${type} nOut ${c.nOut} K ${c.K} rows ${c.rows}${c.bias ? " bias" : ""}${c.window ? " window" : ""}`;
            const { ld, x, blocks, wDeq, bias } = makeCase(type, c, 1000 + i);
            // the reference twin: dequantize, then the f32 op (its products in float64 sums rounded once, or f32)
            const wRef = ref.upload({ dtype: "F32", shape: [c.nOut, c.K], data: wDeq });
            const want = await product(ref, c, ld, x, wRef, bias);
            ref.dispose(wRef);
            let first: Float32Array | null = null;
            for (const [e, b] of engines.entries()) {
              const wq = b.upload({ dtype: type, shape: [c.nOut, c.K], data: blocks });
              assert.ok(wq instanceof WasmTensor && wq.storage === type && wq.bytes === blocks.length, `${what}: held in its blocks`);
              const got = await product(b, c, ld, x, wq, bias);
              b.dispose(wq);
              if (first === null) first = got;
              else assertBitwise(got, first, `${what}: ${e + 1} threads against 1`);
              if (c.rows < 4) {
                // decode: the twin within float rounding (the block sums' conversion and products, the f32 sum), and
                // the f32 product of the dequantized weights within the activations' rounding
                const tw = twinI16(c, ld, c.window ? 17 : 0, x, wDeq, bias);
                for (let o = 0; o < got.length; o++) {
                  const d = Math.abs(got[o]! - tw.y[o]!);
                  if (!(d <= (c.K / 32 + 4) * 2 ** -23 * tw.mag[o]! + 1e-30)) assert.fail(`${what}: [${o}] ${got[o]} vs twin ${tw.y[o]}`);
                  const dr = Math.abs(got[o]! - want[o]!);
                  if (!(dr <= tw.actBound[o]! + (c.K + 4) * 2 ** -23 * tw.mag[o]! + 1e-30)) assert.fail(`${what}: [${o}] ${got[o]} vs reference ${want[o]}: beyond the activations' rounding`);
                }
                continue;
              }
              const wf = b.upload({ dtype: "F32", shape: [c.nOut, c.K], data: wDeq });
              assertBitwise(got, await product(b, c, ld, x, wf, bias), `${what}, ${e + 1} threads: against the engine's f32 product of the dequantized weights`);
              b.dispose(wf);
              // against the reference within float rounding: K roundings of at most 2^-24 of the sum of |terms|
              for (let t = 0; t < c.rows; t++) {
                for (let n = 0; n < c.nOut; n++) {
                  let mag = bias ? Math.abs(bias[n]!) : 0;
                  for (let k = 0; k < c.K; k++) mag += Math.abs(x[t * ld + (c.window ? 17 : 0) + k]! * wDeq[n * c.K + k]!);
                  const d = Math.abs(got[t * c.nOut + n]! - want[t * c.nOut + n]!);
                  if (!(d <= (c.K + 2) * 2 ** -24 * mag + 1e-30)) assert.fail(`${what}: [${t}, ${n}] ${got[t * c.nOut + n]} vs reference ${want[t * c.nOut + n]}`);
                }
              }
            }
          }
        }
      } finally {
        await Promise.all([ref, ...engines].map((b) => b.destroy()));
      }
    });
  }

  test("embedding rows, the widened copy and f32 reads of a quantized tensor are its exact dequantized values", async () => {
    const rng = new TestRng(7);
    for (const threads of [1, 2]) {
      const b = await createCpuBackend({ threads });
      for (const type of TYPES) {
        for (const [V, D] of [[5, 32], [300, 96], [64, 800]] as const) {
          const table = quantize(type, randn(rng, V * D));
          const deq = dequantize(type, table, V * D);
          const t = b.upload({ dtype: type, shape: [V, D], data: table });
          assert.ok(t instanceof WasmTensor && t.storage === type);
          const ids = Int32Array.from({ length: 2 * V + 3 }, (_, i) => (i * 31 + 2) % V);
          const idt = b.fromI32(ids, [ids.length]);
          const rows = await b.readF32(b.embedding(t, idt));
          const want = new Float32Array(ids.length * D);
          ids.forEach((id, i) => want.set(deq.subarray(id * D, (id + 1) * D), i * D));
          assertBitwise(rows, want, `${type} [${V}, ${D}] gather, ${threads} threads`);
          assertBitwise(await b.readF32(t), deq, `${type} [${V}, ${D}] read as f32`);
          // an op that reads it as f32 activations (the engine dequantizes into a temporary)
          const w = b.fromF32(randn(rng, 3 * D), [3, D]);
          const viaQ = await b.readF32(b.matmul(t, w, null));
          const viaF = await b.readF32(b.matmul(b.fromF32(deq, [V, D]), w, null));
          assertBitwise(viaQ, viaF, `${type} [${V}, ${D}] as a product's input`);
          b.dispose(t, idt, w);
        }
      }
      await b.destroy();
    }
  });

  test("a quantized matrix whose rows are not whole blocks, and a quantized vector, are dequantized at upload", async () => {
    const b = await createCpuBackend({ threads: 1 });
    const rng = new TestRng(3);
    const v = randn(rng, 64);
    for (const type of TYPES) {
      for (const shape of [[4, 16], [64]]) {
        const t = b.upload({ dtype: type, shape, data: quantize(type, v) });
        assert.ok(t instanceof WasmTensor && t.storage === "F32", `${type} [${shape}]`);
        assertBitwise(await b.readF32(t), dequantize(type, quantize(type, v), 64), `${type} [${shape}]`);
      }
    }
    await b.destroy();
  });
});

describe("llama.cpp's quantized GGUF fixtures on the wasm engine", { timeout: 240_000 }, () => {
  for (const name of ["tiny-q8_0", "tiny-q4_0"]) {
    const file = fixture("gguf", `${name}.gguf`);
    for (const s of [{ threads: 1, simd: "auto" as const }, { threads: 2, simd: "plain" as const }, { threads: 3, simd: "auto" as const }]) {
      test(`${name}: expected logits within 1e-4, greedy ids of the reference backend (${s.threads} threads, ${s.simd} simd)`, async () => {
        const exp = await readSafetensorsAny(fixture("gguf", `${name}.expected.safetensors`));
        const backend = await createCpuBackend(s);
        assert.ok(backend instanceof WasmCpuBackend);
        const model = await loadModel(file, { backend });
        // the quantized matrices (embedding = tied head, in_proj, x_proj, out_proj) are held in their blocks
        const type = name.endsWith("q8_0") ? "Q8_0" : "Q4_0";
        const emb = model.lm.weights.embeddings;
        assert.ok(emb instanceof WasmTensor && emb.storage === type, "embedding held quantized");
        const inProj = model.lm.weights.layers[0]!.mixer.inProj;
        assert.ok(inProj instanceof WasmTensor && inProj.storage === type, "in_proj held quantized");
        const ids = exp.get("input_ids")!;
        const [batch, seqLen] = ids.shape as [number, number];
        const out = await model.forward(ids.i32, { batch, seqLen });
        assertClose(out.logits, exp.get("logits")!.f32, 1e-4, `${name} logits`);
        // token by token (the decode path: integer dot products over int16-quantized rows), each batch row alone
        const lm = model.lm;
        for (let r = 0; r < batch; r++) {
          const cache = MambaCache.zeros(backend, lm.config, 1);
          for (let p = 0; p < seqLen; p++) {
            const idt = backend.fromI32(ids.i32.subarray(r * seqLen + p, r * seqLen + p + 1), [1]);
            const h = lm.hidden(idt, { batch: 1, seqLen: 1 }, cache);
            const lg = lm.logits(h);
            const V = exp.get("logits")!.shape[2]!;
            const got = (await backend.readF32(lg)).subarray(0, V);
            assertClose(got, exp.get("logits")!.f32.subarray((r * seqLen + p) * V, (r * seqLen + p + 1) * V), 1e-4, `${name} decode logits, row ${r}, position ${p}`);
            backend.dispose(idt, h, lg);
          }
          cache.dispose();
        }
        // the exact path (int16Activations off): decode's products equal prefill's, far inside 1e-4
        backend.int16Activations = false;
        {
          const cache = MambaCache.zeros(backend, lm.config, 1);
          const V = exp.get("logits")!.shape[2]!;
          for (let p = 0; p < seqLen; p++) {
            const idt = backend.fromI32(ids.i32.subarray(p, p + 1), [1]);
            const h = lm.hidden(idt, { batch: 1, seqLen: 1 }, cache);
            const lg = lm.logits(h);
            assertClose((await backend.readF32(lg)).subarray(0, V), exp.get("logits")!.f32.subarray(p * V, (p + 1) * V), 1e-5, `${name} exact decode logits, position ${p}`);
            backend.dispose(idt, h, lg);
          }
          cache.dispose();
        }
        backend.int16Activations = true;
        const prompt = ids.i32.subarray(0, seqLen);
        const got = await model.generate(prompt, { maxNewTokens: 16, stopTokens: [] });
        await model.dispose();
        const ref = await loadModel(file, { backend: await createCpuBackend({ reference: true }) });
        const want = await ref.generate(prompt, { maxNewTokens: 16, stopTokens: [] });
        await ref.dispose();
        assert.deepEqual(Array.from(got), Array.from(want));
      });
    }
  }
});
