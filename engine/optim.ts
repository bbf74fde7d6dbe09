// Optimizers. AdamW updates parameters with in-place kernels that read the gradient and
// rewrite the parameter and both moment estimates (see kernels/adamw.ts for the update): one
// dispatch per large parameter, and one for all small parameters together.
import { ADAMW_GROUP_WORKGROUP, adamwGroupProgram, adamwProgram, type AdamWUniforms } from '../kernels/adamw.ts';
import type { Device, Storage } from './device.ts';
import { shapeString, sizeOf } from './dtype.ts';
import { defineKernel } from './kernel.ts';
import { runKernel } from './ops/run.ts';
import { add, scale, square, sum } from './ops/elementwise.ts';
import { fromHost, keep, noGrad, Tensor, tidy, zeros } from './tensor.ts';

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
    for (let i = 0; i < param.length; i++) updateElement(i, param, grad, m, v, u);
  },
  wgsl: ([param], u) => adamwProgram(sizeOf(param.shape), u),
  // About 15 arithmetic operations per element; in place, so there is no output to size it by.
  flops: ([param]) => 15 * sizeOf(param.shape),
});

type HostArray = Float32Array | Int32Array;

/** Applies the AdamW update to element `i`, in the arithmetic of the WGSL programs. */
function updateElement(i: number, param: HostArray, grad: HostArray, m: HostArray, v: HostArray, u: AdamWUniforms): void {
  const g = grad[i];
  const p = param[i] - u.lr * u.weightDecay * param[i];
  m[i] = u.beta1 * m[i] + (1 - u.beta1) * g;
  v[i] = u.beta2 * v[i] + (1 - u.beta2) * g * g;
  const mHat = m[i] / u.biasCorrection1;
  const vHat = v[i] / u.biasCorrection2;
  param[i] = p - (u.lr * mHat) / (Math.sqrt(vHat) + u.eps);
}

/**
 * In place. Inputs: flat param, grad, m, v (f32 [S]) and ranges (i32 [W, 2]): workgroup w
 * updates elements [ranges[w][0], ranges[w][1]), at most 64 of them.
 */
export const adamwGroupKernel = defineKernel<AdamWUniforms>({
  name: 'adamw_group',
  outputs(specs) {
    const [param, , , , ranges] = specs;
    const names = ['param', 'grad', 'm', 'v'];
    specs.slice(0, 4).forEach((spec, i) => {
      if (spec.dtype !== 'f32' || sizeOf(spec.shape) !== sizeOf(param.shape)) {
        throw new Error(`adamw_group: ${names[i]} is ${shapeString(spec.shape)} ${spec.dtype} but param is ${shapeString(param.shape)} f32; the flat buffers must have equal sizes`);
      }
    });
    if (!ranges || ranges.dtype !== 'i32' || ranges.shape.length !== 2 || ranges.shape[1] !== 2 || ranges.shape[0] < 1) {
      throw new Error(`adamw_group: ranges is ${ranges ? `${shapeString(ranges.shape)} ${ranges.dtype}` : 'missing'}; pass i32 [W, 2] with W >= 1 (start and end per workgroup)`);
    }
    return [];
  },
  cpu([param, grad, m, v, ranges], _outputs, _specs, u) {
    for (let w = 0; w < ranges.length / 2; w++) {
      const [start, end] = [ranges[2 * w], ranges[2 * w + 1]];
      if (start < 0 || end > param.length || end - start > ADAMW_GROUP_WORKGROUP) {
        throw new Error(`adamw_group: workgroup ${w} covers [${start}, ${end}), which is outside the ${param.length} elements or longer than ${ADAMW_GROUP_WORKGROUP}; give each workgroup at most ${ADAMW_GROUP_WORKGROUP} elements inside the buffers`);
      }
      for (let i = start; i < end; i++) updateElement(i, param, grad, m, v, u);
    }
  },
  wgsl: ([, , , , ranges], u) => adamwGroupProgram(ranges.shape[0], u),
  flops: ([, , , , ranges]) => 15 * ADAMW_GROUP_WORKGROUP * ranges.shape[0],
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
  /**
   * Parameters of at most this many elements are updated together, with one dispatch per
   * step; larger ones get a dispatch each. Default 4,096. 0 gives every parameter its own
   * dispatch, Infinity groups them all. The group keeps flat copies of its parameters and
   * gradients, so it costs memory equal to its parameters twice over.
   */
  groupedMaxSize?: number;
}

/**
 * Default of AdamWOptions.groupedMaxSize. On lavapipe (Mesa 25, 2 vCPUs, under load) one step
 * for the tiny preset's PAG stage 2 parameters (101 tensors, 776k elements) took 11 ms at 4096
 * against 13 ms with a dispatch per parameter (fastest of 27 steps). For the decoder base
 * (39 tensors, 2.8M elements) it took 26 ms against 32 ms, while grouping every parameter took
 * 75 ms, because the copies of large parameters cost more than the dispatches they save.
 */
export const ADAMW_GROUPED_MAX_SIZE = 4096;

/**
 * Per-parameter state: the moment estimates and the number of steps taken. With the grouped
 * update, `m` and `v` are views into the group's flat moment buffers.
 */
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
  /** The flat buffers of the parameters updated together; null when no parameter is that small. */
  private readonly group: ParameterGroup | null;
  /** Position of each parameter in `group`, or -1 for a parameter with a dispatch of its own. */
  private readonly groupIndex: number[];

  constructor(params: Tensor[], options: AdamWOptions) {
    const { lr, betas = [0.9, 0.999], eps = 1e-8, weightDecay = 0.01, groupedMaxSize = ADAMW_GROUPED_MAX_SIZE } = options;
    checkRange('lr', lr, 0, Infinity);
    checkRange('betas[0]', betas[0], 0, 1);
    checkRange('betas[1]', betas[1], 0, 1);
    checkRange('eps', eps, 0, Infinity);
    checkRange('weightDecay', weightDecay, 0, Infinity);
    if (!(groupedMaxSize >= 0)) throw new Error(`AdamW: groupedMaxSize = ${groupedMaxSize} is invalid; use 0 (no grouping), a number of elements, or Infinity`);
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
    const grouped = params.filter((param) => param.size > 0 && param.size <= groupedMaxSize);
    this.group = grouped.length > 0 ? new ParameterGroup(grouped) : null;
    this.groupIndex = params.map((param) => grouped.indexOf(param));
    this.state = params.map((param, i) => {
      const index = this.groupIndex[i];
      const group = this.group;
      if (group && index >= 0) return { m: group.moment('m', index), v: group.moment('v', index), step: 0 };
      return { m: keep(zeros(param.shape, 'f32', param.device)), v: keep(zeros(param.shape, 'f32', param.device)), step: 0 };
    });
  }

  /** Applies one update to every parameter that has a gradient; `lr` overrides this.lr for this step. */
  step(lr: number = this.lr): void {
    checkRange('lr', lr, 0, Infinity);
    const stepped: number[] = [];
    this.params.forEach((param, i) => {
      if (!param.grad) return;
      this.state[i].step += 1;
      stepped.push(i);
    });
    const inGroup = stepped.filter((i) => this.groupIndex[i] >= 0);
    if (this.group && inGroup.length > 0) {
      const members = inGroup.map((i) => ({ index: this.groupIndex[i], step: this.state[i].step }));
      this.group.step(members, (step) => this.uniforms(lr, step));
    }
    for (const i of stepped) {
      if (this.groupIndex[i] >= 0) continue;
      const param = this.params[i];
      const state = this.state[i];
      runKernel(adamwKernel, [param, param.grad as Tensor, state.m, state.v], this.uniforms(lr, state.step));
    }
  }

  private uniforms(lr: number, step: number): AdamWUniforms {
    return {
      lr,
      beta1: this.beta1,
      beta2: this.beta2,
      eps: this.eps,
      weightDecay: this.weightDecay,
      biasCorrection1: 1 - this.beta1 ** step,
      biasCorrection2: 1 - this.beta2 ** step,
    };
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
    this.group?.dispose();
  }
}

// ---------- grouped update ----------

/**
 * Flat buffers for updating many parameters with one dispatch. WGSL cannot bind an array of
 * buffers, so each step copies the gradients and parameters into flat buffers (copy commands,
 * not dispatches), runs one `adamw_group` dispatch per distinct step count, and copies the
 * parameters back. The moment estimates live in the flat buffers for good.
 *
 * Each parameter starts at a multiple of 64 elements and of the device's binding offset
 * alignment, so every workgroup covers one parameter only and the per-parameter slices of the
 * flat buffers are valid bindings.
 *
 * TODO: point the parameters at slices of the flat buffer, so the two parameter copies per
 * step go away and large parameters could join the group.
 */
class ParameterGroup {
  private readonly device: Device;
  /** Start element of each parameter in the flat buffers. */
  private readonly offsets: number[];
  private readonly flatParams: Tensor;
  private readonly flatGrads: Tensor;
  private readonly flatM: Tensor;
  private readonly flatV: Tensor;
  private readonly paramSlices: Storage[];
  private readonly gradSlices: Storage[];
  /** Workgroup ranges [W, 2] per set of parameters, keyed by their indices. */
  private readonly rangeTables = new Map<string, Tensor>();

  constructor(private readonly params: readonly Tensor[]) {
    const device = params[0].device;
    for (const param of params) {
      if (param.device !== device) {
        throw new Error(`AdamW: parameter ${param.describe()} lives on ${param.device.kind} and ${params[0].describe()} on ${device.kind}; move them to one device or pass groupedMaxSize: 0`);
      }
    }
    this.device = device;
    const alignment = Math.max(ADAMW_GROUP_WORKGROUP, device.limits.bindingOffsetAlignment / 4);
    let total = 0;
    this.offsets = params.map((param) => {
      const offset = total;
      total += Math.ceil(param.size / alignment) * alignment;
      return offset;
    });
    const flat = () => keep(zeros([total], 'f32', device));
    this.flatParams = flat();
    this.flatGrads = flat();
    this.flatM = flat();
    this.flatV = flat();
    this.paramSlices = params.map((_, i) => this.slice(this.flatParams, i));
    this.gradSlices = params.map((_, i) => this.slice(this.flatGrads, i));
  }

  /** Returns the moment estimate of parameter `index`, a view into the flat buffer. */
  moment(estimate: 'm' | 'v', index: number): Tensor {
    const storage = this.slice(estimate === 'm' ? this.flatM : this.flatV, index);
    return keep(new Tensor(storage, this.params[index].shape, 'f32', this.device));
  }

  /**
   * Updates the group's parameters `members` (each with a gradient, `step` its step count
   * after this update). `uniformsOf` returns the uniforms for a step count.
   */
  step(members: ReadonlyArray<{ index: number; step: number }>, uniformsOf: (step: number) => AdamWUniforms): void {
    const byStep = new Map<number, number[]>();
    for (const { index, step } of members) {
      const param = this.params[index];
      const bytes = param.size * 4;
      this.device.copy((param.grad as Tensor).storage, this.gradSlices[index], bytes);
      this.device.copy(param.storage, this.paramSlices[index], bytes);
      const sameStep = byStep.get(step) ?? [];
      sameStep.push(index);
      byStep.set(step, sameStep);
    }
    for (const [step, indices] of byStep) {
      runKernel(adamwGroupKernel, [this.flatParams, this.flatGrads, this.flatM, this.flatV, this.rangeTable(indices)], uniformsOf(step));
    }
    for (const { index } of members) this.device.copy(this.paramSlices[index], this.params[index].storage, this.params[index].size * 4);
  }

  dispose(): void {
    for (const slice of [...this.paramSlices, ...this.gradSlices]) this.device.release(slice);
    for (const tensor of [this.flatParams, this.flatGrads, this.flatM, this.flatV, ...this.rangeTables.values()]) tensor.dispose();
    this.rangeTables.clear();
  }

  private slice(flat: Tensor, index: number): Storage {
    return this.device.slice(flat.storage, this.offsets[index] * 4, this.params[index].size * 4);
  }

  /** Returns the [W, 2] table of element ranges, one per workgroup, that covers parameters `members`. */
  private rangeTable(members: readonly number[]): Tensor {
    const key = members.join(',');
    let table = this.rangeTables.get(key);
    if (table) return table;
    const ranges: number[] = [];
    for (const i of members) {
      const start = this.offsets[i];
      const end = start + this.params[i].size;
      for (let first = start; first < end; first += ADAMW_GROUP_WORKGROUP) ranges.push(first, Math.min(first + ADAMW_GROUP_WORKGROUP, end));
    }
    // Parameters skipped for lack of a gradient change the set, so keep a few tables, not one per set ever seen.
    if (this.rangeTables.size >= 8) {
      for (const old of this.rangeTables.values()) old.dispose();
      this.rangeTables.clear();
    }
    table = keep(fromHost(Int32Array.from(ranges), [ranges.length / 2, 2], 'i32', this.device));
    this.rangeTables.set(key, table);
    return table;
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
