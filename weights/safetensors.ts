// safetensors: an 8-byte little-endian header length, a JSON header mapping tensor names to
// {dtype, shape, data_offsets: [begin, end]} (offsets relative to the end of the header), then
// the raw little-endian tensor bytes. Optional "__metadata__" maps strings to strings.
// The reader validates every header field before any tensor byte is read, and each error
// names the file, the tensor and what to do.
import { bfloat16BitsToFloat, floatToBfloat16Bits, floatToHalfBits, halfBitsToFloat } from './float16.ts';
import { CheckpointError, type ByteSource } from './source.ts';

export type SafetensorsDType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

export const BYTES_PER_ELEMENT: Record<SafetensorsDType, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };

const FLOAT_DTYPES = new Set<SafetensorsDType>(['F64', 'F32', 'F16', 'BF16']);

/** Header lengths above this are rejected as corrupt (the format's own reference caps at 100 MB). */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export interface TensorEntry {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** Absolute byte range in the file. */
  begin: number;
  end: number;
}

/** An invalid safetensors file or tensor. `file` and `key` (the tensor name) locate the problem. */
export class SafetensorsError extends CheckpointError {}

export interface SafetensorsIndex {
  source: ByteSource;
  tensors: Map<string, TensorEntry>;
  metadata: Record<string, string>;
}

const TRUNCATED = 'the file is truncated; download or export it again';
const CORRUPT_HEADER = 'the header is corrupt; export the file again with a safetensors writer';

export function elementCount(shape: readonly number[]): number {
  return shape.reduce((product, dim) => product * dim, 1);
}

/** Reads and validates the header only. Tensor bytes stay in the source until `readTensor`. */
export async function openSafetensors(source: ByteSource): Promise<SafetensorsIndex> {
  const fail = (message: string, key?: string): never => {
    throw new SafetensorsError(source.name, message, key);
  };

  if (source.size < 8) fail(`file has ${source.size} bytes, fewer than the 8-byte header length; the file is empty or truncated, download or export it again`);
  const prefix = await source.read(0, 8);
  const declaredLength = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (declaredLength > BigInt(MAX_HEADER_BYTES)) {
    fail(`header length ${declaredLength} exceeds the ${MAX_HEADER_BYTES}-byte limit; the file is corrupt or not safetensors (check that it is a .safetensors file)`);
  }
  const headerLength = Number(declaredLength);
  if (8 + headerLength > source.size) fail(`header length ${headerLength} runs past the end of the file (${source.size} bytes); ${TRUNCATED}`);

  const header = parseHeader(await source.read(8, headerLength), fail);
  const dataStart = 8 + headerLength;
  const dataSize = source.size - dataStart;
  const tensors = new Map<string, TensorEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, value] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = parseMetadata(value, fail);
      continue;
    }
    const { dtype, shape, begin, end } = parseEntry(name, value, fail);
    if (end > dataSize) fail(`data_offsets end ${end} lies past the end of the data section (${dataSize} bytes); ${TRUNCATED}`, name);
    tensors.set(name, { name, dtype, shape, begin: dataStart + begin, end: dataStart + end });
  }

  // NOTE: the format's README forbids overlapping ranges but does not require the ranges to
  // cover the data section, so gaps and trailing bytes are accepted.
  const ranges = [...tensors.values()].filter((entry) => entry.end > entry.begin).sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < ranges.length; i++) {
    const [previous, current] = [ranges[i - 1], ranges[i]];
    if (current.begin < previous.end) {
      fail(`data_offsets overlap those of tensor "${previous.name}" (bytes ${current.begin - dataStart}..${previous.end - dataStart} are claimed twice); ${CORRUPT_HEADER}`, current.name);
    }
  }
  return { source, tensors, metadata };
}

function parseHeader(bytes: Uint8Array, fail: (message: string) => never): Record<string, unknown> {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return fail(`header is not valid UTF-8; the file is corrupt or not safetensors (check that it is a .safetensors file)`);
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (error) {
    return fail(`header is not valid JSON (${(error as Error).message}); the file is corrupt or not safetensors (check that it is a .safetensors file)`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    return fail(`header is ${describeJson(header)}, expected a JSON object mapping tensor names to {dtype, shape, data_offsets}; ${CORRUPT_HEADER}`);
  }
  const duplicate = findDuplicateKey(text);
  if (duplicate !== undefined) return fail(`header contains the key ${JSON.stringify(duplicate)} twice, which the format forbids; ${CORRUPT_HEADER}`);
  return header as Record<string, unknown>;
}

function parseMetadata(value: unknown, fail: (message: string, key?: string) => never): Record<string, string> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return fail(`is ${describeJson(value)}, expected an object of string values; ${CORRUPT_HEADER}`, '__metadata__');
  }
  const metadata: Record<string, string> = {};
  for (const [key, item] of Object.entries(value as Record<string, unknown>)) {
    if (typeof item !== 'string') fail(`value of ${JSON.stringify(key)} is ${describeJson(item)}, expected a string; ${CORRUPT_HEADER}`, '__metadata__');
    metadata[key] = item as string;
  }
  return metadata;
}

function parseEntry(name: string, value: unknown, fail: (message: string, key?: string) => never): { dtype: SafetensorsDType; shape: number[]; begin: number; end: number } {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return fail(`entry is ${describeJson(value)}, expected {dtype, shape, data_offsets}; ${CORRUPT_HEADER}`, name);
  }
  const entry = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };

  const dtype = entry.dtype;
  if (typeof dtype !== 'string' || !Object.hasOwn(BYTES_PER_ELEMENT, dtype)) {
    return fail(`dtype ${JSON.stringify(dtype) ?? 'is missing'} is not supported (supported: ${Object.keys(BYTES_PER_ELEMENT).join(', ')}); convert the tensor to one of these before saving`, name);
  }

  const shape = entry.shape;
  if (!Array.isArray(shape)) return fail(`shape is ${describeJson(shape)}, expected a list of non-negative integers; ${CORRUPT_HEADER}`, name);
  const badDim = shape.findIndex((dim) => !Number.isSafeInteger(dim) || dim < 0);
  if (badDim >= 0) return fail(`shape ${JSON.stringify(shape)} has dimension ${badDim} = ${JSON.stringify(shape[badDim])}, expected a non-negative integer; ${CORRUPT_HEADER}`, name);
  const count = elementCount(shape);
  const byteLength = count * BYTES_PER_ELEMENT[dtype as SafetensorsDType];
  if (!Number.isSafeInteger(byteLength)) return fail(`shape ${JSON.stringify(shape)} has more elements than can be addressed; ${CORRUPT_HEADER}`, name);

  const offsets = entry.data_offsets;
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((offset) => Number.isSafeInteger(offset) && offset >= 0)) {
    return fail(`data_offsets ${JSON.stringify(offsets) ?? 'is missing'} is not [begin, end] with non-negative integers; ${CORRUPT_HEADER}`, name);
  }
  const [begin, end] = offsets as [number, number];
  if (begin > end) return fail(`data_offsets [${begin}, ${end}] has begin > end; ${CORRUPT_HEADER}`, name);
  if (end - begin !== byteLength) {
    return fail(`${dtype} shape [${shape.join(', ')}] needs ${byteLength} bytes but data_offsets [${begin}, ${end}] span ${end - begin}; ${CORRUPT_HEADER}`, name);
  }
  return { dtype: dtype as SafetensorsDType, shape, begin, end };
}

function describeJson(value: unknown): string {
  if (value === undefined) return 'missing';
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a JSON array';
  if (typeof value === 'object') return 'a JSON object';
  return `the ${typeof value} ${JSON.stringify(value)}`;
}

/**
 * Returns the first key that occurs twice in one object of `text`, or undefined. `text` must be
 * valid JSON: `JSON.parse` keeps the last duplicate silently, so this scan is the only check.
 */
function findDuplicateKey(text: string): string | undefined {
  // One entry per open bracket: the keys seen so far for an object, null for an array.
  const open: (Set<string> | null)[] = [];
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const char = text[i];
    if (char === '"') {
      let close = i + 1;
      while (text[close] !== '"') close += text[close] === '\\' ? 2 : 1;
      if (expectKey) {
        const key = JSON.parse(text.slice(i, close + 1)) as string;
        const keys = open[open.length - 1]!;
        if (keys.has(key)) return key;
        keys.add(key);
        expectKey = false;
      }
      i = close;
    } else if (char === '{') {
      open.push(new Set());
      expectKey = true;
    } else if (char === '[') {
      open.push(null);
    } else if (char === '}' || char === ']') {
      open.pop();
      expectKey = false;
    } else if (char === ',') {
      expectKey = open[open.length - 1] instanceof Set;
    }
  }
  return undefined;
}

function requireEntry(index: SafetensorsIndex, name: string): TensorEntry {
  const entry = index.tensors.get(name);
  if (!entry) throw new SafetensorsError(index.source.name, `tensor not found (the file has ${index.tensors.size} tensors); check the name with "s2d inspect"`, name);
  return entry;
}

/** Reads one tensor's bytes as stored (little-endian, row-major, in its dtype). */
export async function readTensorBytes(index: SafetensorsIndex, name: string): Promise<Uint8Array> {
  const entry = requireEntry(index, name);
  // A copy, because sources may return views of a shared buffer (a Node Buffer's slice() is a view too).
  return new Uint8Array(await index.source.read(entry.begin, entry.end - entry.begin));
}

/** Reads one tensor as f32 (float dtypes) or i32 (integer dtypes, I64 narrowed with a range check). */
export async function readTensor(index: SafetensorsIndex, name: string): Promise<Float32Array | Int32Array> {
  const entry = requireEntry(index, name);
  return decodeTensorBytes(await readTensorBytes(index, name), entry.dtype, index.source.name, name);
}

/**
 * Decodes little-endian tensor bytes to f32 (F64, F32, F16, BF16) or i32 (integer dtypes and
 * BOOL). F64 loses precision. I64 values outside the i32 range raise an error naming `file` and `key`.
 */
export function decodeTensorBytes(bytes: Uint8Array, dtype: SafetensorsDType, file: string, key: string): Float32Array | Int32Array {
  const count = bytes.byteLength / BYTES_PER_ELEMENT[dtype];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (dtype) {
    case 'F32':
      return new Float32Array(alignedCopy(bytes, 4));
    case 'F64':
      return Float32Array.from({ length: count }, (_, i) => view.getFloat64(i * 8, true));
    case 'F16': {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = halfBitsToFloat(view.getUint16(i * 2, true));
      return out;
    }
    case 'BF16': {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = bfloat16BitsToFloat(view.getUint16(i * 2, true));
      return out;
    }
    case 'I32':
      return new Int32Array(alignedCopy(bytes, 4));
    case 'I64': {
      const out = new Int32Array(count);
      for (let i = 0; i < count; i++) {
        const value = view.getBigInt64(i * 8, true);
        if (value > 2147483647n || value < -2147483648n) {
          throw new CheckpointError(file, `I64 element ${i} (${value}) does not fit in i32; read the raw bytes instead (readTensorBytes) or keep the indices below 2^31`, key);
        }
        out[i] = Number(value);
      }
      return out;
    }
    case 'I16':
      return Int32Array.from({ length: count }, (_, i) => view.getInt16(i * 2, true));
    case 'I8':
      return Int32Array.from({ length: count }, (_, i) => view.getInt8(i));
    case 'U8':
    case 'BOOL':
      return Int32Array.from(bytes);
  }
}

/**
 * Returns `bytes` as an ArrayBuffer that a typed array of `elementSize` can view: the
 * underlying buffer when it matches exactly, otherwise a copy.
 * NOTE: typed arrays use the host byte order, so this assumes a little-endian host, as every
 * WebGPU platform is.
 */
function alignedCopy(bytes: Uint8Array, elementSize: number): ArrayBuffer {
  const exact = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && bytes.byteLength % elementSize === 0;
  return exact ? (bytes.buffer as ArrayBuffer) : new Uint8Array(bytes).buffer;
}

export interface TensorToWrite {
  name: string;
  dtype: SafetensorsDType;
  shape: readonly number[];
  /**
   * Values to encode in `dtype`: a Float32Array for F64/F32/F16/BF16 (F16 and BF16 round to
   * nearest even), an Int32Array for the integer dtypes and BOOL. A Uint8Array is taken as the
   * tensor's little-endian bytes already in `dtype`.
   */
  data: Float32Array | Int32Array | Uint8Array;
}

const INTEGER_RANGES: Partial<Record<SafetensorsDType, [number, number]>> = {
  I16: [-32768, 32767],
  I8: [-128, 127],
  U8: [0, 255],
  BOOL: [0, 1],
};

/** Encodes one tensor's data as little-endian bytes in its dtype. */
export function encodeTensorData(tensor: TensorToWrite): Uint8Array {
  const { name, dtype, shape, data } = tensor;
  const fail = (message: string): never => {
    throw new SafetensorsError('encodeSafetensors', message, name);
  };
  if (!Object.hasOwn(BYTES_PER_ELEMENT, dtype)) fail(`dtype ${JSON.stringify(dtype)} is not supported (supported: ${Object.keys(BYTES_PER_ELEMENT).join(', ')})`);
  if (!shape.every((dim) => Number.isSafeInteger(dim) && dim >= 0)) fail(`shape [${shape.join(', ')}] must contain non-negative integers`);
  const count = elementCount(shape);

  if (data instanceof Uint8Array) {
    const expected = count * BYTES_PER_ELEMENT[dtype];
    if (data.byteLength !== expected) fail(`${data.byteLength} bytes of ${dtype} data for shape [${shape.join(', ')}], expected ${expected}`);
    return data;
  }
  if (data.length !== count) fail(`${data.length} values for shape [${shape.join(', ')}], expected ${count}`);
  const isFloat = data instanceof Float32Array;
  if (isFloat !== FLOAT_DTYPES.has(dtype)) {
    fail(`${isFloat ? 'Float32Array' : 'Int32Array'} data cannot be written as ${dtype}; pass ${FLOAT_DTYPES.has(dtype) ? 'a Float32Array' : 'an Int32Array'} or the raw bytes as a Uint8Array`);
  }

  // F32 and I32 data already has the stored layout (little-endian host, see alignedCopy).
  if (dtype === 'F32' || dtype === 'I32') return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);

  const out = new Uint8Array(count * BYTES_PER_ELEMENT[dtype]);
  const view = new DataView(out.buffer);
  const range = INTEGER_RANGES[dtype];
  for (let i = 0; i < count; i++) {
    const value = data[i];
    if (range && (value < range[0] || value > range[1])) fail(`element ${i} (${value}) is outside the ${dtype} range [${range[0]}, ${range[1]}]`);
    switch (dtype) {
      case 'F64': view.setFloat64(i * 8, value, true); break;
      case 'F16': view.setUint16(i * 2, floatToHalfBits(value), true); break;
      case 'BF16': view.setUint16(i * 2, floatToBfloat16Bits(value), true); break;
      case 'I64': view.setBigInt64(i * 8, BigInt(value), true); break;
      case 'I16': view.setInt16(i * 2, value, true); break;
      case 'I8': view.setInt8(i, value); break;
      case 'U8':
      case 'BOOL': view.setUint8(i, value); break;
    }
  }
  return out;
}

/**
 * Serialises tensors into safetensors bytes (header chunk, then one chunk per tensor). Tensors
 * are laid out by element size, largest first, so with the 8-byte-aligned data section every
 * tensor starts at a multiple of its element size.
 */
export function encodeSafetensors(tensors: TensorToWrite[], metadata: Record<string, string> = {}): Uint8Array[] {
  const names = new Set<string>();
  for (const { name } of tensors) {
    if (name === '__metadata__') throw new SafetensorsError('encodeSafetensors', 'is reserved for the metadata; rename the tensor', name);
    if (names.has(name)) throw new SafetensorsError('encodeSafetensors', 'occurs twice in the tensor list; tensor names must be unique', name);
    names.add(name);
  }
  for (const [key, value] of Object.entries(metadata)) {
    if (typeof value !== 'string') throw new SafetensorsError('encodeSafetensors', `value of ${JSON.stringify(key)} is ${typeof value}; metadata values must be strings (JSON.stringify objects first)`, '__metadata__');
  }

  const ordered = tensors
    .map((tensor, order) => ({ tensor, order }))
    .sort((a, b) => BYTES_PER_ELEMENT[b.tensor.dtype] - BYTES_PER_ELEMENT[a.tensor.dtype] || a.order - b.order)
    .map(({ tensor }) => tensor);
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const tensor of ordered) {
    const bytes = encodeTensorData(tensor);
    header[tensor.name] = { dtype: tensor.dtype, shape: tensor.shape, data_offsets: [offset, offset + bytes.byteLength] };
    chunks.push(bytes);
    offset += bytes.byteLength;
  }

  // Pad the header with spaces so tensor data starts 8-byte aligned.
  const json = new TextEncoder().encode(JSON.stringify(header));
  const headerBytes = new Uint8Array(Math.ceil(json.byteLength / 8) * 8).fill(0x20);
  headerBytes.set(json);
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(headerBytes.byteLength), true);
  return [prefix, headerBytes, ...chunks];
}
