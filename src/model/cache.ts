/**
 * The recurrent state of a Mamba LM for step mode, per layer:
 *   conv[i]: [B, K-1, C]  the last K-1 inputs of the depthwise conv (before the conv): C = E channels of x
 *                         (Mamba-1, Falcon-Mamba), or C = E + 2·G·N channels of x | B | C (Mamba-2)
 *   ssm[i]:  [B, E, N]    the selective scan's hidden state h (Mamba-1, Falcon-Mamba)
 *            [B, H, P, N] the SSD state of every head (Mamba-2)
 * Zeros are the state before the first token. Ops read and overwrite these tensors in place.
 */
import type { Backend, Tensor } from "../backend/backend.ts";
import { type MambaConfig, convChannels, ssmStateShape } from "../config.ts";
import { MambaError } from "../errors.ts";

export class MambaCache {
  private constructor(
    readonly backend: Backend,
    readonly batch: number,
    readonly conv: Tensor[],
    readonly ssm: Tensor[],
  ) {}

  static zeros(backend: Backend, config: MambaConfig, batch: number): MambaCache {
    const { numLayers, convKernel: K } = config;
    const conv: Tensor[] = [];
    const ssm: Tensor[] = [];
    for (let i = 0; i < numLayers; i++) {
      conv.push(backend.zeros([batch, K - 1, convChannels(config)]));
      ssm.push(backend.zeros(ssmStateShape(config, batch)));
    }
    return new MambaCache(backend, batch, conv, ssm);
  }

  /** A cache over given state tensors (any shapes of the right sizes; now owned by the cache). */
  static of(backend: Backend, batch: number, conv: Tensor[], ssm: Tensor[]): MambaCache {
    return new MambaCache(backend, batch, conv, ssm);
  }

  /** Zero conv histories and the given SSM states (per layer of ssmStateShape, now owned by the cache). */
  static withSsm(backend: Backend, config: MambaConfig, batch: number, ssm: Tensor[]): MambaCache {
    const { numLayers, convKernel: K } = config;
    if (ssm.length !== numLayers) throw new MambaError(`${ssm.length} SSM states for a model of ${numLayers} layers`);
    const want = ssmStateShape(config, batch);
    for (const s of ssm) {
      if (s.shape.length !== want.length || s.shape.some((d, j) => d !== want[j])) {
        throw new MambaError(`an SSM state of shape [${s.shape}] for a model whose states are [${want}]`);
      }
    }
    const conv: Tensor[] = [];
    for (let i = 0; i < numLayers; i++) conv.push(backend.zeros([batch, K - 1, convChannels(config)]));
    return new MambaCache(backend, batch, conv, ssm);
  }

  /** Stacks the rows of several caches into one batch (each row keeps its own state). */
  static concat(caches: MambaCache[]): MambaCache {
    const b = caches[0]!.backend;
    const layers = caches[0]!.conv.length;
    const conv: Tensor[] = [];
    const ssm: Tensor[] = [];
    for (let i = 0; i < layers; i++) {
      conv.push(b.concat0(caches.map((c) => c.conv[i]!)));
      ssm.push(b.concat0(caches.map((c) => c.ssm[i]!)));
    }
    return new MambaCache(b, caches.reduce((a, c) => a + c.batch, 0), conv, ssm);
  }

  dispose(): void {
    this.backend.dispose(...this.conv, ...this.ssm);
  }
}
