// Matrix multiplication, 2-D and batched, with optionally transposed operands.
//
// Shapes: a [..., M, K] (or [..., K, M] with transA), b [..., K, N] (or [..., N, K] with
// transB) → [..., M, N]. Leading (batch) axes must match, or one side has none and is
// broadcast over the other's batch.
import { matmulProgram, type MatmulShape } from '../../kernels/matmul.ts';
import { shapeString } from '../dtype.ts';
import { defineKernel, type TensorSpec } from '../kernel.ts';
import type { Tensor } from '../tensor.ts';
import { accumulateGradInto } from './elementwise.ts';
import { assertDtype, record, runKernel } from './run.ts';

export interface MatmulOptions {
  transA?: boolean;
  transB?: boolean;
}

interface MatmulParams {
  transA: boolean;
  transB: boolean;
}

/** Validates shapes and returns the kernel's view of them plus the output shape. */
export function matmulShape(a: TensorSpec, b: TensorSpec, { transA, transB }: MatmulParams): { shape: MatmulShape; out: number[] } {
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
    },
    out: [...batchShape, M, N],
  };
}

export function matmulReference(a: ArrayLike<number>, b: ArrayLike<number>, c: Float32Array | Int32Array, s: MatmulShape): void {
  const { batch, M, N, K, transA, transB, strideA, strideB } = s;
  const row = new Float64Array(N);
  for (let p = 0; p < batch; p++) {
    const baseA = p * strideA;
    const baseB = p * strideB;
    for (let i = 0; i < M; i++) {
      row.fill(0);
      for (let k = 0; k < K; k++) {
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

export const matmulKernel = defineKernel<MatmulParams>({
  name: 'matmul',
  outputs: ([a, b], params) => [{ shape: matmulShape(a, b, params).out, dtype: 'f32' }],
  cpu([a, b], [c], [sa, sb], params) {
    matmulReference(a, b, c, matmulShape(sa, sb, params).shape);
  },
  wgsl: ([a, b], params, caps) => matmulProgram(matmulShape(a, b, params).shape, caps),
  flops([a, b], params) {
    const { batch, M, N, K } = matmulShape(a, b, params).shape;
    return 2 * batch * M * N * K;
  },
});

/** op(a) · op(b); see the file header for shapes. */
export function matmul(a: Tensor, b: Tensor, options: MatmulOptions = {}): Tensor {
  assertDtype('matmul', a, 'f32');
  assertDtype('matmul', b, 'f32');
  const transA = options.transA ?? false;
  const transB = options.transB ?? false;
  const out = runKernel(matmulKernel, [a, b], { transA, transB })[0];
  return record(out, [a, b], (g) => {
    if (a.requiresGrad) {
      const ga = transA
        ? matmul(b, g, { transA: transB, transB: true })
        : matmul(g, b, { transA: false, transB: !transB });
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
