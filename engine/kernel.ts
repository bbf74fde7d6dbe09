// A kernel is one device-level computation with two implementations that must agree: a plain
// TypeScript reference (the CPU device runs it) and a WGSL program (the WebGPU device runs it).
// Autograd ops in engine/ops are built from kernels.
import type { DeviceCaps, WgslProgram } from '../kernels/types.ts';
import type { DType, TypedArray } from './dtype.ts';

export interface TensorSpec {
  shape: readonly number[];
  dtype: DType;
}

/**
 * `A` is the class of the host arrays that the CPU reference receives. Most kernels take f32
 * and i32 tensors only; a kernel that also takes f16 tensors (Uint16Array bit patterns)
 * declares `A = TypedArray`.
 */
export interface Kernel<P, A extends TypedArray = Float32Array | Int32Array> {
  name: string;
  /**
   * Shapes and dtypes of the outputs, after validating the inputs. Throws an error naming the
   * kernel, the shapes and the fix when the inputs do not fit. An in-place kernel returns [].
   */
  outputs(inputs: TensorSpec[], params: P): TensorSpec[];
  /** CPU reference: reads `inputs`, writes `outputs` (and the inputs of in-place kernels). */
  cpu(inputs: A[], outputs: A[], specs: TensorSpec[], params: P): void;
  /** WGSL program; bindings follow the convention in kernels/types.ts. */
  wgsl(specs: TensorSpec[], params: P, caps: DeviceCaps): WgslProgram;
  /** Rough floating-point operation count, used to estimate GPU time before a readback. */
  flops?(specs: TensorSpec[], params: P): number;
}

export function defineKernel<P, A extends TypedArray = Float32Array | Int32Array>(kernel: Kernel<P, A>): Kernel<P, A> {
  return kernel;
}
