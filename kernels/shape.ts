// Shape kernels: strided copies between a contiguous tensor and a strided view of another
// (rank ≤ 6). A gather reads a strided view into a contiguous output (permute, slice). A
// scatter writes a contiguous source into a strided region of an existing tensor in place
// (pad, concat). Each runs one invocation per element of the contiguous side.
import { entry1d, flatIndex, grid1d, storageBinding, uniformBinding } from './common.ts';
import { coalesceAxes } from './elementwise.ts';
import type { WgslProgram } from './types.ts';

const WORKGROUP = 64;

export type ElementType = 'f32' | 'i32';

export interface StridedCopy {
  /** Shape of the contiguous side; the invocation for element i decodes its coordinates. */
  dims: readonly number[];
  /** Strides of the strided side, one per axis of `dims`. */
  strides: readonly number[];
  /** Element offset of the strided side's first element. */
  offset: number;
}

function elementCount({ dims }: StridedCopy): number {
  return dims.reduce((p, d) => p * d, 1);
}

/**
 * Axes after merging neighbours that the strided side also walks contiguously and dropping
 * axes of size 1, so u32 division (costly on CPU adapters) runs once per remaining axis.
 */
function coalesced(copy: StridedCopy): { dims: number[]; strides: number[] } {
  const contiguous = stridesOf(copy.dims);
  const { dims, sb } = coalesceAxes(copy.dims, contiguous, copy.strides);
  return { dims, strides: sb };
}

function stridesOf(dims: readonly number[]): number[] {
  const strides = new Array<number>(dims.length);
  let stride = 1;
  for (let axis = dims.length - 1; axis >= 0; axis--) {
    strides[axis] = stride;
    stride *= dims[axis];
  }
  return strides;
}

function copyParams(copy: StridedCopy, dims: number[], strides: number[]): WgslProgram['params'] {
  const params: WgslProgram['params'] = [
    ['size', 'u32', elementCount(copy)],
    ['offset', 'u32', copy.offset],
  ];
  for (let axis = 0; axis < dims.length; axis++) params.push([`d${axis}`, 'u32', dims[axis]]);
  for (let axis = 0; axis < dims.length; axis++) params.push([`s${axis}`, 'u32', strides[axis]]);
  return params;
}

/** WGSL lines that turn the flat index `i` into `strided`, the strided side's element index. */
function stridedIndexSteps(rank: number): string {
  const steps: string[] = [];
  for (let axis = rank - 1; axis >= 1; axis--) {
    steps.push(`  strided += (rest % params.d${axis}) * params.s${axis}; rest = rest / params.d${axis};`);
  }
  steps.push('  strided += rest * params.s0;');
  return steps.join('\n');
}

/**
 * One program for both directions. A gather reads the strided side into contiguous `output`
 * (output[i] = input[offset + Σ coordᵢ·strideᵢ]). A scatter writes contiguous `source` into the
 * strided side in place (destination[offset + Σ coordᵢ·strideᵢ] = source[i]), with binding 0
 * the destination (read_write) and binding 1 the source.
 */
function stridedCopyProgram(copy: StridedCopy, type: ElementType, direction: 'gather' | 'scatter'): WgslProgram {
  const { dims, strides } = coalesced(copy);
  const params = copyParams(copy, dims, strides);
  const gather = direction === 'gather';
  const first = gather ? storageBinding(0, 'input', type, 'read') : storageBinding(0, 'destination', type, 'read_write');
  const second = gather ? storageBinding(1, 'output', type, 'read_write') : storageBinding(1, 'source', type, 'read');
  const assignment = gather ? 'output[i] = input[strided];' : 'destination[strided] = source[i];';
  const code = `${first}${second}${uniformBinding(2, params)}
${entry1d(WORKGROUP)} {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.size) { return; }
  var rest = i;
  var strided = params.offset;
${stridedIndexSteps(dims.length)}
  ${assignment}
}`;
  return { key: `${direction}_${type}:r${dims.length}`, code, workgroups: grid1d(elementCount(copy), WORKGROUP), params };
}

/** output[i] = input[offset + Σ coordᵢ·strideᵢ], with `output` contiguous of shape `dims`. */
export function gatherProgram(copy: StridedCopy, type: ElementType): WgslProgram {
  return stridedCopyProgram(copy, type, 'gather');
}

/** destination[offset + Σ coordᵢ·strideᵢ] = source[i], in place, with `source` contiguous of shape `dims`. */
export function scatterProgram(copy: StridedCopy, type: ElementType): WgslProgram {
  return stridedCopyProgram(copy, type, 'scatter');
}
