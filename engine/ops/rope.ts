// Fused rotary position embedding in the rotate-half layout (HF LLaMA): out = x·cos + rotate_half(x)·sin,
// with rotate_half(x) = [−x₂, x₁] and the angles computed on the device (see kernels/rope.ts for
// the formula and its f32 precision).
//
// Shapes: x [..., T, Dh] (usually [B, H, T, Dh]) → out of the same shape.
// Gradient: the inverse rotation (angle → −angle) applied to the output gradient.
import { ropeProgram, type RopeShape } from '../../kernels/rope.ts';
import { shapeString, sizeOf } from '../dtype.ts';
import { defineKernel, type TensorSpec } from '../kernel.ts';
import type { Tensor } from '../tensor.ts';
import { accumulateGradInto } from './elementwise.ts';
import { assertDtype, record, runKernel } from './run.ts';

export interface RopeOptions {
  /** Base of the frequencies, e.g. 10000 (LLaMA's rope_theta). */
  theta: number;
  /** Position of the first row of x, e.g. the number of cached tokens. Defaults to 0. */
  offset?: number;
  /** Rotary width R, the even number of leading columns that rotate. The other columns pass through. Defaults to Dh. */
  headDim?: number;
}

/** Positions stay exact in f32 below 2^24. */
const MAX_POSITION = 2 ** 24;

interface RopeParams {
  offset: number;
  rotaryDim: number;
  log2Theta: number;
  direction: 1 | -1;
}

function ropeShape(x: TensorSpec, params: RopeParams): RopeShape {
  if (x.dtype !== 'f32') throw new Error(`rope: x must be f32, got ${x.dtype}`);
  if (x.shape.length < 2) {
    throw new Error(`rope: x ${shapeString(x.shape)} needs at least 2 axes, [T, Dh]; the usual layout is [B, H, T, Dh]`);
  }
  const [seqLen, width] = x.shape.slice(-2);
  const { rotaryDim, offset } = params;
  if (!Number.isInteger(rotaryDim) || rotaryDim < 2 || rotaryDim % 2 !== 0 || rotaryDim > width) {
    throw new Error(`rope: headDim ${rotaryDim} must be an even integer in [2, ${width}] (the last axis of x ${shapeString(x.shape)})`);
  }
  if (!Number.isInteger(offset) || offset < 0 || offset + seqLen > MAX_POSITION) {
    throw new Error(`rope: offset ${offset} must be an integer ≥ 0 with offset + T (${seqLen}) ≤ 2^24, where f32 positions stop being exact`);
  }
  return { size: sizeOf(x.shape), seqLen, width, rotaryDim, offset, log2Theta: params.log2Theta, direction: params.direction };
}

/** Input: x [..., T, Dh]. Output: x rotated by +angle (direction 1) or −angle (direction −1). */
export const ropeKernel = defineKernel<RopeParams>({
  name: 'rope',
  outputs([x], params) {
    ropeShape(x, params);
    return [{ shape: x.shape, dtype: 'f32' }];
  },
  cpu([x], [out], [spec], params) {
    const { size, seqLen, width, rotaryDim, offset, log2Theta, direction } = ropeShape(spec, params);
    const half = rotaryDim / 2;
    const f32 = Math.fround;

    // The same f32 roundings as the WGSL kernel: exponent, inv_freq, then the angle.
    const invFreq = new Float64Array(half);
    for (let pair = 0; pair < half; pair++) invFreq[pair] = f32(2 ** f32(f32((-2 * pair) / rotaryDim) * log2Theta));

    for (let i = 0; i < size; i++) {
      const d = i % width;
      if (d >= rotaryDim) {
        out[i] = x[i];
        continue;
      }
      const t = Math.floor(i / width) % seqLen;
      const angle = f32((t + offset) * invFreq[d % half]);
      const c = Math.cos(angle);
      const s = Math.sin(angle) * direction;
      out[i] = d < half ? x[i] * c - x[i + half] * s : x[i] * c + x[i - half] * s;
    }
  },
  wgsl([x], params) {
    return ropeProgram(ropeShape(x, params));
  },
  flops: ([x]) => 6 * sizeOf(x.shape),
});

/** Rotates x [..., T, Dh] by its positions offset..offset+T−1 (formula in the file header). */
export function rope(x: Tensor, options: RopeOptions): Tensor {
  assertDtype('rope', x, 'f32');
  const { theta, offset = 0 } = options;
  if (!(Number.isFinite(theta) && theta > 0)) {
    throw new Error(`rope: theta must be a finite number > 0, got ${theta}; LLaMA uses 10000`);
  }
  const rotaryDim = options.headDim ?? x.shape[x.shape.length - 1];
  const forward: RopeParams = { offset, rotaryDim, log2Theta: Math.fround(Math.log2(theta)), direction: 1 };

  const [out] = runKernel(ropeKernel, [x], forward);
  return record(out, [x], (g) => accumulateGradInto(x, runKernel(ropeKernel, [g], { ...forward, direction: -1 })[0]));
}
