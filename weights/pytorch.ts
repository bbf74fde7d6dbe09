// PyTorch checkpoints (.bin, .pt) in the zip format that torch.save writes since PyTorch 1.6:
//   <archive>/data.pkl      the pickled object, each tensor's storage replaced by a persistent id
//                           ('storage', torch.FloatStorage, key, location, element count)
//   <archive>/data/<key>    one storage per key: raw elements, usually stored uncompressed
//   <archive>/byteorder     "little" or "big", written by newer PyTorch versions (little-endian when absent)
// The pickle is read by the restricted unpickler in pickle.ts with an allow list of globals, so
// loading never executes code from the file. A tensor is a view (offset, shape, strides) into a
// storage, and reading materialises it row-major.
import { unzipSync, type UnzipFileInfo } from 'fflate';
import { describePickleValue, unpickle, UnpicklingError, type PickleGlobal } from './pickle.ts';
import { BYTES_PER_ELEMENT, decodeTensorBytes, elementCount, encodeSafetensors, type SafetensorsDType, type TensorToWrite } from './safetensors.ts';
import { bytesSource, CheckpointError, type ByteSource } from './source.ts';

/** An invalid PyTorch checkpoint: not a zip, a missing record, or a tensor that does not fit its storage. */
export class PytorchCheckpointError extends CheckpointError {}

/** PyTorch storage classes and the dtype of their elements. */
const STORAGE_DTYPES: Record<string, SafetensorsDType> = {
  DoubleStorage: 'F64',
  FloatStorage: 'F32',
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  LongStorage: 'I64',
  IntStorage: 'I32',
  ShortStorage: 'I16',
  CharStorage: 'I8',
  ByteStorage: 'U8',
  BoolStorage: 'BOOL',
};

const ALLOWED_GLOBALS = ['collections.OrderedDict', 'torch._utils._rebuild_tensor_v2', 'torch._utils._rebuild_parameter'];

/** Nesting deeper than this in the pickled object is rejected (a state dict nests 1 to 3 levels). */
const MAX_NESTING = 64;

/** One storage reference from a persistent id. */
class StorageRecord {
  constructor(
    readonly key: string,
    readonly dtype: SafetensorsDType,
    /** Element count that the persistent id declares. */
    readonly numel: number,
  ) {}
}

/** A tensor as `_rebuild_tensor_v2` describes it: a strided view into a storage. */
class TensorRecord {
  constructor(
    readonly storage: StorageRecord,
    readonly storageOffset: number,
    readonly shape: number[],
    readonly stride: number[],
  ) {}
}

export interface PytorchTensorInfo {
  name: string;
  /** Element type of the storage (F64 is converted to f32 on read). */
  dtype: SafetensorsDType;
  shape: number[];
  /** Strides and offset in elements, as PyTorch stores them. */
  stride: number[];
  storageOffset: number;
  /** Key of the storage record (`<archive>/data/<key>`). */
  storageKey: string;
}

export interface PytorchTensor {
  dtype: SafetensorsDType;
  shape: number[];
  data: Float32Array | Int32Array;
}

const RESAVE = 're-save it as a plain state dict (torch.save(model.state_dict(), path)) or convert it to safetensors in Python';

/** A PyTorch checkpoint whose pickle has been read and checked. Storages are extracted on demand. */
export class PytorchCheckpoint {
  private cachedStorage: { key: string; bytes: Uint8Array } | null = null;

  constructor(
    /** File name, for error messages. */
    readonly name: string,
    /** Tensors by flattened name ("model.encoder.weight" for nested dicts), in pickle order. */
    readonly tensors: ReadonlyMap<string, PytorchTensorInfo>,
    readonly byteOrder: 'little' | 'big',
    private readonly zip: Uint8Array,
    private readonly storagePrefix: string,
  ) {}

  private storageBytes(key: string): Uint8Array {
    if (this.cachedStorage?.key === key) return this.cachedStorage.bytes;
    const entryName = `${this.storagePrefix}${key}`;
    const bytes = unzipEntries(this.zip, this.name, (entry) => entry === entryName)[entryName];
    this.cachedStorage = { key, bytes };
    return bytes;
  }

  private info(name: string): PytorchTensorInfo {
    const info = this.tensors.get(name);
    if (!info) throw new PytorchCheckpointError(this.name, `tensor not found (the checkpoint has ${this.tensors.size} tensors); check the name with "s2d inspect"`, name);
    return info;
  }

  /** Reads one tensor's elements row-major as little-endian bytes in its dtype (a new array). */
  readTensorBytes(name: string): Uint8Array {
    const { dtype, shape, stride, storageOffset, storageKey } = this.info(name);
    const elementSize = BYTES_PER_ELEMENT[dtype];
    const bytes = gatherRowMajor(this.storageBytes(storageKey), elementSize, storageOffset, shape, stride);
    if (this.byteOrder === 'big') swapByteOrder(bytes, elementSize);
    return bytes;
  }

  /** Reads one tensor as f32 (float dtypes) or i32 (integer dtypes and bool, with a range check for I64). */
  readTensor(name: string): PytorchTensor {
    const { dtype, shape } = this.info(name);
    return { dtype, shape, data: decodeTensorBytes(this.readTensorBytes(name), dtype, this.name, name) };
  }
}

/** Reads a checkpoint's pickle and checks every tensor against its storage record. */
export async function openPytorchCheckpoint(source: ByteSource | Uint8Array, name = 'memory'): Promise<PytorchCheckpoint> {
  const input = source instanceof Uint8Array ? bytesSource(source, name) : source;
  const file = input.name;
  const fail = (message: string, key?: string): never => {
    throw new PytorchCheckpointError(file, message, key);
  };

  // NOTE: fflate unzips from memory, so the whole file is read here (one copy of the file,
  // plus one storage at a time while tensors are read).
  const zip = await input.read(0, input.size);
  checkSignature(zip, file);
  const entries = listZipEntries(zip, file);

  // torch.jit.save archives also have data.pkl, but their pickle references TorchScript classes.
  if ([...entries.keys()].some((entry) => /^[^/]+\/constants\.pkl$/.test(entry))) {
    fail(`is a TorchScript archive (torch.jit.save), not a torch.save checkpoint; save the model's state_dict with torch.save instead`);
  }
  const pickles = [...entries.keys()].filter((entry) => /^[^/]+\/data\.pkl$/.test(entry) || entry === 'data.pkl');
  if (pickles.length === 0) fail(`the zip archive has no "<archive>/data.pkl" entry (${entries.size} entries), so it is not a PyTorch checkpoint; check the file`);
  if (pickles.length > 1) fail(`the zip archive has ${pickles.length} data.pkl entries (${pickles.join(', ')}); a checkpoint has one, so the file is corrupt; save it again with torch.save`);
  const pickleEntry = pickles[0];
  const prefix = pickleEntry.slice(0, -'data.pkl'.length);
  const byteOrderEntry = `${prefix}byteorder`;
  const records = unzipEntries(zip, file, (entry) => entry === pickleEntry || entry === byteOrderEntry);

  let byteOrder: 'little' | 'big' = 'little';
  if (records[byteOrderEntry]) {
    const text = new TextDecoder().decode(records[byteOrderEntry]).trim();
    if (text !== 'little' && text !== 'big') fail(`byteorder record is ${JSON.stringify(text)}, expected "little" or "big"; the file is corrupt, download or save it again`, byteOrderEntry);
    byteOrder = text as 'little' | 'big';
  }

  const root = unpickle(records[pickleEntry], {
    file,
    entry: pickleEntry,
    resolveGlobal: (module, globalName) => resolveGlobal(module, globalName, file, pickleEntry),
    persistentLoad: (pid) => loadStorage(pid, file, pickleEntry),
    build: (target, state) => {
      // OrderedDict state dicts carry `_metadata` (module versions) as an attribute, which the reader ignores.
      if (target instanceof Map && state instanceof Map) return;
      throw new UnpicklingError(file, `BUILD (__setstate__) on ${describePickleValue(target)} with ${describePickleValue(state)} is not supported; ${RESAVE}`, pickleEntry);
    },
  });

  const tensors = new Map<string, PytorchTensorInfo>();
  for (const [tensorName, record] of collectTensors(root, file, pickleEntry)) {
    const { storage, storageOffset, shape, stride } = record;
    const entryName = `${prefix}data/${storage.key}`;
    const entry = entries.get(entryName);
    if (!entry) return fail(`storage record "${entryName}" is missing from the zip archive; the file is truncated or corrupt, download or save it again`, tensorName);
    const expectedBytes = storage.numel * BYTES_PER_ELEMENT[storage.dtype];
    if (entry.originalSize !== expectedBytes) {
      fail(`storage record "${entryName}" has ${entry.originalSize} bytes, but the pickle declares ${storage.numel} ${storage.dtype} elements (${expectedBytes} bytes); the file is corrupt, download or save it again`, tensorName);
    }
    tensors.set(tensorName, { name: tensorName, dtype: storage.dtype, shape, stride, storageOffset, storageKey: storage.key });
  }
  if (tensors.size === 0) fail(`the checkpoint contains no tensors; check that the file contains model weights`);
  return new PytorchCheckpoint(file, tensors, byteOrder, zip, `${prefix}data/`);
}

/** Reads every tensor of a checkpoint (see `openPytorchCheckpoint` to read them one at a time). */
export async function readPytorchCheckpoint(source: ByteSource | Uint8Array, name = 'memory'): Promise<Map<string, PytorchTensor>> {
  const checkpoint = await openPytorchCheckpoint(source, name);
  const out = new Map<string, PytorchTensor>();
  for (const tensorName of checkpoint.tensors.keys()) out.set(tensorName, checkpoint.readTensor(tensorName));
  return out;
}

/**
 * Serialises a checkpoint as safetensors chunks (for writeFileAtomic). Every dtype is kept except
 * F64, which becomes F32 because the engine computes in f32. Metadata defaults to {"format": "pt"},
 * as Hugging Face's converter writes.
 */
export function pytorchToSafetensors(checkpoint: PytorchCheckpoint, metadata: Record<string, string> = { format: 'pt' }): Uint8Array[] {
  const tensors: TensorToWrite[] = [];
  for (const { name, dtype, shape } of checkpoint.tensors.values()) {
    if (dtype === 'F64') {
      tensors.push({ name, dtype: 'F32', shape, data: checkpoint.readTensor(name).data });
    } else {
      tensors.push({ name, dtype, shape, data: checkpoint.readTensorBytes(name) });
    }
  }
  return encodeSafetensors(tensors, metadata);
}

function checkSignature(bytes: Uint8Array, file: string): void {
  const isZip = bytes.byteLength >= 4 && bytes[0] === 0x50 && bytes[1] === 0x4b && (bytes[2] === 3 || bytes[2] === 5) && (bytes[3] === 4 || bytes[3] === 6);
  if (isZip) return;
  if (bytes.byteLength > 0 && bytes[0] === 0x80) {
    throw new PytorchCheckpointError(file, `is in the legacy PyTorch format (a bare pickle stream, written before PyTorch 1.6 or with _use_new_zipfile_serialization=False), which is not supported; load and save it again with PyTorch 1.6 or newer`);
  }
  throw new PytorchCheckpointError(file, `is not a zip archive (the file has ${bytes.byteLength} bytes and does not start with "PK"), so it is not a PyTorch checkpoint; check the file`);
}

/**
 * Lists the zip entries by name. The end-of-central-directory record is checked first because
 * fflate trusts its entry count, and a forged count would make it loop for billions of entries.
 */
function listZipEntries(zip: Uint8Array, file: string): Map<string, UnzipFileInfo> {
  const view = new DataView(zip.buffer, zip.byteOffset, zip.byteLength);
  const invalid = (detail: string): never => {
    throw new PytorchCheckpointError(file, `is not a valid zip archive (${detail}); the file is truncated or corrupt, download or save it again`);
  };
  let end = zip.byteLength - 22;
  while (end >= 0 && view.getUint32(end, true) !== 0x06054b50) {
    if (zip.byteLength - end > 22 + 0xffff) break;
    end--;
  }
  if (end < 0 || view.getUint32(end, true) !== 0x06054b50) invalid('no end-of-central-directory record');
  let count = view.getUint16(end + 10, true);
  let directoryOffset = view.getUint32(end + 16, true);
  const locator = end - 20;
  if (locator >= 0 && view.getUint32(locator, true) === 0x07064b50) {
    // ZIP64: the 32-bit fields are placeholders, and the real values sit in the ZIP64 record.
    const record = Number(view.getBigUint64(locator + 8, true));
    if (record + 56 > zip.byteLength || view.getUint32(record, true) !== 0x06064b50) invalid('ZIP64 end-of-central-directory record missing');
    count = Number(view.getBigUint64(record + 32, true));
    directoryOffset = Number(view.getBigUint64(record + 48, true));
  }
  // A central directory entry has at least 46 bytes.
  if (directoryOffset + count * 46 > zip.byteLength) invalid(`the central directory claims ${count} entries at byte ${directoryOffset}, beyond the ${zip.byteLength}-byte file`);

  const entries = new Map<string, UnzipFileInfo>();
  unzipEntries(zip, file, () => false, (info) => {
    entries.set(info.name, info);
  });
  return entries;
}

/** Extracts the entries that `select` accepts (STORED or DEFLATE), checking each length. */
function unzipEntries(zip: Uint8Array, file: string, select: (name: string) => boolean, onEntry?: (info: UnzipFileInfo) => void): Record<string, Uint8Array> {
  const selected = new Map<string, UnzipFileInfo>();
  let files: Record<string, Uint8Array>;
  try {
    files = unzipSync(zip, {
      filter: (info) => {
        onEntry?.(info);
        if (!select(info.name)) return false;
        if (info.compression !== 0 && info.compression !== 8) {
          throw new PytorchCheckpointError(file, `zip compression method ${info.compression} is not supported (only stored and deflate); save the checkpoint again with torch.save`, info.name);
        }
        selected.set(info.name, info);
        return true;
      },
    });
  } catch (error) {
    if (error instanceof CheckpointError) throw error;
    throw new PytorchCheckpointError(file, `is not a valid zip archive (${(error as Error).message}); the file is truncated or corrupt, download or save it again`, undefined, { cause: error });
  }
  for (const [name, info] of selected) {
    if (files[name]?.byteLength !== info.originalSize) {
      throw new PytorchCheckpointError(file, `zip entry has ${files[name]?.byteLength ?? 0} bytes but its header declares ${info.originalSize}; the file is truncated or corrupt, download or save it again`, name);
    }
  }
  return files;
}

function resolveGlobal(module: string, name: string, file: string, entry: string): PickleGlobal {
  const fullName = `${module}.${name}`;
  const fail = (message: string): never => {
    throw new UnpicklingError(file, `${fullName}: ${message}; ${RESAVE}`, entry);
  };
  if (module === 'torch' && Object.hasOwn(STORAGE_DTYPES, name)) {
    return { module, name, call: () => fail('storage classes are only valid inside persistent ids') };
  }
  switch (fullName) {
    case 'collections.OrderedDict':
      return {
        module,
        name,
        call: (args) => {
          if (args.length === 0) return new Map();
          const [pairs] = args;
          if (args.length !== 1 || !Array.isArray(pairs) || !pairs.every((pair) => Array.isArray(pair) && pair.length === 2)) {
            return fail(`expected no arguments or a list of (key, value) pairs, found ${args.length} arguments`);
          }
          return new Map(pairs as [unknown, unknown][]);
        },
      };
    case 'torch._utils._rebuild_tensor_v2':
      return { module, name, call: (args) => rebuildTensor(args, fail) };
    case 'torch._utils._rebuild_parameter':
      return {
        module,
        name,
        call: (args) => {
          if (args.length !== 3 || !(args[0] instanceof TensorRecord)) return fail(`expected (tensor, requires_grad, backward_hooks), found ${args.length} arguments starting with ${describePickleValue(args[0])}`);
          return args[0];
        },
      };
  }
  throw new UnpicklingError(
    file,
    `forbidden global ${fullName}: only ${ALLOWED_GLOBALS.join(', ')} and the torch.*Storage classes are allowed, so the file was rejected without running any of it; if you trust its source, ${RESAVE}`,
    entry,
  );
}

/** Checks the arguments of `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])` and returns the view. */
function rebuildTensor(args: unknown[], fail: (message: string) => never): TensorRecord {
  if (args.length !== 6 && args.length !== 7) fail(`expected 6 or 7 arguments, found ${args.length}`);
  const [storage, storageOffset, shape, stride] = args;
  if (!(storage instanceof StorageRecord)) return fail(`argument 0 is ${describePickleValue(storage)}, expected a storage from a persistent id`);
  if (!isCount(storageOffset)) return fail(`storage offset is ${describePickleValue(storageOffset)}, expected a non-negative integer`);
  if (!Array.isArray(shape) || !shape.every(isCount)) return fail(`size is ${describePickleValue(shape)} ${JSON.stringify(shape)}, expected a tuple of non-negative integers`);
  if (!Array.isArray(stride) || stride.length !== shape.length || !stride.every(isCount)) {
    return fail(`stride ${JSON.stringify(stride)} does not match size ${JSON.stringify(shape)}; expected one non-negative integer per dimension`);
  }
  const count = elementCount(shape as number[]);
  if (!Number.isSafeInteger(count * BYTES_PER_ELEMENT[storage.dtype])) return fail(`size ${JSON.stringify(shape)} has too many elements`);
  if (count > 0) {
    const last = (shape as number[]).reduce((offset, dim, d) => offset + (dim - 1) * (stride as number[])[d], storageOffset as number);
    if (last >= storage.numel) {
      return fail(`the view (offset ${storageOffset}, size ${JSON.stringify(shape)}, stride ${JSON.stringify(stride)}) reaches element ${last}, but storage "${storage.key}" has ${storage.numel} elements`);
    }
  }
  return new TensorRecord(storage, storageOffset as number, shape as number[], stride as number[]);
}

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

/** Resolves PyTorch's persistent id ('storage', storage class, key, location, element count). */
function loadStorage(pid: unknown, file: string, entry: string): StorageRecord {
  const fail = (message: string): never => {
    throw new UnpicklingError(file, `persistent id ${message}; the file is corrupt, ${RESAVE}`, entry);
  };
  if (!Array.isArray(pid) || pid.length !== 5 || pid[0] !== 'storage') return fail(`is ${describePickleValue(pid)}, expected ('storage', storage class, key, location, element count)`);
  const [, storageClass, key, location, numel] = pid;
  const className = (storageClass as PickleGlobal | null)?.name;
  if (typeof className !== 'string' || (storageClass as PickleGlobal).module !== 'torch' || !Object.hasOwn(STORAGE_DTYPES, className)) {
    return fail(`names ${describePickleValue(storageClass)} as its storage class, expected one of ${Object.keys(STORAGE_DTYPES).map((n) => `torch.${n}`).join(', ')}`);
  }
  if (typeof key !== 'string' || key === '') return fail(`has key ${describePickleValue(key)}, expected a non-empty string`);
  if (typeof location !== 'string') return fail(`has location ${describePickleValue(location)}, expected a string such as "cpu"`);
  if (!isCount(numel)) return fail(`has element count ${describePickleValue(numel)}, expected a non-negative integer`);
  return new StorageRecord(key, STORAGE_DTYPES[className], numel);
}

/** Flattens nested dicts and lists into dotted names ("model.encoder.weight", "history.0") and skips non-tensor values. */
function collectTensors(root: unknown, file: string, entry: string): Map<string, TensorRecord> {
  const fail = (message: string): never => {
    throw new PytorchCheckpointError(file, message, entry);
  };
  if (root instanceof TensorRecord) fail(`the checkpoint is a single tensor, not a dict of named tensors; save a dict instead (torch.save({"weight": tensor}, path))`);

  const tensors = new Map<string, TensorRecord>();
  const ancestors = new Set<object>();
  const visit = (value: unknown, path: string, depth: number): void => {
    if (value instanceof TensorRecord) {
      if (tensors.has(path)) fail(`two tensors have the name "${path}" once nested keys are joined with "."; rename one of them before saving`);
      tensors.set(path, value);
      return;
    }
    if (!(value instanceof Map) && !Array.isArray(value)) return;
    // A container that contains itself (possible through the memo) is walked once.
    if (ancestors.has(value)) return;
    if (depth > MAX_NESTING) fail(`the pickled object nests deeper than ${MAX_NESTING} levels at "${path}"; a state dict nests a few levels, so the file is corrupt; check where it came from and save it again`);
    ancestors.add(value);
    const children: [unknown, unknown][] = value instanceof Map ? [...value.entries()] : value.map((child, i) => [i, child]);
    for (const [key, child] of children) visit(child, path === '' ? String(key) : `${path}.${String(key)}`, depth + 1);
    ancestors.delete(value);
  };
  visit(root, '', 0);
  return tensors;
}

/** Copies a strided view of `storage` (offset and strides in elements) into a row-major array. */
function gatherRowMajor(storage: Uint8Array, elementSize: number, offset: number, shape: number[], stride: number[]): Uint8Array {
  const count = elementCount(shape);
  const out = new Uint8Array(count * elementSize);
  if (count === 0) return out;

  // Contiguous views are one copy. Dimensions of size 1 may have any stride.
  let expectedStride = 1;
  let contiguous = true;
  for (let d = shape.length - 1; d >= 0; d--) {
    if (shape[d] !== 1 && stride[d] !== expectedStride) contiguous = false;
    expectedStride *= shape[d];
  }
  if (contiguous) {
    out.set(storage.subarray(offset * elementSize, (offset + count) * elementSize));
    return out;
  }

  // Walk the multi-index in row-major order, moving the source element by the strides.
  const rank = shape.length;
  const index = new Array<number>(rank).fill(0);
  let source = offset;
  for (let i = 0; i < count; i++) {
    const from = source * elementSize;
    const to = i * elementSize;
    for (let b = 0; b < elementSize; b++) out[to + b] = storage[from + b];
    for (let d = rank - 1; d >= 0; d--) {
      index[d] += 1;
      source += stride[d];
      if (index[d] < shape[d]) break;
      source -= stride[d] * shape[d];
      index[d] = 0;
    }
  }
  return out;
}

function swapByteOrder(bytes: Uint8Array, elementSize: number): void {
  if (elementSize === 1) return;
  for (let start = 0; start < bytes.byteLength; start += elementSize) bytes.subarray(start, start + elementSize).reverse();
}
