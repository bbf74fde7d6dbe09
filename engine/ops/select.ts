// Decoding helpers: argmax and top-k along the last axis.
//
// Shapes: x [..., V] (f32) → argmax i32 [...]; topK values f32 [..., k] and indices i32 [..., k].
// Order: larger value first, and among equal values the lower index first.
// Gradient: none. argmax returns indices, which have no gradient, so it never records a graph.
// topK throws when x requires a gradient while recording is on. Dropping the gradient of its
// values silently would leave a training graph without it, so wrap decoding in noGrad().
// NOTE: rows containing NaN give unspecified results on WebGPU (WGSL does not define NaN
// comparisons). The CPU reference never selects a NaN while a non-NaN entry is left.
import { topKProgram } from '../../kernels/select.ts';
import { shapeString, sizeOf } from '../dtype.ts';
import { defineKernel, type TensorSpec } from '../kernel.ts';
import { isGradEnabled, type Tensor } from '../tensor.ts';
import { assertDtype, runKernel } from './run.ts';

interface SelectParams {
  k: number;
}

/** Leading axes, rows N and class count V of x, after checking x against k. */
function selectShape(op: string, x: TensorSpec, k: number): { leading: number[]; N: number; V: number } {
  if (x.dtype !== 'f32') throw new Error(`${op}: x must be f32, got ${x.dtype}`);
  if (x.shape.length < 1) throw new Error(`${op}: x is a scalar; give it a last axis to select along`);
  const leading = x.shape.slice(0, -1);
  const V = x.shape[x.shape.length - 1];
  if (V === 0) throw new Error(`${op}: x ${shapeString(x.shape)} has an empty last axis`);
  if (!Number.isInteger(k) || k < 1 || k > V) {
    throw new Error(`${op}: k = ${k} must be an integer in [1, ${V}] (the last axis of x ${shapeString(x.shape)})`);
  }
  return { leading, N: sizeOf(leading), V };
}

/** Writes the k best (value, index) pairs of each row, in order. `values` may be null. */
function topKReference(x: ArrayLike<number>, N: number, V: number, k: number, values: Float32Array | null, indices: Int32Array): void {
  const ranksBefore = (a: number, b: number, base: number): number => {
    const [va, vb] = [x[base + a], x[base + b]];
    if (va > vb || (Number.isNaN(vb) && !Number.isNaN(va))) return -1;
    if (vb > va || (Number.isNaN(va) && !Number.isNaN(vb))) return 1;
    return a - b;
  };
  for (let n = 0; n < N; n++) {
    const base = n * V;

    // k = 1 (argmax, greedy decoding) needs one scan, not a sort of the row.
    if (k === 1) {
      let best = 0;
      for (let v = 1; v < V; v++) if (ranksBefore(v, best, base) < 0) best = v;
      indices[n] = best;
      if (values) values[n] = x[base + best];
      continue;
    }

    const order = Array.from({ length: V }, (_, v) => v).sort((a, b) => ranksBefore(a, b, base));
    for (let slot = 0; slot < k; slot++) {
      indices[n * k + slot] = order[slot];
      if (values) values[n * k + slot] = x[base + order[slot]];
    }
  }
}

/** Input: x [..., V]. Output: indices i32 [...] of the row maxima (the lowest index on ties). */
export const argmaxKernel = defineKernel<SelectParams>({
  name: 'argmax',
  outputs([x]) {
    const { leading } = selectShape('argmax', x, 1);
    return [{ shape: leading, dtype: 'i32' }];
  },
  cpu([x], [indices], [spec]) {
    const { N, V } = selectShape('argmax', spec, 1);
    topKReference(x, N, V, 1, null, indices as Int32Array);
  },
  wgsl([x]) {
    const { N, V } = selectShape('argmax', x, 1);
    return topKProgram(N, V, 1, false);
  },
  flops: ([x]) => sizeOf(x.shape),
});

/** Input: x [..., V]. Outputs: values f32 [..., k] and indices i32 [..., k], best first. */
export const topKKernel = defineKernel<SelectParams>({
  name: 'top_k',
  outputs([x], { k }) {
    const { leading } = selectShape('topK', x, k);
    return [
      { shape: [...leading, k], dtype: 'f32' },
      { shape: [...leading, k], dtype: 'i32' },
    ];
  },
  cpu([x], [values, indices], [spec], { k }) {
    const { N, V } = selectShape('topK', spec, k);
    topKReference(x, N, V, k, values as Float32Array, indices as Int32Array);
  },
  wgsl([x], { k }) {
    const { N, V } = selectShape('topK', x, k);
    return topKProgram(N, V, k, true);
  },
  flops: ([x], { k }) => k * sizeOf(x.shape),
});

/** Finds the index of the largest entry along the last axis, the lowest index on ties. x [..., V] → i32 [...]. */
export function argmax(x: Tensor): Tensor {
  assertDtype('argmax', x, 'f32');
  return runKernel(argmaxKernel, [x], { k: 1 })[0];
}

/** Selects the k largest entries along the last axis, best first. x [..., V] → values [..., k], indices [..., k]. */
export function topK(x: Tensor, k: number): { values: Tensor; indices: Tensor } {
  assertDtype('topK', x, 'f32');
  if (isGradEnabled() && x.requiresGrad) {
    throw new Error(`topK: x ${x.describe()} requires a gradient, but topK has no backward; run it under noGrad() or on a tensor that does not require one`);
  }
  const [values, indices] = runKernel(topKKernel, [x], { k });
  return { values, indices };
}
