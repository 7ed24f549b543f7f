/**
 * The WebGPU backend's options and their checking. A user sets only what WebGpuTuning offers (beside the adapter
 * choice of WebGpuOptions, ./device.ts): the buffer pool, and decodePersistent as an escape hatch. Every other
 * choice is fixed at what measured fastest (BENCHMARKS.md). WebGpuInternalTuning holds the knobs that tests and
 * benchmarks still turn (to cover a path, or to measure one against another); it is not part of the package's API.
 */
import { checkChoice, checkCount, checkFlag, checkKeys, optionKeys } from "../../errors.ts";
import { WEBGPU_OPTION_KEYS } from "./device.ts";
import type { Gpu } from "./gpu.ts";
import { TILE_BATCH, TILE_LARGE, TILE_SMALL, TILE_WIDE, type TileConfig } from "./kernels/matmul.ts";
import { DECODE_CHANNEL_CHOICES, DECODE_LOAD_BYTES_CHOICES } from "./kernels/decode/mixer-in.ts";
import { BATCH_SCAN_ROW_CHOICES } from "./kernels/decode/batch-scan.ts";
import { M2_LANE_CHOICES } from "./kernels/decode/mamba2-in.ts";
import { type TensorCoreTile, defaultTensorCoreTile, tensorCoreTileDeviceProblem, tensorCoreTileName, tensorCoreTileProblem } from "./kernels/matmul-tc.ts";
import { MambaError } from "../../errors.ts";

/** "BMxBNxBK" or "BMxBNxBKxSGMxSGN" (SGM × SGN subgroups a workgroup) as a tensor-core tile; a MambaError names
 *  what is wrong. */
export function parseTensorCoreTile(text: string): TensorCoreTile {
  const v = String(text).split("x").map(Number);
  const t: TensorCoreTile = { BM: v[0]!, BN: v[1]!, BK: v[2]!, ...(v.length === 5 ? { SG: [v[3]!, v[4]!] as [number, number] } : {}) };
  const why = (v.length === 3 || v.length === 5) && v.every(Number.isInteger) ? tensorCoreTileProblem(t) : "it takes BMxBNxBK or BMxBNxBKxSGMxSGN";
  if (why) throw new MambaError(`tensorCoreTile: ${JSON.stringify(text)} cannot run: ${why}`);
  return t;
}

/** A tile the device runs (tensorCoreTileDeviceProblem); a MambaError names why not. */
function deviceTile(gpu: Gpu, t: TensorCoreTile): TensorCoreTile {
  const why = tensorCoreTileDeviceProblem(t, gpu);
  if (why) throw new MambaError(`tensorCoreTile: ${tensorCoreTileName(t)} cannot run: ${why}`);
  return t;
}

/** What a user of the WebGPU backend may set (createWebGpuBackend, or loadModel's `webgpu`). */
export interface WebGpuTuning {
  /** bytes of freed GPU buffers kept for reuse; beyond it the longest-unused are destroyed (default: twice the
   *  largest working set so far, at least 256 MiB, so a loop that frees and retakes its buffers never recreates
   *  them, even where its phases take buffers of different sizes) */
  poolBytes?: number;
  /** the fused decode runs each layer in one dispatch (kernels/decode/layer.ts): its three kernels become phases of
   *  one, whose workgroups take their items in order from a counter and wait for the phase before through counters
   *  in memory (about 1 us on the H100, against 2 – 10 us a dependent dispatch). A workgroup only waits for items
   *  that running workgroups have taken, so it needs no number of them to run at once, but it needs one that has
   *  started to keep running while others wait, which WebGPU does not promise. Where that fails, a wait gives up
   *  after a bounded time and the step's ids come back with an error naming this option, not with wrong tokens.
   *  Taken where the fixed-point x_proj totals are, the device binds 14 storage buffers a kernel and the kernel's
   *  workgroup memory fits. Default true on GPUs of NVIDIA, AMD and Intel, where workgroups are known to keep
   *  running; false elsewhere. On the H100 a 130m step at batch 1 took 688 against 1062 us in one process, and
   *  130m decoded at 1879 – 1887 tok/s against 1540 – 1565 before (BENCHMARKS.md, runs 69 – 75). Mamba-2's step
   *  does the same (kernels/decode/mamba2-layer.ts) where its layers are small (decodeM2Persistent): mamba2-130m at
   *  batch 1 decoded at 1663 against 1055 tok/s on the H100 (run 84) */
  decodePersistent?: boolean;
  /** the matrix products' precision: "f32" (default), or "f16" where the device has shader-f16: inputs rounded to
   *  f16, f32 accumulation, on the tensor cores where the device offers subgroup matrices (README, "Half
   *  precision"). A model loaded with precision "f16" also stores its projections and head in f16. */
  precision?: "f32" | "f16";
}

/**
 * Knobs for tests and benchmarks only: each default is the measured winner, and the others stay because a test
 * covers the path they take (or a benchmark compares them). Not exported from the package.
 */
export interface WebGpuInternalTuning extends WebGpuTuning {
  /** channel-chunk threads the selective scan aims for when it splits a sequence (default 131072) */
  scanThreads?: number;
  /** the tensor-core product's tile as "BMxBNxBK": default TC_TILE (kernels/matmul-tc.ts) */
  tensorCoreTile?: string;
  /** ops encoded after which pending work is submitted even without a read (default 48): the GPU starts on a
   *  prefill's first ops while the host encodes the rest. On the H100 the first token of a 128-token prompt took
   *  4.8 against 6.9 ms with 512 at batch 1, 54.5 against 57.0 ms at batch 64 (BENCHMARKS.md) */
  flushEvery?: number;
  /** the tiled matmuls load 4 contiguous values at once and store 4 output columns at once where the shapes, strides
   *  and offsets are multiples of 4 (default true): the forward's (K, N and the input window), and the training
   *  backward's products; false keeps one value a load everywhere (the path odd shapes take). On the H100 the
   *  forward's shapes ran at 43 – 46 against 36 – 37 TFLOP/s, the batch-64 decode step 1687 against 1890 us */
  matmulVec4?: boolean;
  /** channels per workgroup of the fused decode's first kernel (in_proj, conv, partial x_proj): 4, 8, 16, 32 or 64
   *  (default 16 up to 2048 channels, else 32); fewer put more of in_proj's loads in flight at once */
  decodeChannels?: number;
  /** bytes of weights a thread of the decode kernels (the fused step's in_proj, the matrix-vector products of up to
   *  8 rows) loads before it uses any: 64, 128, 256 or 384 (default 256 for the fused step's in_proj; for the
   *  products 128 for rows of 2048 weights or more, else 64); more keeps more loads in flight, with more registers.
   *  On the H100 at batch 1 in one process, 256 against the old default for in_proj: 130m's step 671 against 688 us,
   *  1.4b's 2799 against 3199 (BENCHMARKS.md, run 72) */
  decodeLoadBytes?: number;
  /** the fused decode's first kernel adds its share of x_proj into exact fixed-point totals with 32-bit atomic
   *  adds (kernels/decode/fixed.ts), which the scan kernel reads, instead of writing one partial per workgroup
   *  that the scan kernel sums (default true). Models of one layer, and first kernels of more than 1024 workgroups
   *  (decodeChannels), always take the partials. On the H100 a step took 3222 against 3383 us (1.4b, batch 1),
   *  1026 against 1045 (130m, batch 4) and 845 against 865 (130m, batch 1) in one process (BENCHMARKS.md, run 67) */
  decodeAccumulate?: boolean;
  /** batches the fused kernels do not take (past 8 rows, or too wide for them) decode with the batch step's kernels
   *  (kernels/decode/batch-*.ts, five dispatches a layer) when true (default); when false through a recording of
   *  the model's ops (ten a layer). At batch 64 of 130m on the H200 a batch step took 2188 us of GPU time, the
   *  recorded ops 2326, in one process (BENCHMARKS.md) */
  decodeBatch?: boolean;
  /** Mamba-2's fused decode step at up to 4 rows takes out_proj into the scan's dispatch (the last workgroup of each
   *  head multiplies the head's outputs by its columns, the last head adds the heads' shares up: two dispatches a
   *  layer) when true; when false out_proj is a dispatch of its own (three a layer). By default (and not where
   *  decodePersistent makes the layer one dispatch) only where the heads' shares are few (heads × hidden size up
   *  to M2_SCAN_OUT_AUTO_MAX): one workgroup adds them all up, and a head's columns are one workgroup's, which at
   *  mamba2-2.7b's size (80 heads × 2560) left the step at a fraction of the memory bandwidth (43 tok/s on an H100,
   *  run 81, where the weights' bytes would allow about 280) */
  decodeScanOut?: boolean;
  /** lanes a row of weights in Mamba-2's fused decode matvecs, in_proj's and out_proj's (M2_LANE_CHOICES: 8 to
   *  256; default m2Lanes's: half the head's matvec's, at least 32): fewer put more rows in a workgroup, each lane
   *  streaming more of its row (and in_proj's RMSNorm, which every workgroup makes for itself, is made by fewer
   *  workgroups). On the H200 mamba2-2.7b's in_proj took 37.2 us at 32 lanes against 42.8 at 64 (the head's matvec's
   *  choice), out_proj 18.0 at 64 against 21.5 at 128; at 130m's widths 32 lanes stayed within 5% of the best, and
   *  16 or fewer lanes made out_proj up to 2.7x slower. The 2.7b step went from 148 to 158 tok/s on the H100
   *  (BENCHMARKS.md, runs 83 – 84) */
  decodeM2InLanes?: number;
  decodeM2OutLanes?: number;
  /** the most workgroups each of Mamba-2's decode matvecs (in_proj, out_proj) launches where it runs as a kernel of
   *  its own, and the most items each takes as a phase of the one-dispatch layer: each workgroup (item) then takes
   *  its groups of rows in turn, making the norm once and loading the next group's weights while it sums the last's
   *  (default 512, about the read ceiling's best count of 256-thread workgroups on the H100; a count at least the
   *  groups' gives each workgroup one) */
  decodeM2Workgroups?: number;
  /** Mamba-2's fused decode step at up to 8 rows runs each layer in one dispatch (kernels/decode/mamba2-layer.ts),
   *  as decodePersistent does Mamba-1's, where decodePersistent is on: in_proj's, the scan's and out_proj's kernels
   *  become phases of one. Taken where out_proj is not asked into the scan's dispatch (decodeScanOut true), in_proj's
   *  kernel holds the norm, and the device binds the kernel's storage buffers (12; 11 without the gated norm) and
   *  holds its workgroup memory, 4 · (T · (256 + max(D, E) + 2N + G) + 1) bytes for T rows (mamba2-130m: up to 5
   *  rows in 48 KiB, 3 in 32 KiB; mamba2-2.7b: 2 in 48 KiB); elsewhere the step's kernels of their own. Default
   *  (absent): where a layer's weights take up to M2_PERSISTENT_AUTO_MAX bytes (decode-plans-mamba2.ts: it won at
   *  mamba2-130m, lost at 2.7b) */
  decodeM2Persistent?: boolean;
  /** K columns a part of the batch step's K-split matmuls: 64, 96 or 128 (their count then follows from K); 0 splits
   *  by the workgroup target alone. By default, a matmul that the target would cut into parts of 128 columns or
   *  fewer gets parts of 96, and one with longer parts keeps them. On the H200 at batch 64 a step of 130m (in_proj
   *  and out_proj then 8 and 16 parts of 96, against 6 of 128 and 20 of 80) took 2015 us of GPU time against 2090;
   *  1.4b's parts (3 of 688, 9 of 464) stay, as parts of 96 took 12455 us there against 11083 (BENCHMARKS.md) */
  decodeBatchSplitCols?: number;
  /** rows a workgroup of the batch step's scan kernel, a thread per row and channel (kernels/decode/batch-scan.ts):
   *  2, 4 or 8 (default 8 up to 2048 channels, else 4; where the state size is not a multiple of 4, the fused
   *  step's kernel); 0 takes the fused step's kernel, 8 rows of 32 channels a workgroup. On the H200 at 64 rows:
   *  130m 9.1 us with 8 rows against 25.0 with the fused step's kernel, 1.4b 47.8 with 4 against 98.4; 130m decoded
   *  at batch 64 at 33,969 against 27,218 tok/s (BENCHMARKS.md) */
  decodeBatchScanRows?: number;
  /** the scan backward's chunk kernel: "lanes" (each channel's states over several subgroup lanes; the default
   *  where subgroups of at least that many lanes exist) or "channel" (one lane a channel; the default without,
   *  and what runs for a state size whose lanes-kernel tiles exceed the device's workgroup memory). Both compute
   *  the same gradients. */
  scanBackwardKernel?: "lanes" | "channel";
  /** lanes a channel of the "lanes" kernel: 2 (default), 4 or 8 */
  scanBackwardLanes?: number;
  /** subgroup-wide blocks a workgroup of the "lanes" kernel: 1, 2, 4 (default) or 8 (more channels a workgroup,
   *  so fewer dB|dC partials to sum, against fewer workgroups and more workgroup memory each) */
  scanBackwardBlocks?: number;
  /** time steps per saved state in the scan backward (default: by how many chunks fill the GPU) */
  scanBackwardChunk?: number;
  /** time steps the scan backward recomputes at once: kept in workgroup memory by the channel kernel (default:
   *  what fits, at most 8), in registers by the lanes kernel (default 8) */
  scanBackwardSubTile?: number;
  /** lanes per subgroup sum of dB and dC in the scan backward (default: the device's smallest subgroup, at most
   *  32); 0 sums in workgroup memory instead */
  scanBackwardReduceWidth?: number;
}

/** WebGpuInternalTuning's keys, WebGpuTuning's among them (checkKeys). */
const WEBGPU_TUNING_KEYS = optionKeys<WebGpuInternalTuning>({
  poolBytes: true, decodePersistent: true, precision: true, scanThreads: true, tensorCoreTile: true, flushEvery: true,
  matmulVec4: true, decodeChannels: true, decodeLoadBytes: true, decodeAccumulate: true, decodeBatch: true,
  decodeScanOut: true, decodeM2InLanes: true, decodeM2OutLanes: true, decodeM2Workgroups: true, decodeM2Persistent: true, decodeBatchSplitCols: true,
  decodeBatchScanRows: true, scanBackwardKernel: true, scanBackwardLanes: true, scanBackwardBlocks: true,
  scanBackwardChunk: true, scanBackwardSubTile: true, scanBackwardReduceWidth: true,
});

/** Throws on an unknown key of a WebGPU backend's options (WebGpuOptions, and the tunings: the internal ones too,
 *  which tests and benchmarks pass through the same entry points). */
export function checkWebGpuOptions(what: string, options: unknown, prefix = ""): void {
  checkKeys(what, options, [...WEBGPU_OPTION_KEYS, ...WEBGPU_TUNING_KEYS], prefix);
}

/** The forward backend's settings, every default filled in (WebGpuInternalTuning says what each is). */
export interface ForwardSettings {
  scanThreads: number;
  flushEvery: number;
  matmulVec4: boolean;
  /** The tiled matmul's configurations: many output tiles, few (at most 64 rows), few rows with a wide output
   *  (the head of a decode batch), and the batch decode step's. */
  tileLarge: TileConfig;
  tileSmall: TileConfig;
  tileWide: TileConfig;
  tileBatch: TileConfig;
  /** 0: by the model's width */
  decodeChannels: number;
  /** 0: by row width (the fused step's in_proj, FUSED_IN_LOAD_BYTES; the products, loadBytes) */
  decodeLoadBytes: number;
  decodeAccumulate: boolean;
  decodePersistent: boolean;
  decodeBatch: boolean;
  decodeScanOut: boolean | null; // null: by the model's size
  /** 0: by row width */
  decodeM2InLanes: number;
  decodeM2OutLanes: number;
  /** 0: 512 (kernels/decode/mamba2-in.ts's M2_WORKGROUPS) */
  decodeM2Workgroups: number;
  decodeM2Persistent: boolean | null; // null: by the layer's size
  /** -1: 96 where the parts by the workgroup target are short */
  decodeBatchSplitCols: number;
  /** -1: by the model's width */
  decodeBatchScanRows: number;
  tensorCoreTile: TensorCoreTile;
}

/** Checks a tuning and fills in its defaults for the device `gpu` runs on. */
export function forwardSettings(gpu: Gpu, tuning: WebGpuInternalTuning): ForwardSettings {
  checkCount("scanThreads", tuning.scanThreads, 1);
  checkCount("flushEvery", tuning.flushEvery, 1);
  checkCount("decodeM2Workgroups", tuning.decodeM2Workgroups, 1);
  checkChoice("decodeChannels", tuning.decodeChannels === 0 ? undefined : tuning.decodeChannels, DECODE_CHANNEL_CHOICES); // 0: the default
  checkChoice("decodeLoadBytes", tuning.decodeLoadBytes, DECODE_LOAD_BYTES_CHOICES);
  checkChoice("decodeM2InLanes", tuning.decodeM2InLanes === 0 ? undefined : tuning.decodeM2InLanes, M2_LANE_CHOICES); // 0: the default
  checkChoice("decodeM2OutLanes", tuning.decodeM2OutLanes === 0 ? undefined : tuning.decodeM2OutLanes, M2_LANE_CHOICES);
  checkChoice("decodeBatchSplitCols", tuning.decodeBatchSplitCols === 0 ? undefined : tuning.decodeBatchSplitCols, [64, 96, 128]); // 0: the default
  // 0 is also allowed: the fused step's block kernel
  checkChoice("decodeBatchScanRows", tuning.decodeBatchScanRows === 0 ? undefined : tuning.decodeBatchScanRows, BATCH_SCAN_ROW_CHOICES);
  for (const flag of ["matmulVec4", "decodeAccumulate", "decodePersistent", "decodeBatch", "decodeScanOut", "decodeM2Persistent"] as const) checkFlag(flag, tuning[flag]);
  const vec4 = tuning.matmulVec4 ?? true;
  // the fixed tiles fit the 16 KiB of workgroup memory every WebGPU device has (tileBytes: at most 8704 bytes)
  return {
    scanThreads: tuning.scanThreads ?? 131072,
    flushEvery: tuning.flushEvery ?? 48,
    matmulVec4: vec4,
    tileLarge: { ...TILE_LARGE, vec4 },
    tileSmall: { ...TILE_SMALL, vec4 },
    tileWide: { ...TILE_WIDE, vec4 },
    tileBatch: { ...TILE_BATCH, vec4 },
    decodeChannels: tuning.decodeChannels ?? 0,
    decodeLoadBytes: tuning.decodeLoadBytes ?? 0,
    decodeAccumulate: tuning.decodeAccumulate ?? true,
    decodePersistent: tuning.decodePersistent ?? (!gpu.softwareDriver && /nvidia|amd|intel/i.test(gpu.vendor)),
    decodeBatch: tuning.decodeBatch ?? true,
    decodeScanOut: tuning.decodeScanOut ?? null,
    decodeM2InLanes: tuning.decodeM2InLanes ?? 0,
    decodeM2OutLanes: tuning.decodeM2OutLanes ?? 0,
    decodeM2Workgroups: tuning.decodeM2Workgroups ?? 0,
    decodeM2Persistent: tuning.decodeM2Persistent ?? null,
    decodeBatchSplitCols: tuning.decodeBatchSplitCols ?? -1,
    decodeBatchScanRows: tuning.decodeBatchScanRows ?? -1,
    tensorCoreTile: tuning.tensorCoreTile === undefined ? defaultTensorCoreTile(gpu) : deviceTile(gpu, parseTensorCoreTile(tuning.tensorCoreTile)),
  };
}
