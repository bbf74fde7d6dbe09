// Elementwise kernels: unary maps and binary maps with NumPy-style broadcasting (rank ≤ 6).
import { entry1d, flatIndex, grid1d, storageBinding, uniformBinding } from './common.ts';
import type { WgslProgram } from './types.ts';

export const MAX_RANK = 6;
const WORKGROUP = 64;

// erf by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7); WGSL has no erf builtin.
export const WGSL_ERF = `
fn erf_approx(x: f32) -> f32 {
  let s = sign(x);
  let a = abs(x);
  let t = 1.0 / (1.0 + 0.3275911 * a);
  let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-a * a);
  return s * y;
}
fn gelu(x: f32) -> f32 { return 0.5 * x * (1.0 + erf_approx(x * 0.7071067811865476)); }
fn gelu_grad(x: f32) -> f32 {
  let cdf = 0.5 * (1.0 + erf_approx(x * 0.7071067811865476));
  let pdf = 0.3989422804014327 * exp(-0.5 * x * x);
  return cdf + x * pdf;
}
fn sigmoid(x: f32) -> f32 { return 1.0 / (1.0 + exp(-x)); }
`;

export type UnaryOp = 'affine' | 'neg' | 'exp' | 'log' | 'sqrt' | 'rsqrt' | 'relu' | 'gelu' | 'silu' | 'square';

/** `alpha` and `beta` are read by `affine` (alpha·x + beta). */
export const UNARY_WGSL: Record<UnaryOp, string> = {
  affine: 'params.alpha * x + params.beta',
  neg: '-x',
  exp: 'exp(x)',
  log: 'log(x)',
  sqrt: 'sqrt(x)',
  rsqrt: 'inverseSqrt(x)',
  relu: 'max(x, 0.0)',
  gelu: 'gelu(x)',
  silu: 'x * sigmoid(x)',
  square: 'x * x',
};

export type BinaryOp = 'add' | 'sub' | 'mul' | 'div' | 'max' | 'gelu_backward' | 'silu_backward' | 'relu_backward';

/** For the *_backward ops, `a` is the forward input and `b` the output gradient. */
export const BINARY_WGSL: Record<BinaryOp, string> = {
  add: 'a + b',
  sub: 'a - b',
  mul: 'a * b',
  div: 'a / b',
  max: 'max(a, b)',
  gelu_backward: 'gelu_grad(a) * b',
  silu_backward: 'b * sigmoid(a) * (1.0 + a * (1.0 - sigmoid(a)))',
  relu_backward: 'select(0.0, b, a > 0.0)',
};

/** out[i] = op(x[i]) over `size` elements. */
export function unaryProgram(op: UnaryOp, size: number, alpha: number, beta: number): WgslProgram {
  const params: WgslProgram['params'] = [
    ['size', 'u32', size],
    ['alpha', 'f32', alpha],
    ['beta', 'f32', beta],
  ];
  const code = `${storageBinding(0, 'input', 'f32', 'read')}${storageBinding(1, 'output', 'f32', 'read_write')}${uniformBinding(2, params)}${WGSL_ERF}
${entry1d(WORKGROUP)} {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.size) { return; }
  let x = input[i];
  output[i] = ${UNARY_WGSL[op]};
}`;
  return { key: op, code, workgroups: grid1d(size, WORKGROUP), params };
}

/**
 * Merges neighbouring axes that both operands walk contiguously (or both broadcast) and drops
 * axes of size 1, so a same-shape op becomes rank 1 and a bias add rank 2. Returns at least
 * one axis.
 */
export function coalesceAxes(shape: readonly number[], aStrides: readonly number[], bStrides: readonly number[]): { dims: number[]; sa: number[]; sb: number[] } {
  const dims: number[] = [];
  const sa: number[] = [];
  const sb: number[] = [];
  for (let axis = 0; axis < shape.length; axis++) {
    if (shape[axis] === 1) continue;
    const last = dims.length - 1;
    if (last >= 0 && sa[last] === aStrides[axis] * shape[axis] && sb[last] === bStrides[axis] * shape[axis]) {
      dims[last] *= shape[axis];
      sa[last] = aStrides[axis];
      sb[last] = bStrides[axis];
    } else {
      dims.push(shape[axis]);
      sa.push(aStrides[axis]);
      sb.push(bStrides[axis]);
    }
  }
  if (dims.length === 0) return { dims: [1], sa: [0], sb: [0] };
  return { dims, sa, sb };
}

/**
 * out[i] = op(a[ia], b[ib]) where i runs over `outShape` and each operand is read through its
 * own strides (0 on broadcast axes). Axes are coalesced first; the index arithmetic is
 * generated for the remaining rank, because u32 division is costly on CPU adapters.
 */
export function binaryProgram(op: BinaryOp, outShape: readonly number[], aStrides: readonly number[], bStrides: readonly number[]): WgslProgram {
  const { dims, sa, sb } = coalesceAxes(outShape, aStrides, bStrides);
  const rank = dims.length;
  if (rank > MAX_RANK) throw new Error(`binary ${op}: rank ${rank} exceeds ${MAX_RANK}`);
  let size = 1;
  for (const d of outShape) size *= d;
  const params: WgslProgram['params'] = [['size', 'u32', size]];
  for (let axis = 0; axis < rank; axis++) params.push([`d${axis}`, 'u32', dims[axis]]);
  for (let axis = 0; axis < rank; axis++) params.push([`a${axis}`, 'u32', sa[axis]]);
  for (let axis = 0; axis < rank; axis++) params.push([`b${axis}`, 'u32', sb[axis]]);

  const steps: string[] = [];
  for (let axis = rank - 1; axis >= 1; axis--) {
    steps.push(`  let c${axis} = rest % params.d${axis}; rest = rest / params.d${axis};`);
    steps.push(`  ia += c${axis} * params.a${axis}; ib += c${axis} * params.b${axis};`);
  }
  steps.push('  ia += rest * params.a0; ib += rest * params.b0;');
  const code = `${storageBinding(0, 'lhs', 'f32', 'read')}${storageBinding(1, 'rhs', 'f32', 'read')}${storageBinding(2, 'output', 'f32', 'read_write')}${uniformBinding(3, params)}${WGSL_ERF}
${entry1d(WORKGROUP)} {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.size) { return; }
  var rest = i;
  var ia = 0u;
  var ib = 0u;
${steps.join('\n')}
  let a = lhs[ia];
  let b = rhs[ib];
  output[i] = ${BINARY_WGSL[op]};
}`;
  return { key: `${op}:r${rank}`, code, workgroups: grid1d(size, WORKGROUP), params };
}
