// Bicubic resizing weights for learned 2-D position embeddings, with the conventions of
// PyTorch's F.interpolate(mode='bicubic', align_corners=False), which HF transformers'
// Dinov2Embeddings.interpolate_pos_encoding calls.
//
// PyTorch's rule for one axis of length `inSize` resized to `outSize`: output index d reads
// the source coordinate x = ratio·(d + 0.5) − 0.5 (not clamped), and mixes the four inputs
// floor(x) − 1 … floor(x) + 2, clamped to the border, with Keys' cubic convolution weights
// (A = −0.75) at t = x − floor(x). The ratio depends on how the caller sized the output:
//   'size'          F.interpolate(size=outSize): ratio = inSize / outSize. Current HF
//                   transformers (modeling_dinov2.py on its main branch, read 2026).
//   'scale-factor'  F.interpolate(scale_factor=(outSize + 0.1) / inSize): ratio =
//                   inSize / (outSize + 0.1). Earlier transformers releases, after the original
//                   DINO code; the output is still floor(inSize · scale) = outSize long.
// Bicubic resizing is separable, so a 2-D resize is a row matrix and a column matrix.

export type InterpolationConvention = 'size' | 'scale-factor';

/** Keys' cubic convolution constant used by PyTorch's bicubic mode. */
const CUBIC_A = -0.75;

/** Weight for a neighbour at distance |x| ≤ 1. */
function cubicNear(x: number): number {
  return ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1;
}

/** Weight for a neighbour at distance 1 < |x| < 2. */
function cubicFar(x: number): number {
  return ((CUBIC_A * x - 5 * CUBIC_A) * x + 8 * CUBIC_A) * x - 4 * CUBIC_A;
}

/**
 * Returns the resize matrix [outSize, inSize] (row-major): output d = Σ_i M[d, i] · input i.
 * Each row sums to 1.
 */
export function bicubicMatrix(inSize: number, outSize: number, convention: InterpolationConvention): Float32Array {
  if (!Number.isInteger(inSize) || !Number.isInteger(outSize) || inSize < 1 || outSize < 1) {
    throw new Error(`bicubicMatrix: sizes ${inSize} → ${outSize} are invalid; use positive integers`);
  }
  const matrix = new Float32Array(outSize * inSize);
  if (inSize === outSize && convention === 'size') {
    for (let d = 0; d < outSize; d++) matrix[d * inSize + d] = 1;
    return matrix;
  }

  const ratio = convention === 'size' ? inSize / outSize : inSize / (outSize + 0.1);
  for (let d = 0; d < outSize; d++) {
    const source = ratio * (d + 0.5) - 0.5;
    const floor = Math.floor(source);
    const t = source - floor;
    const weights = [cubicFar(t + 1), cubicNear(t), cubicNear(1 - t), cubicFar(2 - t)];
    for (let k = 0; k < 4; k++) {
      const index = Math.min(Math.max(floor - 1 + k, 0), inSize - 1);
      matrix[d * inSize + index] += weights[k];
    }
  }
  return matrix;
}
