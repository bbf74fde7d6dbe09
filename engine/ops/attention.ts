// Fused (flash-style) scaled-dot-product attention: softmax(scale · q·kᵀ, masked)·v in one
// kernel, without materialising the Tq × Tk score matrix. The backward recomputes the
// probabilities from q, k and the saved per-row logsumexp.
//
// Shapes: q [B, H, Tq, Dh], k and v [B, H, Tk, Dh], keyLengths i32 [B] → out [B, H, Tq, Dh].
// Masking follows maskScores: key j is hidden from query i when j > i + queryOffset (causal)
// or j >= keyLengths[b]. A query row with no visible key averages v over all keys, as the
// unfused composition (mask fill −1e9, then softmax) does.
import {
  attentionBackwardKeyProgram,
  attentionBackwardQueryProgram,
  attentionForwardProgram,
  MAX_HEAD_DIM,
  type AttentionMaskParams,
  type AttentionShape,
} from '../../kernels/attention.ts';
import { shapeString } from '../dtype.ts';
import { defineKernel, type TensorSpec } from '../kernel.ts';
import type { Tensor } from '../tensor.ts';
import { accumulateGradInto } from './elementwise.ts';
import { MASKED_SCORE } from './mask.ts';
import { assertDtype, record, runKernel } from './run.ts';

export interface FlashAttentionOptions {
  /** Query i may not attend to key j > i + queryOffset. */
  causal?: boolean;
  /** Position of the first query among the keys; 0 when queries and keys start together. */
  queryOffset?: number;
  /** i32 [B]: keys at positions ≥ keyLengths[b] are padding. */
  keyLengths?: Tensor;
  /** Multiplier of q·kᵀ, 1/√Dh by default. */
  scale?: number;
}

/** Kernel params: the mask and scale, shared by the forward and both backward kernels. */
export interface FlashAttentionParams {
  causal: boolean;
  queryOffset: number;
  scale: number;
}

function describe(spec: TensorSpec): string {
  return `${shapeString(spec.shape)} ${spec.dtype}`;
}

/** Validates q, k, v and the optional keyLengths, and returns the sizes. */
export function attentionShape(op: string, q: TensorSpec, k: TensorSpec, v: TensorSpec, keyLengths: TensorSpec | undefined): AttentionShape {
  for (const [name, spec] of [['q', q], ['k', k], ['v', v]] as const) {
    if (spec.dtype !== 'f32' || spec.shape.length !== 4) {
      throw new Error(`${op}: ${name} must be f32 [B, H, T, Dh], got ${describe(spec)}`);
    }
  }
  const [batch, heads, queryLength, headDim] = q.shape;
  const keyLength = k.shape[2];
  if (k.shape[0] !== batch || k.shape[1] !== heads || k.shape[3] !== headDim) {
    throw new Error(
      `${op}: k has shape ${shapeString(k.shape)}, but q ${shapeString(q.shape)} needs k [${batch}, ${heads}, Tk, ${headDim}]; ` +
        'q and k must share the batch, the heads and the head width Dh',
    );
  }
  if (v.shape.some((d, i) => d !== k.shape[i])) {
    throw new Error(`${op}: v has shape ${shapeString(v.shape)}, expected the shape of k ${shapeString(k.shape)}`);
  }
  if (queryLength === 0 || keyLength === 0 || headDim === 0) {
    throw new Error(`${op}: empty input (q ${shapeString(q.shape)}, k ${shapeString(k.shape)}); Tq, Tk and Dh must be at least 1`);
  }
  if (headDim > MAX_HEAD_DIM) {
    throw new Error(`${op}: head width Dh = ${headDim} exceeds the maximum of ${MAX_HEAD_DIM}; use scaledDotProductAttention for wider heads`);
  }
  if (keyLengths && (keyLengths.dtype !== 'i32' || keyLengths.shape.length !== 1 || keyLengths.shape[0] !== batch)) {
    throw new Error(`${op}: keyLengths must be i32 [${batch}] (one key count per batch row), got ${describe(keyLengths)}`);
  }
  return { batch, heads, queryLength, keyLength, headDim };
}

function maskParams(params: FlashAttentionParams, hasKeyLengths: boolean): AttentionMaskParams {
  return { ...params, hasKeyLengths };
}

/** Returns n, the number of keys 0..n-1 that query i of batch row b may attend to (see the file header). */
function validKeys(shape: AttentionShape, params: FlashAttentionParams, keyLengths: ArrayLike<number> | undefined, b: number, i: number): number {
  let n = shape.keyLength;
  if (params.causal) n = Math.min(n, i + params.queryOffset + 1);
  if (keyLengths) n = Math.min(n, keyLengths[b]);
  return Math.max(n, 0);
}

function dotRows(a: ArrayLike<number>, aBase: number, b: ArrayLike<number>, bBase: number, width: number): number {
  let total = 0;
  for (let d = 0; d < width; d++) total += a[aBase + d] * b[bBase + d];
  return total;
}

// ---------- kernels ----------

/** Inputs q, k, v, [keyLengths]. Outputs out [B, H, Tq, Dh] and lse [B, H, Tq] (the logsumexp of each row's scores). */
export const attentionForwardKernel = defineKernel<FlashAttentionParams>({
  name: 'flash_attention',
  outputs([q, k, v, keyLengths]) {
    const { batch, heads, queryLength, headDim } = attentionShape('flash_attention', q, k, v, keyLengths);
    return [
      { shape: [batch, heads, queryLength, headDim], dtype: 'f32' },
      { shape: [batch, heads, queryLength], dtype: 'f32' },
    ];
  },
  cpu([q, k, v, keyLengths], [out, lse], specs, params) {
    const shape = attentionShape('flash_attention', specs[0], specs[1], specs[2], specs[3]);
    const { batch, heads, queryLength, keyLength, headDim } = shape;
    const scores = new Float64Array(keyLength);
    for (let b = 0; b < batch; b++) {
      for (let h = 0; h < heads; h++) {
        const kvBase = (b * heads + h) * keyLength * headDim;
        for (let i = 0; i < queryLength; i++) {
          const row = (b * heads + h) * queryLength + i;
          const qBase = row * headDim;
          const n = validKeys(shape, params, keyLengths, b, i);

          // Two passes in float64: max, then the normalised weighted sum of v.
          let max = -Infinity;
          for (let j = 0; j < n; j++) {
            scores[j] = dotRows(q, qBase, k, kvBase + j * headDim, headDim) * params.scale;
            max = Math.max(max, scores[j]);
          }
          let total = 0;
          for (let j = 0; j < n; j++) total += Math.exp(scores[j] - max);
          for (let d = 0; d < headDim; d++) {
            let acc = 0;
            if (n === 0) {
              for (let j = 0; j < keyLength; j++) acc += v[kvBase + j * headDim + d] / keyLength;
            } else {
              for (let j = 0; j < n; j++) acc += (Math.exp(scores[j] - max) / total) * v[kvBase + j * headDim + d];
            }
            out[qBase + d] = acc;
          }
          lse[row] = n === 0 ? MASKED_SCORE + Math.log(keyLength) : max + Math.log(total);
        }
      }
    }
  },
  wgsl([q, k, v, keyLengths], params) {
    return attentionForwardProgram(attentionShape('flash_attention', q, k, v, keyLengths), maskParams(params, keyLengths !== undefined));
  },
  flops([q, k, v, keyLengths]) {
    const { batch, heads, queryLength, keyLength, headDim } = attentionShape('flash_attention', q, k, v, keyLengths);
    return 4 * batch * heads * queryLength * keyLength * headDim;
  },
});

/**
 * Inputs q, k, v, out, dOut, lse, [keyLengths]. Outputs dq [B, H, Tq, Dh] and
 * delta = rowsum(dOut ∘ out) [B, H, Tq], which the key kernel needs.
 */
export const attentionBackwardQueryKernel = defineKernel<FlashAttentionParams>({
  name: 'flash_attention_backward_query',
  outputs([q, k, v, , , , keyLengths]) {
    const { batch, heads, queryLength, headDim } = attentionShape('flash_attention_backward_query', q, k, v, keyLengths);
    return [
      { shape: [batch, heads, queryLength, headDim], dtype: 'f32' },
      { shape: [batch, heads, queryLength], dtype: 'f32' },
    ];
  },
  cpu([q, k, v, out, dOut, lse, keyLengths], [dq, delta], specs, params) {
    const shape = attentionShape('flash_attention_backward_query', specs[0], specs[1], specs[2], specs[6]);
    const { batch, heads, queryLength, keyLength, headDim } = shape;
    const dqRow = new Float64Array(headDim);
    for (let b = 0; b < batch; b++) {
      for (let h = 0; h < heads; h++) {
        const kvBase = (b * heads + h) * keyLength * headDim;
        for (let i = 0; i < queryLength; i++) {
          const row = (b * heads + h) * queryLength + i;
          const qBase = row * headDim;
          const rowDelta = dotRows(dOut, qBase, out, qBase, headDim);
          delta[row] = rowDelta;

          dqRow.fill(0);
          const n = validKeys(shape, params, keyLengths, b, i);
          for (let j = 0; j < n; j++) {
            const kBase = kvBase + j * headDim;
            const p = Math.exp(dotRows(q, qBase, k, kBase, headDim) * params.scale - lse[row]);
            const ds = p * (dotRows(dOut, qBase, v, kBase, headDim) - rowDelta);
            for (let d = 0; d < headDim; d++) dqRow[d] += ds * k[kBase + d];
          }
          for (let d = 0; d < headDim; d++) dq[qBase + d] = dqRow[d] * params.scale;
        }
      }
    }
  },
  wgsl([q, k, v, , , , keyLengths], params) {
    const shape = attentionShape('flash_attention_backward_query', q, k, v, keyLengths);
    return attentionBackwardQueryProgram(shape, maskParams(params, keyLengths !== undefined));
  },
});

/** Inputs q, k, v, dOut, lse, delta, [keyLengths]. Outputs dk and dv [B, H, Tk, Dh]. */
export const attentionBackwardKeyKernel = defineKernel<FlashAttentionParams>({
  name: 'flash_attention_backward_key',
  outputs([q, k, v, , , , keyLengths]) {
    const { batch, heads, keyLength, headDim } = attentionShape('flash_attention_backward_key', q, k, v, keyLengths);
    return [
      { shape: [batch, heads, keyLength, headDim], dtype: 'f32' },
      { shape: [batch, heads, keyLength, headDim], dtype: 'f32' },
    ];
  },
  cpu([q, k, v, dOut, lse, delta, keyLengths], [dk, dv], specs, params) {
    const shape = attentionShape('flash_attention_backward_key', specs[0], specs[1], specs[2], specs[6]);
    const { batch, heads, queryLength, keyLength, headDim } = shape;
    const dkRow = new Float64Array(headDim);
    const dvRow = new Float64Array(headDim);
    for (let b = 0; b < batch; b++) {
      for (let h = 0; h < heads; h++) {
        for (let j = 0; j < keyLength; j++) {
          const kBase = ((b * heads + h) * keyLength + j) * headDim;
          dkRow.fill(0);
          dvRow.fill(0);
          for (let i = 0; i < queryLength; i++) {
            const row = (b * heads + h) * queryLength + i;
            const qBase = row * headDim;
            const n = validKeys(shape, params, keyLengths, b, i);
            if (j < n) {
              const p = Math.exp(dotRows(q, qBase, k, kBase, headDim) * params.scale - lse[row]);
              const ds = p * (dotRows(dOut, qBase, v, kBase, headDim) - delta[row]);
              for (let d = 0; d < headDim; d++) {
                dvRow[d] += p * dOut[qBase + d];
                dkRow[d] += ds * q[qBase + d];
              }
            } else if (n === 0) {
              // A fully masked query row weighs every key by 1/Tk and sends no gradient to k.
              for (let d = 0; d < headDim; d++) dvRow[d] += dOut[qBase + d] / keyLength;
            }
          }
          for (let d = 0; d < headDim; d++) {
            dk[kBase + d] = dkRow[d] * params.scale;
            dv[kBase + d] = dvRow[d];
          }
        }
      }
    }
  },
  wgsl([q, k, v, , , , keyLengths], params) {
    const shape = attentionShape('flash_attention_backward_key', q, k, v, keyLengths);
    return attentionBackwardKeyProgram(shape, maskParams(params, keyLengths !== undefined));
  },
});

// ---------- autograd op ----------

/**
 * softmax(scale · q·kᵀ, masked)·v computed by one fused kernel; see the file header for the
 * shapes and masking rules. The gradients flow to q, k and v.
 */
export function flashAttention(q: Tensor, k: Tensor, v: Tensor, options: FlashAttentionOptions = {}): Tensor {
  for (const [name, tensor] of [['q', q], ['k', k], ['v', v]] as const) {
    assertDtype(`flashAttention ${name}`, tensor, 'f32');
  }
  const { causal = false, queryOffset = 0, keyLengths } = options;
  const headDim = q.shape[q.shape.length - 1];
  const scale = options.scale ?? 1 / Math.sqrt(headDim);
  if (!Number.isInteger(queryOffset) || Math.abs(queryOffset) >= 2 ** 31) {
    throw new Error(`flashAttention: queryOffset ${queryOffset} is invalid; use an integer (the number of keys before the first query)`);
  }
  if (!Number.isFinite(scale)) {
    throw new Error(`flashAttention: scale ${scale} is invalid; pass a finite number or omit it for 1/√Dh`);
  }

  const params: FlashAttentionParams = { causal, queryOffset, scale };
  const lengths = keyLengths ? [keyLengths] : [];
  const [out, lse] = runKernel(attentionForwardKernel, [q, k, v, ...lengths], params);
  const result = record(out, [q, k, v], (g) => {
    const [dq, delta] = runKernel(attentionBackwardQueryKernel, [q, k, v, out, g, lse, ...lengths], params);
    const [dk, dv] = runKernel(attentionBackwardKeyKernel, [q, k, v, g, lse, delta, ...lengths], params);
    delta.dispose();
    giveGrad(q, dq);
    giveGrad(k, dk);
    giveGrad(v, dv);
  });
  // The saved logsumexp lives as long as the autograd graph, like norm statistics: free it
  // with the enclosing `tidy`.
  if (!result.backwardFn) lse.dispose();
  return result;
}

/** Passes `grad` to `target`, or frees it when `target` takes no gradient. */
function giveGrad(target: Tensor, grad: Tensor): void {
  if (target.requiresGrad) accumulateGradInto(target, grad);
  else grad.dispose();
}
