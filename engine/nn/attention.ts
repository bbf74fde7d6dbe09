// Multi-head scaled-dot-product attention (unfused: matmul, mask, softmax, matmul) and
// rotary position embeddings in the rotate-half layout.
//
// Shapes: B batch, H heads, Tq/Tk query/key lengths, D model width, Dh = D / H.
import { add, matmul, mul, neg, reshape, scale } from '../ops/index.ts';
import { maskScores } from '../ops/mask.ts';
import { concat, permute, slice } from '../ops/shape.ts';
import { softmax } from '../ops/softmax.ts';
import type { Random } from '../random.ts';
import { fromHost, type Tensor } from '../tensor.ts';
import { Linear } from './layers.ts';
import { Module } from './module.ts';

export interface AttentionMask {
  /** Query i may not attend to key j > i + queryOffset. */
  causal?: boolean;
  queryOffset?: number;
  /** i32 [B]: keys at positions ≥ keyLengths[b] are padding. */
  keyLengths?: Tensor;
}

/** [B, T, D] → [B, H, T, Dh]. */
export function splitHeads(x: Tensor, heads: number): Tensor {
  const [batch, seqLen, width] = x.shape;
  return permute(reshape(x, [batch, seqLen, heads, width / heads]), [0, 2, 1, 3]);
}

/** [B, H, T, Dh] → [B, T, D]. */
export function mergeHeads(x: Tensor): Tensor {
  const [batch, heads, seqLen, headDim] = x.shape;
  return reshape(permute(x, [0, 2, 1, 3]), [batch, seqLen, heads * headDim]);
}

/** softmax(q·kᵀ/√Dh + mask)·v. q [B, H, Tq, Dh], k and v [B, H, Tk, Dh] → [B, H, Tq, Dh]. */
export function scaledDotProductAttention(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask = {}): Tensor {
  const headDim = q.shape[q.shape.length - 1];
  let scores = scale(matmul(q, k, { transB: true }), 1 / Math.sqrt(headDim));
  if (mask.causal || mask.keyLengths) {
    scores = maskScores(scores, { causal: mask.causal ?? false, queryOffset: mask.queryOffset ?? 0, keyLengths: mask.keyLengths });
  }
  return matmul(softmax(scores), v);
}

/** Attention with its own q/k/v/output projections (biases on), for encoders and adapters. */
export class MultiHeadAttention extends Module {
  readonly qProj: Linear;
  readonly kProj: Linear;
  readonly vProj: Linear;
  readonly outProj: Linear;

  constructor(readonly dim: number, readonly heads: number, rng: Random, keyDim = dim) {
    super();
    if (dim % heads !== 0) throw new Error(`attention: width ${dim} is not divisible by ${heads} heads`);
    this.qProj = this.addModule('q_proj', new Linear(dim, dim, rng));
    this.kProj = this.addModule('k_proj', new Linear(keyDim, dim, rng));
    this.vProj = this.addModule('v_proj', new Linear(keyDim, dim, rng));
    this.outProj = this.addModule('out_proj', new Linear(dim, dim, rng));
  }

  /** Attention probabilities [B, H, Tq, Tk] for the same inputs as `forward`. */
  attentionWeights(query: Tensor, context: Tensor = query, mask: AttentionMask = {}): Tensor {
    const q = splitHeads(this.qProj.forward(query), this.heads);
    const k = splitHeads(this.kProj.forward(context), this.heads);
    const headDim = q.shape[q.shape.length - 1];
    let scores = scale(matmul(q, k, { transB: true }), 1 / Math.sqrt(headDim));
    if (mask.causal || mask.keyLengths) {
      scores = maskScores(scores, { causal: mask.causal ?? false, queryOffset: mask.queryOffset ?? 0, keyLengths: mask.keyLengths });
    }
    return softmax(scores);
  }

  /** query [B, Tq, D], context [B, Tk, keyDim] → [B, Tq, D]. */
  forward(query: Tensor, context: Tensor = query, mask: AttentionMask = {}): Tensor {
    const q = splitHeads(this.qProj.forward(query), this.heads);
    const k = splitHeads(this.kProj.forward(context), this.heads);
    const v = splitHeads(this.vProj.forward(context), this.heads);
    return this.outProj.forward(mergeHeads(scaledDotProductAttention(q, k, v, mask)));
  }
}

/** cos and sin tables [T, Dh] for positions offset..offset+T-1 (HF LLaMA layout). */
export function ropeTables(seqLen: number, headDim: number, theta: number, offset = 0): { cos: Tensor; sin: Tensor } {
  const half = headDim / 2;
  const cos = new Float32Array(seqLen * headDim);
  const sin = new Float32Array(seqLen * headDim);
  for (let t = 0; t < seqLen; t++) {
    for (let i = 0; i < half; i++) {
      const invFreq = 1 / theta ** ((2 * i) / headDim);
      const angle = (t + offset) * invFreq;
      for (const column of [i, i + half]) {
        cos[t * headDim + column] = Math.cos(angle);
        sin[t * headDim + column] = Math.sin(angle);
      }
    }
  }
  return { cos: fromHost(cos, [seqLen, headDim]), sin: fromHost(sin, [seqLen, headDim]) };
}

/** x·cos + rotate_half(x)·sin, rotate_half(x) = [−x₂, x₁]. x [B, H, T, Dh]. */
export function applyRope(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  const headDim = x.shape[x.shape.length - 1];
  const half = headDim / 2;
  const axis = x.shape.length - 1;
  const first = slice(x, axis, 0, half);
  const second = slice(x, axis, half, headDim);
  const rotated = concat([neg(second), first], axis);
  return add(mul(x, cos), mul(rotated, sin));
}
