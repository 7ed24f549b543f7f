/**
 * Fresh parameters as mamba_ssm initializes them (docs/mamba.md, "Initialization"):
 *  - embeddings ~ N(0, 0.02); Linear and Conv1d layers: PyTorch defaults, U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
 *    Linear biases zero; out_proj additionally scaled by 1/sqrt(n_layer) (rescale_prenorm_residual);
 *  - dt_proj.weight ~ U(-R^-0.5, R^-0.5); dt_proj.bias = inverse_softplus(dt), dt = exp(U(log 1e-3, log 1e-1))
 *    clamped to >= 1e-4;
 *  - A_log[e, n] = log(n + 1) (S4D-Real), D = 1, norm weights 1;
 *  - the LTI mixer's constants: dt_lti = 0 (delta = softplus(dt_proj.bias) starts as above),
 *    B_lti, C_lti ~ U(-1/sqrt(N), 1/sqrt(N));
 *  - Mamba-2 (mamba_ssm's Mamba2): dt_bias = inverse_softplus(dt) with dt drawn as dt_proj.bias's above,
 *    A_log[h] = log(U(1, 16)), D = 1, the gated norm's weight 1; the conv over x | B | C and the projections as
 *    above (Falcon-Mamba initializes as Mamba-1).
 * Seeded: the same seed gives the same parameters on every machine.
 */
import { CONFIG_KEYS, MAMBA2_KEYS, type Mamba2Fields, type MambaConfig, checkFamily, parameterShapes } from "../config.ts";
import { check, checkKeys } from "../errors.ts";
import { Rng } from "../generate/rng.ts";
import { type HostTensor, numel } from "../io/tensor.ts";

export interface InitOptions {
  seed?: number;
  dtMin?: number;
  dtMax?: number;
  dtFloor?: number;
  /** scale out_proj by 1/sqrt(numLayers) (mamba_ssm's rescale_prenorm_residual, on by default) */
  rescaleOutProj?: boolean;
}

/**
 * A complete config from a few sizes; everything else takes the mamba_ssm defaults. For family "mamba2", the
 * Mamba-2 fields not given default to: head size 64 (E / 8 when E < 512, so that small models have 8 heads),
 * one group, chunks of 256, no dt clamp, the gated norm after the gate.
 */
export function makeConfig(c: Partial<Omit<MambaConfig, "mamba2">> & { vocabSize: number; hiddenSize: number; numLayers: number;
  mamba2?: Partial<Mamba2Fields> | null }): MambaConfig {
  // a misspelled size would otherwise leave its default in place without a word
  checkKeys("config", c, CONFIG_KEYS);
  if (c.mamba2 !== null) checkKeys("config", c.mamba2, MAMBA2_KEYS, "mamba2.");
  const D = c.hiddenSize;
  const family = c.family ?? "mamba";
  const E = c.intermediateSize ?? 2 * D;
  let mamba2: Mamba2Fields | null = null;
  if (family === "mamba2") {
    const headDim = c.mamba2?.headDim ?? (E >= 512 || E % 8 !== 0 ? 64 : E / 8);
    mamba2 = {
      numHeads: Math.floor(E / headDim), headDim, nGroups: 1, chunkSize: 256, timeStepLimit: [0, Infinity],
      gatedNorm: true, normBeforeGate: false, ...c.mamba2,
    };
  }
  const cfg: MambaConfig = {
    format: "hf",
    family,
    paddedVocabSize: c.vocabSize,
    intermediateSize: 2 * D,
    stateSize: 16,
    convKernel: 4,
    timeStepRank: Math.ceil(D / 16),
    useBias: false,
    useConvBias: true,
    tieEmbeddings: true,
    layerNormEpsilon: 1e-5,
    residualInFp32: true,
    mixer: "s6",
    eosTokenId: null,
    bosTokenId: null,
    padTokenId: null,
    mixerRmsEps: family === "falcon-mamba" ? 1e-6 : null,
    ...c,
    mamba2,
  };
  for (const k of ["vocabSize", "paddedVocabSize", "hiddenSize", "intermediateSize", "stateSize", "numLayers", "convKernel", "timeStepRank"] as const) {
    check(Number.isInteger(cfg[k]) && cfg[k] > 0, `config: ${k} must be a positive integer, got ${JSON.stringify(cfg[k])}`);
  }
  check(cfg.paddedVocabSize >= cfg.vocabSize, "config: paddedVocabSize must be >= vocabSize");
  checkFamily(cfg, "config");
  return cfg;
}

export function initParameters(config: MambaConfig, o: InitOptions = {}): Map<string, HostTensor> {
  const rng = new Rng(o.seed ?? 0, 0x1417);
  const dtMin = o.dtMin ?? 1e-3, dtMax = o.dtMax ?? 1e-1, dtFloor = o.dtFloor ?? 1e-4;
  const uniform = (n: number, bound: number) => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = (2 * rng.next() - 1) * bound;
    return a;
  };
  const out = new Map<string, HostTensor>();
  for (const [name, shape] of parameterShapes(config)) {
    const n = numel(shape);
    let data: Float32Array;
    const leaf = name.slice(name.lastIndexOf("mixer.") >= 0 ? name.lastIndexOf("mixer.") + 6 : 0);
    if (name.endsWith("embeddings.weight") || name === "lm_head.weight") {
      data = new Float32Array(n);
      for (let i = 0; i < n; i++) data[i] = 0.02 * rng.normal();
    } else if (name.endsWith("norm.weight") || name.endsWith("norm_f.weight")) {
      data = new Float32Array(n).fill(1);
    } else if (leaf === "A_log" && config.mamba2) {
      data = new Float32Array(n);
      for (let i = 0; i < n; i++) data[i] = Math.log(1 + 15 * rng.next()); // A_init_range (1, 16)
    } else if (leaf === "A_log") {
      const N = shape[1]!;
      data = new Float32Array(n);
      for (let i = 0; i < n; i++) data[i] = Math.log((i % N) + 1);
    } else if (leaf === "D") {
      data = new Float32Array(n).fill(1);
    } else if (leaf === "dt_proj.weight") {
      data = uniform(n, config.timeStepRank ** -0.5);
    } else if (leaf === "dt_lti") {
      data = new Float32Array(n); // LTI: delta = softplus(dt_lti + dt_proj.bias) starts at the dt_proj.bias draw
    } else if (leaf === "dt_proj.bias" || leaf === "dt_bias") {
      data = new Float32Array(n);
      for (let i = 0; i < n; i++) {
        const dt = Math.max(dtFloor, Math.exp(rng.next() * (Math.log(dtMax) - Math.log(dtMin)) + Math.log(dtMin)));
        data[i] = dt + Math.log(-Math.expm1(-dt)); // inverse softplus
      }
    } else if (leaf === "conv1d.weight" || leaf === "conv1d.bias") {
      data = uniform(n, 1 / Math.sqrt(config.convKernel)); // fan_in = K (depthwise)
    } else if (leaf.endsWith(".bias")) {
      data = new Float32Array(n); // Linear biases start at zero
    } else if (leaf === "B_lti" || leaf === "C_lti") {
      data = uniform(n, 1 / Math.sqrt(config.stateSize));
    } else {
      // Linear weights [out, in]
      data = uniform(n, 1 / Math.sqrt(shape[1]!));
      if (leaf === "out_proj.weight" && (o.rescaleOutProj ?? true)) {
        const s = 1 / Math.sqrt(config.numLayers);
        for (let i = 0; i < n; i++) data[i] = data[i]! * s;
      }
    }
    out.set(name, { dtype: "F32", shape: [...shape], data });
  }
  return out;
}
