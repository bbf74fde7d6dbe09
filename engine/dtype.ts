// Element types: f32 for values, i32 for token ids, indices and lengths.

// TODO: f16 storage for frozen weights on adapters with shader-f16 (F16/BF16 files are widened
// to f32 on load today, so device memory is twice an F16 checkpoint's size).
export type DType = 'f32' | 'i32';
export type TypedArray = Float32Array | Int32Array;

export function allocArray(dtype: DType, size: number): TypedArray {
  return dtype === 'f32' ? new Float32Array(size) : new Int32Array(size);
}

export function sizeOf(shape: readonly number[]): number {
  let size = 1;
  for (const dim of shape) size *= dim;
  return size;
}

export function shapeString(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

/** Row-major strides of a contiguous tensor. */
export function stridesOf(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let stride = 1;
  for (let axis = shape.length - 1; axis >= 0; axis--) {
    strides[axis] = stride;
    stride *= shape[axis];
  }
  return strides;
}
