// Row ranges of tensors larger than one storage binding, and the frozen linear layer built on
// them.
//
// A WebGPU kernel binds each tensor whole, and one binding covers at most
// maxStorageBufferBindingSize bytes (128 MiB on lavapipe), while one buffer may have up to
// maxBufferSize (4 GiB there). A [32000, 4096] f32 table (500 MiB) is therefore stored in one
// buffer and bound in row ranges. `rowRange` returns a tensor over rows [start, start + count)
// that kernels bind as a range of the buffer. `rowChunks` plans ranges that fit one binding
// and start at an aligned byte offset.
//
// frozenLinear: x [N, K], W [M, K] (f32 or f16, any size) → y = x·Wᵀ [N, M]. W is processed in
// row chunks W_c [M_c, K]: each chunk gives the column block y[:, c] = x·W_cᵀ, and the blocks
// are concatenated. Only x gets a gradient, dx = Σ_c dy[:, c]·W_c. The matmul kernel reads an
// f16 chunk directly (converting on load), so no f32 copy of W is made, and a chunk binds as
// many rows as fit one binding in f16.
import { bytesPerElement, shapeString, sizeOf } from '../dtype.ts';
import type { StorageLimits } from '../device.ts';
import { noGrad, Tensor } from '../tensor.ts';
import { accumulateGradInto, add } from './elementwise.ts';
import { matmul } from './matmul.ts';
import { record } from './run.ts';
import { concat, slice } from './shape.ts';

/** Rows [start, start + count) of a tensor's first axis. */
export interface RowChunk {
  start: number;
  count: number;
}

function greatestCommonDivisor(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b];
  return a;
}

/**
 * Splits `rows` rows of `rowBytes` bytes each into consecutive chunks that each fit one
 * binding and start at a multiple of `limits.bindingOffsetAlignment` bytes. `boundRowBytes`
 * is the size of one row as the kernels bind it, when that differs from its stored size (an
 * f16 row cast to f32 binds 2 × `rowBytes`). Returns one chunk when everything fits.
 */
export function rowChunks(rows: number, rowBytes: number, limits: StorageLimits, boundRowBytes = rowBytes): RowChunk[] {
  if (rows * Math.max(rowBytes, boundRowBytes) <= limits.maxBindingBytes) return [{ start: 0, count: rows }];

  // Chunk starts must be aligned, so a chunk has a multiple of this many rows.
  const alignment = limits.bindingOffsetAlignment;
  const rowsPerAlignedStep = alignment / greatestCommonDivisor(rowBytes, alignment);
  const fitting = Math.floor(limits.maxBindingBytes / Math.max(rowBytes, boundRowBytes));
  const chunkRows = Math.floor(fitting / rowsPerAlignedStep) * rowsPerAlignedStep;
  if (chunkRows === 0) {
    throw new Error(
      `rowChunks: ${rowsPerAlignedStep} rows of ${Math.max(rowBytes, boundRowBytes)} bytes (the fewest that keep chunk offsets aligned to ${alignment} bytes) ` +
        `exceed the binding limit of ${limits.maxBindingBytes} bytes; such a tensor cannot be split by rows on this device`,
    );
  }
  const chunks: RowChunk[] = [];
  for (let start = 0; start < rows; start += chunkRows) chunks.push({ start, count: Math.min(chunkRows, rows - start) });
  return chunks;
}

/**
 * Returns rows [start, start + count) of `x` [R, ...] as a tensor [count, ...] over the same
 * storage, which kernels bind as a range. The byte offset of `start` must be a multiple of the
 * device's binding offset alignment (chunks from `rowChunks` are). Dispose it like any tensor.
 */
export function rowRange(x: Tensor, start: number, count: number): Tensor {
  const [rows, ...rest] = x.shape;
  if (x.rank < 1 || !Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 1 || start + count > rows) {
    throw new Error(`rowRange: rows [${start}, ${start + count}) are not inside ${x.describe()}; use 0 <= start < start + count <= ${rows ?? 0}`);
  }
  const rowBytes = sizeOf(rest) * bytesPerElement(x.dtype);
  const storage = x.device.slice(x.storage, start * rowBytes, count * rowBytes);
  const out = new Tensor(storage, [count, ...rest], x.dtype, x.device);
  out.name = x.name ? `${x.name}[${start}:${start + count}]` : undefined;
  return out;
}

/** Calls `fn` with rows `chunk` of `weight` (in its own dtype) and disposes the row view afterwards. */
function withRows(weight: Tensor, chunk: RowChunk, fn: (rows: Tensor) => Tensor): Tensor {
  const whole = chunk.start === 0 && chunk.count === weight.shape[0];
  const rows = whole ? weight : rowRange(weight, chunk.start, chunk.count);
  try {
    return fn(rows);
  } finally {
    if (rows !== weight) rows.dispose();
  }
}

/**
 * y = x·Wᵀ for x [N, K] and a frozen weight W [M, K] in the [out, in] layout of a linear layer,
 * stored as f32 or f16 and possibly larger than one binding (see the file header). An f32
 * weight that fits one binding takes a plain matmul, which also gives it a gradient when it
 * requires one. A weight that is f16 or split must not require one.
 */
export function frozenLinear(x: Tensor, weight: Tensor): Tensor {
  if (x.rank !== 2 || weight.rank !== 2 || x.shape[1] !== weight.shape[1]) {
    throw new Error(`frozenLinear: expected x [N, K] and weight [M, K], got x ${shapeString(x.shape)} and ${weight.describe()}; flatten x's leading axes first`);
  }
  const [outFeatures, inFeatures] = weight.shape;
  const limits = weight.device.limits;
  const chunks = rowChunks(outFeatures, inFeatures * bytesPerElement(weight.dtype), limits);
  if (weight.dtype === 'f32' && chunks.length === 1) return matmul(x, weight, { transB: true });
  if (weight.requiresGrad) {
    throw new Error(
      `frozenLinear: ${weight.describe()} requires a gradient, but an f16 weight or one larger than a binding (${limits.maxBindingBytes} bytes) is frozen; ` +
        'set requiresGrad = false on it or keep a trainable weight f32 and within one binding',
    );
  }
  // An f16 weight within one binding: matmul's backward gives dx from the same f16 weight.
  if (chunks.length === 1) return matmul(x, weight, { transB: true });

  const out = noGrad(() => {
    const blocks = chunks.map((chunk) => withRows(weight, chunk, (rows) => matmul(x, rows, { transB: true })));
    const y = concat(blocks, 1);
    for (const block of blocks) block.dispose();
    return y;
  });

  return record(out, [x], (g) => {
    let dx: Tensor | null = null;
    for (const chunk of chunks) {
      const dyBlock = chunks.length === 1 ? g : slice(g, 1, chunk.start, chunk.start + chunk.count);
      const part = withRows(weight, chunk, (rows) => matmul(dyBlock, rows));
      if (dyBlock !== g) dyBlock.dispose();
      if (dx) {
        const total = add(dx, part);
        dx.dispose();
        part.dispose();
        dx = total;
      } else {
        dx = part;
      }
    }
    accumulateGradInto(x, dx!);
  });
}
