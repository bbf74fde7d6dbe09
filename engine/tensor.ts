// Tensor: an n-dimensional array on a device, with tape autograd and explicit disposal.
//
// Autograd follows micrograd: every op computes its output, then attaches a backward
// function that accumulates gradients into its inputs. `backward()` walks the graph in
// reverse topological order. Gradients are computed by the same ops with recording off.
import type { Device, Storage } from './device.ts';
import { getDevice } from './devices.ts';
import { bytesPerElement, dtypeOfArray, floatArrayToHalf, shapeString, sizeOf, type DType, type TypedArray } from './dtype.ts';

let gradEnabled = true;
const scopes: Set<Tensor>[] = [];

interface LeakRecord {
  storage: Storage;
  device: Device;
  description: string;
}

let leakedTensors = 0;
let leakHandler: (count: number, example: string) => void = (count, example) => {
  // Warn on the first leak and then at each power of ten, so a leaking loop does not flood the log.
  if (Number.isInteger(Math.log10(count))) {
    console.warn(`s2d engine: ${count} tensor(s) were garbage-collected without dispose(), e.g. ${example}; wrap the work in tidy() or call dispose()`);
  }
};

/**
 * Safety net: a tensor collected without dispose() returns its device memory here and is
 * reported to the leak handler. Collection time is up to the JavaScript engine, so this is
 * no substitute for tidy() and dispose().
 */
const leakRegistry = new FinalizationRegistry<LeakRecord>(({ storage, device, description }) => {
  device.release(storage);
  leakedTensors += 1;
  leakHandler(leakedTensors, description);
});

/** Sets the function called for tensors collected without dispose(); returns the previous one. */
export function setLeakHandler(handler: (count: number, example: string) => void): (count: number, example: string) => void {
  const previous = leakHandler;
  leakHandler = handler;
  return previous;
}

/** Returns how many tensors were collected without dispose() so far. */
export function leakedTensorCount(): number {
  return leakedTensors;
}

export class Tensor {
  readonly shape: readonly number[];
  readonly device: Device;
  requiresGrad: boolean;
  grad: Tensor | null = null;
  /** Optional name, shown in errors (parameters carry their checkpoint key). */
  name: string | undefined;
  /** Host copy of the values when the tensor was made from host data (token ids, targets). */
  hostData: TypedArray | null = null;
  /** Inputs this tensor was computed from, when it is part of the autograd graph. */
  parents: Tensor[] = [];
  backwardFn: ((grad: Tensor) => void) | null = null;
  /** Set on tensors that `tidy` must not dispose (parameters, gradients of leaves). */
  kept = false;
  private storageRef: Storage | null;
  private dtypeValue: DType;
  private isGradient = false;

  constructor(storage: Storage, shape: readonly number[], dtype: DType, device: Device, requiresGrad = false) {
    this.storageRef = storage;
    this.shape = Object.freeze([...shape]);
    this.dtypeValue = dtype;
    this.device = device;
    this.requiresGrad = requiresGrad;
    if (scopes.length > 0) scopes[scopes.length - 1].add(this);
    leakRegistry.register(this, { storage, device, description: `[${shape.join(', ')}] ${dtype}` }, this);
  }

  /** Element type; f16 only for frozen tensors (no gradient flows through f16 storage). */
  get dtype(): DType {
    return this.dtypeValue;
  }

  get size(): number {
    return sizeOf(this.shape);
  }

  get rank(): number {
    return this.shape.length;
  }

  get disposed(): boolean {
    return this.storageRef === null;
  }

  get storage(): Storage {
    if (!this.storageRef) {
      throw new Error(`tensor ${this.describe()} was used after dispose(); keep it alive or compute it again`);
    }
    return this.storageRef;
  }

  describe(): string {
    return `${this.name ?? 'tensor'} ${shapeString(this.shape)} ${this.dtype}`;
  }

  /** Frees the device memory (shared with views until the last one is disposed). */
  dispose(): void {
    if (!this.storageRef) return;
    leakRegistry.unregister(this);
    this.device.release(this.storageRef);
    this.storageRef = null;
    this.parents = [];
    this.backwardFn = null;
    if (this.grad) {
      this.grad.dispose();
      this.grad = null;
    }
  }

  /** Copies the values to the host. */
  async data(): Promise<TypedArray> {
    if (this.hostData) return this.hostData.slice();
    return this.device.read(this.storage, this.dtype, this.size);
  }

  async item(): Promise<number> {
    if (this.size !== 1) throw new Error(`item(): ${this.describe()} has ${this.size} elements, expected 1`);
    return (await this.data())[0];
  }

  /** Overwrites the values in place (same element count and dtype). */
  assign(data: TypedArray): void {
    if (data.length !== this.size) {
      throw new Error(`assign: ${data.length} values for ${this.describe()} (${this.size} elements)`);
    }
    if (dtypeOfArray(data) !== this.dtype) {
      throw new Error(`assign: ${dtypeOfArray(data)} values (${data.constructor.name}) for ${this.describe()}; f16 tensors take Uint16Array bit patterns (floatArrayToHalf)`);
    }
    this.device.write(this.storage, data);
    if (this.hostData) this.hostData = data.slice();
  }

  /** Overwrites the values with those of `source` (same shape and dtype) on the device. */
  copyFrom(source: Tensor): void {
    const sameShape = source.shape.length === this.shape.length && source.shape.every((d, i) => d === this.shape[i]);
    if (!sameShape || source.dtype !== this.dtype || source.device !== this.device) {
      throw new Error(`copyFrom: cannot copy ${source.describe()} into ${this.describe()}; shapes, dtypes and devices must match`);
    }
    this.device.copy(source.storage, this.storage, this.size * bytesPerElement(this.dtype));
    this.hostData = source.hostData ? source.hostData.slice() : null;
  }

  /** Returns a tensor of another shape over the same storage (same element count). */
  view(shape: readonly number[]): Tensor {
    const resolved = resolveShape(shape, this.size, this.shape);
    this.storage.refs += 1;
    const out = new Tensor(this.storage, resolved, this.dtype, this.device);
    out.hostData = this.hostData;
    return out;
  }

  /**
   * Computes gradients of this tensor with respect to every tensor that requires them. A
   * scalar starts from 1; any other tensor needs `gradient` (its own shape, taken over).
   */
  backward(gradient?: Tensor): void {
    if (!gradient && this.size !== 1) throw new Error(`backward(): ${this.describe()} is not a scalar; reduce it first (sum or mean)`);
    const sameShape = gradient && gradient.shape.length === this.shape.length && gradient.shape.every((d, i) => d === this.shape[i]);
    if (gradient && !sameShape) throw new Error(`backward(): gradient ${gradient.describe()} does not match ${this.describe()}; pass a gradient of the same shape`);
    const order = topologicalOrder(this);
    // A disposed node has lost its backward, so gradients would silently stop there.
    const lost = order.find((node) => node !== this && node.disposed && node.requiresGrad);
    if (lost) {
      throw new Error(
        `backward(): ${lost.describe()} in the graph of ${this.describe()} was disposed, so gradients cannot pass it; ` +
          'tidy() disposes the intermediates it does not return, so call backward() inside the tidy() that ran the forward pass',
      );
    }
    const seed = gradient ?? fromHost(new Float32Array([1]), this.shape, 'f32', this.device);
    noGrad(() => {
      accumulateGrad(this, seed);
      for (let i = order.length - 1; i >= 0; i--) {
        const node = order[i];
        if (!node.backwardFn || !node.grad) continue;
        node.backwardFn(node.grad);
        // Intermediate gradients are not needed once passed on; leaves keep theirs.
        node.grad.dispose();
        node.grad = null;
      }
    });
  }

  /**
   * Points this tensor at `storage`, which contains the same elements in `dtype`, and releases
   * the old storage. Loaders use it to re-store a frozen weight as f16 while the layers keep
   * their reference to the tensor. Views made earlier keep the old storage.
   */
  replaceStorage(storage: Storage, dtype: DType): void {
    if (dtype === 'f16' && this.requiresGrad) {
      throw new Error(`replaceStorage: ${this.describe()} requires a gradient, and f16 tensors cannot be trained; set requiresGrad = false first or keep it f32`);
    }
    const old = this.storage;
    leakRegistry.unregister(this);
    this.storageRef = storage;
    this.dtypeValue = dtype;
    leakRegistry.register(this, { storage, device: this.device, description: `${shapeString(this.shape)} ${dtype}` }, this);
    this.device.release(old);
  }

  /** Marks this tensor as a gradient owned by another tensor (used by accumulateGrad). */
  markGradient(): void {
    this.isGradient = true;
    this.kept = true;
    for (const scope of scopes) scope.delete(this);
  }

  get isOwnedGradient(): boolean {
    return this.isGradient;
  }
}

function topologicalOrder(root: Tensor): Tensor[] {
  const order: Tensor[] = [];
  const visited = new Set<Tensor>();
  const stack: Array<[Tensor, number]> = [[root, 0]];
  visited.add(root);
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    const [node, next] = top;
    if (next < node.parents.length) {
      top[1] += 1;
      const parent = node.parents[next];
      if (!visited.has(parent) && parent.requiresGrad) {
        visited.add(parent);
        stack.push([parent, 0]);
      }
    } else {
      stack.pop();
      order.push(node);
    }
  }
  return order;
}

/** Adds `grad` into `target.grad`, reducing broadcast axes first. Takes ownership of `grad`. */
export let accumulateGrad: (target: Tensor, grad: Tensor) => void = () => {
  throw new Error('engine/ops is not loaded');
};

export function setAccumulateGrad(fn: (target: Tensor, grad: Tensor) => void): void {
  accumulateGrad = fn;
}

export function isGradEnabled(): boolean {
  return gradEnabled;
}

/** Runs `fn` without recording the autograd graph. */
export function noGrad<T>(fn: () => T): T {
  const previous = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = previous;
  }
}

/** Runs `fn` with autograd recording on, also inside `noGrad` (used to recompute checkpointed blocks during backward). */
export function enableGrad<T>(fn: () => T): T {
  const previous = gradEnabled;
  gradEnabled = true;
  try {
    return fn();
  } finally {
    gradEnabled = previous;
  }
}

/** Keeps `tensor` alive past the enclosing `tidy` scopes. */
export function keep<T extends Tensor>(tensor: T): T {
  tensor.kept = true;
  for (const scope of scopes) scope.delete(tensor);
  return tensor;
}

/**
 * Runs `fn` and disposes every tensor created inside it, except the tensors it returns (a
 * tensor, or tensors inside a returned array or plain object) and kept ones. Returned tensors
 * move to the enclosing scope.
 */
export function tidy<T>(fn: () => T): T {
  const scope = new Set<Tensor>();
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
  } finally {
    scopes.pop();
  }
  const returned = new Set<Tensor>();
  collectTensors(result, returned, 0);
  for (const tensor of scope) {
    if (returned.has(tensor) || tensor.kept) continue;
    tensor.dispose();
  }
  if (scopes.length > 0) for (const tensor of returned) if (scope.has(tensor)) scopes[scopes.length - 1].add(tensor);
  return result;
}

function collectTensors(value: unknown, into: Set<Tensor>, depth: number): void {
  if (depth > 4 || value === null || typeof value !== 'object') return;
  if (value instanceof Tensor) {
    into.add(value);
  } else if (Array.isArray(value)) {
    for (const item of value) collectTensors(item, into, depth + 1);
  } else if (Object.getPrototypeOf(value) === Object.prototype) {
    for (const item of Object.values(value)) collectTensors(item, into, depth + 1);
  }
}

export function resolveShape(shape: readonly number[], size: number, from: readonly number[]): number[] {
  const inferred = shape.indexOf(-1);
  const resolved = [...shape];
  if (inferred >= 0) {
    const known = sizeOf(shape.filter((_, i) => i !== inferred));
    resolved[inferred] = known === 0 ? 0 : size / known;
  }
  if (sizeOf(resolved) !== size || !resolved.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new Error(`reshape: cannot view ${shapeString(from)} (${size} elements) as ${shapeString(shape)}`);
  }
  return resolved;
}

/**
 * Creates a tensor from host values. An f16 tensor takes its bit patterns as a Uint16Array,
 * or values in another array, which are rounded to f16 (nearest, ties to even).
 */
export function fromHost(data: TypedArray, shape: readonly number[], dtype: DType = dtypeOfArray(data), device: Device = getDevice()): Tensor {
  if (data.length !== sizeOf(shape)) {
    throw new Error(`tensor: ${data.length} values do not fill shape ${shapeString(shape)} (${sizeOf(shape)} elements)`);
  }
  let typed: TypedArray;
  if (dtype === 'f32') typed = data instanceof Float32Array ? data : Float32Array.from(data);
  else if (dtype === 'f16') typed = data instanceof Uint16Array ? data : floatArrayToHalf(data);
  else typed = data instanceof Int32Array ? data : Int32Array.from(data);
  const out = new Tensor(device.upload(typed, `${shapeString(shape)} ${dtype}`), shape, dtype, device);
  if (dtype === 'i32') out.hostData = typed.slice();
  return out;
}

export function tensor(values: number[] | TypedArray, shape?: readonly number[], dtype: DType = 'f32'): Tensor {
  let typed: TypedArray;
  if (!Array.isArray(values)) typed = values;
  else if (dtype === 'f16') typed = floatArrayToHalf(values);
  else typed = dtype === 'f32' ? Float32Array.from(values) : Int32Array.from(values);
  return fromHost(typed, shape ?? [typed.length], dtype);
}

export function zeros(shape: readonly number[], dtype: DType = 'f32', device: Device = getDevice()): Tensor {
  return new Tensor(device.zeros(dtype, sizeOf(shape), `${shapeString(shape)} ${dtype}`), shape, dtype, device);
}

export function full(shape: readonly number[], value: number, device: Device = getDevice()): Tensor {
  return fromHost(new Float32Array(sizeOf(shape)).fill(value), shape, 'f32', device);
}

/** Creates a trainable leaf tensor (requiresGrad, kept out of tidy scopes). */
export function parameter(data: Float32Array, shape: readonly number[], name?: string, device: Device = getDevice()): Tensor {
  const out = keep(fromHost(data, shape, 'f32', device));
  out.requiresGrad = true;
  out.name = name;
  return out;
}
