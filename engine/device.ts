// The device interface that tensors run on. Two implementations: `cpu` (the TypeScript
// reference, engine/cpu-device.ts) and `webgpu` (WGSL kernels, engine/webgpu-device.ts).
import type { DeviceCaps } from '../kernels/types.ts';
import type { DType, TypedArray } from './dtype.ts';
import type { Kernel, TensorSpec } from './kernel.ts';

/** A block of device memory. Tensors that share it (views) hold one reference each. */
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

export interface Device {
  readonly kind: 'cpu' | 'webgpu';
  /** Human-readable adapter description, e.g. "mesa lavapipe (software)". */
  readonly description: string;
  readonly caps: DeviceCaps;
  upload(data: TypedArray): Storage;
  /** Overwrites the start of `storage` with `data` (ordered before work recorded later). */
  write(storage: Storage, data: TypedArray): void;
  /** Copies the first `byteLength` bytes of `source` into `destination`, in recording order. */
  copy(source: Storage, destination: Storage, byteLength: number): void;
  /** Allocates a zero-filled storage. */
  zeros(dtype: DType, size: number): Storage;
  /** Records `kernel` and returns one new storage per output spec. */
  run<P>(kernel: Kernel<P>, inputs: Storage[], specs: TensorSpec[], params: P): { storages: Storage[]; specs: TensorSpec[] };
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
