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
 *
 * That search costs 48 passes over the row per rule (about 15 us each for 50,280 logits). So first, a fast path
 * that decides almost every draw in two more passes: count the candidates within a few distances of the best
 * logit (40, 20, 10, 5 and 2.5 nats) and sum their mass; collect those within the largest distance that holds at
 * most CAP of them into workgroup memory (an exact prefix of the sorted order, as they are all the tokens above a
 * bound); sort them (bitonic, by key) and prefix-sum their mass. Every rule then is a binary search in that list,
 * and the draw too, as long as the kept tokens' total mass is known and the draw lands in the list. When it
 * cannot decide (a flat row with more than CAP tokens near the top whose draw falls past them, say), the bit by
 * bit search above runs as before, so the result is the same either way up to the order of f32 sums.
 */
import type { Buf, Gpu } from "../gpu.ts";
import { Params } from "../gpu.ts";
import { ORDERABLE_WGSL } from "./wgsl-common.ts";
import { defineKernel } from "../kernel-def.ts";

const wgsl = (WG: number, CAP: number) => /* wgsl */ `
// bindings: 0 logits [B, ldV] | 1 uniforms [B] | 2 history ids (i32) | 3 history offsets [B + 1] | 4 seen bits [B, words]
//           5 out ids [B] (i32) | 6 params
// grid: (B)
const WG = ${WG}u;
const CAP = ${CAP}u; // the fast path's list (a power of two; 0 = no fast path)
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
var<workgroup> wsI: i32;
// the fast path's list: keys (hi, lo), then the mass exp(x - top), made an inclusive prefix sum after the sort
var<workgroup> lHi: array<u32, ${Math.max(CAP, 1)}>;
var<workgroup> lLo: array<u32, ${Math.max(CAP, 1)}>;
var<workgroup> lPr: array<f32, ${Math.max(CAP, 1)}>;
var<workgroup> lN: atomic<u32>;

// the row and the rules in force, the same in every thread
var<private> row: u32;
var<private> top: f32;     // the best tempered logit
var<private> bestLo: u32;  // the best token's key (its hi part is orderable(top))
var<private> lbHi: u32;    // kept tokens have keys >= (lbHi, lbLo)
var<private> lbLo: u32;
var<private> useMinP: bool;

${ORDERABLE_WGSL}

// the float whose orderable() is k
fn fromOrderable(k: u32) -> f32 {
  return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
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
  return reduce2(cnt, mass, lid);
}

// (a, b) summed over the workgroup (uniform control flow only)
fn reduce2(a: f32, b: f32, lid: u32) -> vec2<f32> {
  workgroupBarrier(); // the previous reduction's result has been read by every thread
  redF[lid] = a;
  redG[lid] = b;
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

// The fast path's list: every candidate within tStar nats of the best, sorted by key (best first), lPr the
// inclusive prefix sum of their mass. Returns (n, tStar, candidates C, their mass M); n = 0: no list (more than
// CAP tokens even within the smallest distance). Uniform control flow only.
fn buildList(lid: u32) -> vec4<f32> {
  var c40 = 0.0; var c20 = 0.0; var c10 = 0.0; var c5 = 0.0; var c2 = 0.0;
  var mass = 0.0;
  for (var i = lid; i < p.V; i += WG) {
    let x = val(i);
    if (x < top - 40.0) { continue; }
    mass += exp(x - top);
    c40 += 1.0;
    if (x >= top - 20.0) { c20 += 1.0; }
    if (x >= top - 10.0) { c10 += 1.0; }
    if (x >= top - 5.0) { c5 += 1.0; }
    if (x >= top - 2.5) { c2 += 1.0; }
  }
  let r40 = reduce2(c40, mass, lid); // (candidates, their mass)
  let r20 = reduce2(c20, c10, lid);
  let r5 = reduce2(c5, c2, lid);
  let cap = f32(CAP);
  var t = 0.0;
  var n = 0.0;
  if (r5.y <= cap) { t = 2.5; n = r5.y; }
  if (r5.x <= cap) { t = 5.0; n = r5.x; }
  if (r20.y <= cap) { t = 10.0; n = r20.y; }
  if (r20.x <= cap) { t = 20.0; n = r20.x; }
  if (r40.x <= cap) { t = 40.0; n = r40.x; }
  if (n == 0.0) { return vec4<f32>(0.0, 0.0, r40.x, r40.y); }
  // collect (the same test as the count, so exactly n of them), padded to a power of two with the lowest key
  let nu = u32(n);
  var nP = 2u;
  while (nP < nu) { nP <<= 1u; }
  if (lid == 0u) { atomicStore(&lN, 0u); }
  for (var i = lid; i < nP; i += WG) { lHi[i] = 0u; lLo[i] = 0u; lPr[i] = 0.0; }
  workgroupBarrier();
  for (var i = lid; i < p.V; i += WG) {
    let x = val(i);
    if (x < top - t) { continue; } // t <= 40: the same tokens as the count's
    let slot = atomicAdd(&lN, 1u);
    if (slot < nP) {
      lHi[slot] = orderable(x);
      lLo[slot] = p.V - 1u - i;
      lPr[slot] = exp(x - top);
    }
  }
  workgroupBarrier();
  // bitonic sort, larger keys first
  for (var k = 2u; k <= nP; k <<= 1u) {
    for (var j = k >> 1u; j > 0u; j >>= 1u) {
      for (var i = lid; i < nP; i += WG) {
        let l = i ^ j;
        if (l > i) {
          let aHi = lHi[i]; let aLo = lLo[i]; let bHi = lHi[l]; let bLo = lLo[l];
          let aFirst = aHi > bHi || (aHi == bHi && aLo > bLo);
          if (aFirst != ((i & k) == 0u)) {
            lHi[i] = bHi; lLo[i] = bLo; lHi[l] = aHi; lLo[l] = aLo;
            let ap = lPr[i];
            lPr[i] = lPr[l];
            lPr[l] = ap;
          }
        }
      }
      workgroupBarrier();
    }
  }
  // inclusive prefix sum of the mass: each thread a run of per, then a scan of the runs' sums
  let per = (nP + WG - 1u) / WG;
  let b0 = min(lid * per, nP);
  let b1 = min(b0 + per, nP);
  var run = 0.0;
  for (var i = b0; i < b1; i++) { run += lPr[i]; lPr[i] = run; }
  redF[lid] = run;
  workgroupBarrier();
  var inF = true; // which of redF, redG holds the scan so far
  for (var off = 1u; off < WG; off <<= 1u) {
    let o = select(lid, lid - off, lid >= off); // in bounds; added only when lid >= off
    if (inF) { redG[lid] = redF[lid] + select(0.0, redF[o], lid >= off); }
    else { redF[lid] = redG[lid] + select(0.0, redG[o], lid >= off); }
    inF = !inF;
    workgroupBarrier();
  }
  let prev = select(0u, lid - 1u, lid > 0u);
  let before = select(0.0, select(redG[prev], redF[prev], inF), lid > 0u); // the runs before this one
  for (var i = b0; i < b1; i++) { lPr[i] += before; }
  workgroupBarrier();
  return vec4<f32>(n, t, r40.x, r40.y);
}

// the first j in [lo, hi) with lPr[j] >= v (strict: > v), or hi; lPr is non-decreasing
fn firstCum(v: f32, strict: bool, lo: u32, hi: u32) -> u32 {
  var a = lo;
  var b = hi;
  while (a < b) {
    let m = (a + b) / 2u;
    let ok = select(lPr[m] >= v, lPr[m] > v, strict);
    if (ok) { b = m; } else { a = m + 1u; }
  }
  return a;
}

// the first j in [lo, hi) whose mass exp(x - top) is below v, or hi; the mass falls along the list
fn firstBelow(v: f32, lo: u32, hi: u32) -> u32 {
  var a = lo;
  var b = hi;
  while (a < b) {
    let m = (a + b) / 2u;
    if (exp(fromOrderable(lHi[m]) - top) < v) { b = m; } else { a = m + 1u; }
  }
  return a;
}

// The drawn id from the list (see buildList), or -1 where the list cannot decide. The same rules as the search.
fn decide(info: vec4<f32>, u: f32) -> i32 {
  let n = u32(info.x);
  let C = u32(info.z);
  // top-k: the first K candidates
  var K = C;
  var massK = info.w;
  if (p.topK > 0u && p.topK < C) {
    if (p.topK > n) { return -1; }
    K = p.topK;
    massK = lPr[K - 1u];
  }
  var keep = K;
  var total = massK;
  if (p.topP < 1.0) {
    let thr = p.topP * massK;
    let j = firstCum(thr, false, 0u, min(K, n));
    if (j < min(K, n)) { keep = j + 1u; total = lPr[j]; }
    else if (K > n) { return -1; } // the cut lies past the list
  }
  if (p.minP > 0.0) {
    let hi = min(keep, n);
    let j = firstBelow(p.minP, 1u, hi);
    if (j < hi) { keep = j; total = lPr[j - 1u]; }
    else if (keep > n) {
      // past the list every token is more than tStar nats down: all below min-p when exp(-tStar) is
      if (exp(-info.y) <= p.minP) { keep = n; total = lPr[n - 1u]; } else { return -1; }
    }
  }
  if (keep <= n) { total = lPr[keep - 1u]; }
  let goal = u * total;
  if (!(goal < total)) {
    // the draw ran past the total by rounding: the last kept token, as on the CPU
    if (keep > n) { return -1; }
    return i32(p.V - 1u - lLo[keep - 1u]);
  }
  let j = firstCum(goal, true, 0u, min(keep, n));
  if (j >= min(keep, n)) { return -1; } // the draw lands past the list
  return i32(p.V - 1u - lLo[j]);
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

  if (CAP > 0u) {
    let info = buildList(lid);
    if (info.x > 0.0) {
      if (lid == 0u) { wsI = decide(info, u); }
      let got = workgroupUniformLoad(&wsI);
      if (got >= 0) {
        if (lid == 0u) { outIds[row] = got; }
        return;
      }
    }
  }

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

/** WG threads a row, a list of CAP of its best tokens (0: none). */
const sampleKernel = defineKernel({
  name: "sample", wgsl: (s: { WG: number; CAP: number }) => wgsl(s.WG, s.CAP), label: (s) => `sample_${s.WG}_${s.CAP}`, example: { WG: 1024, CAP: 256 },
});

// logits: [B, ldV] (the first V columns count) -> out: i32 [B]
export function sample(gpu: Gpu, a: SampleArgs): void {
  // one thread per ~64 tokens of the row, within the device's workgroup limit: big vocabularies get wide
  // workgroups, small ones pay for no idle threads at every barrier
  const most = Math.min(1024, gpu.limits.maxComputeInvocationsPerWorkgroup, gpu.limits.maxComputeWorkgroupSizeX);
  const WG = Math.max(32, Math.min(most, 2 ** Math.ceil(Math.log2(Math.max(1, a.V / 64)))));
  // the fast path's list: as long as workgroup memory allows beside the reductions, at most 2048
  const free = gpu.limits.maxComputeWorkgroupStorageSize - 3 * 4 * WG - 64;
  let CAP = 2048;
  while (CAP >= 64 && 12 * CAP > free) CAP /= 2;
  if (CAP < 64) CAP = 0; // (every WebGPU device has room for 256)
  const k = gpu.kernel(sampleKernel, { WG, CAP });
  const p = new Params().u32(a.V).u32(a.ldV).f32(a.temperature).u32(a.topK).f32(a.topP).f32(a.minP).f32(a.penalty)
    .bool(!!a.history).u32(sampleWords(a.V));
  const h = a.history ?? { ids: gpu.dummy, offsets: gpu.dummy };
  gpu.dispatch(k, [a.logits, a.uniforms, h.ids, h.offsets, a.seen ?? gpu.dummyOut, a.out], p, [a.rows]);
}
