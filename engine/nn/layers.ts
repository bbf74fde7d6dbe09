// Basic layers. Linear weights use the [out, in] layout of PyTorch checkpoints.
import { add, affine, matmul, mul, reshape } from '../ops/index.ts';
import { dropout } from '../ops/dropout.ts';
import { embedding } from '../ops/embedding.ts';
import { layerNorm, rmsNorm } from '../ops/norm.ts';
import type { Random } from '../random.ts';
import { noGrad, parameter, tidy, type Tensor } from '../tensor.ts';
import { Module } from './module.ts';

let dropoutCounter = 0x9e3779b9;

/** Returns a fresh seed for each dropout call, so masks differ between steps. */
export function nextDropoutSeed(): number {
  dropoutCounter = (Math.imul(dropoutCounter, 1664525) + 1013904223) >>> 0;
  return dropoutCounter;
}

/** y = x·Wᵀ + b. x [..., in] → [..., out]. */
export class Linear extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;

  constructor(readonly inFeatures: number, readonly outFeatures: number, rng: Random, options: { bias?: boolean; std?: number } = {}) {
    super();
    const std = options.std ?? 1 / Math.sqrt(inFeatures);
    this.weight = this.addParameter('weight', parameter(rng.normalArray(outFeatures * inFeatures, std), [outFeatures, inFeatures]));
    this.bias = options.bias === false ? null : this.addParameter('bias', parameter(new Float32Array(outFeatures), [outFeatures]));
  }

  forward(x: Tensor): Tensor {
    const leading = x.shape.slice(0, -1);
    const rows = leading.reduce((p, d) => p * d, 1);
    const flat = reshape(x, [rows, this.inFeatures]);
    let y = matmul(flat, this.weight, { transB: true });
    if (this.bias) y = add(y, this.bias);
    return reshape(y, [...leading, this.outFeatures]);
  }
}

export interface LoraOptions {
  rank: number;
  alpha: number;
  dropout: number;
}

/**
 * A frozen base Linear plus a trainable low-rank update:
 * y = x·Wᵀ + b + (alpha/rank)·dropout(x)·Aᵀ·Bᵀ, with A [rank, in] and B [out, rank] = 0 at
 * initialisation, so the update starts at zero. `loraEnabled` switches the update off.
 */
export class LoRALinear extends Module {
  readonly base: Linear;
  readonly loraA: Tensor;
  readonly loraB: Tensor;
  loraEnabled = false;
  /** True while the update is folded into the base weight (see `merge`). */
  merged = false;

  constructor(inFeatures: number, outFeatures: number, rng: Random, readonly lora: LoraOptions, options: { bias?: boolean } = {}) {
    super();
    this.base = this.addModule('base', new Linear(inFeatures, outFeatures, rng, options));
    this.loraA = this.addParameter('lora_A', parameter(rng.uniformArray(lora.rank * inFeatures, 1 / Math.sqrt(inFeatures)), [lora.rank, inFeatures]));
    this.loraB = this.addParameter('lora_B', parameter(new Float32Array(outFeatures * lora.rank), [outFeatures, lora.rank]));
  }

  get weight(): Tensor {
    return this.base.weight;
  }

  /**
   * Folds the update into the base weight for inference, W ← W + (alpha/rank)·B·A, so forward
   * runs one matmul instead of three. `unmerge` subtracts it again (equal up to f32 rounding).
   */
  merge(): void {
    if (this.merged) return;
    if (!this.loraEnabled) throw new Error('LoRALinear: merge() needs the LoRA update enabled (loraEnabled = true)');
    this.addUpdate(1);
    this.merged = true;
  }

  unmerge(): void {
    if (!this.merged) return;
    this.addUpdate(-1);
    this.merged = false;
  }

  private addUpdate(sign: 1 | -1): void {
    const { rank, alpha } = this.lora;
    noGrad(() =>
      tidy(() => {
        const update = affine(matmul(this.loraB, this.loraA), (sign * alpha) / rank);
        this.base.weight.copyFrom(add(this.base.weight, update));
      }),
    );
  }

  forward(x: Tensor): Tensor {
    if (this.merged && this.training) {
      throw new Error('LoRALinear: the LoRA update is merged into the base weight; call unmerge() before training');
    }
    const y = this.base.forward(x);
    if (!this.loraEnabled || this.merged) return y;
    const { rank, alpha } = this.lora;
    const leading = x.shape.slice(0, -1);
    const rows = leading.reduce((p, d) => p * d, 1);
    let flat = reshape(x, [rows, this.base.inFeatures]);
    if (this.training && this.lora.dropout > 0) flat = dropout(flat, this.lora.dropout, nextDropoutSeed());
    const down = matmul(flat, this.loraA, { transB: true });
    const up = matmul(down, this.loraB, { transB: true });
    const update = reshape(affine(up, alpha / rank), [...leading, this.base.outFeatures]);
    return add(y, update);
  }
}

/** Token embedding table [V, D]; ids i32 [...] → [..., D]. */
export class Embedding extends Module {
  readonly weight: Tensor;

  constructor(readonly count: number, readonly dim: number, rng: Random, std = 0.02) {
    super();
    this.weight = this.addParameter('weight', parameter(rng.normalArray(count * dim, std), [count, dim]));
  }

  forward(ids: Tensor): Tensor {
    return embedding(this.weight, ids);
  }
}

export class LayerNorm extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor;

  constructor(readonly dim: number, readonly eps = 1e-5) {
    super();
    this.weight = this.addParameter('weight', parameter(new Float32Array(dim).fill(1), [dim]));
    this.bias = this.addParameter('bias', parameter(new Float32Array(dim), [dim]));
  }

  forward(x: Tensor): Tensor {
    return layerNorm(x, this.weight, this.bias, this.eps);
  }
}

export class RMSNorm extends Module {
  readonly weight: Tensor;

  constructor(readonly dim: number, readonly eps = 1e-6) {
    super();
    this.weight = this.addParameter('weight', parameter(new Float32Array(dim).fill(1), [dim]));
  }

  forward(x: Tensor): Tensor {
    return rmsNorm(x, this.weight, this.eps);
  }
}

/** Elementwise x·scale with a learnable per-channel scale (DINOv2 LayerScale). */
export class LayerScale extends Module {
  readonly lambda: Tensor;

  constructor(dim: number, init = 1) {
    super();
    this.lambda = this.addParameter('lambda1', parameter(new Float32Array(dim).fill(init), [dim]));
  }

  forward(x: Tensor): Tensor {
    return mul(x, this.lambda);
  }
}
