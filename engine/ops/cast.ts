// Cast between f16 storage and f32 values, for frozen weights stored as f16.
//
// Shapes: x [...] → out [...] (same shape). f16 → f32 is exact. f32 → f16 rounds to nearest,
// ties to even, in the CPU reference and, as test/f16.test.ts checks, on lavapipe.
// Values beyond ±65504 become ±Infinity on the CPU.
// NOTE: WGSL leaves the f16 result of an out-of-range value indeterminate, so the GPU may differ there.
// f16 tensors are frozen, so no gradient flows through a cast: casting a tensor that requires a
// gradient throws.
import { floatToHalfProgram, halfToFloatProgram } from '../../kernels/cast.ts';
import { floatToHalfBits, halfArrayToFloat, shapeString, type DType, type TypedArray } from '../dtype.ts';
import { defineKernel } from '../kernel.ts';
import { isGradEnabled, type Tensor } from '../tensor.ts';
import { runKernel } from './run.ts';

interface CastParams {
  to: 'f16' | 'f32';
}

// ---------- kernel ----------

export const castKernel = defineKernel<CastParams, TypedArray>({
  name: 'cast',
  outputs([x], { to }) {
    const from = to === 'f32' ? 'f16' : 'f32';
    if (x.dtype !== from) {
      throw new Error(`cast: a cast to ${to} takes an ${from} tensor, got ${shapeString(x.shape)} ${x.dtype}; only f16 ↔ f32 casts exist`);
    }
    return [{ shape: x.shape, dtype: to }];
  },
  cpu([x], [out], _specs, { to }) {
    if (to === 'f32') {
      out.set(halfArrayToFloat(x as Uint16Array));
      return;
    }
    for (let i = 0; i < x.length; i++) out[i] = floatToHalfBits(x[i]);
  },
  wgsl([x], { to }, caps) {
    const count = x.shape.reduce((p, d) => p * d, 1);
    return to === 'f32' ? halfToFloatProgram(count, caps) : floatToHalfProgram(count, caps);
  },
});

// ---------- op ----------

/**
 * Returns `x` in `dtype`: an f16 copy of an f32 tensor or an f32 copy of an f16 tensor, or a
 * view of `x` when it already has that dtype. The result records no gradient.
 */
export function cast(x: Tensor, dtype: DType): Tensor {
  if (x.dtype === dtype) return x.view(x.shape);
  if (dtype === 'i32' || x.dtype === 'i32') {
    throw new Error(`cast: cannot cast ${x.describe()} to ${dtype}; only f16 ↔ f32 casts exist`);
  }
  if (x.requiresGrad && isGradEnabled()) {
    throw new Error(
      `cast: ${x.describe()} requires a gradient, but no gradient flows through a cast between f16 and f32; ` +
        'f16 storage is for frozen weights, so set requiresGrad = false on it or keep the tensor f32',
    );
  }
  return runKernel(castKernel, [x], { to: dtype })[0];
}

/**
 * Calls `fn` with `weight` as f32: `weight` itself when it is f32, else a temporary f32 copy.
 * The copy is disposed when `fn` returns, unless the result is the copy or records a gradient.
 * A recorded backward may read the copy, so the enclosing `tidy` frees it then.
 *
 * Example: `const y = withF32(this.weight, (w) => matmul(x, w, { transB: true }))`.
 */
export function withF32(weight: Tensor, fn: (weight: Tensor) => Tensor): Tensor {
  if (weight.dtype === 'f32') return fn(weight);
  const weight32 = cast(weight, 'f32');
  let result: Tensor;
  try {
    result = fn(weight32);
  } catch (error) {
    weight32.dispose();
    throw error;
  }
  const neededByBackward = isGradEnabled() && result.requiresGrad;
  if (result !== weight32 && !neededByBackward) weight32.dispose();
  return result;
}
