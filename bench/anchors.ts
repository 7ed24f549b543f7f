/** The measured speeds of the official mamba_ssm CUDA kernels on an H100 (bench/anchors/h100.json). */
import { readFileSync, existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const file = process.env.MAMBA_TS_ANCHORS ?? path.resolve(here, "anchors/h100.json");

interface Anchors {
  selective_scan: { batch: number; dim: number; seqlen: number; dstate: number; dtype: string; fwd_ms: number; fwd_bwd_ms: number }[];
  decode_tok_per_s: { model: string; dtype: string; batch: number; prompt: number; new: number; tok_per_s: number; note?: string }[];
  forward_ms: { model: string; dtype: string; batch: number; seqlen: number; ms: number }[];
}

const data: Anchors | null = existsSync(file) ? (JSON.parse(readFileSync(file, "utf8")) as Anchors) : null;
if (!data) console.log(`(anchors file not found at ${file}; set MAMBA_TS_ANCHORS; ratios are left out)`);

export const anchor = {
  file,
  data,
  decode(model: string, dtype: string, batch: number): number | null {
    return data?.decode_tok_per_s.find((d) => d.model === model && d.dtype === dtype && d.batch === batch && !d.note?.includes("transformers"))?.tok_per_s ?? null;
  },
  forward(model: string, dtype: string): number | null {
    return data?.forward_ms.find((d) => d.model === model && d.dtype === dtype)?.ms ?? null;
  },
  scans() {
    return data?.selective_scan ?? [];
  },
};
