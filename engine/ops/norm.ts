// LayerNorm and RMSNorm over the last axis.
//
// Shapes: x [..., C] → y [..., C]; weight and bias [C]. The forward kernels also return the
// per-row statistics the backward needs: mean and rstd = 1/√(var + eps) for LayerNorm, rstd =
// 1/√(mean(x²) + eps) for RMSNorm, each of shape [rows] (rows = the leading axes flattened).
//
// The saved statistics live as long as the output's autograd graph: dispose them with the
// enclosing `tidy` (run backward inside it), like every tensor a backward function reads.
import {
  layerNormBackwardProgram,
  layerNormParamGradProgram,
  layerNormProgram,
  rmsNormBackwardProgram,
  rmsNormProgram,
  rmsNormWeightGradProgram,
} from '../../kernels/norm.ts';
import { shapeString } from '../dtype.ts';
import { defineKernel, type TensorSpec } from '../kernel.ts';
import type { Tensor } from '../tensor.ts';
import { accumulateGradInto } from './elementwise.ts';
import { assertDtype, record, runKernel } from './run.ts';
import { splitLastAxis } from './softmax.ts';

interface NormParams {
  eps: number;
}

// ---------- shape checks ----------

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Rows and width of `x`, after checking that the last axis is not empty. */
function normRows(op: string, x: TensorSpec): { rows: number; C: number } {
  const { rows, C } = splitLastAxis(op, x.shape);
  if (C === 0) throw new Error(`${op}: x ${shapeString(x.shape)} has an empty last axis; there is nothing to normalise`);
  return { rows, C };
}

/** Checks that a per-column tensor (weight, bias) is [C]. */
function assertColumnVector(op: string, name: string, spec: TensorSpec, x: TensorSpec, C: number): void {
  if (!sameShape(spec.shape, [C])) {
    throw new Error(
      `${op}: ${name} has shape ${shapeString(spec.shape)}, expected [${C}] to match the last axis of x ${shapeString(x.shape)}; ` +
        `normalise over the axis the ${name} was trained for`,
    );
  }
}

/** Checks a tensor the backward kernels take per element of x (dy) or per row (mean, rstd). */
function assertShapeOf(op: string, name: string, spec: TensorSpec, expected: readonly number[]): void {
  if (!sameShape(spec.shape, expected)) {
    throw new Error(`${op}: ${name} has shape ${shapeString(spec.shape)}, expected ${shapeString(expected)}`);
  }
}

function assertEps(op: string, eps: number): void {
  if (!Number.isFinite(eps) || eps < 0) throw new Error(`${op}: eps must be a finite number ≥ 0, got ${eps}`);
}

// ---------- LayerNorm kernels ----------

/** Inputs: x, weight, bias. Outputs: y, mean [rows], rstd [rows]. */
export const layerNormKernel = defineKernel<NormParams>({
  name: 'layer_norm',
  outputs([x, weight, bias], { eps }) {
    const { rows, C } = normRows('layerNorm', x);
    assertColumnVector('layerNorm', 'weight', weight, x, C);
    assertColumnVector('layerNorm', 'bias', bias, x, C);
    assertEps('layerNorm', eps);
    return [
      { shape: x.shape, dtype: 'f32' },
      { shape: [rows], dtype: 'f32' },
      { shape: [rows], dtype: 'f32' },
    ];
  },
  cpu([x, weight, bias], [y, mean, rstd], [sx], { eps }) {
    const { rows, C } = normRows('layerNorm', sx);
    for (let row = 0; row < rows; row++) {
      const base = row * C;
      let total = 0;
      for (let c = 0; c < C; c++) total += x[base + c];
      const rowMean = total / C;
      let squares = 0;
      for (let c = 0; c < C; c++) squares += (x[base + c] - rowMean) ** 2;
      const rowRstd = 1 / Math.sqrt(squares / C + eps);
      for (let c = 0; c < C; c++) y[base + c] = (x[base + c] - rowMean) * rowRstd * weight[c] + bias[c];
      mean[row] = rowMean;
      rstd[row] = rowRstd;
    }
  },
  wgsl([x], { eps }) {
    const { rows, C } = normRows('layerNorm', x);
    return layerNormProgram(rows, C, eps);
  },
});

/** Inputs: x, weight, mean, rstd, dy. Output: dx. */
export const layerNormBackwardKernel = defineKernel<Record<string, never>>({
  name: 'layer_norm_backward',
  outputs([x, weight, mean, rstd, dy]) {
    const { rows, C } = normRows('layerNorm backward', x);
    assertColumnVector('layerNorm backward', 'weight', weight, x, C);
    assertShapeOf('layerNorm backward', 'mean', mean, [rows]);
    assertShapeOf('layerNorm backward', 'rstd', rstd, [rows]);
    assertShapeOf('layerNorm backward', 'dy', dy, x.shape);
    return [{ shape: x.shape, dtype: 'f32' }];
  },
  cpu([x, weight, mean, rstd, dy], [dx], [sx]) {
    const { rows, C } = normRows('layerNorm backward', sx);
    for (let row = 0; row < rows; row++) {
      const base = row * C;
      let dnormSum = 0;
      let dnormXhatSum = 0;
      for (let c = 0; c < C; c++) {
        const xhat = (x[base + c] - mean[row]) * rstd[row];
        const dnorm = weight[c] * dy[base + c];
        dnormSum += dnorm;
        dnormXhatSum += dnorm * xhat;
      }
      const dnormMean = dnormSum / C;
      const dnormXhatMean = dnormXhatSum / C;
      for (let c = 0; c < C; c++) {
        const xhat = (x[base + c] - mean[row]) * rstd[row];
        const dnorm = weight[c] * dy[base + c];
        dx[base + c] = rstd[row] * (dnorm - dnormMean - xhat * dnormXhatMean);
      }
    }
  },
  wgsl([x]) {
    const { rows, C } = normRows('layerNorm backward', x);
    return layerNormBackwardProgram(rows, C);
  },
});

/** Inputs: x, mean, rstd, dy. Outputs: dweight [C], dbias [C] (column sums over rows). */
export const layerNormParamGradKernel = defineKernel<Record<string, never>>({
  name: 'layer_norm_param_grad',
  outputs([x, mean, rstd, dy]) {
    const { rows, C } = normRows('layerNorm backward', x);
    assertShapeOf('layerNorm backward', 'mean', mean, [rows]);
    assertShapeOf('layerNorm backward', 'rstd', rstd, [rows]);
    assertShapeOf('layerNorm backward', 'dy', dy, x.shape);
    return [
      { shape: [C], dtype: 'f32' },
      { shape: [C], dtype: 'f32' },
    ];
  },
  cpu([x, mean, rstd, dy], [dweight, dbias], [sx]) {
    const { rows, C } = normRows('layerNorm backward', sx);
    const weightSums = new Float64Array(C);
    const biasSums = new Float64Array(C);
    for (let row = 0; row < rows; row++) {
      for (let c = 0; c < C; c++) {
        const i = row * C + c;
        weightSums[c] += dy[i] * (x[i] - mean[row]) * rstd[row];
        biasSums[c] += dy[i];
      }
    }
    dweight.set(weightSums);
    dbias.set(biasSums);
  },
  wgsl([x]) {
    const { rows, C } = normRows('layerNorm backward', x);
    return layerNormParamGradProgram(rows, C);
  },
});

// ---------- RMSNorm kernels ----------

/** Inputs: x, weight. Outputs: y, rstd [rows]. */
export const rmsNormKernel = defineKernel<NormParams>({
  name: 'rms_norm',
  outputs([x, weight], { eps }) {
    const { rows, C } = normRows('rmsNorm', x);
    assertColumnVector('rmsNorm', 'weight', weight, x, C);
    assertEps('rmsNorm', eps);
    return [
      { shape: x.shape, dtype: 'f32' },
      { shape: [rows], dtype: 'f32' },
    ];
  },
  cpu([x, weight], [y, rstd], [sx], { eps }) {
    const { rows, C } = normRows('rmsNorm', sx);
    for (let row = 0; row < rows; row++) {
      const base = row * C;
      let squares = 0;
      for (let c = 0; c < C; c++) squares += x[base + c] * x[base + c];
      const rowRstd = 1 / Math.sqrt(squares / C + eps);
      for (let c = 0; c < C; c++) y[base + c] = x[base + c] * rowRstd * weight[c];
      rstd[row] = rowRstd;
    }
  },
  wgsl([x], { eps }) {
    const { rows, C } = normRows('rmsNorm', x);
    return rmsNormProgram(rows, C, eps);
  },
});

/** Inputs: x, weight, rstd, dy. Output: dx. */
export const rmsNormBackwardKernel = defineKernel<Record<string, never>>({
  name: 'rms_norm_backward',
  outputs([x, weight, rstd, dy]) {
    const { rows, C } = normRows('rmsNorm backward', x);
    assertColumnVector('rmsNorm backward', 'weight', weight, x, C);
    assertShapeOf('rmsNorm backward', 'rstd', rstd, [rows]);
    assertShapeOf('rmsNorm backward', 'dy', dy, x.shape);
    return [{ shape: x.shape, dtype: 'f32' }];
  },
  cpu([x, weight, rstd, dy], [dx], [sx]) {
    const { rows, C } = normRows('rmsNorm backward', sx);
    for (let row = 0; row < rows; row++) {
      const base = row * C;
      let dnormXhatSum = 0;
      for (let c = 0; c < C; c++) dnormXhatSum += weight[c] * dy[base + c] * x[base + c] * rstd[row];
      const dnormXhatMean = dnormXhatSum / C;
      for (let c = 0; c < C; c++) {
        const xhat = x[base + c] * rstd[row];
        dx[base + c] = rstd[row] * (weight[c] * dy[base + c] - xhat * dnormXhatMean);
      }
    }
  },
  wgsl([x]) {
    const { rows, C } = normRows('rmsNorm backward', x);
    return rmsNormBackwardProgram(rows, C);
  },
});

/** Inputs: x, rstd, dy. Output: dweight [C] (column sums over rows). */
export const rmsNormWeightGradKernel = defineKernel<Record<string, never>>({
  name: 'rms_norm_weight_grad',
  outputs([x, rstd, dy]) {
    const { rows, C } = normRows('rmsNorm backward', x);
    assertShapeOf('rmsNorm backward', 'rstd', rstd, [rows]);
    assertShapeOf('rmsNorm backward', 'dy', dy, x.shape);
    return [{ shape: [C], dtype: 'f32' }];
  },
  cpu([x, rstd, dy], [dweight], [sx]) {
    const { rows, C } = normRows('rmsNorm backward', sx);
    const sums = new Float64Array(C);
    for (let row = 0; row < rows; row++) {
      for (let c = 0; c < C; c++) sums[c] += dy[row * C + c] * x[row * C + c] * rstd[row];
    }
    dweight.set(sums);
  },
  wgsl([x]) {
    const { rows, C } = normRows('rmsNorm backward', x);
    return rmsNormWeightGradProgram(rows, C);
  },
});

// ---------- autograd ops ----------

/** Passes `grad` to `target`, or frees it when `target` takes no gradient. */
function giveGrad(target: Tensor, grad: Tensor): void {
  if (target.requiresGrad) accumulateGradInto(target, grad);
  else grad.dispose();
}

/** LayerNorm over the last axis: (x − mean) / √(var + eps) · weight + bias, biased variance. */
export function layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps = 1e-5): Tensor {
  assertDtype('layerNorm', x, 'f32');
  assertDtype('layerNorm', weight, 'f32');
  assertDtype('layerNorm', bias, 'f32');
  const [y, mean, rstd] = runKernel(layerNormKernel, [x, weight, bias], { eps });
  const out = record(y, [x, weight, bias], (g) => {
    if (x.requiresGrad) accumulateGradInto(x, runKernel(layerNormBackwardKernel, [x, weight, mean, rstd, g], {})[0]);
    if (weight.requiresGrad || bias.requiresGrad) {
      const [dweight, dbias] = runKernel(layerNormParamGradKernel, [x, mean, rstd, g], {});
      giveGrad(weight, dweight);
      giveGrad(bias, dbias);
    }
  });
  if (!out.backwardFn) {
    mean.dispose();
    rstd.dispose();
  }
  return out;
}

/** RMSNorm over the last axis (LLaMA): x / √(mean(x²) + eps) · weight. */
export function rmsNorm(x: Tensor, weight: Tensor, eps = 1e-6): Tensor {
  assertDtype('rmsNorm', x, 'f32');
  assertDtype('rmsNorm', weight, 'f32');
  const [y, rstd] = runKernel(rmsNormKernel, [x, weight], { eps });
  const out = record(y, [x, weight], (g) => {
    if (x.requiresGrad) accumulateGradInto(x, runKernel(rmsNormBackwardKernel, [x, weight, rstd, g], {})[0]);
    if (weight.requiresGrad) accumulateGradInto(weight, runKernel(rmsNormWeightGradKernel, [x, rstd, g], {})[0]);
  });
  if (!out.backwardFn) rstd.dispose();
  return out;
}
