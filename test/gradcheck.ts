// Finite-difference gradient check: compares autograd gradients of any op with central
// differences, on the CPU device unless `options.device` names another.
//
// The function under test may return a tensor of any shape. The checked scalar is
// L = Σ out · w with fixed random weights w, so every output element carries a different
// weight and a gradient that is wrong for one element (or swaps two) cannot cancel out.
import * as assert from 'uvu/assert';
import type { Device } from '../engine/device.ts';
import { mul, sum } from '../engine/ops/index.ts';
import { fromHost, noGrad, tidy, type Tensor } from '../engine/tensor.ts';
import { compare, cpu, randomArray } from './helpers.ts';

export interface GradInput {
  /** Name shown in failure messages. */
  name: string;
  data: Float32Array | Int32Array;
  shape: number[];
  /** Whether the gradient of this input is checked. Defaults to true for f32 data; i32 data is never checked. */
  grad?: boolean;
}

export interface GradcheckOptions {
  /** Finite-difference step, added to and subtracted from each input element in turn. */
  delta?: number;
  atol?: number;
  rtol?: number;
  /** Seed of the output weights w. */
  seed?: number;
  device?: Device;
}

export interface GradcheckResult {
  name: string;
  ok: boolean;
  message: string;
}

// f32 outputs put a rounding floor of about 1e-7·|L|/delta under the difference quotient, and
// the truncation error grows with delta²; 1e-2 balances the two for inputs of size about 1.
const DEFAULTS = { delta: 1e-2, atol: 1e-3, rtol: 1e-2, seed: 1234 };

function isChecked(input: GradInput): boolean {
  return input.data instanceof Float32Array && input.grad !== false;
}

/** Creates one leaf tensor per input; checked inputs require gradients. */
function makeLeaves(inputs: GradInput[], datas: Array<Float32Array | Int32Array>, device: Device, requireGrad: boolean): Tensor[] {
  return inputs.map((input, i) => {
    const leaf = fromHost(datas[i], input.shape, datas[i] instanceof Int32Array ? 'i32' : 'f32', device);
    leaf.requiresGrad = requireGrad && isChecked(input);
    return leaf;
  });
}

/** Evaluates L = Σ fn(inputs) · w in float64, without recording a graph. */
async function evaluateLoss(fn: (...inputs: Tensor[]) => Tensor, inputs: GradInput[], datas: Array<Float32Array | Int32Array>, weights: Float32Array, device: Device): Promise<number> {
  const leaves = makeLeaves(inputs, datas, device, false);
  const out = tidy(() => noGrad(() => fn(...leaves)));
  const values = await out.data();
  out.dispose();
  for (const leaf of leaves) leaf.dispose();
  let loss = 0;
  for (let i = 0; i < values.length; i++) loss += values[i] * weights[i];
  return loss;
}

/**
 * Computes the autograd gradient of L for every checked input and compares it with central
 * differences, element by element, as |autograd − numeric| ≤ atol + rtol·|numeric|.
 */
export async function gradcheck(fn: (...inputs: Tensor[]) => Tensor, inputs: GradInput[], options: GradcheckOptions = {}): Promise<GradcheckResult[]> {
  const { delta, atol, rtol, seed } = { ...DEFAULTS, ...options };
  const device = options.device ?? cpu;

  // Autograd gradients.
  const leaves = makeLeaves(inputs, inputs.map((input) => input.data), device, true);
  let weights: Float32Array = new Float32Array(0);
  tidy(() => {
    const out = fn(...leaves);
    weights = randomArray(out.size, 1, seed);
    const loss = sum(mul(out, fromHost(weights, out.shape, 'f32', device)));
    loss.backward();
  });
  const analytic: Array<Float32Array | null> = [];
  for (let i = 0; i < inputs.length; i++) {
    const grad = leaves[i].grad;
    if (!isChecked(inputs[i])) analytic.push(null);
    else analytic.push(grad ? ((await grad.data()) as Float32Array) : new Float32Array(inputs[i].data.length));
  }
  for (const leaf of leaves) leaf.dispose();

  // Central differences, one input element at a time.
  const results: GradcheckResult[] = [];
  for (let i = 0; i < inputs.length; i++) {
    const expected = analytic[i];
    if (!expected) continue;
    const base = inputs[i].data as Float32Array;
    const numeric = new Float64Array(base.length);
    for (let j = 0; j < base.length; j++) {
      const plus = base.slice();
      const minus = base.slice();
      plus[j] = base[j] + delta;
      minus[j] = base[j] - delta;
      // Divide by the step actually taken after rounding to f32.
      const step = plus[j] - minus[j];
      const datas = inputs.map((input) => input.data);
      datas[i] = plus;
      const lossPlus = await evaluateLoss(fn, inputs, datas, weights, device);
      datas[i] = minus;
      const lossMinus = await evaluateLoss(fn, inputs, datas, weights, device);
      numeric[j] = (lossPlus - lossMinus) / step;
    }
    const { ok, message } = compare(expected, numeric, atol, rtol);
    results.push({ name: inputs[i].name, ok, message: `d/d${inputs[i].name}: autograd vs central difference (delta ${delta}): ${message}` });
  }
  return results;
}

/** Runs `gradcheck` and asserts every checked input, naming the case and the input on failure. */
export async function assertGradients(label: string, fn: (...inputs: Tensor[]) => Tensor, inputs: GradInput[], options: GradcheckOptions = {}): Promise<void> {
  const results = await gradcheck(fn, inputs, options);
  assert.ok(results.length > 0, `${label}: no input has a checked gradient`);
  for (const result of results) assert.ok(result.ok, `${label}: ${result.message}`);
}
