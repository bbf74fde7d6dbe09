// AdamW steps, in place (param, m and v are read_write): `adamwProgram` updates one parameter,
// `adamwGroupProgram` every parameter of a group laid out in flat buffers.
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

function uniformsOf(u: AdamWUniforms): WgslProgram['params'] {
  return [
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
}

const BINDINGS = `${storageBinding(0, 'param', 'f32', 'read_write')}${storageBinding(1, 'grad', 'f32', 'read')}${storageBinding(2, 'm', 'f32', 'read_write')}${storageBinding(3, 'v', 'f32', 'read_write')}`;

/** The update of element `i`, the same statements in both programs. */
const UPDATE = `  let g = grad[i];
  var p = param[i];
  p = p - params.lr * params.weight_decay * p;

  let m_new = params.beta1 * m[i] + params.one_minus_beta1 * g;
  let v_new = params.beta2 * v[i] + params.one_minus_beta2 * g * g;
  m[i] = m_new;
  v[i] = v_new;

  let m_hat = m_new / params.bias_correction1;
  let v_hat = v_new / params.bias_correction2;
  param[i] = p - params.lr * m_hat / (sqrt(v_hat) + params.eps);`;

export function adamwProgram(size: number, u: AdamWUniforms): WgslProgram {
  const params: WgslProgram['params'] = [['size', 'u32', size], ...uniformsOf(u)];
  const code = `${BINDINGS}${uniformBinding(4, params)}
${entry1d(WORKGROUP)} {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.size) { return; }
${UPDATE}
}`;
  return { key: 'adamw', code, workgroups: grid1d(size, WORKGROUP), params };
}

/** Elements one workgroup of `adamwGroupProgram` updates at most. */
export const ADAMW_GROUP_WORKGROUP = WORKGROUP;

/**
 * Generates one AdamW step for a group of parameters stored back to back in flat param, grad,
 * m and v buffers. `ranges` [W, 2] u32 gives each workgroup w its elements [start, end), at most 64 of
 * them, so W workgroups cover the group's parameters and skip the padding between them. All
 * parameters of one dispatch share the step count (the bias corrections are uniforms).
 */
export function adamwGroupProgram(workgroupCount: number, u: AdamWUniforms): WgslProgram {
  const params: WgslProgram['params'] = [['workgroup_count', 'u32', workgroupCount], ...uniformsOf(u)];
  const code = `${BINDINGS}${storageBinding(4, 'ranges', 'u32', 'read')}${uniformBinding(5, params)}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
  let w = wid.x + wid.y * nwg.x;
  if (w >= params.workgroup_count) { return; }
  let i = ranges[2u * w] + lane;
  if (i >= ranges[2u * w + 1u]) { return; }
${UPDATE}
}`;
  return { key: 'adamw_group', code, workgroups: grid1d(workgroupCount * WORKGROUP, WORKGROUP), params };
}
