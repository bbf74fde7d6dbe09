// Conversions between f32 and the two 16-bit float formats that checkpoints use:
// IEEE 754 binary16 (f16: 1 sign, 5 exponent, 10 fraction bits) and bfloat16 (bf16: the top
// 16 bits of an f32). Encoding rounds to nearest, ties to even, as PyTorch's `.half()` and
// `.bfloat16()` do. NaN stays NaN (quiet), and values beyond the range become ±Infinity.
import { floatToHalfBits, halfBitsToFloat } from '../engine/dtype.ts';

// The binary16 conversions live with the engine's dtypes, because f16 tensors use them too.
export { floatToHalfBits, halfBitsToFloat };

const scratch = new DataView(new ArrayBuffer(4));

function floatBits(value: number): number {
  scratch.setFloat32(0, value, true);
  return scratch.getUint32(0, true);
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
