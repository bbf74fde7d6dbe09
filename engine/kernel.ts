// A kernel is one device-level computation with two implementations that must agree: a plain
// TypeScript reference (the CPU device runs it) and a WGSL program (the WebGPU device runs it).
// Autograd ops in engine/ops are built from kernels.
import type { DeviceCaps, WgslProgram } from '../kernels/types.ts';
import type { DType, TypedArray } from './dtype.ts';

export interface TensorSpec {
  shape: readonly number[];
  dtype: DType;
}

export interface Kernel<P> {
  name: string;
  /**
   * Shapes and dtypes of the outputs, after validating the inputs. Throws an error naming the
   * kernel, the shapes and the fix when the inputs do not fit. An in-place kernel returns [].
   */
  outputs(inputs: TensorSpec[], params: P): TensorSpec[];
  /** CPU reference: reads `inputs`, writes `outputs` (and the inputs of in-place kernels). */
  cpu(inputs: TypedArray[], outputs: TypedArray[], specs: TensorSpec[], params: P): void;
  /** WGSL program; bindings follow the convention in kernels/types.ts. */
  wgsl(specs: TensorSpec[], params: P, caps: DeviceCaps): WgslProgram;
  /** Rough floating-point operation count, used to estimate GPU time before a readback. */
  flops?(specs: TensorSpec[], params: P): number;
}

export function defineKernel<P>(kernel: Kernel<P>): Kernel<P> {
  return kernel;
}
