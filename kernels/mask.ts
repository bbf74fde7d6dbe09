// Attention-score masking: writes a fill value over masked (query, key) positions and copies
// the rest. Causal masking hides key j from query i when j > i + queryOffset; key lengths
// hide key j >= keyLengths[b] (padding) in batch row b.
//
// Shapes: scores [B, H, Tq, Tk], keyLengths i32 [B] (optional) → out [B, H, Tq, Tk].
import { entry1d, flatIndex, grid1d, storageBinding, uniformBinding } from './common.ts';
import type { WgslProgram } from './types.ts';

const WORKGROUP = 64;

export interface MaskShape {
  batch: number;
  heads: number;
  queryLength: number;
  keyLength: number;
}

export function maskProgram(shape: MaskShape, causal: boolean, queryOffset: number, fill: number, hasKeyLengths: boolean): WgslProgram {
  const { batch, heads, queryLength, keyLength } = shape;
  const size = batch * heads * queryLength * keyLength;
  const params: WgslProgram['params'] = [
    ['size', 'u32', size],
    ['heads', 'u32', heads],
    ['query_length', 'u32', queryLength],
    ['key_length', 'u32', keyLength],
    ['causal', 'u32', causal ? 1 : 0],
    ['query_offset', 'i32', queryOffset],
    ['fill', 'f32', fill],
  ];
  const outputBinding = hasKeyLengths ? 2 : 1;
  const bindings =
    storageBinding(0, 'scores', 'f32', 'read') +
    (hasKeyLengths ? storageBinding(1, 'key_lengths', 'i32', 'read') : '') +
    storageBinding(outputBinding, 'output', 'f32', 'read_write') +
    uniformBinding(outputBinding + 1, params);
  const lengthCheck = hasKeyLengths
    ? `  let b = i / (params.key_length * params.query_length * params.heads);
  masked = masked || i32(j) >= key_lengths[b];`
    : '';
  const code = `${bindings}
${entry1d(WORKGROUP)} {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.size) { return; }
  let j = i % params.key_length;
  let q = (i / params.key_length) % params.query_length;
  var masked = params.causal != 0u && i32(j) > i32(q) + params.query_offset;
${lengthCheck}
  output[i] = select(scores[i], params.fill, masked);
}`;
  return { key: hasKeyLengths ? 'mask_lengths' : 'mask', code, workgroups: grid1d(size, WORKGROUP), params };
}
