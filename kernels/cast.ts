// Casts between f16 storage and f32 values.
//
// Shapes: x [N] → out [N]. f16 elements are 2 bytes, so an f16 array of N elements fills
// ceil(N / 2) 32-bit words. The binding covers whole words, and the last word of an odd N has
// an unused upper half. Each invocation of f32 → f16 writes one whole word (two elements), so
// no two invocations write the same word.
//
// With `shader-f16` the kernels declare `enable f16;` and read or build f16 values directly.
// Without it they see the f16 array as `array<u32>` and convert pairs with
// unpack2x16float / pack2x16float, which core WGSL has.
import { entry1d, flatIndex, grid1d, storageBinding, uniformBinding } from './common.ts';
import type { DeviceCaps, WgslProgram } from './types.ts';

const WORKGROUP = 64;

/** out[i] = f32(x[i]) for an f16 `x` of `count` elements. */
export function halfToFloatProgram(count: number, caps: Pick<DeviceCaps, 'shaderF16'>): WgslProgram {
  const params: WgslProgram['params'] = [['count', 'u32', count]];
  const native = caps.shaderF16;
  const read = native ? 'f32(x[i])' : 'unpack2x16float(x[i / 2u])[i % 2u]';
  const code = `${native ? 'enable f16;\n' : ''}${storageBinding(0, 'x', native ? 'f16' : 'u32', 'read')}${storageBinding(1, 'output', 'f32', 'read_write')}${uniformBinding(2, params)}
${entry1d(WORKGROUP)} {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.count) { return; }
  output[i] = ${read};
}`;
  return { key: `half_to_float:${native ? 'f16' : 'u32'}`, code, workgroups: grid1d(count, WORKGROUP), params };
}

/** out[i] = f16(x[i]) for an f32 `x` of `count` elements, rounded to nearest even on lavapipe. */
export function floatToHalfProgram(count: number, caps: Pick<DeviceCaps, 'shaderF16'>): WgslProgram {
  const words = Math.ceil(count / 2);
  const params: WgslProgram['params'] = [
    ['count', 'u32', count],
    ['words', 'u32', words],
  ];
  const native = caps.shaderF16;
  const pack = native ? 'bitcast<u32>(vec2<f16>(f16(low), f16(high)))' : 'pack2x16float(vec2<f32>(low, high))';
  const code = `${native ? 'enable f16;\n' : ''}${storageBinding(0, 'x', 'f32', 'read')}${storageBinding(1, 'output', 'u32', 'read_write')}${uniformBinding(2, params)}
${entry1d(WORKGROUP)} {
  let w = ${flatIndex(WORKGROUP)};
  if (w >= params.words) { return; }
  let low = x[2u * w];
  var high = 0.0;
  if (2u * w + 1u < params.count) { high = x[2u * w + 1u]; }
  output[w] = ${pack};
}`;
  return { key: `float_to_half:${native ? 'f16' : 'u32'}`, code, workgroups: grid1d(words, WORKGROUP), params };
}
