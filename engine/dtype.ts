// Element types: f32 for values, i32 for token ids, indices and lengths, and f16 (IEEE 754
// binary16) as a storage type for frozen weights. On the host an f16 tensor's values are the
// 16-bit patterns in a Uint16Array; `halfBitsToFloat` and `floatToHalfBits` convert them.
export type DType = 'f32' | 'i32' | 'f16';
export type TypedArray = Float32Array | Int32Array | Uint16Array;

export function allocArray(dtype: DType, size: number): TypedArray {
  if (dtype === 'f16') return new Uint16Array(size);
  return dtype === 'f32' ? new Float32Array(size) : new Int32Array(size);
}

export function bytesPerElement(dtype: DType): number {
  return dtype === 'f16' ? 2 : 4;
}

/** Returns the dtype whose host arrays have the class of `data`. */
export function dtypeOfArray(data: TypedArray): DType {
  if (data instanceof Uint16Array) return 'f16';
  return data instanceof Int32Array ? 'i32' : 'f32';
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

// ---------- binary16 conversions ----------
// Encoding rounds to nearest, ties to even, as PyTorch's `.half()` and the WGSL f32 → f16
// conversion on lavapipe do. NaN stays NaN (quiet), and values beyond ±65504 round to ±Infinity
// (65520 and above; below that they round to ±65504).

const scratch = new DataView(new ArrayBuffer(4));

function floatBits(value: number): number {
  scratch.setFloat32(0, value, true);
  return scratch.getUint32(0, true);
}

/** Decodes binary16 bits to a number (exact: every f16 value is an f32 value). */
export function halfBitsToFloat(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

/** Encodes a number (first rounded to f32) as binary16 bits, rounding to nearest even. */
export function floatToHalfBits(value: number): number {
  const bits = floatBits(value);
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  const mantissa = bits & 0x7fffff;

  if (exponent === 0xff) return sign | (mantissa ? 0x7e00 : 0x7c00);
  const halfExponent = exponent - 127 + 15;
  if (halfExponent >= 31) return sign | 0x7c00;

  if (halfExponent >= 1) {
    // Normal result: keep the top 10 of 23 fraction bits. A carry out of the fraction moves
    // into the exponent, which is the correct result (up to Infinity at 65520 and above).
    let half = (halfExponent << 10) | (mantissa >>> 13);
    const dropped = mantissa & 0x1fff;
    if (dropped > 0x1000 || (dropped === 0x1000 && half & 1)) half += 1;
    return sign | half;
  }

  // Subnormal result, in units of 2^-24. Below 2^-25 everything rounds to zero, and exactly
  // 2^-25 is a tie that rounds to the even zero.
  if (halfExponent < -10) return sign;
  const significand = mantissa | 0x800000;
  const shift = 126 - exponent;
  let half = significand >>> shift;
  const dropped = significand & ((1 << shift) - 1);
  const midpoint = 1 << (shift - 1);
  if (dropped > midpoint || (dropped === midpoint && half & 1)) half += 1;
  // A carry to 0x400 is the smallest normal f16, which has exactly these bits.
  return sign | half;
}

// Decoding table: 65,536 entries (256 KiB), built on first use, so that widening a
// checkpoint-sized f16 array costs one lookup per element.
let halfTable: Float32Array | null = null;

/** Decodes an array of binary16 bits to f32 values (exact). */
export function halfArrayToFloat(bits: Uint16Array): Float32Array {
  if (!halfTable) {
    halfTable = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) halfTable[i] = halfBitsToFloat(i);
  }
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = halfTable[bits[i]];
  return out;
}

/** Encodes values as binary16 bits, rounding to nearest even (see `floatToHalfBits`). */
export function floatArrayToHalf(values: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = floatToHalfBits(values[i]);
  return out;
}
