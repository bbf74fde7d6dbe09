// Embedding lookup (a row gather) and its backward (a deterministic scatter-add).
//
// Shapes: weight [V, D], ids [N] → out [N, D]. The backward sums output-gradient rows
// [N, D] into [V, D] without float atomics: the host lists, for each vocabulary row v, the
// positions that used it (CSR: positions[rowStart[v] .. rowStart[v + 1]]), and one
// invocation per (v, d) adds those rows in ascending position order.
//
// The table may be f32 or f16 (a frozen table); the output is f32. An f16 table is read as
// `array<f16>` under `enable f16;`, or, without shader-f16, as `array<u32>` with two elements
// per word, decoded by unpack2x16float. A table larger than one binding is gathered in row
// ranges: the chunk program binds rows [row_start, row_start + rows) and writes only the
// output rows whose id falls in that range.
import { entry1d, flatIndex, grid1d, storageBinding, uniformBinding } from './common.ts';
import type { DeviceCaps, WgslProgram } from './types.ts';

const WORKGROUP = 64;

export type TableType = 'f32' | 'f16';

/** Binding declaration of the table and the WGSL expression for its element `j` as f32. */
function tableAccess(table: TableType, caps: Pick<DeviceCaps, 'shaderF16'>): { header: string; element: string; key: string } {
  if (table === 'f32') return { header: storageBinding(0, 'weight', 'f32', 'read'), element: 'weight[j]', key: 'f32' };
  if (caps.shaderF16) return { header: `enable f16;\n${storageBinding(0, 'weight', 'f16', 'read')}`, element: 'f32(weight[j])', key: 'f16' };
  return { header: storageBinding(0, 'weight', 'u32', 'read'), element: 'unpack2x16float(weight[j / 2u])[j % 2u]', key: 'f16_packed' };
}

/**
 * out[n, d] = weight[ids[n], d]. Ids outside [0, V) give zeros; the op checks them on the
 * host first.
 */
export function embeddingProgram(vocabSize: number, dim: number, count: number, table: TableType = 'f32', caps: Pick<DeviceCaps, 'shaderF16'> = { shaderF16: false }): WgslProgram {
  const params: WgslProgram['params'] = [
    ['size', 'u32', count * dim],
    ['dim', 'u32', dim],
    ['vocab', 'u32', vocabSize],
  ];
  const access = tableAccess(table, caps);
  const code = `${access.header}${storageBinding(1, 'ids', 'i32', 'read')}${storageBinding(2, 'output', 'f32', 'read_write')}${uniformBinding(3, params)}
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
  let j = u32(id) * params.dim + d;
  output[i] = ${access.element};
}`;
  return { key: `embedding:${access.key}`, code, workgroups: grid1d(count * dim, WORKGROUP), params };
}

/**
 * In place, for one row range of a table: for each n with ids[n] in [rowStart, rowStart + rows),
 * out[n, d] = weight[ids[n] - rowStart, d], where `weight` binds rows [rowStart, rowStart + rows).
 * Other output rows are left as they are.
 */
export function embeddingChunkProgram(rows: number, rowStart: number, dim: number, count: number, table: TableType, caps: Pick<DeviceCaps, 'shaderF16'>): WgslProgram {
  const params: WgslProgram['params'] = [
    ['size', 'u32', count * dim],
    ['dim', 'u32', dim],
    ['row_start', 'u32', rowStart],
    ['rows', 'u32', rows],
  ];
  const access = tableAccess(table, caps);
  const code = `${access.header}${storageBinding(1, 'ids', 'i32', 'read')}${storageBinding(2, 'output', 'f32', 'read_write')}${uniformBinding(3, params)}
${entry1d(WORKGROUP)} {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.size) { return; }
  let n = i / params.dim;
  let d = i % params.dim;
  let id = ids[n];
  if (id < i32(params.row_start)) { return; }
  let row = u32(id) - params.row_start;
  if (row >= params.rows) { return; }
  let j = row * params.dim + d;
  output[i] = ${access.element};
}`;
  return { key: `embedding_chunk:${access.key}`, code, workgroups: grid1d(count * dim, WORKGROUP), params };
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
