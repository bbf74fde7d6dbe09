// Elementwise ops with broadcasting, and the sum reduction that undoes broadcasting.
//
// Shapes: binary ops broadcast NumPy-style (align on the right; an axis of 1 stretches).
import { binaryProgram, MAX_RANK, unaryProgram, type BinaryOp, type UnaryOp } from '../../kernels/elementwise.ts';
import { sumToProgram } from '../../kernels/reduce.ts';
import { shapeString, sizeOf, stridesOf } from '../dtype.ts';
import { defineKernel } from '../kernel.ts';
import { setAccumulateGrad, Tensor } from '../tensor.ts';
import { assertDtype, record, runKernel } from './run.ts';

// ---------- CPU references ----------

export function erfReference(x: number): number {
  // Abramowitz & Stegun 7.1.26, the same formula as the WGSL kernel (|error| ≤ 1.5e-7).
  const sign = Math.sign(x);
  const a = Math.abs(x);
  const t = 1 / (1 + 0.3275911 * a);
  const y = 1 - ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * Math.exp(-a * a);
  return sign * y;
}

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));
const geluGrad = (x: number) => 0.5 * (1 + erfReference(x / Math.SQRT2)) + x * 0.3989422804014327 * Math.exp(-0.5 * x * x);

const UNARY_CPU: Record<UnaryOp, (x: number, alpha: number, beta: number) => number> = {
  affine: (x, alpha, beta) => alpha * x + beta,
  neg: (x) => -x,
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  rsqrt: (x) => 1 / Math.sqrt(x),
  relu: (x) => Math.max(x, 0),
  gelu: (x) => 0.5 * x * (1 + erfReference(x / Math.SQRT2)),
  silu: (x) => x * sigmoid(x),
  square: (x) => x * x,
};

const BINARY_CPU: Record<BinaryOp, (a: number, b: number) => number> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
  max: Math.max,
  gelu_backward: (a, b) => geluGrad(a) * b,
  silu_backward: (a, b) => b * sigmoid(a) * (1 + a * (1 - sigmoid(a))),
  relu_backward: (a, b) => (a > 0 ? b : 0),
};

// ---------- shapes ----------

export function broadcastShapes(op: string, a: readonly number[], b: readonly number[]): number[] {
  const rank = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    const da = a[a.length - rank + i] ?? 1;
    const db = b[b.length - rank + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new Error(`${op}: shapes ${shapeString(a)} and ${shapeString(b)} do not broadcast (axis ${i}: ${da} vs ${db})`);
    }
    out.push(da === 1 ? db : da);
  }
  if (rank > MAX_RANK) throw new Error(`${op}: rank ${rank} exceeds the supported ${MAX_RANK}; reshape to fewer axes`);
  return out;
}

/** Strides for reading `shape` as if broadcast to `outShape` (0 on stretched axes). */
function broadcastStrides(shape: readonly number[], outShape: readonly number[]): number[] {
  const strides = stridesOf(shape);
  const pad = outShape.length - shape.length;
  return outShape.map((_, axis) => {
    const own = axis - pad;
    if (own < 0 || shape[own] === 1) return 0;
    return strides[own];
  });
}

// ---------- kernels ----------

interface UnaryParams {
  op: UnaryOp;
  alpha: number;
  beta: number;
}

export const unaryKernel = defineKernel<UnaryParams>({
  name: 'unary',
  outputs: ([x]) => [{ shape: x.shape, dtype: 'f32' }],
  cpu([x], [out], _specs, { op, alpha, beta }) {
    const fn = UNARY_CPU[op];
    for (let i = 0; i < x.length; i++) out[i] = fn(x[i], alpha, beta);
  },
  wgsl: ([x], { op, alpha, beta }) => unaryProgram(op, sizeOf(x.shape), alpha, beta),
});

interface BinaryParams {
  op: BinaryOp;
}

export const binaryKernel = defineKernel<BinaryParams>({
  name: 'binary',
  outputs: ([a, b], { op }) => [{ shape: broadcastShapes(op, a.shape, b.shape), dtype: 'f32' }],
  cpu([a, b], [out], [sa, sb], { op }) {
    const outShape = broadcastShapes(op, sa.shape, sb.shape);
    const stridesA = broadcastStrides(sa.shape, outShape);
    const stridesB = broadcastStrides(sb.shape, outShape);
    const fn = BINARY_CPU[op];
    const index = new Array<number>(outShape.length).fill(0);
    for (let i = 0; i < out.length; i++) {
      let ia = 0;
      let ib = 0;
      for (let axis = 0; axis < outShape.length; axis++) {
        ia += index[axis] * stridesA[axis];
        ib += index[axis] * stridesB[axis];
      }
      out[i] = fn(a[ia], b[ib]);
      for (let axis = outShape.length - 1; axis >= 0; axis--) {
        if (++index[axis] < outShape[axis]) break;
        index[axis] = 0;
      }
    }
  },
  wgsl([a, b], { op }) {
    const outShape = broadcastShapes(op, a.shape, b.shape);
    return binaryProgram(op, outShape, broadcastStrides(a.shape, outShape), broadcastStrides(b.shape, outShape));
  },
});

interface SumToParams {
  shape: readonly number[];
}

export const sumToKernel = defineKernel<SumToParams>({
  name: 'sum_to',
  outputs([x], { shape }) {
    if (shape.length !== x.shape.length || shape.some((d, axis) => d !== 1 && d !== x.shape[axis])) {
      throw new Error(`sum_to: cannot reduce ${shapeString(x.shape)} to ${shapeString(shape)}; each axis must be kept or become 1`);
    }
    return [{ shape, dtype: 'f32' }];
  },
  cpu([x], [out], [sx], { shape }) {
    const outStrides = stridesOf(shape);
    const index = new Array<number>(sx.shape.length).fill(0);
    for (let i = 0; i < x.length; i++) {
      let o = 0;
      for (let axis = 0; axis < shape.length; axis++) if (shape[axis] !== 1) o += index[axis] * outStrides[axis];
      out[o] += x[i];
      for (let axis = sx.shape.length - 1; axis >= 0; axis--) {
        if (++index[axis] < sx.shape[axis]) break;
        index[axis] = 0;
      }
    }
  },
  wgsl: ([x], { shape }) => sumToProgram(x.shape, shape),
});

// ---------- autograd ops ----------

function unary(x: Tensor, op: UnaryOp, alpha = 1, beta = 0): Tensor {
  assertDtype(op, x, 'f32');
  return runKernel(unaryKernel, [x], { op, alpha, beta })[0];
}

function binary(a: Tensor, b: Tensor, op: BinaryOp): Tensor {
  assertDtype(op, a, 'f32');
  assertDtype(op, b, 'f32');
  return runKernel(binaryKernel, [a, b], { op })[0];
}

/** Sums `x` down to `shape` (the shape it was broadcast from). */
export function sumTo(x: Tensor, shape: readonly number[]): Tensor {
  if (shape.length === x.shape.length && shape.every((d, i) => d === x.shape[i])) return x;
  const pad = x.shape.length - shape.length;
  const keepDims = [...new Array(pad).fill(1), ...shape];
  const out = runKernel(sumToKernel, [x], { shape: keepDims })[0];
  const result = record(out, [x], (g) => accumulateGradInto(x, broadcastTo(g, x.shape)));
  if (pad === 0) return result;
  const viewed = reshape(result, shape);
  return viewed;
}

export function broadcastTo(x: Tensor, shape: readonly number[]): Tensor {
  if (shape.length === x.shape.length && shape.every((d, i) => d === x.shape[i])) return x;
  return add(x, zerosLike(shape, x));
}

function zerosLike(shape: readonly number[], like: Tensor): Tensor {
  return new Tensor(like.device.zeros('f32', sizeOf(shape)), shape, 'f32', like.device);
}

export function add(a: Tensor, b: Tensor): Tensor {
  const out = binary(a, b, 'add');
  return record(out, [a, b], (g) => {
    accumulateGradInto(a, g);
    accumulateGradInto(b, g);
  });
}

export function sub(a: Tensor, b: Tensor): Tensor {
  const out = binary(a, b, 'sub');
  return record(out, [a, b], (g) => {
    accumulateGradInto(a, g);
    if (b.requiresGrad) accumulateGradInto(b, unary(g, 'neg'));
  });
}

export function mul(a: Tensor, b: Tensor): Tensor {
  const out = binary(a, b, 'mul');
  return record(out, [a, b], (g) => {
    if (a.requiresGrad) accumulateGradInto(a, binary(g, b, 'mul'));
    if (b.requiresGrad) accumulateGradInto(b, binary(g, a, 'mul'));
  });
}

export function div(a: Tensor, b: Tensor): Tensor {
  const out = binary(a, b, 'div');
  return record(out, [a, b], (g) => {
    if (a.requiresGrad) accumulateGradInto(a, binary(g, b, 'div'));
    if (b.requiresGrad) {
      // d(a/b)/db = -a/b² = -out/b
      const gb = binary(binary(g, out, 'mul'), b, 'div');
      accumulateGradInto(b, unary(gb, 'neg'));
    }
  });
}

/** alpha·x + beta. */
export function affine(x: Tensor, alpha: number, beta = 0): Tensor {
  const out = unary(x, 'affine', alpha, beta);
  return record(out, [x], (g) => accumulateGradInto(x, unary(g, 'affine', alpha, 0)));
}

export function scale(x: Tensor, alpha: number): Tensor {
  return affine(x, alpha, 0);
}

export function neg(x: Tensor): Tensor {
  return affine(x, -1, 0);
}

export function exp(x: Tensor): Tensor {
  const out = unary(x, 'exp');
  return record(out, [x], (g) => accumulateGradInto(x, binary(g, out, 'mul')));
}

export function log(x: Tensor): Tensor {
  const out = unary(x, 'log');
  return record(out, [x], (g) => accumulateGradInto(x, binary(g, x, 'div')));
}

export function square(x: Tensor): Tensor {
  const out = unary(x, 'square');
  return record(out, [x], (g) => accumulateGradInto(x, unary(binary(g, x, 'mul'), 'affine', 2, 0)));
}

export function sqrt(x: Tensor): Tensor {
  const out = unary(x, 'sqrt');
  return record(out, [x], (g) => accumulateGradInto(x, unary(binary(g, out, 'div'), 'affine', 0.5, 0)));
}

export function relu(x: Tensor): Tensor {
  const out = unary(x, 'relu');
  return record(out, [x], (g) => accumulateGradInto(x, binary(x, g, 'relu_backward')));
}

/** GELU with the exact erf form: 0.5·x·(1 + erf(x/√2)). */
export function gelu(x: Tensor): Tensor {
  const out = unary(x, 'gelu');
  return record(out, [x], (g) => accumulateGradInto(x, binary(x, g, 'gelu_backward')));
}

/** SiLU (swish): x·sigmoid(x). */
export function silu(x: Tensor): Tensor {
  const out = unary(x, 'silu');
  return record(out, [x], (g) => accumulateGradInto(x, binary(x, g, 'silu_backward')));
}

/** Sum over `axes` (all when omitted); `keepDims` keeps reduced axes as 1. */
export function sum(x: Tensor, axes?: number[], keepDims = false): Tensor {
  const rank = x.shape.length;
  const reduced = new Set((axes ?? x.shape.map((_, i) => i)).map((a) => (a < 0 ? a + rank : a)));
  const kept = x.shape.map((d, axis) => (reduced.has(axis) ? 1 : d));
  const out = sumTo(x, kept);
  if (keepDims) return out;
  const squeezed = x.shape.filter((_, axis) => !reduced.has(axis));
  return reshape(out, squeezed.length ? squeezed : [1]);
}

export function mean(x: Tensor, axes?: number[], keepDims = false): Tensor {
  const rank = x.shape.length;
  const list = (axes ?? x.shape.map((_, i) => i)).map((a) => (a < 0 ? a + rank : a));
  const count = list.reduce((p, axis) => p * x.shape[axis], 1);
  return scale(sum(x, list, keepDims), 1 / count);
}

/** Returns a view of `x` with another shape. Gradients flow back through the same view. */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const out = x.view(shape);
  return record(out, [x], (g) => accumulateGradInto(x, g.view(x.shape)));
}

function accumulateGradInto(target: Tensor, grad: Tensor): void {
  if (!target.requiresGrad) return;
  let g = grad;
  if (g.shape.length !== target.shape.length || g.shape.some((d, i) => d !== target.shape[i])) {
    const pad = g.shape.length - target.shape.length;
    const keepDims = [...new Array(pad).fill(1), ...target.shape];
    g = runKernel(sumToKernel, [g], { shape: keepDims })[0].view(target.shape);
  }
  if (!target.grad) {
    // A gradient tensor may be passed to several inputs (add); each target owns its own.
    if (g.isOwnedGradient) g = unary(g, 'affine', 1, 0);
    g.markGradient();
    target.grad = g;
    return;
  }
  const total = binary(target.grad, g, 'add');
  target.grad.dispose();
  total.markGradient();
  target.grad = total;
}

setAccumulateGrad(accumulateGradInto);
export { accumulateGradInto };
