// Optimizers. AdamW updates each parameter with one in-place kernel that reads the gradient
// and rewrites the parameter and both moment estimates (see kernels/adamw.ts for the update).
import { adamwProgram, type AdamWUniforms } from '../kernels/adamw.ts';
import { shapeString, sizeOf } from './dtype.ts';
import { defineKernel } from './kernel.ts';
import { runKernel } from './ops/run.ts';
import { add, scale, square, sum } from './ops/elementwise.ts';
import { keep, noGrad, Tensor, tidy, zeros } from './tensor.ts';

// ---------- kernel ----------

/** In place. Inputs: param, grad, m, v (f32, equal element counts); param, m and v are rewritten. */
export const adamwKernel = defineKernel<AdamWUniforms>({
  name: 'adamw',
  outputs(specs) {
    const [param] = specs;
    const names = ['param', 'grad', 'm', 'v'];
    specs.forEach((spec, i) => {
      if (spec.dtype !== 'f32' || sizeOf(spec.shape) !== sizeOf(param.shape)) {
        throw new Error(`adamw: ${names[i]} is ${shapeString(spec.shape)} ${spec.dtype} but param is ${shapeString(param.shape)} f32; every state tensor must match the parameter`);
      }
    });
    return [];
  },
  cpu([param, grad, m, v], _outputs, _specs, u) {
    for (let i = 0; i < param.length; i++) {
      const g = grad[i];
      const p = param[i] - u.lr * u.weightDecay * param[i];
      m[i] = u.beta1 * m[i] + (1 - u.beta1) * g;
      v[i] = u.beta2 * v[i] + (1 - u.beta2) * g * g;
      const mHat = m[i] / u.biasCorrection1;
      const vHat = v[i] / u.biasCorrection2;
      param[i] = p - (u.lr * mHat) / (Math.sqrt(vHat) + u.eps);
    }
  },
  wgsl: ([param], u) => adamwProgram(sizeOf(param.shape), u),
  // About 15 arithmetic operations per element; in place, so there is no output to size it by.
  flops: ([param]) => 15 * sizeOf(param.shape),
});

// ---------- AdamW ----------

export interface AdamWOptions {
  lr: number;
  /** Decay rates of the first and second moment estimates; default [0.9, 0.999]. */
  betas?: [number, number];
  /** Added to √v̂ in the denominator; default 1e-8. */
  eps?: number;
  /** Decoupled weight decay λ (p ← p − lr·λ·p each step); default 0.01, as in PyTorch. */
  weightDecay?: number;
}

/** Per-parameter state: the moment estimates and the number of steps taken. */
export interface AdamWState {
  m: Tensor;
  v: Tensor;
  /** Steps applied to this parameter; parameters skipped for lack of a gradient do not count. */
  step: number;
}

export class AdamW {
  readonly params: readonly Tensor[];
  /** One entry per parameter, in the order of `params`. */
  readonly state: readonly AdamWState[];
  lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;

  constructor(params: Tensor[], options: AdamWOptions) {
    const { lr, betas = [0.9, 0.999], eps = 1e-8, weightDecay = 0.01 } = options;
    checkRange('lr', lr, 0, Infinity);
    checkRange('betas[0]', betas[0], 0, 1);
    checkRange('betas[1]', betas[1], 0, 1);
    checkRange('eps', eps, 0, Infinity);
    checkRange('weightDecay', weightDecay, 0, Infinity);
    if (new Set(params).size !== params.length) {
      throw new Error('AdamW: a parameter is listed twice; pass each parameter once, or it would be updated twice per step');
    }
    for (const param of params) {
      if (param.dtype !== 'f32') throw new Error(`AdamW: parameter ${param.describe()} is not f32; only f32 tensors can be trained`);
    }

    this.params = [...params];
    this.lr = lr;
    [this.beta1, this.beta2] = betas;
    this.eps = eps;
    this.weightDecay = weightDecay;
    this.state = params.map((param) => ({
      m: keep(zeros(param.shape, 'f32', param.device)),
      v: keep(zeros(param.shape, 'f32', param.device)),
      step: 0,
    }));
  }

  /** Applies one update to every parameter that has a gradient; `lr` overrides this.lr for this step. */
  step(lr: number = this.lr): void {
    checkRange('lr', lr, 0, Infinity);
    this.params.forEach((param, i) => {
      if (!param.grad) return;
      const state = this.state[i];
      state.step += 1;
      const uniforms: AdamWUniforms = {
        lr,
        beta1: this.beta1,
        beta2: this.beta2,
        eps: this.eps,
        weightDecay: this.weightDecay,
        biasCorrection1: 1 - this.beta1 ** state.step,
        biasCorrection2: 1 - this.beta2 ** state.step,
      };
      runKernel(adamwKernel, [param, param.grad, state.m, state.v], uniforms);
    });
  }

  /** Disposes every parameter's gradient and sets it to null. */
  zeroGrad(): void {
    for (const param of this.params) {
      param.grad?.dispose();
      param.grad = null;
    }
  }

  /** Frees the moment estimates; the optimizer cannot step afterwards. */
  dispose(): void {
    for (const { m, v } of this.state) {
      m.dispose();
      v.dispose();
    }
  }
}

function checkRange(name: string, value: number, min: number, maxExclusive: number): void {
  if (!(value >= min && value < maxExclusive)) {
    const upper = maxExclusive === Infinity ? '' : ` and below ${maxExclusive}`;
    throw new Error(`AdamW: ${name} = ${value} is invalid; use a number of at least ${min}${upper}`);
  }
}

// ---------- gradient clipping ----------

/**
 * Scales the gradients of `params` so their global L2 norm is at most `maxNorm` (factor
 * maxNorm / (norm + 1e-6), as in PyTorch's clip_grad_norm_) and returns the norm before
 * clipping. Reads one number back from the device.
 */
export async function clipGradNorm(params: readonly Tensor[], maxNorm: number): Promise<number> {
  if (!(maxNorm > 0)) throw new Error(`clipGradNorm: maxNorm = ${maxNorm} is invalid; use a positive number`);
  const withGrad = params.filter((param) => param.grad !== null);
  if (withGrad.length === 0) return 0;

  const total = noGrad(() =>
    tidy(() => {
      let sumSquares: Tensor | null = null;
      for (const param of withGrad) {
        const partial = sumOfSquares(param.grad as Tensor);
        sumSquares = sumSquares ? add(sumSquares, partial) : partial;
      }
      return sumSquares as Tensor;
    }),
  );
  const norm = Math.sqrt(await total.item());
  total.dispose();

  if (norm > maxNorm) {
    const factor = maxNorm / (norm + 1e-6);
    noGrad(() => {
      for (const param of withGrad) {
        const scaled = scale(param.grad as Tensor, factor);
        param.grad?.dispose();
        scaled.markGradient();
        param.grad = scaled;
      }
    });
  }
  return norm;
}

/**
 * Σ g² as a [1] tensor. The sum runs in two stages over a [rows, cols] view, because the
 * sum kernel loops serially within each output element.
 */
function sumOfSquares(grad: Tensor): Tensor {
  const size = grad.size;
  // NOTE: a size with no divisor near √size (a large prime) falls back to one serial loop.
  let rows = Math.floor(Math.sqrt(size));
  while (rows > 1 && size % rows !== 0) rows -= 1;
  const squared = square(grad.view([rows, size / rows]));
  return sum(sum(squared, [1]), [0]);
}
