// Conversions between f32 and the two 16-bit float formats that checkpoints use:
// IEEE 754 binary16 (f16: 1 sign, 5 exponent, 10 fraction bits) and bfloat16 (bf16: the top
// 16 bits of an f32). Encoding rounds to nearest, ties to even, as PyTorch's `.half()` and
// `.bfloat16()` do. NaN stays NaN (quiet), and values beyond the range become ±Infinity.

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

/** Decodes bfloat16 bits to a number (exact). */
export function bfloat16BitsToFloat(bits: number): number {
  scratch.setUint32(0, (bits & 0xffff) << 16, true);
  return scratch.getFloat32(0, true);
}

/** Encodes a number (first rounded to f32) as bfloat16 bits, rounding to nearest even. */
export function floatToBfloat16Bits(value: number): number {
  const bits = floatBits(value);
  if ((bits & 0x7f800000) === 0x7f800000 && bits & 0x7fffff) return ((bits >>> 16) | 0x40) & 0xffff;
  const roundingBias = 0x7fff + ((bits >>> 16) & 1);
  return Math.floor((bits + roundingBias) / 0x10000) & 0xffff;
}
