// Rotary position embedding (rotate-half layout, as in HF LLaMA) with the angles computed in the
// kernel, so no cos/sin tables are uploaded.
//
// Shapes: x and out are [..., T, Dh] (usually [B, H, T, Dh]). Column d < R of row t, with R the
// rotary width (Dh unless only a prefix rotates), pairs with column d ± R/2 and turns by the angle
// (t + offset)·inv_freq[d mod R/2], where inv_freq[i] = theta^(−2i/R). Columns d ≥ R are copied.
//
// Precision: every step is f32. inv_freq is exp2(−(2i/R)·log2 theta), and the angle is the f32
// product of the position and inv_freq, so at position p it is off by about ulp(p·inv_freq)/2
// from the exact angle (about 1.2e-4 rad at p = 2048 for the first pair). Against applyRope with
// f64 tables, x in [−1, 1), Dh 64 and positions 2000..2047, the max |diff| measured 8.7e-5 on the
// CPU reference and 1.8e-4 on WebGPU (Dawn on Mesa lavapipe).
import { entry1d, flatIndex, grid1d, storageBinding, uniformBinding } from './common.ts';
import type { WgslProgram } from './types.ts';

const WORKGROUP = 64;

/** Sizes and constants of one rope dispatch. */
export interface RopeShape {
  /** Elements of x. */
  size: number;
  seqLen: number;
  /** Dh, the last axis of x. */
  width: number;
  /** R, the even number of leading columns that rotate. */
  rotaryDim: number;
  offset: number;
  /** log2(theta) rounded to f32, the value the CPU reference uses too. */
  log2Theta: number;
  /** +1 rotates by +angle (the forward), −1 by −angle (the backward, which is the inverse rotation). */
  direction: 1 | -1;
}

/** out = x·cos + rotate_half(x)·sin·direction over the first R columns, with rotate_half(x) = [−x₂, x₁]. */
export function ropeProgram(shape: RopeShape): WgslProgram {
  const params: WgslProgram['params'] = [
    ['size', 'u32', shape.size],
    ['seq_len', 'u32', shape.seqLen],
    ['width', 'u32', shape.width],
    ['rotary_dim', 'u32', shape.rotaryDim],
    ['offset', 'u32', shape.offset],
    ['log2_theta', 'f32', shape.log2Theta],
    ['direction', 'f32', shape.direction],
  ];
  const code = `${storageBinding(0, 'x', 'f32', 'read')}${storageBinding(1, 'out', 'f32', 'read_write')}${uniformBinding(2, params)}
${entry1d(WORKGROUP)} {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.size) { return; }
  let d = i % params.width;
  if (d >= params.rotary_dim) {
    out[i] = x[i];
    return;
  }

  let t = (i / params.width) % params.seq_len;
  let half = params.rotary_dim / 2u;
  let pair = d % half;
  let inv_freq = exp2(-2.0 * f32(pair) / f32(params.rotary_dim) * params.log2_theta);
  let angle = f32(t + params.offset) * inv_freq;
  let c = cos(angle);
  let s = sin(angle) * params.direction;
  if (d < half) {
    out[i] = x[i] * c - x[i + half] * s;
  } else {
    out[i] = x[i] * c + x[i - half] * s;
  }
}`;
  return { key: 'rope', code, workgroups: grid1d(shape.size, WORKGROUP), params };
}
