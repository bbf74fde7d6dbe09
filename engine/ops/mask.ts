// Masking of attention scores before softmax: masked positions are set to −1e9 (a fill,
// not an addition, so the masked value does not depend on the score).
//
// Shapes: scores [B, H, Tq, Tk], keyLengths i32 [B] → out [B, H, Tq, Tk].
// Causal: key j is masked for query i when j > i + queryOffset (queryOffset is the number of
// earlier positions, e.g. cached keys, in front of the first query). Key lengths: key j is
// masked in batch row b when j >= keyLengths[b].
// Gradient: passes through kept positions, zero at masked ones.
import { maskProgram, type MaskShape } from '../../kernels/mask.ts';
import { shapeString } from '../dtype.ts';
import { defineKernel, type TensorSpec } from '../kernel.ts';
import type { Tensor } from '../tensor.ts';
import { accumulateGradInto, reshape } from './elementwise.ts';
import { assertDtype, record, runKernel } from './run.ts';

/** The value written over masked scores: softmax then gives them a weight of exactly 0, unless a whole row is masked. */
export const MASKED_SCORE = -1e9;

export interface MaskOptions {
  causal: boolean;
  /** Position of the first query among the keys; 0 when queries and keys start together. */
  queryOffset?: number;
  /** i32 [B]: the number of valid (unpadded) keys in each batch row. */
  keyLengths?: Tensor;
}

interface MaskParams {
  causal: boolean;
  queryOffset: number;
  /** MASKED_SCORE in the forward, 0 in the backward. */
  fill: number;
}

function maskShape([scores, keyLengths]: TensorSpec[]): MaskShape {
  if (scores.dtype !== 'f32' || scores.shape.length !== 4) {
    throw new Error(`mask: scores must be f32 [B, H, Tq, Tk], got ${shapeString(scores.shape)} ${scores.dtype}`);
  }
  const [batch, heads, queryLength, keyLength] = scores.shape;
  if (keyLengths && (keyLengths.dtype !== 'i32' || keyLengths.shape.length !== 1 || keyLengths.shape[0] !== batch)) {
    throw new Error(
      `mask: keyLengths must be i32 [${batch}] for scores ${shapeString(scores.shape)}, got ${shapeString(keyLengths.shape)} ${keyLengths.dtype}; ` +
        'pass one key count per batch row',
    );
  }
  return { batch, heads, queryLength, keyLength };
}

// ---------- kernel ----------

/** Inputs: scores, and keyLengths when given. */
export const maskKernel = defineKernel<MaskParams>({
  name: 'mask',
  outputs(specs, { queryOffset }) {
    maskShape(specs);
    if (!Number.isInteger(queryOffset) || Math.abs(queryOffset) >= 2 ** 31) {
      throw new Error(`mask: queryOffset ${queryOffset} is invalid; use an integer (the number of keys before the first query)`);
    }
    return [{ shape: specs[0].shape, dtype: 'f32' }];
  },
  cpu([scores, keyLengths], [out], specs, { causal, queryOffset, fill }) {
    const { batch, heads, queryLength, keyLength } = maskShape(specs);
    let i = 0;
    for (let b = 0; b < batch; b++) {
      const validKeys = keyLengths ? keyLengths[b] : keyLength;
      for (let h = 0; h < heads; h++) {
        for (let q = 0; q < queryLength; q++) {
          for (let j = 0; j < keyLength; j++, i++) {
            const masked = (causal && j > q + queryOffset) || j >= validKeys;
            out[i] = masked ? fill : scores[i];
          }
        }
      }
    }
  },
  wgsl(specs, { causal, queryOffset, fill }) {
    return maskProgram(maskShape(specs), causal, queryOffset, fill, specs.length > 1);
  },
});

// ---------- autograd op ----------

/** Sets masked attention scores to −1e9; see the file header for the rules. */
export function maskScores(scores: Tensor, options: MaskOptions): Tensor {
  assertDtype('maskScores', scores, 'f32');
  const { causal, queryOffset = 0, keyLengths } = options;
  if (!causal && !keyLengths) return reshape(scores, scores.shape);

  const inputs = keyLengths ? [scores, keyLengths] : [scores];
  const out = runKernel(maskKernel, inputs, { causal, queryOffset, fill: MASKED_SCORE })[0];
  return record(out, [scores], (g) => {
    const gradInputs = keyLengths ? [g, keyLengths] : [g];
    accumulateGradInto(scores, runKernel(maskKernel, gradInputs, { causal, queryOffset, fill: 0 })[0]);
  });
}
