/**
 * How the fused decode kernels spread one layer over workgroups. Decode at small batch is bound by latency, not
 * arithmetic: more workgroups keep more loads in flight, but each workgroup of kernel 1 leaves a partial x_proj that
 * kernel 2 must sum, each channel group of kernel 2 leaves a partial out_proj that the next kernel 1 must sum, and
 * each slice of kernel 2 repeats the scan of its channels. The defaults were chosen by measurement (BENCHMARKS.md);
 * WebGpuTuning.decode overrides them.
 */
import { MambaError } from "../../../../errors.ts";

/** Threads per workgroup of the decode kernels. */
export const DECODE_WG = 256;

export interface DecodeTuning {
  /** kernel 1: channels per workgroup (8, 16, 32, 64 or 128) */
  inChannels?: number;
  /** kernel 2: channels per workgroup (16, 32, 64, 128 or 256) */
  scanChannels?: number;
  /** kernel 2: the workgroups it aims for (channel groups × out_proj slices) */
  scanGroups?: number;
  /** the head: rows of the LM head per 32 threads */
  headRows?: number;
}

export interface MixerScanGeometry {
  CH: number; // channels per workgroup (multiple of 16, at most DECODE_WG)
  G: number; // channel groups: out_proj's partial sums
  DS: number; // out_proj rows per slice
  S: number; // slices
}

export interface DecodeGeometry {
  /** kernel 1's channels per workgroup and its workgroups (each leaves one partial x_proj) */
  inCH: number;
  G1: number;
  scan: MixerScanGeometry;
  headRows: number;
}

const oneOf = (v: number, allowed: number[], what: string) => {
  if (!allowed.includes(v)) throw new MambaError(`decode tuning: ${what} must be one of ${allowed.join(", ")}, got ${v}`);
  return v;
};

export function decodeGeometry(E: number, D: number, t: DecodeTuning = {}): DecodeGeometry {
  const inCH = oneOf(t.inChannels ?? (E <= 2048 ? 16 : 32), [8, 16, 32, 64, 128], "inChannels");
  const CH = oneOf(t.scanChannels ?? (E <= 2048 ? 128 : 256), [16, 32, 64, 128, 256], "scanChannels");
  const target = t.scanGroups ?? 128; // about one workgroup per SM of an H100
  if (!(Number.isInteger(target) && target >= 1)) throw new MambaError(`decode tuning: scanGroups must be a positive integer, got ${target}`);
  const headRows = t.headRows ?? 8;
  if (!(Number.isInteger(headRows) && headRows >= 1 && headRows <= 64)) {
    throw new MambaError(`decode tuning: headRows must be an integer from 1 to 64, got ${headRows}`);
  }
  const G = Math.ceil(E / CH);
  const RP = DECODE_WG / (CH / 16); // out_proj rows per pass
  const DS = Math.max(RP, Math.ceil(Math.ceil((D * G) / target) / RP) * RP);
  return { inCH, G1: Math.ceil(E / inCH), scan: { CH, G, DS, S: Math.ceil(D / DS) }, headRows };
}
