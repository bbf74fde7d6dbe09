// Sum reduction to a broadcast-compatible shape: the backward of broadcasting, and sum/mean
// over any set of axes. One invocation per output element loops over the reduced elements,
// so the result is deterministic (no atomics).
import { entry1d, flatIndex, grid1d, storageBinding, uniformBinding } from './common.ts';
import { MAX_RANK } from './elementwise.ts';
import type { WgslProgram } from './types.ts';

const WORKGROUP = 64;

/**
 * `inShape` and `outShape` have the same rank ≤ 6; each output axis is 1 (reduced) or equal
 * to the input axis.
 */
export function sumToProgram(inShape: readonly number[], outShape: readonly number[]): WgslProgram {
  const pad = MAX_RANK - inShape.length;
  const inDims = [...new Array(pad).fill(1), ...inShape];
  const outDims = [...new Array(pad).fill(1), ...outShape];
  const inStrides = new Array<number>(MAX_RANK);
  let stride = 1;
  for (let axis = MAX_RANK - 1; axis >= 0; axis--) {
    inStrides[axis] = stride;
    stride *= inDims[axis];
  }
  const reducedDims = inDims.map((d, axis) => (outDims[axis] === 1 ? d : 1));
  const reducedCount = reducedDims.reduce((p, d) => p * d, 1);
  const size = outDims.reduce((p, d) => p * d, 1);

  const params: WgslProgram['params'] = [
    ['size', 'u32', size],
    ['count', 'u32', reducedCount],
  ];
  for (let axis = 0; axis < MAX_RANK; axis++) params.push([`o${axis}`, 'u32', outDims[axis]]);
  for (let axis = 0; axis < MAX_RANK; axis++) params.push([`r${axis}`, 'u32', reducedDims[axis]]);
  for (let axis = 0; axis < MAX_RANK; axis++) params.push([`s${axis}`, 'u32', inStrides[axis]]);

  const baseSteps: string[] = [];
  const loopSteps: string[] = [];
  for (let axis = MAX_RANK - 1; axis >= 0; axis--) {
    baseSteps.push(`  base += (rest % params.o${axis}) * params.s${axis}; rest = rest / params.o${axis};`);
    loopSteps.push(`    offset += (r % params.r${axis}) * params.s${axis}; r = r / params.r${axis};`);
  }
  const code = `${storageBinding(0, 'input', 'f32', 'read')}${storageBinding(1, 'output', 'f32', 'read_write')}${uniformBinding(2, params)}
${entry1d(WORKGROUP)} {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.size) { return; }
  var rest = i;
  var base = 0u;
${baseSteps.join('\n')}
  var total = 0.0;
  for (var k = 0u; k < params.count; k++) {
    var r = k;
    var offset = base;
${loopSteps.join('\n')}
    total += input[offset];
  }
  output[i] = total;
}`;
  return { key: 'sum_to', code, workgroups: grid1d(size, WORKGROUP), params };
}
