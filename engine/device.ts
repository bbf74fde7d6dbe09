// The device interface that tensors run on. Two implementations: `cpu` (the TypeScript
// reference, engine/cpu-device.ts) and `webgpu` (WGSL kernels, engine/webgpu-device.ts).
import type { DeviceCaps } from '../kernels/types.ts';
import { bytesPerElement, sizeOf, type DType, type TypedArray } from './dtype.ts';
import type { Kernel, TensorSpec } from './kernel.ts';

/**
 * A block of device memory, or a byte range of one (see `Device.slice`). Tensors that share it
 * (views) hold one reference each.
 */
export interface Storage {
  readonly byteSize: number;
  refs: number;
}

export interface MemoryStats {
  /** Bytes held by storages that tensors still reference. */
  liveBytes: number;
  liveStorages: number;
  /** Bytes parked in the buffer pool for reuse. */
  pooledBytes: number;
}

/**
 * Sizes that decide how a tensor is stored and bound. A kernel binds each input and output
 * whole, so a tensor of more than `maxBindingBytes` reaches kernels only through slices.
 */
export interface StorageLimits {
  /** Largest storage one kernel binding may cover (WebGPU: maxStorageBufferBindingSize). */
  maxBindingBytes: number;
  /** Largest storage the device can allocate (WebGPU: maxBufferSize). */
  maxStorageBytes: number;
  /** A slice's byte offset must be a multiple of this (WebGPU: minStorageBufferOffsetAlignment). */
  bindingOffsetAlignment: number;
}

export interface Device {
  readonly kind: 'cpu' | 'webgpu';
  /** Human-readable adapter description, e.g. "mesa lavapipe (software)". */
  readonly description: string;
  readonly caps: DeviceCaps;
  readonly limits: StorageLimits;
  /** Allocates a storage holding `data`; `label` (e.g. "[32000, 4096] f16") names it in errors. */
  upload(data: TypedArray, label?: string): Storage;
  /** Overwrites the start of `storage` with `data` (ordered before work recorded later). */
  write(storage: Storage, data: TypedArray): void;
  /** Copies the first `byteLength` bytes of `source` into `destination`, in recording order. */
  copy(source: Storage, destination: Storage, byteLength: number): void;
  /** Allocates a zero-filled storage of `size` elements; `label` names it in errors. */
  zeros(dtype: DType, size: number, label?: string): Storage;
  /**
   * Returns a storage over `byteSize` bytes of `storage` from `byteOffset`, which kernels bind
   * in place of the whole (a range binding on WebGPU). It shares the memory and holds one
   * reference to `storage`. `byteOffset` must be a multiple of `limits.bindingOffsetAlignment`.
   */
  slice(storage: Storage, byteOffset: number, byteSize: number): Storage;
  /**
   * Records `kernel` and returns one new storage per output spec. Throws when an input or
   * output is larger than `limits.maxBindingBytes`.
   */
  run<P>(kernel: Kernel<P, TypedArray>, inputs: Storage[], specs: TensorSpec[], params: P): { storages: Storage[]; specs: TensorSpec[] };
  /** Copies `size` elements back to the host; submits recorded work first. */
  read(storage: Storage, dtype: DType, size: number): Promise<TypedArray>;
  /** Drops one reference; the memory returns to the pool when none remain. */
  release(storage: Storage): void;
  /** Submits recorded work without waiting for it. */
  flush(): void;
  /** Waits until all submitted work has finished. */
  sync(): Promise<void>;
  memory(): MemoryStats;
  destroy(): void;
}

export class StorageLimitError extends Error {}

/** Throws unless a `byteOffset`/`byteSize` slice lies inside `storage` and is aligned. */
export function checkSlice(storage: Storage, byteOffset: number, byteSize: number, limits: StorageLimits): void {
  const inside = Number.isInteger(byteOffset) && Number.isInteger(byteSize) && byteOffset >= 0 && byteSize > 0 && byteOffset + byteSize <= storage.byteSize;
  if (!inside) {
    throw new StorageLimitError(`slice: bytes [${byteOffset}, ${byteOffset + byteSize}) do not lie inside a storage of ${storage.byteSize} bytes; slice a range of the tensor's own elements`);
  }
  if (byteOffset % limits.bindingOffsetAlignment !== 0) {
    throw new StorageLimitError(
      `slice: byte offset ${byteOffset} is not a multiple of the device's binding offset alignment (${limits.bindingOffsetAlignment} bytes, minStorageBufferOffsetAlignment); ` +
        'start the slice at a row whose byte offset is aligned (see rowChunks)',
    );
  }
}

/**
 * Throws when a kernel would bind more than `limits.maxBindingBytes`: `inputs` are the storages
 * it reads (with their specs), `outputs` the specs it would allocate.
 */
export function checkBindings(kernel: string, inputs: readonly Storage[], inputSpecs: readonly TensorSpec[], outputs: readonly TensorSpec[], limits: StorageLimits): void {
  const check = (role: string, index: number, byteSize: number, spec: TensorSpec | undefined) => {
    if (byteSize <= limits.maxBindingBytes) return;
    const tensor = spec ? `${role} ${index} [${spec.shape.join(', ')}] ${spec.dtype}` : `${role} ${index}`;
    throw new StorageLimitError(
      `${kernel}: ${tensor} is ${byteSize} bytes, more than the device's maxStorageBufferBindingSize of ${limits.maxBindingBytes} bytes; ` +
        'this op binds its tensors whole, so pass the tensor in row ranges (rowRange, frozenLinear) or use an op that splits it (embedding)',
    );
  };
  inputs.forEach((storage, index) => check('input', index, storage.byteSize, inputSpecs[index]));
  outputs.forEach((spec, index) => check('output', index, sizeOf(spec.shape) * bytesPerElement(spec.dtype), spec));
}

/** Throws when a new storage of `byteSize` bytes would exceed `limits.maxStorageBytes`. */
export function checkAllocation(byteSize: number, limits: StorageLimits, label: string | undefined): void {
  if (byteSize <= limits.maxStorageBytes) return;
  throw new StorageLimitError(
    `tensor ${label ?? 'of unknown shape'} needs ${byteSize} bytes, more than the device's maxBufferSize of ${limits.maxStorageBytes} bytes; ` +
      'store it as f16, split it into several tensors, or use an adapter with a larger maxBufferSize',
  );
}
