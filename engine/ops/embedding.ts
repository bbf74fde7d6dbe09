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
//
// A frozen table may be stored as f16 (the output is f32) and may be larger than one storage
// binding: such a table is gathered in row ranges (see row-chunks.ts), one dispatch per range
// that some id falls in, each writing only the output rows of its own ids.
import { embeddingBackwardProgram, embeddingChunkProgram, embeddingProgram } from '../../kernels/embedding.ts';
import { bytesPerElement, halfArrayToFloat, shapeString, sizeOf, type TypedArray } from '../dtype.ts';
import { defineKernel, type TensorSpec } from '../kernel.ts';
import { fromHost, isGradEnabled, zeros, type Tensor } from '../tensor.ts';
import { accumulateGradInto } from './elementwise.ts';
import { rowChunks, rowRange } from './row-chunks.ts';
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

function checkTable(op: string, weight: TensorSpec, ids: TensorSpec): void {
  if ((weight.dtype !== 'f32' && weight.dtype !== 'f16') || weight.shape.length !== 2) {
    throw new Error(`${op}: weight must be an f32 or f16 [V, D] table, got ${shapeString(weight.shape)} ${weight.dtype}`);
  }
  if (ids.dtype !== 'i32') {
    throw new Error(`${op}: ids must be i32, got ${shapeString(ids.shape)} ${ids.dtype}; create them with dtype 'i32'`);
  }
}

/** Row `v` of a [V, D] table as f32 values (f16 tables hold bit patterns). */
function tableRow(weight: TypedArray, v: number, dim: number): ArrayLike<number> {
  const row = weight.subarray(v * dim, (v + 1) * dim);
  return row instanceof Uint16Array ? halfArrayToFloat(row) : row;
}

/** Inputs: weight f32 or f16 [V, D], ids i32 [...] → out f32 [..., D]. */
export const embeddingKernel = defineKernel<Record<string, never>, TypedArray>({
  name: 'embedding',
  outputs([weight, ids]) {
    checkTable('embedding', weight, ids);
    const dim = weight.shape[1];
    return [{ shape: [...ids.shape, dim], dtype: 'f32' }];
  },
  cpu([weight, ids], [out], [weightSpec]) {
    const [vocabSize, dim] = weightSpec.shape;
    checkIds(ids, vocabSize);
    for (let n = 0; n < ids.length; n++) out.set(tableRow(weight, ids[n], dim), n * dim);
  },
  wgsl([weight, ids], _params, caps) {
    const [vocabSize, dim] = weight.shape;
    return embeddingProgram(vocabSize, dim, sizeOf(ids.shape), weight.dtype === 'f16' ? 'f16' : 'f32', caps);
  },
});

interface EmbeddingChunkParams {
  /** First table row that the weight input holds. */
  rowStart: number;
}

/**
 * In place. Inputs: weight rows [rowStart, rowStart + R) as [R, D] (f32 or f16), ids i32 [...],
 * out f32 [..., D]. Writes out[n] for the ids in that row range and leaves the other rows.
 */
export const embeddingChunkKernel = defineKernel<EmbeddingChunkParams, TypedArray>({
  name: 'embedding_chunk',
  outputs([weight, ids, out], { rowStart }) {
    checkTable('embedding_chunk', weight, ids);
    const expected = [...ids.shape, weight.shape[1]];
    if (out.dtype !== 'f32' || shapeString(out.shape) !== shapeString(expected)) {
      throw new Error(`embedding_chunk: out must be f32 ${shapeString(expected)}, got ${shapeString(out.shape)} ${out.dtype}`);
    }
    if (!Number.isInteger(rowStart) || rowStart < 0) throw new Error(`embedding_chunk: rowStart must be an integer ≥ 0, got ${rowStart}`);
    return [];
  },
  cpu([weight, ids, out], _outputs, [weightSpec], { rowStart }) {
    const [rows, dim] = weightSpec.shape;
    for (let n = 0; n < ids.length; n++) {
      const row = ids[n] - rowStart;
      if (row >= 0 && row < rows) out.set(tableRow(weight, row, dim), n * dim);
    }
  },
  wgsl([weight, ids], { rowStart }, caps) {
    const [rows, dim] = weight.shape;
    return embeddingChunkProgram(rows, rowStart, dim, sizeOf(ids.shape), weight.dtype === 'f16' ? 'f16' : 'f32', caps);
  },
  flops: ([weight, ids]) => sizeOf(ids.shape) * weight.shape[1],
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

/** Looks up rows of `weight` [V, D] (f32, or frozen f16) for `ids` [...] → f32 [..., D]; see the file header. */
export function embedding(weight: Tensor, ids: Tensor): Tensor {
  if (weight.dtype !== 'f32' && weight.dtype !== 'f16') {
    throw new Error(`embedding: expected an f32 or f16 table, got ${weight.describe()}`);
  }
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
  const [vocabSize, dim] = weight.shape;
  checkIds(hostIds, vocabSize);

  const chunks = rowChunks(vocabSize, dim * bytesPerElement(weight.dtype), weight.device.limits);
  const trainable = weight.requiresGrad && isGradEnabled();
  if (trainable && (weight.dtype === 'f16' || chunks.length > 1)) {
    throw new Error(
      `embedding: ${weight.describe()} requires a gradient, but an f16 table or one larger than a binding (${weight.device.limits.maxBindingBytes} bytes) is frozen; ` +
        'set requiresGrad = false on it or keep a trainable table f32 and within one binding',
    );
  }
  if (chunks.length > 1) return gatherInChunks(weight, ids, hostIds, chunks);

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

/** Gathers from a frozen table in row ranges; only ranges that some id falls in are dispatched. */
function gatherInChunks(weight: Tensor, ids: Tensor, hostIds: TypedArray, chunks: Array<{ start: number; count: number }>): Tensor {
  const dim = weight.shape[1];
  const out = zeros([...ids.shape, dim], 'f32', weight.device);
  for (const chunk of chunks) {
    const end = chunk.start + chunk.count;
    if (!hostIds.some((id) => id >= chunk.start && id < end)) continue;
    const rows = rowRange(weight, chunk.start, chunk.count);
    runKernel(embeddingChunkKernel, [rows, ids, out], { rowStart: chunk.start });
    rows.dispose();
  }
  return out;
}
