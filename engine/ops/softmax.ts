// Softmax and log-softmax over the last axis.
//
// Shapes: x [..., C] → y [..., C]; each row of softmax sums to 1, and log-softmax is its
// logarithm, computed as x − max − log Σ exp(x − max) so it stays finite where softmax
// underflows to 0.
import { softmaxBackwardProgram, softmaxProgram } from '../../kernels/softmax.ts';
import { shapeString, sizeOf } from '../dtype.ts';
import { defineKernel, type TensorSpec } from '../kernel.ts';
import type { Tensor } from '../tensor.ts';
import { accumulateGradInto } from './elementwise.ts';
import { assertDtype, record, runKernel } from './run.ts';

/** Splits `shape` into rows (the leading axes flattened) and the width of the last axis. */
export function splitLastAxis(op: string, shape: readonly number[]): { rows: number; C: number } {
  if (shape.length === 0) {
    throw new Error(`${op}: expected at least one axis, got a scalar of shape ${shapeString(shape)}; reshape it to [1]`);
  }
  return { rows: sizeOf(shape.slice(0, -1)), C: shape[shape.length - 1] };
}

function assertSameShape(op: string, name: string, spec: TensorSpec, expected: TensorSpec): void {
  if (spec.shape.length !== expected.shape.length || spec.shape.some((d, i) => d !== expected.shape[i])) {
    throw new Error(`${op}: ${name} has shape ${shapeString(spec.shape)}, expected ${shapeString(expected.shape)} (the shape of the forward output)`);
  }
}

// ---------- kernels ----------

/** `log`: log-softmax instead of softmax. */
interface SoftmaxParams {
  log?: boolean;
}

export const softmaxKernel = defineKernel<SoftmaxParams>({
  name: 'softmax',
  outputs([x]) {
    splitLastAxis('softmax', x.shape);
    return [{ shape: x.shape, dtype: 'f32' }];
  },
  cpu([x], [y], [sx], { log }) {
    const { rows, C } = splitLastAxis('softmax', sx.shape);
    for (let row = 0; row < rows; row++) {
      const base = row * C;
      let max = -Infinity;
      for (let c = 0; c < C; c++) max = Math.max(max, x[base + c]);
      let total = 0;
      for (let c = 0; c < C; c++) total += Math.exp(x[base + c] - max);
      const shift = max + Math.log(total);
      for (let c = 0; c < C; c++) y[base + c] = log ? x[base + c] - shift : Math.exp(x[base + c] - max) / total;
    }
  },
  wgsl([x], { log }) {
    const { rows, C } = splitLastAxis('softmax', x.shape);
    return softmaxProgram(rows, C, log);
  },
});

/**
 * Inputs: y (the forward output), dy. Output: dx = y · (dy − Σ dy·y) per row, or for
 * log-softmax dx = dy − exp(y) · Σ dy.
 */
export const softmaxBackwardKernel = defineKernel<SoftmaxParams>({
  name: 'softmax_backward',
  outputs([y, dy]) {
    splitLastAxis('softmax_backward', y.shape);
    assertSameShape('softmax_backward', 'dy', dy, y);
    return [{ shape: y.shape, dtype: 'f32' }];
  },
  cpu([y, dy], [dx], [sy], { log }) {
    const { rows, C } = splitLastAxis('softmax_backward', sy.shape);
    for (let row = 0; row < rows; row++) {
      const base = row * C;
      let dot = 0;
      for (let c = 0; c < C; c++) dot += log ? dy[base + c] : dy[base + c] * y[base + c];
      for (let c = 0; c < C; c++) dx[base + c] = log ? dy[base + c] - Math.exp(y[base + c]) * dot : y[base + c] * (dy[base + c] - dot);
    }
  },
  wgsl([y], { log }) {
    const { rows, C } = splitLastAxis('softmax_backward', y.shape);
    return softmaxBackwardProgram(rows, C, log);
  },
});

// ---------- autograd op ----------

/**
 * Softmax over the last axis. NOTE: WGSL lets implementations assume that no infinities occur
 * at run time, so mask with a large finite negative number (-1e9) rather than -Infinity.
 */
export function softmax(x: Tensor): Tensor {
  assertDtype('softmax', x, 'f32');
  const y = runKernel(softmaxKernel, [x], {})[0];
  return record(y, [x], (g) => accumulateGradInto(x, runKernel(softmaxBackwardKernel, [y, g], {})[0]));
}

/** Log-softmax over the last axis: x − max − log Σ exp(x − max), finite where softmax underflows. */
export function logSoftmax(x: Tensor): Tensor {
  assertDtype('logSoftmax', x, 'f32');
  const y = runKernel(softmaxKernel, [x], { log: true })[0];
  return record(y, [x], (g) => accumulateGradInto(x, runKernel(softmaxBackwardKernel, [y, g], { log: true })[0]));
}
