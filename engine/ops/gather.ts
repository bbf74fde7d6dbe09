// Index selection along one axis: y = x[..., indices, ...]. Composed from permute and the
// embedding gather, so the backward is the embedding's deterministic scatter-add (an index that
// appears twice adds both gradients).
import { fromHost, type Tensor } from '../tensor.ts';
import { reshape } from './elementwise.ts';
import { embedding } from './embedding.ts';
import { permute } from './shape.ts';

/**
 * Picks the entries `indices` of `axis`: the result has the shape of `x` with that axis's
 * length replaced by indices.length. Indices may repeat and come in any order.
 */
export function gather(x: Tensor, axis: number, indices: readonly number[]): Tensor {
  const normalized = axis < 0 ? axis + x.rank : axis;
  if (!Number.isInteger(normalized) || normalized < 0 || normalized >= x.rank) {
    throw new Error(`gather: axis ${axis} is out of range for ${x.describe()}; use -${x.rank}..${x.rank - 1}`);
  }
  const length = x.shape[normalized];
  indices.forEach((index, position) => {
    if (!Number.isInteger(index) || index < 0 || index >= length) {
      throw new Error(`gather: index ${index} at position ${position} is outside axis ${normalized} of ${x.describe()} (0..${length - 1})`);
    }
  });
  if (indices.length === 0) throw new Error(`gather: no indices given for ${x.describe()}`);

  // Move the axis to the front, so that each index selects one contiguous row.
  const order = [normalized, ...x.shape.map((_, i) => i).filter((i) => i !== normalized)];
  const front = normalized === 0 ? x : permute(x, order);
  const rowSize = x.size / length;
  const ids = fromHost(Int32Array.from(indices), [indices.length], 'i32', x.device);
  const rows = embedding(reshape(front, [length, rowSize]), ids);
  ids.dispose();
  const picked = reshape(rows, [indices.length, ...front.shape.slice(1)]);
  if (normalized === 0) return picked;
  const inverse = order.map((_, i) => order.indexOf(i));
  return permute(picked, inverse);
}
