// Fused linear layers: one matmul dispatch that also adds a bias, applies an activation in
// its store step and, for LoRA, adds a second low-rank product into the same accumulators.
//
// Shapes: x [..., K] (the leading axes flatten into M rows), weight [N, K] (the [out, in]
// layout of PyTorch checkpoints), bias [N] → y [..., N]. LoRA: loraA [r, K], loraB [N, r].
//
//   linear:     y = act(x·Wᵀ + b), act one of 'none', 'gelu' (erf form), 'silu'
//   loraLinear: y = x·Wᵀ + b + s·dropout(x)·Aᵀ·Bᵀ, computed as u = dropout(x)·Aᵀ [M, r] (a
//               small matmul) and then one dispatch for x·Wᵀ + s·u·Bᵀ + b.
//
// The backward of an activation needs the value before it: the forward kernel writes it as a
// second output when a gradient will be recorded. Like every tensor a backward function
// reads, it lives as long as the output's autograd graph (dispose it with the enclosing tidy).
import { matmulProgram, type MatmulActivation, type MatmulShape } from '../../kernels/matmul.ts';
import { shapeString, sizeOf } from '../dtype.ts';
import { defineKernel, type TensorSpec } from '../kernel.ts';
import { isGradEnabled, type Tensor } from '../tensor.ts';
import { dropoutKernel } from './dropout.ts';
import { accumulateGradInto, binaryKernel, erfReference, sumToKernel, unaryKernel } from './elementwise.ts';
import { matmul, matmulKernel } from './matmul.ts';
import { assertDtype, record, runKernel } from './run.ts';

export type LinearActivation = MatmulActivation;

// ---------- CPU reference ----------

const ACTIVATION_CPU: Record<LinearActivation, (x: number) => number> = {
  none: (x) => x,
  gelu: (x) => 0.5 * x * (1 + erfReference(x / Math.SQRT2)),
  silu: (x) => x / (1 + Math.exp(-x)),
};

/** Adds scale · a·op(b) for row `i` into `row`. a is [M, K], and b is [N, K] (transB) or [K, N]. */
function addProduct(row: Float64Array, a: ArrayLike<number>, b: ArrayLike<number>, i: number, K: number, transB: boolean, scale: number): void {
  const N = row.length;
  for (let k = 0; k < K; k++) {
    const av = a[i * K + k] * scale;
    if (av === 0) continue;
    if (transB) for (let j = 0; j < N; j++) row[j] += av * b[j * K + k];
    else for (let j = 0; j < N; j++) row[j] += av * b[k * N + j];
  }
}

// ---------- kernel ----------

interface FusedMatmulParams {
  /** b is [N, K] when true (a Linear weight), else [K, N]. */
  transB: boolean;
  /** Adds scale · a2·op(b2), with inputs 2 and 3 a2 [..., K2] (M rows) and b2 [N, K2] (transB) or [K2, N]. */
  second: { transB: boolean; scale: number } | null;
  /** Whether the last input is a bias [N]. */
  bias: boolean;
  activation: LinearActivation;
  /** Also outputs the value before the activation. */
  preActivation: boolean;
}

/** Validates the inputs of the fused kernel and returns the matmul view of them. */
function fusedShape(specs: TensorSpec[], params: FusedMatmulParams): { shape: MatmulShape; K2: number; out: number[] } {
  const op = params.second ? 'loraLinear' : 'linear';
  const expectedInputs = 2 + (params.second ? 2 : 0) + (params.bias ? 1 : 0);
  if (specs.length !== expectedInputs) throw new Error(`${op}: expected ${expectedInputs} inputs, got ${specs.length}`);
  const [a, b] = specs;
  if (a.shape.length < 1 || b.shape.length !== 2) {
    throw new Error(`${op}: x must have at least 1 axis and the weight 2 (x is ${shapeString(a.shape)}, weight is ${shapeString(b.shape)})`);
  }
  const K = a.shape[a.shape.length - 1];
  const M = sizeOf(a.shape) / Math.max(1, K);
  const [kB, N] = params.transB ? [b.shape[1], b.shape[0]] : b.shape;
  if (K !== kB) {
    throw new Error(
      `${op}: x is ${shapeString(a.shape)} but the weight is ${shapeString(b.shape)}${params.transB ? ' ([out, in])' : ' ([in, out])'}: ` +
        `${K} vs ${kB} input features; check the weight's layout`,
    );
  }

  let K2 = 0;
  if (params.second) {
    const [a2, b2] = specs.slice(2, 4);
    K2 = a2.shape[a2.shape.length - 1];
    const rows2 = sizeOf(a2.shape) / Math.max(1, K2);
    const [k2B, n2] = params.second.transB ? [b2.shape[1], b2.shape[0]] : b2.shape;
    if (b2.shape.length !== 2 || rows2 !== M || k2B !== K2 || n2 !== N) {
      throw new Error(
        `${op}: the low-rank product does not fit (u is ${shapeString(a2.shape)}, B is ${shapeString(b2.shape)}, ` +
          `output is [${M}, ${N}]); u must be [${M}, r] and B [${N}, r]`,
      );
    }
  }
  if (params.bias) {
    const bias = specs[specs.length - 1];
    if (bias.shape.length !== 1 || bias.shape[0] !== N) {
      throw new Error(`${op}: bias has shape ${shapeString(bias.shape)}, expected [${N}] (one value per output feature)`);
    }
  }
  if (params.preActivation && params.activation === 'none') {
    throw new Error(`${op}: preActivation needs an activation; the output is the pre-activation when activation is 'none'`);
  }
  const shape: MatmulShape = { batch: 1, M, N, K, transA: false, transB: params.transB, strideA: 0, strideB: 0 };
  return { shape, K2, out: [...a.shape.slice(0, -1), N] };
}

/**
 * Inputs: a, b, then a2 and b2 with a second segment, then bias. Outputs: y, then the
 * pre-activation with `preActivation`.
 */
export const fusedMatmulKernel = defineKernel<FusedMatmulParams>({
  name: 'fused_matmul',
  outputs(specs, params) {
    const { out } = fusedShape(specs, params);
    const outputs: TensorSpec[] = [{ shape: out, dtype: 'f32' }];
    if (params.preActivation) outputs.push({ shape: out, dtype: 'f32' });
    return outputs;
  },
  cpu(inputs, [y, pre], specs, params) {
    const { shape, K2 } = fusedShape(specs, params);
    const { M, N, K } = shape;
    const [a, b, a2, b2] = inputs;
    const bias = params.bias ? inputs[inputs.length - 1] : null;
    const activate = ACTIVATION_CPU[params.activation];
    const row = new Float64Array(N);
    for (let i = 0; i < M; i++) {
      row.fill(0);
      addProduct(row, a, b, i, K, params.transB, 1);
      if (params.second) addProduct(row, a2, b2, i, K2, params.second.transB, params.second.scale);
      for (let j = 0; j < N; j++) {
        // Rounded to f32 before the activation, as the kernel's accumulators are.
        const value = Math.fround(Math.fround(row[j]) + (bias ? bias[j] : 0));
        if (pre) pre[i * N + j] = value;
        y[i * N + j] = activate(value);
      }
    }
  },
  wgsl(specs, params, caps) {
    const { shape, K2 } = fusedShape(specs, params);
    const second = params.second ? { K: K2, transB: params.second.transB, strideA: 0, strideB: 0, scale: params.second.scale } : undefined;
    return matmulProgram(shape, caps, { second, bias: params.bias, activation: params.activation, preActivation: params.preActivation });
  },
  flops(specs, params) {
    const { shape, K2 } = fusedShape(specs, params);
    return 2 * shape.M * shape.N * (shape.K + K2);
  },
});

// ---------- backward helpers ----------

/** Returns `tensor` viewed as rows [M, width]. The caller disposes the view. */
function rowsOf(tensor: Tensor): Tensor {
  const width = tensor.shape[tensor.shape.length - 1];
  return tensor.view([tensor.size / width, width]);
}

/** Passes the column sums of `g2` [M, N] to `bias` [N]. */
function accumulateBiasGrad(bias: Tensor, g2: Tensor): void {
  const summed = runKernel(sumToKernel, [g2], { shape: [1, bias.shape[0]] })[0];
  accumulateGradInto(bias, summed.view(bias.shape));
  summed.dispose();
}

/** Passes `grad2` [M, K], a gradient of the rows of `x`, to `x` in its own shape. */
function accumulateRowsGrad(x: Tensor, grad2: Tensor): void {
  accumulateGradInto(x, grad2.view(x.shape));
  grad2.dispose();
}

// ---------- autograd ops ----------

/**
 * Computes y = act(x·Wᵀ + b) in one matmul dispatch (shapes in the file header). Gradients
 * flow to x, weight and bias, each when it requires one.
 */
export function linear(x: Tensor, weight: Tensor, bias: Tensor | null = null, activation: LinearActivation = 'none'): Tensor {
  assertDtype('linear', x, 'f32');
  assertDtype('linear', weight, 'f32');
  if (bias) assertDtype('linear', bias, 'f32');
  const inputs = bias ? [x, weight, bias] : [x, weight];
  const recording = isGradEnabled() && inputs.some((input) => input.requiresGrad);
  const preActivation = recording && activation !== 'none';
  const [y, pre] = runKernel(fusedMatmulKernel, inputs, { transB: true, second: null, bias: bias !== null, activation, preActivation });

  const out = record(y, inputs, (g) => {
    const gPre = pre ? runKernel(binaryKernel, [pre, g], { op: activation === 'gelu' ? 'gelu_backward' : 'silu_backward' })[0] : g;
    const g2 = rowsOf(gPre);
    const x2 = rowsOf(x);
    if (x.requiresGrad) accumulateRowsGrad(x, matmul(g2, weight));
    if (weight.requiresGrad) accumulateGradInto(weight, matmul(g2, x2, { transA: true }));
    if (bias?.requiresGrad) accumulateBiasGrad(bias, g2);
    x2.dispose();
    g2.dispose();
    if (gPre !== g) gPre.dispose();
  });
  if (!out.backwardFn) pre?.dispose();
  return out;
}

export interface LoraLinearOptions {
  /** s = alpha / rank. */
  scale: number;
  /** Drop probability of the dropout on the LoRA input, in [0, 1); 0 turns it off. */
  dropout: number;
  /** Seed of the dropout mask (an integer in [0, 2³²)), ignored when dropout is 0. */
  seed: number;
}

/**
 * Computes y = x·Wᵀ + b + s·dropout(x)·Aᵀ·Bᵀ with one small matmul for u = dropout(x)·Aᵀ and
 * one fused dispatch for the rest (shapes in the file header). The backward computes
 *   dB = s·gᵀ·u, dU = s·g·B, dA = dUᵀ·dropout(x), dx = g·W + dropout(dU·A),
 * with the same dropout mask as the forward (recomputed from the seed), plus dW = gᵀ·x and
 * db = Σ g when the weight or bias requires a gradient (a frozen base weight does not).
 */
export function loraLinear(x: Tensor, weight: Tensor, bias: Tensor | null, loraA: Tensor, loraB: Tensor, options: LoraLinearOptions): Tensor {
  for (const [name, tensor] of [['x', x], ['weight', weight], ['loraA', loraA], ['loraB', loraB]] as const) assertDtype(`loraLinear ${name}`, tensor, 'f32');
  if (bias) assertDtype('loraLinear bias', bias, 'f32');
  const { scale, dropout: p, seed } = options;
  const [N, K] = weight.shape;
  const rank = loraA.shape[0];
  if (loraA.shape.length !== 2 || loraA.shape[1] !== K || loraB.shape.length !== 2 || loraB.shape[0] !== N || loraB.shape[1] !== rank) {
    throw new Error(
      `loraLinear: LoRA factors A ${shapeString(loraA.shape)} and B ${shapeString(loraB.shape)} do not fit the weight ${shapeString(weight.shape)}; ` +
        `expected A [rank, ${K}] and B [${N}, rank]`,
    );
  }
  const dropoutParams = { p, seed };
  const dropped = (tensor: Tensor) => (p > 0 ? runKernel(dropoutKernel, [tensor], dropoutParams)[0] : tensor);

  // u = dropout(x)·Aᵀ [M, r], then y = x·Wᵀ + s·u·Bᵀ + b in one dispatch.
  const x2 = rowsOf(x);
  const xDropped = dropped(x2);
  const u = runKernel(matmulKernel, [xDropped, loraA], { transA: false, transB: true })[0];
  if (xDropped !== x2) xDropped.dispose();
  const fusedInputs = bias ? [x, weight, u, loraB, bias] : [x, weight, u, loraB];
  const [y] = runKernel(fusedMatmulKernel, fusedInputs, { transB: true, second: { transB: true, scale }, bias: bias !== null, activation: 'none', preActivation: false });
  x2.dispose();

  const inputs = bias ? [x, weight, loraA, loraB, bias] : [x, weight, loraA, loraB];
  const out = record(y, inputs, (g) => {
    const g2 = rowsOf(g);
    const needDU = x.requiresGrad || loraA.requiresGrad;
    const gScaled = loraB.requiresGrad || needDU ? runKernel(unaryKernel, [g2], { op: 'affine', alpha: scale, beta: 0 })[0] : null;
    if (loraB.requiresGrad) accumulateGradInto(loraB, matmul(gScaled!, u, { transA: true }));
    const dU = needDU ? matmul(gScaled!, loraB) : null;
    gScaled?.dispose();

    const xRows = rowsOf(x);
    if (loraA.requiresGrad) {
      const xDroppedAgain = dropped(xRows);
      accumulateGradInto(loraA, matmul(dU!, xDroppedAgain, { transA: true }));
      if (xDroppedAgain !== xRows) xDroppedAgain.dispose();
    }
    if (x.requiresGrad) {
      if (p === 0) {
        // dx = g·W + dU·A in one dispatch: W [N, K] and A [r, K] are both read as [k, n].
        const [dx] = runKernel(fusedMatmulKernel, [g2, weight, dU!, loraA], { transB: false, second: { transB: false, scale: 1 }, bias: false, activation: 'none', preActivation: false });
        accumulateRowsGrad(x, dx);
      } else {
        // The mask applies to dU·A alone, so that product cannot share the accumulators.
        accumulateRowsGrad(x, matmul(g2, weight));
        const dxLora = matmul(dU!, loraA);
        accumulateRowsGrad(x, dropped(dxLora));
        dxLora.dispose();
      }
    }
    if (weight.requiresGrad) accumulateGradInto(weight, matmul(g2, xRows, { transA: true }));
    if (bias?.requiresGrad) accumulateBiasGrad(bias, g2);
    dU?.dispose();
    xRows.dispose();
    g2.dispose();
  });
  if (!out.backwardFn) u.dispose();
  return out;
}
