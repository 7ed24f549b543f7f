#!/usr/bin/env bash
# One batched run on the GPU machine (no npm there): each step bounded, its output in $OUT/<step>.txt.
# Usage (from the repository root, after `source .gpu/boot.sh`): bash scripts/gpu-session.sh step1,step2,...
set -u
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
steps=${1:-testgpu,m2,f16best,tc}
run() { local name=$1 limit=$2; shift 2; echo "== $name (limit ${limit}s)"; timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1; echo "rc=$?" >> "$OUT/$name.txt"; tail -n 3 "$OUT/$name.txt"; }
for s in ${steps//,/ }; do
  case $s in
    tc) run tc 150 env TC_TILES="${TC_TILES:-128x128x32x2x2;128x128x64x2x2;256x128x32x4x2;128x256x32x2x4;128x128x32x4x2;128x128x32x2x4}" node --import tsx scripts/gpu-tc.ts both ;;
    testgpu) run testgpu 90 env CI=true node --import tsx --test test/gpu/*.test.ts ;;
    mamba2) run mamba2 200 node --import tsx bench/run.ts mamba2 ;;
    m2) run m2 240 env BENCH_SSD_BWD_TUNINGS="${SSD_BWD_TUNINGS:-Q:64|Q:64,groupWorkgroups:1}" BENCH_SSD_VARIANTS="${SSD_VARIANTS:-Q:64,SL:1,BK:16,PB:32|Q:128,SL:1,BK:16,PB:64}" BENCH_ONLY=scan,bwd,forward,decode node --import tsx bench/run.ts mamba2 ;;
    m2dec) run m2dec 120 env BENCH_ONLY=decode,2.7b node --import tsx bench/run.ts mamba2 ;;
    m2decoff) run m2decoff 120 env BENCH_TUNING=decodeScanOut:false BENCH_ONLY=decode,2.7b node --import tsx bench/run.ts mamba2 ;;
    m2f16) run m2f16 120 env BENCH_TUNING=precision:f16 BENCH_ONLY=forward,decode node --import tsx bench/run.ts mamba2 ;;
    lanes) run lanes 150 env BENCH_ONLY=lanes node --import tsx bench/run.ts mamba2 ;;
    m2best) # Mamba-2 decode with the lanes and load size the lanes step timed fastest for each model (the sum of in_proj and out_proj)
      for m in 130m 2.7b; do
        knobs=$(node -e 'const [f,m]=process.argv.slice(1);const t=require("fs").readFileSync(f,"utf8");const rows=[];
for (const r of t.matchAll(/mamba2-(\S+) decode matvecs, lanes (\d+)(?:\/\d+ \(default\))?, loads of (\d+) B: .*? ([\d.]+) us,.*? ([\d.]+) us,/g))
  if (r[1]===m) rows.push({lanes:r[0].includes("default")?0:Number(r[2]),lb:r[3],tin:Number(r[4]),tout:Number(r[5])});
const bi=rows.sort((a,b)=>a.tin-b.tin)[0]; if(!bi){console.log("");process.exit(0);}
const bo=rows.filter(r=>r.lb===bi.lb).sort((a,b)=>a.tout-b.tout)[0];
console.log(`decodeLoadBytes:${bi.lb},decodeM2InLanes:${bi.lanes},decodeM2OutLanes:${bo.lanes}`)' "$OUT/lanes.txt" "$m" 2>/dev/null)
        echo "mamba2-$m: ${knobs:-defaults}"
        if [ "$m" = 130m ]; then run m2best130m 120 env BENCH_TUNING="$knobs" BENCH_ONLY=decode BENCH_DECODE_BATCHES=1 node --import tsx bench/run.ts mamba2
        else run m2best27b 150 env BENCH_TUNING="$knobs" BENCH_ONLY=2.7b node --import tsx bench/run.ts mamba2; fi
      done ;;
    m2pers) # mamba2-130m decode at batch 1: the default step (a layer in one dispatch), and the kernels of their own
      run m2pers-layer 100 env BENCH_ONLY=decode BENCH_DECODE_BATCHES=1 node --import tsx bench/run.ts mamba2
      run m2pers-kernels 100 env BENCH_TUNING=decodePersistent:false BENCH_ONLY=decode BENCH_DECODE_BATCHES=1 node --import tsx bench/run.ts mamba2 ;;
    m2fwd) # mamba2-130m's f32 forward (wall against GPU clock, per-kernel profile), submitted every 48 dispatches (the default) and once
      run m2fwd 90 env BENCH_ONLY=forward node --import tsx bench/run.ts mamba2
      run m2fwd-onesubmit 90 env BENCH_TUNING=flushEvery:100000 BENCH_ONLY=forward node --import tsx bench/run.ts mamba2 ;;
    m27) run m27 150 env BENCH_ONLY=2.7b node --import tsx bench/run.ts mamba2 ;;
    m27pers) # mamba2-2.7b with its layers in one dispatch each (off by default at this size), the matvecs' phases looping over groups of rows
      run m27pers 150 env BENCH_TUNING=decodeM2Persistent:true BENCH_ONLY=2.7b node --import tsx bench/run.ts mamba2 ;;
    m27knobs) # mamba2-2.7b's decode with other load sizes, out_proj lanes and workgroup counts than the defaults
      for t in ${M27_TUNINGS:-decodeLoadBytes:256 decodeM2OutLanes:64 decodeM2Workgroups:264}; do run "m27-${t//:/-}" 120 env BENCH_TUNING="$t" BENCH_ONLY=2.7b node --import tsx bench/run.ts mamba2; done ;;
    tiles) run tiles 90 env BENCH_ONLY=tiles node --import tsx bench/run.ts webgpu ;;
    m1fwd) run m1fwd 90 env BENCH_ONLY=forward BENCH_MODELS=130m node --import tsx bench/run.ts webgpu ;;
    m27f16) run m27f16 150 env BENCH_TUNING=precision:f16 BENCH_ONLY=2.7b node --import tsx bench/run.ts mamba2 ;;
    trainf16) run trainf16 150 env BENCH_ONLY=step BENCH_TRAIN_PRECISIONS=f32,f16 node --import tsx bench/run.ts webgpu-train ;;
    scan) run scan 150 env BENCH_SSD_BWD_TUNINGS="${SSD_BWD_TUNINGS:-Q:64|Q:64,groupWorkgroups:1}" BENCH_ONLY=scan,bwd node --import tsx bench/run.ts mamba2 ;;
    f16) run f16 200 env BENCH_TUNING=precision:f16 BENCH_ONLY=forward,decode BENCH_DECODE_BATCHES=1,64 BENCH_DECODE_ROUNDS=2 node --import tsx bench/run.ts webgpu ;;
    f32) run f32 120 env BENCH_ONLY=forward,decode BENCH_MODELS=130m BENCH_DECODE_BATCHES=1,64 BENCH_DECODE_ROUNDS=2 node --import tsx bench/run.ts webgpu ;;
    tests) run tests 150 env CI=true node --import tsx --test test/backend/webgpu-mamba2-decode.test.ts test/backend/webgpu-ssd.test.ts test/backend/webgpu-ssd-backward.test.ts test/backend/webgpu-f16.test.ts test/model/mamba2-webgpu.test.ts test/backend/webgpu-fixed.test.ts test/backend/ops.test.ts ;;
    f16best) # precision f16's forward of 130m with the tile that summed fastest over the tc step's shapes
      best=$(node -e 'const t=require("fs").readFileSync(process.argv[1],"utf8");const s=new Map();for(const m of t.matchAll(/tc ((?:\d+x){2,4}\d+) ([\d.]+) ms/g)){s.set(m[1],(s.get(m[1])??0)+Number(m[2]));}console.log([...s].sort((a,b)=>a[1]-b[1])[0]?.[0]??"")' "$OUT/tc.txt" 2>/dev/null)
      echo "best tile: ${best:-the device default}"
      run f16best 110 env BENCH_TUNING="precision:f16${best:+,tensorCoreTile:$best}" BENCH_ONLY=matmul,forward,decode BENCH_MODELS=130m BENCH_DECODE_BATCHES=1,64 BENCH_DECODE_ROUNDS=1 node --import tsx bench/run.ts webgpu ;;
    *) echo "unknown step $s" ;;
  esac
done
