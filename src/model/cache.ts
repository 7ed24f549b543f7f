/**
 * The recurrent state of a Mamba LM for step mode, per layer:
 *   conv[i]: [B, K-1, E]  the last K-1 inputs of the depthwise conv (the x half of in_proj, before the conv)
 *   ssm[i]:  [B, E, N]    the selective scan's hidden state h
 * Zeros are the state before the first token. Ops read and overwrite these tensors in place.
 */
import type { Backend, Tensor } from "../backend/backend.ts";
import type { MambaConfig } from "../config.ts";
import { MambaError } from "../errors.ts";

export class MambaCache {
  private constructor(
    readonly backend: Backend,
    readonly batch: number,
    readonly conv: Tensor[],
    readonly ssm: Tensor[],
  ) {}

  static zeros(backend: Backend, config: MambaConfig, batch: number): MambaCache {
    const { numLayers, convKernel: K, intermediateSize: E, stateSize: N } = config;
    const conv: Tensor[] = [];
    const ssm: Tensor[] = [];
    for (let i = 0; i < numLayers; i++) {
      conv.push(backend.zeros([batch, K - 1, E]));
      ssm.push(backend.zeros([batch, E, N]));
    }
    return new MambaCache(backend, batch, conv, ssm);
  }

  /** Zero conv histories and the given SSM states ([batch, E, N] per layer, now owned by the cache). */
  static withSsm(backend: Backend, config: MambaConfig, batch: number, ssm: Tensor[]): MambaCache {
    const { numLayers, convKernel: K, intermediateSize: E } = config;
    if (ssm.length !== numLayers) throw new MambaError(`${ssm.length} SSM states for a model of ${numLayers} layers`);
    const conv: Tensor[] = [];
    for (let i = 0; i < numLayers; i++) conv.push(backend.zeros([batch, K - 1, E]));
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
