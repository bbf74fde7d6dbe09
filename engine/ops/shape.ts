// Shape ops that move data: permute (and transpose), slice, pad with zeros, concat. Rank ≤ 6;
// f32 and i32 tensors. Negative axes count from the end.
//
// Shapes: permute maps x [d0, …, dn] by axes to [d(axes[0]), …, d(axes[n])]. Slice keeps
// [start, end) of `axis`, so that axis becomes end − start long. Pad adds `before` and
// `after` zeros on `axis`. Concat joins tensors that agree on every axis except `axis`.
//
// Gradients: permute ← inverse permute; slice ← pad with zeros; pad ← slice; concat ← one
// slice per input.
//
// i32 tensors made from host data (token ids) keep a host copy through these ops, so
// `ids[:, :-1]` sliced here can still feed `embedding`, which reads ids on the host.
import { gatherProgram, scatterProgram, type ElementType, type StridedCopy } from '../../kernels/shape.ts';
import { MAX_RANK } from '../../kernels/elementwise.ts';
import { allocArray, shapeString, sizeOf, stridesOf, type DType, type TypedArray } from '../dtype.ts';
import { defineKernel, type Kernel, type TensorSpec } from '../kernel.ts';
import { zeros, type Tensor } from '../tensor.ts';
import { accumulateGradInto, reshape } from './elementwise.ts';
import { record, runKernel, specOf } from './run.ts';

// ---------- CPU references ----------

/** Iterates the contiguous side of `copy` in row-major order, calling `visit(flat, strided)`. */
function forEachStrided({ dims, strides, offset }: StridedCopy, visit: (flat: number, strided: number) => void): void {
  const size = sizeOf(dims);
  const coords = new Array<number>(dims.length).fill(0);
  let strided = offset;
  for (let flat = 0; flat < size; flat++) {
    visit(flat, strided);
    for (let axis = dims.length - 1; axis >= 0; axis--) {
      coords[axis] += 1;
      strided += strides[axis];
      if (coords[axis] < dims[axis]) break;
      strided -= coords[axis] * strides[axis];
      coords[axis] = 0;
    }
  }
}

function gatherReference(input: TypedArray, output: TypedArray, copy: StridedCopy): void {
  forEachStrided(copy, (flat, strided) => {
    output[flat] = input[strided];
  });
}

function scatterReference(target: TypedArray, source: TypedArray, copy: StridedCopy): void {
  forEachStrided(copy, (flat, strided) => {
    target[strided] = source[flat];
  });
}

// ---------- shapes ----------

/** Returns the WGSL element type of `dtype`; throws for f16, because the copy kernels move 4-byte elements only. */
function copyElementType(op: string, dtype: DType): ElementType {
  if (dtype === 'f16') throw new Error(`${op}: the WebGPU copy kernels move 4-byte elements and have no f16 variant; cast the tensor to f32 first (cast(x, 'f32'))`);
  return dtype;
}

function checkRank(op: string, shape: readonly number[]): void {
  if (shape.length > MAX_RANK) {
    throw new Error(`${op}: rank ${shape.length} (${shapeString(shape)}) exceeds the supported ${MAX_RANK}; reshape to fewer axes`);
  }
}

/** Maps a possibly negative axis into [0, rank), or throws naming the op and the valid range. */
function normalizeAxis(op: string, axis: number, shape: readonly number[]): number {
  const rank = shape.length;
  if (!Number.isInteger(axis) || axis < -rank || axis >= rank) {
    throw new Error(`${op}: axis ${axis} is out of range for shape ${shapeString(shape)}; use an integer in [${-rank}, ${rank - 1}]`);
  }
  return axis < 0 ? axis + rank : axis;
}

interface PermuteParams {
  /** A permutation of 0 … rank − 1: output axis i is input axis axes[i]. */
  axes: readonly number[];
}

function permuteCopy(x: TensorSpec, { axes }: PermuteParams): StridedCopy {
  const inStrides = stridesOf(x.shape);
  return { dims: axes.map((axis) => x.shape[axis]), strides: axes.map((axis) => inStrides[axis]), offset: 0 };
}

interface SliceParams {
  axis: number;
  start: number;
  end: number;
}

function sliceCopy(x: TensorSpec, { axis, start, end }: SliceParams): StridedCopy {
  const inStrides = stridesOf(x.shape);
  const dims = [...x.shape];
  dims[axis] = end - start;
  return { dims, strides: inStrides, offset: start * inStrides[axis] };
}

interface InsertParams {
  axis: number;
  /** Index on `axis` of the target where the source's first slice lands. */
  start: number;
}

function insertCopy(target: TensorSpec, source: TensorSpec, { axis, start }: InsertParams): StridedCopy {
  const targetStrides = stridesOf(target.shape);
  return { dims: source.shape, strides: targetStrides, offset: start * targetStrides[axis] };
}

// ---------- kernels ----------

export const permuteKernel = defineKernel<PermuteParams, TypedArray>({
  name: 'permute',
  outputs([x], { axes }) {
    checkRank('permute', x.shape);
    const seen = new Set(axes);
    const valid = axes.length === x.shape.length && seen.size === axes.length && axes.every((axis) => Number.isInteger(axis) && axis >= 0 && axis < axes.length);
    if (!valid) {
      throw new Error(`permute: axes [${axes.join(', ')}] are not a permutation of 0..${x.shape.length - 1} for x ${shapeString(x.shape)}; list each axis exactly once`);
    }
    return [{ shape: axes.map((axis) => x.shape[axis]), dtype: x.dtype }];
  },
  cpu([x], [out], [spec], params) {
    gatherReference(x, out, permuteCopy(spec, params));
  },
  wgsl: ([x], params) => gatherProgram(permuteCopy(x, params), copyElementType('permute', x.dtype)),
});

export const sliceKernel = defineKernel<SliceParams, TypedArray>({
  name: 'slice',
  outputs([x], { axis, start, end }) {
    checkRank('slice', x.shape);
    if (!Number.isInteger(axis) || axis < 0 || axis >= x.shape.length) {
      throw new Error(`slice: axis ${axis} is out of range for x ${shapeString(x.shape)}; use 0..${x.shape.length - 1}`);
    }
    const length = x.shape[axis];
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end < start || end > length) {
      throw new Error(
        `slice: range [${start}, ${end}) is out of range for axis ${axis} of x ${shapeString(x.shape)} (length ${length}); ` +
          `use integers with 0 <= start <= end <= ${length}`,
      );
    }
    const shape = [...x.shape];
    shape[axis] = end - start;
    return [{ shape, dtype: x.dtype }];
  },
  cpu([x], [out], [spec], params) {
    gatherReference(x, out, sliceCopy(spec, params));
  },
  wgsl: ([x], params) => gatherProgram(sliceCopy(x, params), copyElementType('slice', x.dtype)),
});

/**
 * In place: copies `source` into `target` at [start, start + source length) on `axis`; the
 * other axes must match. Pad and concat write their output with it.
 */
export const insertKernel = defineKernel<InsertParams, TypedArray>({
  name: 'insert',
  outputs([target, source], { axis, start }) {
    checkRank('insert', target.shape);
    const sameOtherAxes = target.shape.length === source.shape.length && target.shape.every((d, i) => i === axis || d === source.shape[i]);
    if (!sameOtherAxes || target.dtype !== source.dtype) {
      throw new Error(
        `insert: source ${shapeString(source.shape)} ${source.dtype} does not fit target ${shapeString(target.shape)} ${target.dtype}; ` +
          `every axis except ${axis} and the dtype must match`,
      );
    }
    const end = start + source.shape[axis];
    if (!Number.isInteger(start) || start < 0 || end > target.shape[axis]) {
      throw new Error(`insert: range [${start}, ${end}) on axis ${axis} exceeds target ${shapeString(target.shape)}; use 0 <= start and start + source length <= ${target.shape[axis]}`);
    }
    return [];
  },
  cpu([target, source], _outputs, [targetSpec, sourceSpec], params) {
    scatterReference(target, source, insertCopy(targetSpec, sourceSpec, params));
  },
  wgsl: ([target, source], params) => scatterProgram(insertCopy(target, source, params), copyElementType('insert', target.dtype)),
  // An in-place kernel has no output for the device to size its time estimate by.
  flops: ([, source]) => sizeOf(source.shape),
});

// ---------- host copies ----------

/** Runs a kernel's CPU reference on host copies, for outputs of i32 tensors that carry one. */
function hostOutput<P>(kernel: Kernel<P, TypedArray>, inputs: Tensor[], params: P, outSpec: TensorSpec): TypedArray | null {
  const hostInputs = inputs.map((input) => input.hostData);
  if (hostInputs.some((data) => data === null)) return null;
  const out = allocArray(outSpec.dtype, sizeOf(outSpec.shape));
  kernel.cpu(hostInputs as TypedArray[], [out], inputs.map(specOf), params);
  return out;
}

/** Host copy of a tensor assembled from pieces by `insertKernel`, when every piece has one. */
function hostInsertOutput(out: Tensor, pieces: Array<{ source: Tensor; start: number }>, axis: number): TypedArray | null {
  if (pieces.some(({ source }) => source.hostData === null)) return null;
  const target = allocArray(out.dtype, out.size);
  for (const { source, start } of pieces) {
    insertKernel.cpu([target, source.hostData as TypedArray], [], [specOf(out), specOf(source)], { axis, start });
  }
  return target;
}

// ---------- autograd ops ----------

/** Reorders the axes of `x`: output axis i is input axis `axes[i]`. */
export function permute(x: Tensor, axes: readonly number[]): Tensor {
  const normalized = axes.map((axis) => (Number.isInteger(axis) && axis < 0 && axis >= -x.rank ? axis + x.rank : axis));
  if (normalized.every((axis, i) => axis === i) && normalized.length === x.rank) return reshape(x, x.shape);

  const params = { axes: normalized };
  const out = runKernel(permuteKernel, [x], params)[0];
  out.hostData = hostOutput(permuteKernel, [x], params, specOf(out));

  const inverse = new Array<number>(normalized.length);
  normalized.forEach((axis, i) => (inverse[axis] = i));
  return record(out, [x], (g) => accumulateGradInto(x, permute(g, inverse)));
}

/** Swaps two axes of `x`. */
export function transpose(x: Tensor, axis0: number, axis1: number): Tensor {
  const a = normalizeAxis('transpose', axis0, x.shape);
  const b = normalizeAxis('transpose', axis1, x.shape);
  const axes = x.shape.map((_, i) => i);
  axes[a] = b;
  axes[b] = a;
  return permute(x, axes);
}

/** Selects the elements of `x` with index in [start, end) on `axis`. */
export function slice(x: Tensor, axis: number, start: number, end: number): Tensor {
  const params = { axis: normalizeAxis('slice', axis, x.shape), start, end };
  const out = runKernel(sliceKernel, [x], params)[0];
  out.hostData = hostOutput(sliceKernel, [x], params, specOf(out));

  const length = x.shape[params.axis];
  return record(out, [x], (g) => accumulateGradInto(x, pad(g, params.axis, start, length - end)));
}

/** `x` with `before` zeros in front of it and `after` zeros behind it on `axis`. */
export function pad(x: Tensor, axis: number, before: number, after: number): Tensor {
  const normalized = normalizeAxis('pad', axis, x.shape);
  if (!Number.isInteger(before) || !Number.isInteger(after) || before < 0 || after < 0) {
    throw new Error(`pad: padding (${before}, ${after}) on axis ${axis} of x ${shapeString(x.shape)} is invalid; use non-negative integers`);
  }
  const shape = [...x.shape];
  shape[normalized] += before + after;
  const out = zeros(shape, x.dtype, x.device);
  runKernel(insertKernel, [out, x], { axis: normalized, start: before });
  out.hostData = hostInsertOutput(out, [{ source: x, start: before }], normalized);

  const length = x.shape[normalized];
  return record(out, [x], (g) => accumulateGradInto(x, slice(g, normalized, before, before + length)));
}

/** Joins `tensors` along `axis`; every other axis, the dtype and the device must match. */
export function concat(tensors: readonly Tensor[], axis: number): Tensor {
  if (tensors.length === 0) throw new Error('concat: no tensors given; pass at least one');
  const first = tensors[0];
  const normalized = normalizeAxis('concat', axis, first.shape);
  tensors.forEach((t, i) => {
    const fits = t.rank === first.rank && t.shape.every((d, k) => k === normalized || d === first.shape[k]);
    if (!fits) {
      throw new Error(
        `concat: tensor ${i} has shape ${shapeString(t.shape)}, which does not match tensor 0 ${shapeString(first.shape)} ` +
          `on the axes other than ${normalized}; reshape or slice the inputs so only axis ${normalized} differs`,
      );
    }
    if (t.dtype !== first.dtype) {
      throw new Error(`concat: tensor ${i} is ${t.dtype} but tensor 0 is ${first.dtype}; convert them to one dtype`);
    }
  });
  if (tensors.length === 1) return reshape(first, first.shape);

  const shape = [...first.shape];
  shape[normalized] = tensors.reduce((total, t) => total + t.shape[normalized], 0);
  const out = zeros(shape, first.dtype, first.device);
  const pieces: Array<{ source: Tensor; start: number }> = [];
  let start = 0;
  for (const source of tensors) {
    runKernel(insertKernel, [out, source], { axis: normalized, start });
    pieces.push({ source, start });
    start += source.shape[normalized];
  }
  out.hostData = hostInsertOutput(out, pieces, normalized);

  return record(out, [...tensors], (g) => {
    for (const { source, start: offset } of pieces) {
      if (source.requiresGrad) accumulateGradInto(source, slice(g, normalized, offset, offset + source.shape[normalized]));
    }
  });
}
