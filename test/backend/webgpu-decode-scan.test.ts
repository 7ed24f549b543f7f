/**
 * The decode scan kernels alone against a plain reference on random inputs of order one (the model-level decode
 * tests reach dt_proj only through small random weights, where an error in it moves the states little): the batch
 * step's thread kernel (kernels/decode/batch-scan.ts) with each rows-a-workgroup choice, f32 and f16 dt_proj,
 * and the fused step's block kernel (kernels/decode/mixer-scan.ts), on shapes whose channels and rows do not fill
 * their last workgroup.
 */
import { test } from "node:test";
import { BATCH_SCAN_ROW_CHOICES, decodeBatchScan } from "../../src/backend/webgpu/kernels/decode/batch-scan.ts";
import { decodeMixerScan } from "../../src/backend/webgpu/kernels/decode/mixer-scan.ts";
import { toF16Bits, toFloat32 } from "../../src/io/tensor.ts";
import { assertClose } from "../helpers/fixtures.ts";
import { withOwnWebgpu } from "../helpers/backends.ts";
import { TestRng } from "../helpers/random.ts";

interface ScanCase { B: number; E: number; N: number; R: number; G: number }

const uniform = (rng: TestRng, n: number, lo: number, hi: number) => Float32Array.from({ length: n }, () => lo + (hi - lo) * rng.next());

interface ScanInputs { Q: Float32Array; pack: Float32Array; wDt: Float32Array; xz: Float32Array; ssm: Float32Array }

/** Random inputs: x_proj partials Q [G, B, J], the pack [E, N + 2] (A·log2 e < 0, dt bias, D), dt_proj [E, R],
 *  xz [B, 2E], states [B, E, N]. */
function inputs(c: ScanCase, seed: number): ScanInputs {
  const rng = new TestRng(seed);
  const J = c.R + 2 * c.N;
  const pack = new Float32Array(c.E * (c.N + 2));
  for (let e = 0; e < c.E; e++) {
    for (let n = 0; n < c.N; n++) pack[e * (c.N + 2) + n] = -(0.3 + 2 * rng.next());
    pack[e * (c.N + 2) + c.N] = 2 * rng.next() - 1;
    pack[e * (c.N + 2) + c.N + 1] = 2 * rng.next() - 1;
  }
  return {
    Q: uniform(rng, c.G * c.B * J, -0.6, 0.6), pack, wDt: uniform(rng, c.E * c.R, -0.7, 0.7),
    xz: uniform(rng, c.B * 2 * c.E, -1.5, 1.5), ssm: uniform(rng, c.B * c.E * c.N, -1, 1),
  };
}

/** One step of every (row, channel), as the kernels compute it: returns y [B, E] and the new states. */
function reference(c: ScanCase, x: ScanInputs): { y: Float32Array; ssm: Float32Array } {
  const { B, E, N, R, G } = c;
  const J = R + 2 * N;
  const y = new Float32Array(B * E);
  const ssm = Float32Array.from(x.ssm);
  for (let b = 0; b < B; b++) {
    const xd = new Float64Array(J);
    for (let g = 0; g < G; g++) for (let j = 0; j < J; j++) xd[j]! += x.Q[(g * B + b) * J + j]!;
    for (let e = 0; e < E; e++) {
      const p = e * (N + 2);
      let s = x.pack[p + N]!;
      for (let r = 0; r < R; r++) s += x.wDt[e * R + r]! * xd[r]!;
      const dt = s > 20 ? s : Math.log1p(Math.exp(s));
      const u = x.xz[b * 2 * E + e]!, z = x.xz[b * 2 * E + E + e]!;
      let out = 0;
      for (let n = 0; n < N; n++) {
        const i = (b * E + e) * N + n;
        const h = Math.pow(2, dt * x.pack[p + n]!) * ssm[i]! + dt * u * xd[R + n]!;
        ssm[i] = h;
        out += h * xd[R + N + n]!;
      }
      out += x.pack[p + N + 1]! * u;
      y[b * E + e] = out * z / (1 + Math.exp(-z));
    }
  }
  return { y, ssm };
}

const cases: ScanCase[] = [
  { B: 9, E: 40, N: 8, R: 5, G: 3 }, // 40 channels: 32 + 8 with 8 rows a workgroup; 9 rows: 8 + 1
  { B: 20, E: 70, N: 4, R: 3, G: 1 }, // 70 channels: 64 + 6 with 4 rows; 20 rows in blocks of 8, 8, 4
  { B: 3, E: 130, N: 16, R: 20, G: 7 }, // 130 channels: 128 + 2 with 2 rows; fewer rows than a workgroup holds
];

test("webgpu: the decode scan kernels (the batch step's thread kernel by rows a workgroup, f32 and f16 dt_proj; the fused step's block kernel) equal a plain step", async (t) => {
  await withOwnWebgpu(t, async (b) => {
    const gpu = b.gpu;
    for (const [ci, c] of cases.entries()) {
      const x = inputs(c, 50 + ci);
      const J = c.R + 2 * c.N;
      for (const ws of ["f32", "f16"] as const) {
        const wBits = ws === "f16" ? toF16Bits(x.wDt) : null;
        // the reference reads the weights the kernel reads: rounded to half precision for f16
        const want = reference(c, wBits ? { ...x, wDt: toFloat32({ dtype: "F16", shape: [c.E, c.R], data: wBits }) } : x);
        const kernels: [string, (bufs: Record<string, ReturnType<typeof gpu.upload>>) => void][] = [
          ...BATCH_SCAN_ROW_CHOICES.map((RW): [string, (bufs: Record<string, ReturnType<typeof gpu.upload>>) => void] => [
            `thread kernel, ${RW} rows a workgroup`,
            (k) => decodeBatchScan(gpu, { RW, ...c, J, Q: k.Q!, lp: k.lp!, oPack: 0, wDt: k.wDt!, wsDt: ws, xz: k.xz!, ssm: k.ssm!, y: k.y! }),
          ]),
          ["block kernel", (k) => decodeMixerScan(gpu, { ...c, J, Q: k.Q!, lp: k.lp!, oPack: 0, wDt: k.wDt!, wsDt: ws, xz: k.xz!, ssm: k.ssm!, y: k.y! })],
        ];
        for (const [name, run] of kernels) {
          const bufs = {
            Q: gpu.upload(x.Q), lp: gpu.upload(x.pack), wDt: gpu.upload(wBits ?? x.wDt), xz: gpu.upload(x.xz),
            ssm: gpu.upload(x.ssm), y: gpu.alloc(c.B * c.E * 4),
          };
          run(bufs);
          const what = `${name}, ${ws}, case ${JSON.stringify(c)}`;
          assertClose(new Float32Array(await gpu.read(bufs.y, c.B * c.E * 4)), want.y, 2e-5, `${what}: y`);
          assertClose(new Float32Array(await gpu.read(bufs.ssm, c.B * c.E * c.N * 4)), want.ssm, 2e-5, `${what}: states`);
          for (const buf of Object.values(bufs)) gpu.release(buf);
        }
      }
    }
  });
});
