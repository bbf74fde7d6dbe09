// One AdamW step for one parameter, in place (param, m and v are read_write).
//
// Shapes: param, grad, m, v all [...] with the same element count.
// Update (decoupled weight decay, Loshchilov and Hutter, "Decoupled Weight Decay
// Regularization", ICLR 2019; the same order of steps as PyTorch's torch.optim.AdamW):
//   p ← p − lr·wd·p
//   m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²
//   p ← p − lr·(m / c1) / (√(v / c2) + ε),  with c1 = 1 − β1^t and c2 = 1 − β2^t.
// The host computes c1, c2, 1 − β1 and 1 − β2 in double precision and passes them with lr as
// uniforms, so a schedule changes lr without recompiling. 1 − β2 computed in f32 would be off
// by 1.3e-5 relative for β2 = 0.999, because 0.999 itself rounds in f32.
import { entry1d, flatIndex, grid1d, storageBinding, uniformBinding } from './common.ts';
import type { WgslProgram } from './types.ts';

const WORKGROUP = 64;

export interface AdamWUniforms {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1 − β1^t for step t (1-based). */
  biasCorrection1: number;
  /** 1 − β2^t. */
  biasCorrection2: number;
}

export function adamwProgram(size: number, u: AdamWUniforms): WgslProgram {
  const params: WgslProgram['params'] = [
    ['size', 'u32', size],
    ['lr', 'f32', u.lr],
    ['beta1', 'f32', u.beta1],
    ['beta2', 'f32', u.beta2],
    ['one_minus_beta1', 'f32', 1 - u.beta1],
    ['one_minus_beta2', 'f32', 1 - u.beta2],
    ['eps', 'f32', u.eps],
    ['weight_decay', 'f32', u.weightDecay],
    ['bias_correction1', 'f32', u.biasCorrection1],
    ['bias_correction2', 'f32', u.biasCorrection2],
  ];
  const code = `${storageBinding(0, 'param', 'f32', 'read_write')}${storageBinding(1, 'grad', 'f32', 'read')}${storageBinding(2, 'm', 'f32', 'read_write')}${storageBinding(3, 'v', 'f32', 'read_write')}${uniformBinding(4, params)}
${entry1d(WORKGROUP)} {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.size) { return; }
  let g = grad[i];
  var p = param[i];
  p = p - params.lr * params.weight_decay * p;

  let m_new = params.beta1 * m[i] + params.one_minus_beta1 * g;
  let v_new = params.beta2 * v[i] + params.one_minus_beta2 * g * g;
  m[i] = m_new;
  v[i] = v_new;

  let m_hat = m_new / params.bias_correction1;
  let v_hat = v_new / params.bias_correction2;
  param[i] = p - params.lr * m_hat / (sqrt(v_hat) + params.eps);
}`;
  return { key: 'adamw', code, workgroups: grid1d(size, WORKGROUP), params };
}
