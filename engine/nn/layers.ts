// Basic layers. Linear weights use the [out, in] layout of PyTorch checkpoints.
import { add, affine, matmul, mul, reshape } from '../ops/index.ts';
import { cast } from '../ops/cast.ts';
import { dropout } from '../ops/dropout.ts';
import { embedding } from '../ops/embedding.ts';
import { linear, loraLinear } from '../ops/linear.ts';
import { frozenLinear, rowChunks, rowRange } from '../ops/row-chunks.ts';
import { slice } from '../ops/shape.ts';
import { bytesPerElement } from '../dtype.ts';
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

/** Returns the state of the dropout seed counter, so a recomputation can replay the same seeds. */
export function dropoutSeedState(): number {
  return dropoutCounter;
}

/** Sets the dropout seed counter to a state returned by `dropoutSeedState()`. */
export function setDropoutSeedState(state: number): void {
  dropoutCounter = state >>> 0;
}

/**
 * Returns whether `weight` can take the fused kernels: stored as f32 and within one storage
 * binding. A frozen f16 weight or a larger one goes through `frozenLinear` instead.
 */
function fusable(weight: Tensor): boolean {
  return weight.dtype === 'f32' && weight.size * 4 <= weight.device.limits.maxBindingBytes;
}

/** Flattens x [..., in] to [rows, in] and returns it with the leading shape. */
function flattenRows(x: Tensor, inFeatures: number): [Tensor, number[]] {
  const leading = x.shape.slice(0, -1);
  return [reshape(x, [leading.reduce((p, d) => p * d, 1), inFeatures]), leading];
}

/**
 * y = x·Wᵀ + b. x [..., in] → [..., out]. An f32 weight within one binding runs one matmul
 * dispatch with the bias fused. A frozen f16 weight, or one larger than a binding, runs
 * `frozenLinear` (row chunks of at most one binding, read in their stored dtype), and then
 * the bias is added.
 */
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
    if (fusable(this.weight)) return linear(x, this.weight, this.bias);
    const [flat, leading] = flattenRows(x, this.inFeatures);
    let y = frozenLinear(flat, this.weight);
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
 * Forward runs the fused `loraLinear` op: one small matmul for dropout(x)·Aᵀ and one dispatch
 * for the rest.
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
   * runs one matmul dispatch instead of two. `unmerge` subtracts it again (equal up to f32 rounding).
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

  /**
   * W ← W + sign·(alpha/rank)·B·A, in row chunks that fit one binding as f32 (one chunk for
   * most weights). An f16 base is updated in f32 and rounded back, so each merge or unmerge
   * adds f16 rounding.
   */
  private addUpdate(sign: 1 | -1): void {
    const { rank, alpha } = this.lora;
    const weight = this.base.weight;
    const { outFeatures, inFeatures } = this.base;
    const chunks = rowChunks(outFeatures, inFeatures * bytesPerElement(weight.dtype), weight.device.limits, inFeatures * 4);
    noGrad(() => {
      for (const chunk of chunks) {
        tidy(() => {
          const whole = chunks.length === 1;
          const rows = whole ? weight : rowRange(weight, chunk.start, chunk.count);
          const factorB = whole ? this.loraB : slice(this.loraB, 0, chunk.start, chunk.start + chunk.count);
          const update = affine(matmul(factorB, this.loraA), (sign * alpha) / rank);
          const merged = add(rows.dtype === 'f32' ? rows : cast(rows, 'f32'), update);
          rows.copyFrom(rows.dtype === 'f32' ? merged : cast(merged, rows.dtype));
        });
      }
    });
  }

  forward(x: Tensor): Tensor {
    if (this.merged && this.training) {
      throw new Error('LoRALinear: the LoRA update is merged into the base weight; call unmerge() before training');
    }
    if (!this.loraEnabled || this.merged) return this.base.forward(x);
    const { rank, alpha } = this.lora;
    const p = this.training ? this.lora.dropout : 0;
    const seed = p > 0 ? nextDropoutSeed() : 0;
    if (fusable(this.base.weight)) {
      return loraLinear(x, this.base.weight, this.base.bias, this.loraA, this.loraB, { scale: alpha / rank, dropout: p, seed });
    }
    // An f16 or split base: the base product by row chunks, the update by separate matmuls.
    const [flat, leading] = flattenRows(x, this.base.inFeatures);
    const dropped = p > 0 ? dropout(flat, p, seed) : flat;
    const update = affine(matmul(matmul(dropped, this.loraA, { transB: true }), this.loraB, { transB: true }), alpha / rank);
    return add(this.base.forward(x), reshape(update, [...leading, this.base.outFeatures]));
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
