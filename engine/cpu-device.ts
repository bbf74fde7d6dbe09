// The CPU reference device: runs each kernel's plain TypeScript implementation.
import type { DeviceCaps } from '../kernels/types.ts';
import { checkAllocation, checkBindings, checkSlice, type Device, type MemoryStats, type Storage, type StorageLimits } from './device.ts';
import { allocArray, bytesPerElement, sizeOf, type DType, type TypedArray } from './dtype.ts';
import type { Kernel, TensorSpec } from './kernel.ts';

export class CpuStorage implements Storage {
  refs = 1;
  /** `data` is a view into `parent`'s array when this storage is a slice. */
  constructor(readonly data: TypedArray, readonly parent: CpuStorage | null = null) {}
  get byteSize(): number {
    return this.data.byteLength;
  }
}

const CPU_CAPS: DeviceCaps = {
  subgroups: false,
  subgroupMinSize: 1,
  subgroupMaxSize: 1,
  shaderF16: false,
  maxComputeWorkgroupSizeX: 1,
  maxComputeInvocationsPerWorkgroup: 1,
  maxComputeWorkgroupStorageSize: 0,
  maxComputeWorkgroupsPerDimension: 0,
};

export interface CpuDeviceOptions {
  /**
   * Binding limit that kernels are held to, in bytes (default: none). Tests set a small one so
   * the CPU reference runs the same split paths as a WebGPU adapter with small bindings.
   */
  maxBindingBytes?: number;
}

export class CpuDevice implements Device {
  readonly kind = 'cpu' as const;
  readonly description = 'cpu (TypeScript reference)';
  readonly caps = CPU_CAPS;
  readonly limits: StorageLimits;
  private live = new Set<CpuStorage>();

  constructor(options: CpuDeviceOptions = {}) {
    // 256 bytes is the alignment WebGPU adapters commonly require, so slices planned here also
    // fit those adapters.
    this.limits = { maxBindingBytes: options.maxBindingBytes ?? Infinity, maxStorageBytes: Infinity, bindingOffsetAlignment: 256 };
  }

  upload(data: TypedArray, label?: string): Storage {
    checkAllocation(data.byteLength, this.limits, label);
    return this.track(new CpuStorage(data.slice()));
  }

  write(storage: Storage, data: TypedArray): void {
    (storage as CpuStorage).data.set(data);
  }

  copy(source: Storage, destination: Storage, byteLength: number): void {
    const from = (source as CpuStorage).data;
    (destination as CpuStorage).data.set(from.subarray(0, byteLength / from.BYTES_PER_ELEMENT));
  }

  zeros(dtype: DType, size: number, label?: string): Storage {
    checkAllocation(size * bytesPerElement(dtype), this.limits, label);
    return this.track(new CpuStorage(allocArray(dtype, size)));
  }

  slice(storage: Storage, byteOffset: number, byteSize: number): Storage {
    checkSlice(storage, byteOffset, byteSize, this.limits);
    const parent = storage as CpuStorage;
    const elementBytes = parent.data.BYTES_PER_ELEMENT;
    const start = byteOffset / elementBytes;
    parent.refs += 1;
    return new CpuStorage(parent.data.subarray(start, start + Math.ceil(byteSize / elementBytes)), parent);
  }

  run<P>(kernel: Kernel<P, TypedArray>, inputs: Storage[], specs: TensorSpec[], params: P) {
    const outSpecs = kernel.outputs(specs, params);
    checkBindings(kernel.name, inputs, specs, outSpecs, this.limits);
    const outputs = outSpecs.map((spec) => this.zeros(spec.dtype, sizeOf(spec.shape)) as CpuStorage);
    kernel.cpu(
      inputs.map((s) => (s as CpuStorage).data),
      outputs.map((s) => s.data),
      specs,
      params,
    );
    return { storages: outputs, specs: outSpecs };
  }

  async read(storage: Storage, _dtype: DType, size: number): Promise<TypedArray> {
    return (storage as CpuStorage).data.slice(0, size);
  }

  release(storage: Storage): void {
    storage.refs -= 1;
    if (storage.refs > 0) return;
    const cpuStorage = storage as CpuStorage;
    if (cpuStorage.parent) this.release(cpuStorage.parent);
    else this.live.delete(cpuStorage);
  }

  flush(): void {}

  async sync(): Promise<void> {}

  memory(): MemoryStats {
    let liveBytes = 0;
    for (const storage of this.live) liveBytes += storage.byteSize;
    return { liveBytes, liveStorages: this.live.size, pooledBytes: 0 };
  }

  destroy(): void {
    this.live.clear();
  }

  private track(storage: CpuStorage): CpuStorage {
    this.live.add(storage);
    return storage;
  }
}
