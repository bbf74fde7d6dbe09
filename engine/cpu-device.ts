// The CPU reference device: runs each kernel's plain TypeScript implementation.
import type { DeviceCaps } from '../kernels/types.ts';
import type { Device, MemoryStats, Storage } from './device.ts';
import { allocArray, type DType, type TypedArray } from './dtype.ts';
import type { Kernel, TensorSpec } from './kernel.ts';

export class CpuStorage implements Storage {
  refs = 1;
  constructor(readonly data: TypedArray) {}
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

export class CpuDevice implements Device {
  readonly kind = 'cpu' as const;
  readonly description = 'cpu (TypeScript reference)';
  readonly caps = CPU_CAPS;
  private live = new Set<CpuStorage>();

  upload(data: TypedArray): Storage {
    return this.track(new CpuStorage(data.slice()));
  }

  write(storage: Storage, data: TypedArray): void {
    (storage as CpuStorage).data.set(data);
  }

  copy(source: Storage, destination: Storage, byteLength: number): void {
    const from = (source as CpuStorage).data;
    (destination as CpuStorage).data.set(from.subarray(0, byteLength / from.BYTES_PER_ELEMENT));
  }

  zeros(dtype: DType, size: number): Storage {
    return this.track(new CpuStorage(allocArray(dtype, size)));
  }

  run<P>(kernel: Kernel<P>, inputs: Storage[], specs: TensorSpec[], params: P) {
    const outSpecs = kernel.outputs(specs, params);
    const outputs = outSpecs.map((spec) => this.zeros(spec.dtype, sizeOfSpec(spec)) as CpuStorage);
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
    if (storage.refs === 0) this.live.delete(storage as CpuStorage);
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

function sizeOfSpec(spec: TensorSpec): number {
  let size = 1;
  for (const dim of spec.shape) size *= dim;
  return size;
}
