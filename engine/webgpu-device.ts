// The WebGPU device: records kernels into one command encoder and submits when data is read
// back or `flush()` is called. Works with Dawn in Node (npm `webgpu`) and `navigator.gpu`.
import type { DeviceCaps } from '../kernels/types.ts';
import { checkAllocation, checkBindings, checkSlice, type Device, type MemoryStats, type Storage, type StorageLimits } from './device.ts';
import { bytesPerElement, sizeOf, type DType, type TypedArray } from './dtype.ts';
import type { Kernel, TensorSpec } from './kernel.ts';

const STORAGE_USAGE = GPUBufferUsage_STORAGE() | GPUBufferUsage_COPY_SRC() | GPUBufferUsage_COPY_DST();
const UNIFORM_SLOT_BYTES = 256;
const UNIFORM_CHUNK_SLOTS = 256;

// GPUBufferUsage is a global only in browsers and after installing Dawn's globals in Node.
// The WebGPU specification fixes its numeric values, so they are spelled out here.
function GPUBufferUsage_STORAGE(): number { return 0x0080; }
function GPUBufferUsage_COPY_SRC(): number { return 0x0004; }
function GPUBufferUsage_COPY_DST(): number { return 0x0008; }
const USAGE_MAP_READ = 0x0001;
const USAGE_UNIFORM = 0x0040;
const MAP_MODE_READ = 0x0001;
/** Dispatches one profile can time (two timestamps each). */
const PROFILE_CAPACITY = 2048;

/**
 * A GPU buffer, or a byte range of one. `sizeClass` is the allocated size of a whole buffer and
 * the bound size (`byteSize` rounded up to 4 bytes) of a slice, whose `parent` owns the buffer.
 */
export class GpuStorage implements Storage {
  refs = 1;
  constructor(
    readonly buffer: GPUBuffer,
    readonly byteSize: number,
    readonly sizeClass: number,
    readonly byteOffset = 0,
    readonly parent: GpuStorage | null = null,
  ) {}
}

/** Rounds a byte count up to a multiple of 4, the unit of buffer copies, writes and bindings. */
function alignTo4(bytes: number): number {
  return Math.ceil(bytes / 4) * 4;
}

/** Returns `data` as bytes, zero-padded to a multiple of 4 (f16 arrays of odd length). */
function paddedBytes(data: TypedArray): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
  if (data.byteLength % 4 === 0) return bytes;
  const padded = new Uint8Array(alignTo4(data.byteLength));
  padded.set(bytes);
  return padded;
}

/** Rounds a byte size up to one of four classes per power of two (at most 25 % waste). */
export function sizeClassOf(byteSize: number): number {
  const bytes = Math.max(256, Math.ceil(byteSize / 16) * 16);
  const octave = 2 ** Math.floor(Math.log2(bytes));
  const step = octave / 4;
  return Math.ceil(bytes / step) * step;
}

/**
 * Bytes allocated for a storage of `byteSize` bytes: its size class when that fits one binding,
 * else `byteSize` rounded up to 256 bytes. So rounding never pushes a tensor over the binding
 * or buffer limit, and a tensor larger than one binding wastes at most 255 bytes.
 */
export function allocationSize(byteSize: number, limits: Pick<StorageLimits, 'maxBindingBytes'>): number {
  const sizeClass = sizeClassOf(byteSize);
  if (sizeClass <= limits.maxBindingBytes) return sizeClass;
  return Math.max(256, Math.ceil(byteSize / 256) * 256);
}

export class WebGpuError extends Error {}

export interface WebGpuDeviceOptions {
  /** The object that owns the adapter (Dawn's `create()` result in Node); kept alive here. */
  owner?: unknown;
  /**
   * Binding limit in bytes, below the adapter's maxStorageBufferBindingSize. Tests set a small
   * one so split paths run on small tensors.
   */
  maxBindingBytes?: number;
  /** False generates the kernels without `enable f16;`, as on an adapter without shader-f16. */
  shaderF16?: boolean;
}

export class WebGpuDevice implements Device {
  readonly kind = 'webgpu' as const;
  readonly caps: DeviceCaps;
  readonly limits: StorageLimits;
  readonly description: string;

  private pipelines = new Map<string, GPUComputePipeline>();
  private pool = new Map<number, GPUBuffer[]>();
  private pooledBytes = 0;
  private live = new Set<GpuStorage>();
  private stagingPool = new Map<number, GPUBuffer[]>();

  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private pendingFlops = 0;
  private pendingDispatches = 0;
  private lastKernel = '';

  private uniformChunks: GPUBuffer[] = [];
  private uniformData: Uint8Array<ArrayBuffer>[] = [];
  private uniformSlot = 0;

  // GPU throughput estimate (flops per ms) used to sleep before awaiting a readback, so the
  // Node binding does not spin the main thread while the GPU works.
  private flopsPerMs = 2e7;
  private errors: string[] = [];
  /** Dispatches recorded per kernel name since the last `takeDispatchCounts()`. */
  private dispatchCounts = new Map<string, number>();
  private compileMs = 0;
  private profiler: { querySet: GPUQuerySet; labels: string[] } | null = null;
  private lost: string | null = null;
  /** Validation checks of submitted command buffers that have not resolved yet. */
  private pendingChecks = new Set<Promise<void>>();

  constructor(
    readonly device: GPUDevice,
    readonly adapterInfo: GPUAdapterInfo | null,
    private readonly options: WebGpuDeviceOptions = {},
  ) {
    const limits = device.limits;
    const subgroups = device.features.has('subgroups');
    const info = adapterInfo as (GPUAdapterInfo & { subgroupMinSize?: number; subgroupMaxSize?: number }) | null;
    this.caps = {
      subgroups,
      subgroupMinSize: subgroups ? info?.subgroupMinSize ?? 4 : 1,
      subgroupMaxSize: subgroups ? info?.subgroupMaxSize ?? 128 : 1,
      shaderF16: device.features.has('shader-f16') && options.shaderF16 !== false,
      maxComputeWorkgroupSizeX: limits.maxComputeWorkgroupSizeX,
      maxComputeInvocationsPerWorkgroup: limits.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupStorageSize: limits.maxComputeWorkgroupStorageSize,
      maxComputeWorkgroupsPerDimension: limits.maxComputeWorkgroupsPerDimension,
      matmulTiles: new Map(),
    };
    this.limits = {
      maxBindingBytes: Math.min(limits.maxStorageBufferBindingSize, options.maxBindingBytes ?? Infinity),
      maxStorageBytes: limits.maxBufferSize,
      bindingOffsetAlignment: limits.minStorageBufferOffsetAlignment,
    };
    const vendor = info?.vendor || 'unknown vendor';
    const architecture = info?.architecture || info?.device || 'unknown adapter';
    this.description = `webgpu: ${vendor} ${architecture}${info?.description ? ` (${info.description})` : ''}`;
    device.addEventListener('uncapturederror', (event) => {
      const message = (event as GPUUncapturedErrorEvent).error.message;
      this.errors.push(`${message} (last kernel recorded: ${this.lastKernel || 'none'})`);
    });
    void device.lost.then((info) => {
      this.lost ??= `webgpu: device lost (${info.reason}): ${info.message || 'no message'} (last kernel recorded: ${this.lastKernel || 'none'}); create a new device`;
    });
  }

  upload(data: TypedArray, label?: string): Storage {
    const storage = this.allocate(data.byteLength, label);
    // queue.writeBuffer runs before any command buffer submitted after it, so work already
    // recorded (which may still read a pooled buffer handed out here) is submitted first.
    if (this.encoder) this.submit();
    const bytes = paddedBytes(data);
    this.device.queue.writeBuffer(storage.buffer, 0, bytes.buffer, bytes.byteOffset, bytes.byteLength);
    return storage;
  }

  write(storage: Storage, data: TypedArray): void {
    // Work recorded before this call must run first, so submit it.
    if (this.encoder) this.submit();
    const target = storage as GpuStorage;
    const bytes = paddedBytes(data);
    // Padding an odd-length f16 write to 4 bytes overwrites the 2 bytes after it, which are
    // padding of the buffer when `data` fills the storage.
    if (bytes.byteLength > alignTo4(target.byteSize)) {
      throw new WebGpuError(`webgpu: writing ${data.byteLength} bytes into a storage of ${target.byteSize} bytes; write at most the storage's size`);
    }
    this.device.queue.writeBuffer(target.buffer, target.byteOffset, bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  copy(source: Storage, destination: Storage, byteLength: number): void {
    const from = source as GpuStorage;
    const to = destination as GpuStorage;
    this.endPass();
    this.currentEncoder().copyBufferToBuffer(from.buffer, from.byteOffset, to.buffer, to.byteOffset, alignTo4(byteLength));
  }

  zeros(dtype: DType, size: number, label?: string): Storage {
    const storage = this.allocate(size * bytesPerElement(dtype), label);
    this.endPass();
    this.currentEncoder().clearBuffer(storage.buffer, 0, storage.sizeClass);
    return storage;
  }

  slice(storage: Storage, byteOffset: number, byteSize: number): Storage {
    checkSlice(storage, byteOffset, byteSize, this.limits);
    const parent = storage as GpuStorage;
    parent.refs += 1;
    // The bound size is rounded up to 4 bytes; the parent's buffer has room for it because
    // every buffer size is a multiple of 16.
    return new GpuStorage(parent.buffer, byteSize, alignTo4(byteSize), parent.byteOffset + byteOffset, parent);
  }

  run<P>(kernel: Kernel<P, TypedArray>, inputs: Storage[], specs: TensorSpec[], params: P) {
    this.checkHealthy();
    const outSpecs = kernel.outputs(specs, params);
    checkBindings(kernel.name, inputs, specs, outSpecs, this.limits);
    const outputs = outSpecs.map((spec) => this.allocate(sizeOf(spec.shape) * bytesPerElement(spec.dtype), `${kernel.name} output [${spec.shape.join(', ')}] ${spec.dtype}`));
    const program = kernel.wgsl(specs, params, this.caps);
    const pipeline = this.pipeline(kernel.name, program.key, program.code);

    const entries: GPUBindGroupEntry[] = [];
    const buffers = [...inputs, ...outputs] as GpuStorage[];
    buffers.forEach((storage, binding) => {
      entries.push({ binding, resource: { buffer: storage.buffer, offset: storage.byteOffset, size: Math.min(storage.sizeClass, this.device.limits.maxStorageBufferBindingSize) } });
    });
    if (program.params.length > 0) {
      entries.push({ binding: buffers.length, resource: this.writeUniforms(program.params) });
    }
    const bindGroup = this.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });

    const profiled = this.profiler !== null && this.profiler.labels.length < PROFILE_CAPACITY;
    if (profiled) this.endPass();
    const pass = profiled ? this.profiledPass(kernel.name, program.key) : this.currentPass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    const [x, y, z] = program.workgroups;
    if (x > 0 && y > 0 && z > 0) pass.dispatchWorkgroups(x, y, z);
    if (profiled) this.endPass();

    this.lastKernel = kernel.name;
    this.pendingDispatches += 1;
    this.dispatchCounts.set(kernel.name, (this.dispatchCounts.get(kernel.name) ?? 0) + 1);
    this.pendingFlops += kernel.flops?.(specs, params) ?? sizeOf(outSpecs[0]?.shape ?? [1]);
    return { storages: outputs as Storage[], specs: outSpecs };
  }

  async read(storage: Storage, dtype: DType, size: number): Promise<TypedArray> {
    const source = storage as GpuStorage;
    const byteSize = alignTo4(size * bytesPerElement(dtype));
    const staging = this.takeStaging(byteSize);
    this.endPass();
    this.currentEncoder().copyBufferToBuffer(source.buffer, source.byteOffset, staging, 0, byteSize);
    const flops = this.pendingFlops;
    const sleepMs = this.estimateMs() * 0.8;
    const started = performance.now();
    this.submit();

    // Sleep for most of the expected GPU time before the promise exists: Dawn's Node binding
    // busy-polls while a WebGPU promise is pending, which takes a core away from lavapipe.
    if (sleepMs > 2) await new Promise((resolve) => setTimeout(resolve, sleepMs));
    try {
      await staging.mapAsync(MAP_MODE_READ, 0, byteSize);
    } catch (error) {
      // Dawn rejects the map with an AbortError (empty message) once the device is lost.
      this.checkHealthy();
      throw new WebGpuError(`webgpu: reading a result failed (${(error as Error).name}: ${(error as Error).message || 'no message'}; last kernel recorded: ${this.lastKernel || 'none'}); the device may be lost`);
    }
    // A command buffer that failed validation runs nothing, so the staging buffer contains stale
    // values. Wait for the submit's validation result before returning them.
    await this.settleChecks();
    this.learnThroughput(flops, sleepMs > 2 ? sleepMs : 0, performance.now() - started);

    const bytes = new Uint8Array(staging.getMappedRange(0, byteSize)).slice();
    staging.unmap();
    this.returnStaging(staging);
    this.checkHealthy();
    if (dtype === 'f16') return new Uint16Array(bytes.buffer, 0, size);
    return dtype === 'f32' ? new Float32Array(bytes.buffer) : new Int32Array(bytes.buffer);
  }

  release(storage: Storage): void {
    storage.refs -= 1;
    if (storage.refs > 0) return;
    const gpuStorage = storage as GpuStorage;
    if (gpuStorage.parent) {
      this.release(gpuStorage.parent);
      return;
    }
    this.live.delete(gpuStorage);
    let free = this.pool.get(gpuStorage.sizeClass);
    if (!free) this.pool.set(gpuStorage.sizeClass, (free = []));
    free.push(gpuStorage.buffer);
    this.pooledBytes += gpuStorage.sizeClass;
  }

  flush(): void {
    this.checkHealthy();
    if (this.encoder) this.submit();
  }

  async sync(): Promise<void> {
    const expectedMs = this.estimateMs();
    this.flush();
    if (expectedMs > 2) await new Promise((resolve) => setTimeout(resolve, expectedMs * 0.8));
    await this.device.queue.onSubmittedWorkDone();
    await this.settleChecks();
    this.checkHealthy();
  }

  /** Pipelines compiled so far and the JavaScript-side time spent creating them. */
  compileStats(): { pipelines: number; milliseconds: number } {
    return { pipelines: this.pipelines.size, milliseconds: this.compileMs };
  }

  /**
   * Starts recording GPU time per dispatch with timestamp queries (each dispatch then gets
   * its own compute pass). Returns false when the adapter lacks `timestamp-query`.
   */
  startProfile(): boolean {
    if (!this.device.features.has('timestamp-query')) return false;
    this.flush();
    const querySet = this.device.createQuerySet({ type: 'timestamp', count: PROFILE_CAPACITY * 2 });
    this.profiler = { querySet, labels: [] };
    return true;
  }

  /**
   * Stops profiling and returns GPU milliseconds per kernel (name and program key), summed
   * over the dispatches recorded since `startProfile`, at most 2,048 of them (one query set has room for 4,096 timestamps).
   */
  async stopProfile(): Promise<Map<string, { ms: number; count: number }>> {
    const profiler = this.profiler;
    this.profiler = null;
    const totals = new Map<string, { ms: number; count: number }>();
    if (!profiler || profiler.labels.length === 0) return totals;
    const count = profiler.labels.length * 2;
    const resolved = this.device.createBuffer({ size: count * 8, usage: 0x0200 /* QUERY_RESOLVE */ | GPUBufferUsage_COPY_SRC() });
    const staging = this.device.createBuffer({ size: count * 8, usage: USAGE_MAP_READ | GPUBufferUsage_COPY_DST() });
    this.endPass();
    const encoder = this.currentEncoder();
    encoder.resolveQuerySet(profiler.querySet, 0, count, resolved, 0);
    encoder.copyBufferToBuffer(resolved, 0, staging, 0, count * 8);
    await this.sync();
    await staging.mapAsync(MAP_MODE_READ);
    const stamps = new BigUint64Array(staging.getMappedRange().slice(0));
    staging.unmap();
    profiler.labels.forEach((label, i) => {
      const ms = Number(stamps[2 * i + 1] - stamps[2 * i]) / 1e6;
      const entry = totals.get(label) ?? { ms: 0, count: 0 };
      entry.ms += ms;
      entry.count += 1;
      totals.set(label, entry);
    });
    for (const buffer of [resolved, staging]) buffer.destroy();
    profiler.querySet.destroy();
    return totals;
  }

  /** Returns and resets the number of dispatches per kernel name. */
  takeDispatchCounts(): Map<string, number> {
    const counts = this.dispatchCounts;
    this.dispatchCounts = new Map();
    return counts;
  }

  memory(): MemoryStats {
    let liveBytes = 0;
    for (const storage of this.live) liveBytes += storage.sizeClass;
    return { liveBytes, liveStorages: this.live.size, pooledBytes: this.pooledBytes };
  }

  /** Frees pooled buffers (live tensors keep theirs). */
  trimPool(): void {
    for (const buffers of this.pool.values()) for (const buffer of buffers) buffer.destroy();
    this.pool.clear();
    this.pooledBytes = 0;
  }

  destroy(): void {
    this.lost ??= 'webgpu: the device was destroyed by destroy(); create a new device';
    this.trimPool();
    this.device.destroy();
    void this.options.owner;
  }

  private allocate(byteSize: number, label?: string): GpuStorage {
    const sizeClass = allocationSize(byteSize, this.limits);
    checkAllocation(sizeClass, this.limits, label);
    const free = this.pool.get(sizeClass);
    let buffer = free?.pop();
    if (buffer) {
      this.pooledBytes -= sizeClass;
    } else {
      buffer = this.device.createBuffer({ size: sizeClass, usage: STORAGE_USAGE });
    }
    const storage = new GpuStorage(buffer, byteSize, sizeClass);
    this.live.add(storage);
    return storage;
  }

  private pipeline(name: string, key: string, code: string): GPUComputePipeline {
    const fullKey = `${name}:${key}`;
    let pipeline = this.pipelines.get(fullKey);
    if (!pipeline) {
      const started = performance.now();
      this.device.pushErrorScope('validation');
      const module = this.device.createShaderModule({ code, label: name });
      pipeline = this.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' }, label: name });
      this.pipelines.set(fullKey, pipeline);
      this.compileMs += performance.now() - started;
      // A shader that fails to compile is dropped from the cache and its error (with the
      // kernel name and key) is raised by the next read, flush or kernel call.
      void this.device.popErrorScope().then((error) => {
        if (!error) return;
        this.pipelines.delete(fullKey);
        this.errors.push(`kernel ${name} (${key}) failed to compile: ${error.message}`);
      });
    }
    return pipeline;
  }

  private writeUniforms(params: Array<[string, string, number]>): GPUBufferBinding {
    if (this.uniformSlot >= this.uniformChunks.length * UNIFORM_CHUNK_SLOTS) {
      this.uniformChunks.push(this.device.createBuffer({ size: UNIFORM_SLOT_BYTES * UNIFORM_CHUNK_SLOTS, usage: USAGE_UNIFORM | GPUBufferUsage_COPY_DST() }));
      this.uniformData.push(new Uint8Array(UNIFORM_SLOT_BYTES * UNIFORM_CHUNK_SLOTS));
    }
    const chunk = Math.floor(this.uniformSlot / UNIFORM_CHUNK_SLOTS);
    const offset = (this.uniformSlot % UNIFORM_CHUNK_SLOTS) * UNIFORM_SLOT_BYTES;
    this.uniformSlot += 1;
    const view = new DataView(this.uniformData[chunk].buffer, offset, UNIFORM_SLOT_BYTES);
    params.forEach(([, type, value], index) => {
      if (type === 'f32') view.setFloat32(index * 4, value, true);
      else if (type === 'i32') view.setInt32(index * 4, value, true);
      else view.setUint32(index * 4, value, true);
    });
    const size = Math.max(16, Math.ceil((params.length * 4) / 16) * 16);
    return { buffer: this.uniformChunks[chunk], offset, size };
  }

  private currentEncoder(): GPUCommandEncoder {
    if (!this.encoder) this.encoder = this.device.createCommandEncoder();
    return this.encoder;
  }

  private profiledPass(name: string, key: string): GPUComputePassEncoder {
    const profiler = this.profiler!;
    const index = profiler.labels.length;
    profiler.labels.push(`${name} ${key}`);
    this.pass = this.currentEncoder().beginComputePass({
      timestampWrites: { querySet: profiler.querySet, beginningOfPassWriteIndex: 2 * index, endOfPassWriteIndex: 2 * index + 1 },
    });
    return this.pass;
  }

  private currentPass(): GPUComputePassEncoder {
    if (!this.pass) this.pass = this.currentEncoder().beginComputePass();
    return this.pass;
  }

  private endPass(): void {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
  }

  private submit(): void {
    this.endPass();
    const chunksUsed = Math.ceil(this.uniformSlot / UNIFORM_CHUNK_SLOTS);
    // The queue runs writeBuffer and submit in call order, so rewriting a chunk for the next
    // batch cannot affect the command buffer submitted here.
    for (let chunk = 0; chunk < chunksUsed; chunk++) {
      const used = chunk < chunksUsed - 1 ? UNIFORM_CHUNK_SLOTS : this.uniformSlot - chunk * UNIFORM_CHUNK_SLOTS;
      this.device.queue.writeBuffer(this.uniformChunks[chunk], 0, this.uniformData[chunk], 0, used * UNIFORM_SLOT_BYTES);
    }
    this.uniformSlot = 0;
    if (this.encoder) {
      // Invalid commands (a bind group over a freed buffer, too many workgroups) make the whole
      // command buffer fail at finish or submit. The error scope catches that here, and the
      // next read, flush, sync or kernel call raises it.
      const lastKernel = this.lastKernel || 'none';
      this.device.pushErrorScope('validation');
      this.device.queue.submit([this.encoder.finish()]);
      this.encoder = null;
      const check = this.device.popErrorScope().then(
        (error) => {
          if (error) this.errors.push(`${error.message} (last kernel recorded before the submit: ${lastKernel})`);
        },
        () => {},
      );
      this.pendingChecks.add(check);
      void check.then(() => this.pendingChecks.delete(check));
    }
  }

  /** Waits for the validation checks of every submit so far. */
  private async settleChecks(): Promise<void> {
    if (this.pendingChecks.size > 0) await Promise.all([...this.pendingChecks]);
  }

  private estimateMs(): number {
    const ms = this.pendingFlops / this.flopsPerMs + this.pendingDispatches * 0.02;
    this.pendingFlops = 0;
    this.pendingDispatches = 0;
    return ms;
  }

  /**
   * Updates the throughput estimate after a readback that slept `sleptMs` and finished after
   * `actualMs`. A map that resolved well after the sleep means the GPU was busy for about
   * `actualMs`, which gives the throughput directly. A map that resolved right after the
   * sleep means the sleep was too long, so the estimate doubles until sleeps undershoot.
   */
  private learnThroughput(flops: number, sleptMs: number, actualMs: number): void {
    // Small batches are dominated by fixed costs (submit, map) and would skew the estimate.
    if (flops < 1e7 || actualMs <= 0) return;
    if (actualMs > sleptMs * 1.1 + 1) {
      const measured = flops / actualMs;
      this.flopsPerMs = Math.sqrt(this.flopsPerMs * measured);
    } else {
      this.flopsPerMs *= 2;
    }
    this.flopsPerMs = Math.min(1e9, Math.max(1e4, this.flopsPerMs));
  }

  private takeStaging(byteSize: number): GPUBuffer {
    const sizeClass = sizeClassOf(byteSize);
    const buffer = this.stagingPool.get(sizeClass)?.pop();
    return buffer ?? this.device.createBuffer({ size: sizeClass, usage: USAGE_MAP_READ | GPUBufferUsage_COPY_DST() });
  }

  private returnStaging(buffer: GPUBuffer): void {
    const sizeClass = buffer.size;
    let free = this.stagingPool.get(sizeClass);
    if (!free) this.stagingPool.set(sizeClass, (free = []));
    free.push(buffer);
  }

  private checkHealthy(): void {
    if (this.lost) throw new WebGpuError(this.lost);
    if (this.errors.length > 0) {
      const message = this.errors.join('\n');
      this.errors = [];
      throw new WebGpuError(`webgpu: validation error: ${message}`);
    }
  }
}

/** Adapter features the engine uses when present. */
const OPTIONAL_FEATURES: GPUFeatureName[] = ['subgroups', 'shader-f16', 'timestamp-query'];

/** Requests an adapter and device from `gpu`; returns null when there is no adapter. */
export async function createWebGpuDevice(gpu: GPU, owner?: unknown): Promise<WebGpuDevice | null> {
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) return null;
  const requiredFeatures = OPTIONAL_FEATURES.filter((feature) => adapter.features.has(feature));
  const wanted = [
    'maxStorageBufferBindingSize',
    'maxBufferSize',
    'maxComputeWorkgroupStorageSize',
    'maxComputeInvocationsPerWorkgroup',
    'maxComputeWorkgroupSizeX',
    'maxStorageBuffersPerShaderStage',
  ] as const;
  const requiredLimits: Record<string, number> = {};
  for (const name of wanted) requiredLimits[name] = adapter.limits[name];
  const device = await adapter.requestDevice({ requiredFeatures, requiredLimits });
  return new WebGpuDevice(device, adapter.info ?? null, { owner });
}
