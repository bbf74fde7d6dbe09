// Embedding lookup (a row gather) and its backward (a deterministic scatter-add).
//
// Shapes: weight [V, D], ids [N] → out [N, D]. The backward sums output-gradient rows
// [N, D] into [V, D] without float atomics: the host lists, for each vocabulary row v, the
// positions that used it (CSR: positions[rowStart[v] .. rowStart[v + 1]]), and one
// invocation per (v, d) adds those rows in ascending position order.
import { entry1d, flatIndex, grid1d, storageBinding, uniformBinding } from './common.ts';
import type { WgslProgram } from './types.ts';

const WORKGROUP = 64;

/** out[n, d] = weight[ids[n], d]. Ids outside [0, V) give zeros; the op checks them on the host first. */
export function embeddingProgram(vocabSize: number, dim: number, count: number): WgslProgram {
  const params: WgslProgram['params'] = [
    ['size', 'u32', count * dim],
    ['dim', 'u32', dim],
    ['vocab', 'u32', vocabSize],
  ];
  const code = `${storageBinding(0, 'weight', 'f32', 'read')}${storageBinding(1, 'ids', 'i32', 'read')}${storageBinding(2, 'output', 'f32', 'read_write')}${uniformBinding(3, params)}
${entry1d(WORKGROUP)} {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.size) { return; }
  let n = i / params.dim;
  let d = i % params.dim;
  let id = ids[n];
  if (id < 0 || u32(id) >= params.vocab) {
    output[i] = 0.0;
    return;
  }
  output[i] = weight[u32(id) * params.dim + d];
}`;
  return { key: 'embedding', code, workgroups: grid1d(count * dim, WORKGROUP), params };
}

/** gradWeight[v, d] = Σ grad[p, d] over the positions p listed for row v. */
export function embeddingBackwardProgram(vocabSize: number, dim: number): WgslProgram {
  const params: WgslProgram['params'] = [
    ['size', 'u32', vocabSize * dim],
    ['dim', 'u32', dim],
  ];
  const code = `${storageBinding(0, 'grad', 'f32', 'read')}${storageBinding(1, 'row_start', 'i32', 'read')}${storageBinding(2, 'positions', 'i32', 'read')}${storageBinding(3, 'grad_weight', 'f32', 'read_write')}${uniformBinding(4, params)}
${entry1d(WORKGROUP)} {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.size) { return; }
  let v = i / params.dim;
  let d = i % params.dim;
  var total = 0.0;
  for (var k = row_start[v]; k < row_start[v + 1u]; k++) {
    total += grad[u32(positions[k]) * params.dim + d];
  }
  grad_weight[i] = total;
}`;
  return { key: 'embedding_backward', code, workgroups: grid1d(vocabSize * dim, WORKGROUP), params };
}
