// The two steps every autograd op takes: run a kernel on the inputs' device, then record
// how to send the output gradient back to the inputs.
import { shapeString } from '../dtype.ts';
import type { Kernel, TensorSpec } from '../kernel.ts';
import { isGradEnabled, Tensor } from '../tensor.ts';

export function specOf(tensor: Tensor): TensorSpec {
  return { shape: tensor.shape, dtype: tensor.dtype };
}

/** Runs `kernel` on the device of `inputs` and wraps its outputs as tensors. */
export function runKernel<P>(kernel: Kernel<P>, inputs: Tensor[], params: P): Tensor[] {
  const device = inputs[0].device;
  for (const input of inputs) {
    if (input.device !== device) {
      throw new Error(`${kernel.name}: inputs live on different devices (${device.kind} and ${input.device.kind}); move them to one device`);
    }
  }
  const { storages, specs } = device.run(kernel, inputs.map((t) => t.storage), inputs.map(specOf), params);
  return storages.map((storage, i) => new Tensor(storage, specs[i].shape, specs[i].dtype, device));
}

/** Attaches `backward` to `out` when recording is on and an input requires a gradient. */
export function record(out: Tensor, inputs: Tensor[], backward: (grad: Tensor) => void): Tensor {
  if (isGradEnabled() && inputs.some((input) => input.requiresGrad)) {
    out.requiresGrad = true;
    out.parents = inputs;
    out.backwardFn = backward;
  }
  return out;
}

export function assertDtype(op: string, tensor: Tensor, dtype: 'f32' | 'i32'): void {
  if (tensor.dtype !== dtype) {
    throw new Error(`${op}: expected an ${dtype} tensor, got ${tensor.describe()}`);
  }
}

export function assertShape(op: string, what: string, tensor: Tensor, expected: readonly number[]): void {
  const same = tensor.shape.length === expected.length && tensor.shape.every((d, i) => expected[i] < 0 || d === expected[i]);
  if (!same) {
    throw new Error(`${op}: ${what} has shape ${shapeString(tensor.shape)}, expected ${shapeString(expected.map((d) => (d < 0 ? 'any' : d)) as never)}`);
  }
}
