// Matrix multiplication, 2-D and batched, with optionally transposed operands.
//
// Shapes: a [..., M, K] (or [..., K, M] with transA), b [..., K, N] (or [..., N, K] with
// transB) → [..., M, N]. Leading (batch) axes must match, or one side has none and is
// broadcast over the other's batch.
//
// dtypes: a is f32. b is f32, or f16 when it needs no gradient (a frozen weight). The kernel
// converts the f16 values to f32 as it loads them, so no f32 copy of b is made, and the
// products and sums are f32.
//
// Split-K: when the output has too few tiles to fill the device and K is long (the weight
// gradient dW = dYᵀ·X, with K the token count), matmul() splits K into S slices. One dispatch
// writes the S partial products [S, ..., M, N], and a second adds them in slice order, so
// the result is the same bits on every run. `splitKSlices` in kernels/matmul.ts has the rule.
import { matmulProgram, splitKLayout, splitKSlices, sumSlicesProgram, type MatmulShape } from '../../kernels/matmul.ts';
import { halfArrayToFloat, shapeString, sizeOf, type TypedArray } from '../dtype.ts';
import { defineKernel, type TensorSpec } from '../kernel.ts';
import { isGradEnabled, type Tensor } from '../tensor.ts';
import { cast } from './cast.ts';
import { accumulateGradInto } from './elementwise.ts';
import { assertDtype, record, runKernel, specOf } from './run.ts';

export interface MatmulOptions {
  transA?: boolean;
  transB?: boolean;
  /**
   * K slices. 'auto' (the default) splits by the rule of `splitKSlices` on the WebGPU device
   * and never on the CPU device. 1 disables splitting. A whole number ≥ 2 forces that many
   * slices, or fewer when K has fewer steps of 4.
   */
  splitK?: number | 'auto';
}

interface MatmulParams {
  transA: boolean;
  transB: boolean;
}

/** Validates shapes and returns the kernel's view of them plus the output shape. */
export function matmulShape(a: TensorSpec, b: TensorSpec, { transA, transB }: MatmulParams): { shape: MatmulShape; out: number[] } {
  if (a.dtype !== 'f32' || (b.dtype !== 'f32' && b.dtype !== 'f16')) {
    throw new Error(`matmul: a must be f32 and b f32 or f16, got a ${a.dtype} and b ${b.dtype}; cast the operands first`);
  }
  if (a.shape.length < 2 || b.shape.length < 2) {
    throw new Error(`matmul: operands need at least 2 axes (a is ${shapeString(a.shape)}, b is ${shapeString(b.shape)})`);
  }
  const [aRows, aCols] = a.shape.slice(-2);
  const [bRows, bCols] = b.shape.slice(-2);
  const M = transA ? aCols : aRows;
  const K = transA ? aRows : aCols;
  const kB = transB ? bCols : bRows;
  const N = transB ? bRows : bCols;
  if (K !== kB) {
    throw new Error(
      `matmul: inner dimensions differ (a is ${shapeString(a.shape)}${transA ? ' transposed' : ''}, ` +
        `b is ${shapeString(b.shape)}${transB ? ' transposed' : ''}: ${K} vs ${kB}); transpose an operand or check the weight's layout`,
    );
  }
  const batchA = a.shape.slice(0, -2);
  const batchB = b.shape.slice(0, -2);
  const countA = batchA.reduce((p, d) => p * d, 1);
  const countB = batchB.reduce((p, d) => p * d, 1);
  let batchShape: readonly number[];
  if (batchA.length === 0 || countA === 1) batchShape = batchB;
  else if (batchB.length === 0 || countB === 1) batchShape = batchA;
  else if (batchA.length === batchB.length && batchA.every((d, i) => d === batchB[i])) batchShape = batchA;
  else {
    throw new Error(`matmul: batch axes differ (a is ${shapeString(a.shape)}, b is ${shapeString(b.shape)}); they must match or one side must have none`);
  }
  const batch = batchShape.reduce((p, d) => p * d, 1);
  return {
    shape: {
      batch,
      M,
      N,
      K,
      transA,
      transB,
      strideA: countA === 1 ? 0 : M * K,
      strideB: countB === 1 ? 0 : K * N,
      dtypeB: b.dtype === 'f16' ? 'f16' : 'f32',
    },
    out: [...batchShape, M, N],
  };
}

/** C = op(A)·op(B) in float64, rounded to f32 once; `kBegin` and `kEnd` restrict the sum over k. */
export function matmulReference(a: ArrayLike<number>, b: ArrayLike<number>, c: Float32Array | Int32Array, s: MatmulShape, kBegin = 0, kEnd = s.K): void {
  const { batch, M, N, K, transA, transB, strideA, strideB } = s;
  const row = new Float64Array(N);
  for (let p = 0; p < batch; p++) {
    const baseA = p * strideA;
    const baseB = p * strideB;
    for (let i = 0; i < M; i++) {
      row.fill(0);
      for (let k = kBegin; k < kEnd; k++) {
        const av = a[baseA + (transA ? k * M + i : i * K + k)];
        if (av === 0) continue;
        if (transB) for (let j = 0; j < N; j++) row[j] += av * b[baseB + j * K + k];
        else {
          const offset = baseB + k * N;
          for (let j = 0; j < N; j++) row[j] += av * b[offset + j];
        }
      }
      c.set(row, p * M * N + i * N);
    }
  }
}

/** B's values as numbers: the f16 bit patterns of an f16 B decoded (exactly), else B itself. */
function valuesOfB(b: TypedArray, spec: TensorSpec): ArrayLike<number> {
  return spec.dtype === 'f16' ? halfArrayToFloat(b as Uint16Array) : b;
}

export const matmulKernel = defineKernel<MatmulParams, TypedArray>({
  name: 'matmul',
  outputs: ([a, b], params) => [{ shape: matmulShape(a, b, params).out, dtype: 'f32' }],
  cpu([a, b], [c], [sa, sb], params) {
    matmulReference(a, valuesOfB(b, sb), c as Float32Array, matmulShape(sa, sb, params).shape);
  },
  wgsl: ([a, b], params, caps) => matmulProgram(matmulShape(a, b, params).shape, caps),
  flops([a, b], params) {
    const { batch, M, N, K } = matmulShape(a, b, params).shape;
    return 2 * batch * M * N * K;
  },
});

interface MatmulSplitParams extends MatmulParams {
  /** S, the number of K slices, as returned by splitKLayout. */
  slices: number;
}

/** The partial products of split-K: output [S, ..., M, N], slice s summing its range of k. */
export const matmulSplitKernel = defineKernel<MatmulSplitParams, TypedArray>({
  name: 'matmul_split_k',
  outputs([a, b], params) {
    const { shape, out } = matmulShape(a, b, params);
    const { slices } = splitKLayout(shape.K, params.slices);
    if (slices !== params.slices) {
      throw new Error(`matmul: K = ${shape.K} fills only ${slices} of ${params.slices} slices; pass the slice count that splitKLayout returns`);
    }
    return [{ shape: [slices, ...out], dtype: 'f32' }];
  },
  cpu([a, b], [partial], [sa, sb], params) {
    const { shape } = matmulShape(sa, sb, params);
    const { slices, sliceSteps } = splitKLayout(shape.K, params.slices);
    const size = shape.batch * shape.M * shape.N;
    const bValues = valuesOfB(b, sb);
    for (let slice = 0; slice < slices; slice++) {
      const kBegin = Math.min(shape.K, slice * sliceSteps * 4);
      const kEnd = Math.min(shape.K, (slice + 1) * sliceSteps * 4);
      matmulReference(a, bValues, (partial as Float32Array).subarray(slice * size, (slice + 1) * size), shape, kBegin, kEnd);
    }
  },
  wgsl: ([a, b], params, caps) => matmulProgram(matmulShape(a, b, params).shape, caps, { splitK: params.slices }),
  flops([a, b], params) {
    const { batch, M, N, K } = matmulShape(a, b, params).shape;
    return 2 * batch * M * N * K;
  },
});

/** Sums the slices of split-K: [S, ...] → [...], adding slice 0, 1, … in order in f32. */
export const sumSlicesKernel = defineKernel<{ slices: number }>({
  name: 'sum_slices',
  outputs([partial], { slices }) {
    if (partial.shape[0] !== slices) {
      throw new Error(`sum_slices: partial products have shape ${shapeString(partial.shape)}, expected ${slices} slices on axis 0`);
    }
    return [{ shape: partial.shape.slice(1), dtype: 'f32' }];
  },
  cpu([partial], [out], _specs, { slices }) {
    const size = out.length;
    for (let i = 0; i < size; i++) {
      let total = partial[i];
      for (let slice = 1; slice < slices; slice++) total = Math.fround(total + partial[slice * size + i]);
      out[i] = total;
    }
  },
  wgsl: ([partial], { slices }) => sumSlicesProgram(sizeOf(partial.shape) / slices, slices),
});

/** Number of K slices for `options.splitK` (see MatmulOptions); 1 means no split. */
function slicesFor(a: Tensor, shape: MatmulShape, splitK: number | 'auto'): number {
  if (splitK === 'auto') return a.device.kind === 'webgpu' ? splitKSlices(shape, a.device.caps) : 1;
  return splitKLayout(shape.K, splitK).slices;
}

/** op(a) · op(b); see the file header for shapes and dtypes. */
export function matmul(a: Tensor, b: Tensor, options: MatmulOptions = {}): Tensor {
  assertDtype('matmul', a, 'f32');
  if (b.dtype !== 'f16') assertDtype('matmul', b, 'f32');
  if (b.dtype === 'f16' && b.requiresGrad && isGradEnabled()) {
    throw new Error(
      `matmul: b ${b.describe()} requires a gradient, but an f16 b is read as a frozen weight and gets none; ` +
        'set requiresGrad = false on it or keep it f32',
    );
  }
  const transA = options.transA ?? false;
  const transB = options.transB ?? false;
  const { shape } = matmulShape(specOf(a), specOf(b), { transA, transB });
  const slices = slicesFor(a, shape, options.splitK ?? 'auto');

  let out: Tensor;
  if (slices > 1) {
    const partial = runKernel(matmulSplitKernel, [a, b], { transA, transB, slices })[0];
    out = runKernel(sumSlicesKernel, [partial], { slices })[0];
    partial.dispose();
  } else {
    out = runKernel(matmulKernel, [a, b], { transA, transB })[0];
  }
  return record(out, [a, b], (g) => {
    if (a.requiresGrad) {
      let ga: Tensor;
      if (!transA) {
        // b stays the right operand, so an f16 b is read directly here too.
        ga = matmul(g, b, { transA: false, transB: !transB });
      } else if (b.dtype === 'f16') {
        // The kernel reads f16 only as its right operand, and here b is the left one, so this
        // product takes a temporary f32 copy of b.
        const b32 = cast(b, 'f32');
        ga = matmul(b32, g, { transA: transB, transB: true });
        b32.dispose();
      } else {
        ga = matmul(b, g, { transA: transB, transB: true });
      }
      accumulateGradInto(a, ga);
    }
    if (b.requiresGrad) {
      const gb = transB
        ? matmul(g, a, { transA: true, transB: transA })
        : matmul(a, g, { transA: !transA, transB: false });
      accumulateGradInto(b, gb);
    }
  });
}
