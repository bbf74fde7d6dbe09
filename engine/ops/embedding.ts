// Embedding: a row lookup into a weight table, with a deterministic backward.
//
// Shapes: weight [V, D], ids i32 [...] → out [..., D]. The gradient of weight is
// gradWeight[v] = Σ grad[p] over the positions p with ids[p] = v, computed without float
// atomics. The host builds a CSR index from the ids (for each row v, the positions that use
// it). Then one GPU invocation per (v, d) sums those positions in ascending order, so
// repeated runs give identical bits.
//
// The ids must carry a host copy (`fromHost`, `tensor(..., 'i32')`, or shape ops on those),
// because they are validated and indexed on the host.
import { embeddingBackwardProgram, embeddingProgram } from '../../kernels/embedding.ts';
import { shapeString, sizeOf, type TypedArray } from '../dtype.ts';
import { defineKernel } from '../kernel.ts';
import { fromHost, type Tensor } from '../tensor.ts';
import { accumulateGradInto } from './elementwise.ts';
import { assertDtype, record, runKernel } from './run.ts';

// ---------- CPU references and host helpers ----------

/** Throws on the first id outside [0, vocabSize), naming the value, its position and V. */
export function checkIds(ids: ArrayLike<number>, vocabSize: number): void {
  for (let n = 0; n < ids.length; n++) {
    const id = ids[n];
    if (id < 0 || id >= vocabSize) {
      throw new Error(`embedding: id ${id} at position ${n} is out of range for a vocabulary of V = ${vocabSize} rows; ids must be in [0, ${vocabSize})`);
    }
  }
}

/** For each vocabulary row, the positions whose id selects it (CSR). */
export interface RowIndex {
  /** [V + 1]: row v's positions are positions[rowStart[v] .. rowStart[v + 1]]. */
  rowStart: Int32Array;
  /** [N]: positions grouped by row, ascending within each row. */
  positions: Int32Array;
}

/** Builds the CSR row index by counting sort; `ids` must already be in range. */
export function buildRowIndex(ids: ArrayLike<number>, vocabSize: number): RowIndex {
  const rowStart = new Int32Array(vocabSize + 1);
  for (let n = 0; n < ids.length; n++) rowStart[ids[n] + 1] += 1;
  for (let v = 0; v < vocabSize; v++) rowStart[v + 1] += rowStart[v];

  const next = rowStart.slice(0, vocabSize);
  const positions = new Int32Array(ids.length);
  for (let n = 0; n < ids.length; n++) positions[next[ids[n]]++] = n;
  return { rowStart, positions };
}

// ---------- kernels ----------

export const embeddingKernel = defineKernel<Record<string, never>>({
  name: 'embedding',
  outputs([weight, ids]) {
    if (weight.dtype !== 'f32' || weight.shape.length !== 2) {
      throw new Error(`embedding: weight must be an f32 [V, D] table, got ${shapeString(weight.shape)} ${weight.dtype}`);
    }
    if (ids.dtype !== 'i32') {
      throw new Error(`embedding: ids must be i32, got ${shapeString(ids.shape)} ${ids.dtype}; create them with dtype 'i32'`);
    }
    const dim = weight.shape[1];
    return [{ shape: [...ids.shape, dim], dtype: 'f32' }];
  },
  cpu([weight, ids], [out], [weightSpec]) {
    const [vocabSize, dim] = weightSpec.shape;
    checkIds(ids, vocabSize);
    for (let n = 0; n < ids.length; n++) {
      const row = ids[n] * dim;
      out.set(weight.subarray(row, row + dim), n * dim);
    }
  },
  wgsl([weight, ids]) {
    const [vocabSize, dim] = weight.shape;
    return embeddingProgram(vocabSize, dim, sizeOf(ids.shape));
  },
});

interface EmbeddingBackwardParams {
  vocabSize: number;
}

/** Inputs: grad [..., D], rowStart i32 [V + 1], positions i32 [N] → gradWeight [V, D]. */
export const embeddingBackwardKernel = defineKernel<EmbeddingBackwardParams>({
  name: 'embedding_backward',
  outputs([grad, rowStart, positions], { vocabSize }) {
    const dim = grad.shape[grad.shape.length - 1] ?? 0;
    const count = dim === 0 ? 0 : sizeOf(grad.shape) / dim;
    const fits = grad.dtype === 'f32' && rowStart.dtype === 'i32' && positions.dtype === 'i32' && grad.shape.length >= 1 &&
      sizeOf(rowStart.shape) === vocabSize + 1 && sizeOf(positions.shape) === count;
    if (!fits) {
      throw new Error(
        `embedding_backward: expected grad f32 [..., D], rowStart i32 [${vocabSize + 1}] and positions i32 [${count}], ` +
          `got ${shapeString(grad.shape)} ${grad.dtype}, ${shapeString(rowStart.shape)} ${rowStart.dtype}, ${shapeString(positions.shape)} ${positions.dtype}; ` +
          'build rowStart and positions with buildRowIndex',
      );
    }
    return [{ shape: [vocabSize, dim], dtype: 'f32' }];
  },
  cpu([grad, rowStart, positions], [gradWeight], [gradSpec], { vocabSize }) {
    const dim = gradSpec.shape[gradSpec.shape.length - 1];
    for (let v = 0; v < vocabSize; v++) {
      for (let d = 0; d < dim; d++) {
        let total = 0;
        for (let k = rowStart[v]; k < rowStart[v + 1]; k++) total += grad[positions[k] * dim + d];
        gradWeight[v * dim + d] = total;
      }
    }
  },
  wgsl([grad], { vocabSize }) {
    return embeddingBackwardProgram(vocabSize, grad.shape[grad.shape.length - 1]);
  },
});

// ---------- autograd op ----------

/** Looks up rows of `weight` [V, D] for `ids` [...] → [..., D]; see the file header. */
export function embedding(weight: Tensor, ids: Tensor): Tensor {
  assertDtype('embedding', weight, 'f32');
  assertDtype('embedding', ids, 'i32');
  const hostIds: TypedArray | null = ids.hostData;
  if (!hostIds) {
    throw new Error(
      `embedding: ids ${ids.describe()} have no host copy; embedding needs ids created from host data ` +
        `(fromHost or tensor(..., 'i32')) because it checks them and builds its backward index on the host`,
    );
  }
  if (weight.rank !== 2) {
    throw new Error(`embedding: weight must be [V, D], got ${weight.describe()}`);
  }
  const [vocabSize] = weight.shape;
  checkIds(hostIds, vocabSize);

  const out = runKernel(embeddingKernel, [weight, ids], {})[0];
  return record(out, [weight], (g) => {
    const { rowStart, positions } = buildRowIndex(hostIds, vocabSize);
    const device = weight.device;
    const rowStartTensor = fromHost(rowStart, [vocabSize + 1], 'i32', device);
    const positionsTensor = fromHost(positions, [positions.length], 'i32', device);
    const gradWeight = runKernel(embeddingBackwardKernel, [g, rowStartTensor, positionsTensor], { vocabSize })[0];
    rowStartTensor.dispose();
    positionsTensor.dispose();
    accumulateGradInto(weight, gradWeight);
  });
}
