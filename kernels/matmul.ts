// Matrix multiplication C[b] = op(A[b]) · op(B[b]), op = identity or transpose.
//
// Shapes: A is [batch, M, K] ([batch, K, M] when transA), B is [batch, K, N] ([batch, N, K]
// when transB), C is [batch, M, N]. A batch stride of 0 broadcasts one matrix over the batch.
import type { WgslProgram, DeviceCaps } from './types.ts';
import { storageBinding, uniformBinding } from './common.ts';

export interface MatmulShape {
  batch: number;
  M: number;
  N: number;
  K: number;
  transA: boolean;
  transB: boolean;
  /** Elements between consecutive matrices of A (0 to broadcast A). */
  strideA: number;
  strideB: number;
}

const TILE = 8;

/** One invocation per output element; the reference layout for the faster variants. */
export function matmulProgram(shape: MatmulShape, _caps: DeviceCaps): WgslProgram {
  const { batch, M, N, K, transA, transB, strideA, strideB } = shape;
  const params: WgslProgram['params'] = [
    ['M', 'u32', M],
    ['N', 'u32', N],
    ['K', 'u32', K],
    ['strideA', 'u32', strideA],
    ['strideB', 'u32', strideB],
  ];
  const aIndex = transA ? 'k * params.M + row' : 'row * params.K + k';
  const bIndex = transB ? 'col * params.K + k' : 'k * params.N + col';
  const code = `${storageBinding(0, 'a', 'f32', 'read')}${storageBinding(1, 'b', 'f32', 'read')}${storageBinding(2, 'c', 'f32', 'read_write')}${uniformBinding(3, params)}
@compute @workgroup_size(${TILE}, ${TILE})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let col = gid.x;
  let row = gid.y;
  let batch = gid.z;
  if (row >= params.M || col >= params.N) { return; }
  let baseA = batch * params.strideA;
  let baseB = batch * params.strideB;
  var total = 0.0;
  for (var k = 0u; k < params.K; k++) {
    total += a[baseA + ${aIndex}] * b[baseB + ${bIndex}];
  }
  c[batch * params.M * params.N + row * params.N + col] = total;
}`;
  return {
    key: `naive:${transA ? 't' : 'n'}${transB ? 't' : 'n'}`,
    code,
    workgroups: [Math.ceil(N / TILE), Math.ceil(M / TILE), batch],
    params,
  };
}
