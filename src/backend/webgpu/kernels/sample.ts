/**
 * Next-token sampling on the GPU, one workgroup per row, with the semantics of the CPU reference
 * (src/generate/sampling.ts): repetition penalty, temperature, top-k, top-p, min-p, then an inverse-CDF draw
 * with the given uniform u over the kept tokens in descending order (ties by ascending id).
 *
 * No sort: every token has a unique key (orderable(x), V-1-id), larger is better, and each rule keeps a prefix
 * of the sorted order, so it is a lower bound on keys found by binary search over the key space, each probe one
 * pass over the row counting the kept tokens at or above it and their mass exp(x - max):
 *   top-k: the largest key with count ≥ k;  top-p: the largest key with mass ≥ p · total;
 *   draw: the largest key with mass > u · total, which is the drawn token's own key.
 * Greedy (temperature 0) is one argmax pass. The penalty marks the history's ids in a bit set first.
 */
import type { Buf, Gpu } from "../gpu.ts";
import { Params } from "../gpu.ts";

const wgsl = (WG: number) => /* wgsl */ `
// bindings: 0 logits [B, ldV] | 1 uniforms [B] | 2 history ids (i32) | 3 history offsets [B + 1] | 4 seen bits [B, words]
//           5 out ids [B] (i32) | 6 params
// grid: (B)
const WG = ${WG}u;
const NEG_INF = -3.4028234663852886e38;

struct P { V: u32, ldV: u32, temperature: f32, topK: u32, topP: f32, minP: f32, penalty: f32, hasPenalty: u32, words: u32 }
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> uniforms: array<f32>;
@group(0) @binding(2) var<storage, read> hist: array<i32>;
@group(0) @binding(3) var<storage, read> histOff: array<u32>;
@group(0) @binding(4) var<storage, read_write> seen: array<atomic<u32>>;
@group(0) @binding(5) var<storage, read_write> outIds: array<i32>;
@group(0) @binding(6) var<uniform> p: P;

var<workgroup> redF: array<f32, WG>;
var<workgroup> redG: array<f32, WG>;
var<workgroup> redU: array<u32, WG>;
var<workgroup> wsU: f32;

// the row and the rules in force, the same in every thread
var<private> row: u32;
var<private> top: f32;     // the best tempered logit
var<private> bestLo: u32;  // the best token's key (its hi part is orderable(top))
var<private> lbHi: u32;    // kept tokens have keys >= (lbHi, lbLo)
var<private> lbLo: u32;
var<private> useMinP: bool;

// a monotone map of f32 onto u32: a < b as floats iff orderable(a) < orderable(b)
fn orderable(f: f32) -> u32 {
  let b = bitcast<u32>(f);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn keyGE(hi: u32, lo: u32, qHi: u32, qLo: u32) -> bool {
  return hi > qHi || (hi == qHi && lo >= qLo);
}

// logit i after the repetition penalty and the temperature (1 for greedy)
fn val(i: u32) -> f32 {
  var v = logits[row * p.ldV + i];
  if (p.hasPenalty != 0u) {
    if ((atomicLoad(&seen[row * p.words + i / 32u]) & (1u << (i % 32u))) != 0u) {
      v = select(v * p.penalty, v / p.penalty, v > 0.0);
    }
  }
  if (p.temperature > 0.0) { v = v / p.temperature; }
  return v;
}

// (count, mass) of the kept tokens with key >= (qHi, qLo), summed over the workgroup
fn probe(qHi: u32, qLo: u32, lid: u32) -> vec2<f32> {
  var cnt = 0.0;
  var mass = 0.0;
  let topHi = orderable(top);
  for (var i = lid; i < p.V; i += WG) {
    let x = val(i);
    if (x < top - 40.0) { continue; } // more than 40 nats down: outside the candidates, as on the CPU
    let hi = orderable(x);
    let lo = p.V - 1u - i;
    if (!keyGE(hi, lo, lbHi, lbLo)) { continue; }
    let pr = exp(x - top);
    if (useMinP && pr < p.minP && !(hi == topHi && lo == bestLo)) { continue; }
    if (keyGE(hi, lo, qHi, qLo)) {
      cnt += 1.0;
      mass += pr;
    }
  }
  workgroupBarrier(); // the previous reduction's result has been read by every thread
  redF[lid] = cnt;
  redG[lid] = mass;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) {
      redF[lid] += redF[lid + s];
      redG[lid] += redG[lid + s];
    }
    workgroupBarrier();
  }
  return vec2<f32>(workgroupUniformLoad(&redF[0]), workgroupUniformLoad(&redG[0]));
}

// mode 0: count >= thr, 1: mass >= thr, 2: mass > thr; monotone in the key (true up to some key, false above)
fn holds(r: vec2<f32>, mode: u32, thr: f32) -> bool {
  if (mode == 0u) { return r.x >= thr; }
  if (mode == 1u) { return r.y >= thr; }
  return r.y > thr;
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lidv: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let lid = lidv.x;
  row = wg.x;
  useMinP = false;
  lbHi = 0u;
  lbLo = 0u;

  if (p.hasPenalty != 0u) {
    for (var w = lid; w < p.words; w += WG) { atomicStore(&seen[row * p.words + w], 0u); }
    storageBarrier();
    workgroupBarrier();
    for (var j = histOff[row] + lid; j < histOff[row + 1u]; j += WG) {
      let id = hist[j];
      if (id >= 0 && u32(id) < p.V) { atomicOr(&seen[row * p.words + u32(id) / 32u], 1u << (u32(id) % 32u)); }
    }
    storageBarrier();
    workgroupBarrier();
  }

  // argmax, the first index among equals
  var bv = NEG_INF;
  var bi = 0xffffffffu;
  for (var i = lid; i < p.V; i += WG) {
    let v = val(i);
    if (v > bv || bi == 0xffffffffu) { bv = v; bi = i; }
  }
  redF[lid] = bv;
  redU[lid] = bi;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) {
      let ov = redF[lid + s];
      let oi = redU[lid + s];
      if (oi != 0xffffffffu && (redU[lid] == 0xffffffffu || ov > redF[lid] || (ov == redF[lid] && oi < redU[lid]))) {
        redF[lid] = ov;
        redU[lid] = oi;
      }
    }
    workgroupBarrier();
  }
  let best = workgroupUniformLoad(&redU[0]);
  top = workgroupUniformLoad(&redF[0]);
  bestLo = p.V - 1u - best;
  if (p.temperature <= 0.0) {
    if (lid == 0u) { outIds[row] = i32(best); }
    return;
  }
  if (lid == 0u) { wsU = uniforms[row]; }
  let u = workgroupUniformLoad(&wsU);

  // One probe per iteration, driven by a small state machine (one call site keeps the shader small):
  //   stage 0: count the candidates          -> stage 1 if top-k cuts, else 2
  //   stage 1: search the top-k bound        -> 2
  //   stage 2: total mass (top-p only)       -> 3, else 4
  //   stage 3: search the top-p bound        -> 4
  //   stage 4: count and mass of the kept    -> 5
  //   stage 5: search the drawn key          -> done
  // A search builds the largest key at which its rule holds bit by bit, hi's 32 bits then lo's loBits.
  var loBits = 1u;
  while ((1u << loBits) < p.V) { loBits++; }
  var stage = 0u;
  var bit = 0u;      // bits of the current search decided so far
  var aHi = 0u;      // the current search's answer so far
  var aLo = 0u;
  var mode = 0u;
  var thr = 0.0;
  loop {
    var qHi = 0u;
    var qLo = 0u;
    let searching = stage == 1u || stage == 3u || stage == 5u;
    if (searching) {
      if (bit < 32u) { qHi = aHi | (1u << (31u - bit)); qLo = 0u; }
      else { qHi = aHi; qLo = aLo | (1u << (loBits - 1u - (bit - 32u))); }
    }
    let r = probe(qHi, qLo, lid);
    if (searching) {
      if (holds(r, mode, thr)) { aHi = qHi; aLo = qLo; }
      bit++;
      if (bit < 32u + loBits) { continue; }
      // a search is complete: its answer is a lower bound on kept keys, or the drawn token
      if (stage == 5u) { break; }
      lbHi = aHi;
      lbLo = aLo;
      stage++;
    } else if (stage == 0u) {
      stage = 2u;
      if (p.topK > 0u && f32(p.topK) < r.x) { stage = 1u; mode = 0u; thr = f32(p.topK); }
    } else if (stage == 2u) {
      stage = 4u;
      if (p.topP < 1.0) { stage = 3u; mode = 1u; thr = p.topP * r.y; }
    } else {
      // stage 4, with min-p in force from here on
      stage = 5u;
      if (u * r.y < r.y) { mode = 2u; thr = u * r.y; }
      else { mode = 0u; thr = r.x; } // the draw ran past the total by rounding: the last kept token, as on the CPU
    }
    if (stage == 4u) { useMinP = p.minP > 0.0; }
    bit = 0u;
    aHi = 0u;
    aLo = 0u;
  }
  if (lid == 0u) { outIds[row] = i32(p.V - 1u - aLo); }
}
`;

export interface SampleArgs {
  logits: Buf; rows: number; ldV: number; V: number;
  temperature: number; topK: number; topP: number; minP: number; penalty: number;
  uniforms: Buf; history: { ids: Buf; offsets: Buf } | null; seen: Buf | null;
  out: Buf;
}

export function sampleWords(V: number): number {
  return Math.ceil(V / 32);
}

// logits: [B, ldV] (the first V columns count) -> out: i32 [B]
export function sample(gpu: Gpu, a: SampleArgs): void {
  // one thread per ~64 tokens of the row, within the device's workgroup limit: big vocabularies get wide
  // workgroups, small ones pay for no idle threads at every barrier
  const most = Math.min(1024, gpu.limits.maxComputeInvocationsPerWorkgroup, gpu.limits.maxComputeWorkgroupSizeX);
  const WG = Math.max(32, Math.min(most, 2 ** Math.ceil(Math.log2(Math.max(1, a.V / 64)))));
  const k = gpu.kernel(`sample_${WG}`, () => wgsl(WG));
  const p = new Params().u32(a.V).u32(a.ldV).f32(a.temperature).u32(a.topK).f32(a.topP).f32(a.minP).f32(a.penalty)
    .bool(!!a.history).u32(sampleWords(a.V));
  const h = a.history ?? { ids: gpu.dummy, offsets: gpu.dummy };
  gpu.dispatch(k, [a.logits, a.uniforms, h.ids, h.offsets, a.seen ?? gpu.dummyOut, a.out], p, [a.rows]);
}
