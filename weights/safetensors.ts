// safetensors: an 8-byte little-endian header length, a JSON header mapping tensor names to
// {dtype, shape, data_offsets: [begin, end]} (offsets relative to the end of the header), then
// the raw little-endian tensor bytes. Optional "__metadata__" maps strings to strings.
import type { ByteSource } from './source.ts';

export type SafetensorsDType = 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'U8' | 'BOOL';

const BYTES_PER_ELEMENT: Record<SafetensorsDType, number> = { F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, U8: 1, BOOL: 1 };

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

export class SafetensorsError extends Error {}

export interface SafetensorsIndex {
  source: ByteSource;
  tensors: Map<string, TensorEntry>;
  metadata: Record<string, string>;
}

/** Reads and validates the header only; tensor bytes stay on disk until `readTensor`. */
export async function openSafetensors(source: ByteSource): Promise<SafetensorsIndex> {
  const fail = (message: string): never => {
    throw new SafetensorsError(`${source.name}: ${message}`);
  };
  if (source.size < 8) fail(`file has ${source.size} bytes, fewer than the 8-byte header length; the file is truncated or not safetensors`);
  const prefix = await source.read(0, 8);
  const headerLength = Number(new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true));
  if (headerLength > MAX_HEADER_BYTES) fail(`header length ${headerLength} exceeds the ${MAX_HEADER_BYTES}-byte limit; the file is corrupt or not safetensors`);
  if (8 + headerLength > source.size) fail(`header length ${headerLength} runs past the end of the file (${source.size} bytes); the file is truncated`);

  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder().decode(await source.read(8, headerLength)));
  } catch (error) {
    fail(`header is not valid JSON (${(error as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) fail('header is not a JSON object');

  const dataStart = 8 + headerLength;
  const tensors = new Map<string, TensorEntry>();
  const metadata: Record<string, string> = {};
  for (const [name, value] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof value !== 'object' || value === null) fail('__metadata__ is not an object');
      for (const [key, item] of Object.entries(value as Record<string, unknown>)) {
        if (typeof item !== 'string') fail(`__metadata__["${key}"] is not a string`);
        metadata[key] = item as string;
      }
      continue;
    }
    const entry = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof entry !== 'object' || entry === null) fail(`tensor "${name}": entry is not an object`);
    const dtype = entry.dtype as SafetensorsDType;
    if (typeof dtype !== 'string' || !(dtype in BYTES_PER_ELEMENT)) {
      fail(`tensor "${name}": unsupported dtype ${JSON.stringify(entry.dtype)}; supported: ${Object.keys(BYTES_PER_ELEMENT).join(', ')}`);
    }
    const shape = entry.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) fail(`tensor "${name}": shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
    const offsets = entry.data_offsets;
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) || offsets[0] > offsets[1]) {
      fail(`tensor "${name}": data_offsets ${JSON.stringify(offsets)} is not [begin, end] with begin ≤ end`);
    }
    const [begin, end] = offsets as [number, number];
    const elements = (shape as number[]).reduce((p, d) => p * d, 1);
    const expected = elements * BYTES_PER_ELEMENT[dtype];
    if (end - begin !== expected) {
      fail(`tensor "${name}": ${dtype} shape [${(shape as number[]).join(', ')}] needs ${expected} bytes but data_offsets span ${end - begin}`);
    }
    if (dataStart + end > source.size) fail(`tensor "${name}": data_offsets end ${end} lies past the end of the data (${source.size - dataStart} bytes); the file is truncated`);
    tensors.set(name, { name, dtype, shape: shape as number[], begin: dataStart + begin, end: dataStart + end });
  }

  const ranges = [...tensors.values()].sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < ranges.length; i++) {
    if (ranges[i].begin < ranges[i - 1].end) fail(`tensors "${ranges[i - 1].name}" and "${ranges[i].name}" overlap in the file`);
  }
  return { source, tensors, metadata };
}

function halfToFloat(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

/** Reads one tensor as f32 (floats) or i32 (integers, I64 narrowed with a range check). */
export async function readTensor(index: SafetensorsIndex, name: string): Promise<Float32Array | Int32Array> {
  const entry = index.tensors.get(name);
  if (!entry) throw new SafetensorsError(`${index.source.name}: tensor "${name}" not found; the checkpoint has ${index.tensors.size} tensors`);
  const raw = await index.source.read(entry.begin, entry.end - entry.begin);
  const bytes = raw.slice();
  const view = new DataView(bytes.buffer);
  const count = entry.shape.reduce((p, d) => p * d, 1);
  switch (entry.dtype) {
    case 'F32':
      return new Float32Array(bytes.buffer, 0, count);
    case 'F16': {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = halfToFloat(view.getUint16(i * 2, true));
      return out;
    }
    case 'BF16': {
      const out = new Float32Array(count);
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < count; i++) bits[i] = view.getUint16(i * 2, true) << 16;
      return out;
    }
    case 'I32':
      return new Int32Array(bytes.buffer, 0, count);
    case 'I64': {
      const out = new Int32Array(count);
      for (let i = 0; i < count; i++) {
        const value = view.getBigInt64(i * 8, true);
        if (value > 2147483647n || value < -2147483648n) throw new SafetensorsError(`${index.source.name}: tensor "${name}" element ${i} (${value}) does not fit in i32`);
        out[i] = Number(value);
      }
      return out;
    }
    case 'U8':
    case 'BOOL':
      return Int32Array.from(bytes.subarray(0, count));
  }
}

export interface TensorToWrite {
  name: string;
  dtype: 'F32' | 'I32';
  shape: readonly number[];
  data: Float32Array | Int32Array;
}

/** Serialises tensors into safetensors bytes (header chunk, then one chunk per tensor). */
export function encodeSafetensors(tensors: TensorToWrite[], metadata: Record<string, string> = {}): Uint8Array[] {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    const bytes = t.data.byteLength;
    const expected = t.shape.reduce((p, d) => p * d, 1) * 4;
    if (bytes !== expected) throw new SafetensorsError(`tensor "${t.name}": ${bytes} bytes of data for shape [${t.shape.join(', ')}] (expected ${expected})`);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  // Pad the header with spaces so tensor data starts 8-byte aligned.
  while ((8 + new TextEncoder().encode(json).length) % 8 !== 0) json += ' ';
  const headerBytes = new TextEncoder().encode(json);
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  return [prefix, headerBytes, ...tensors.map((t) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength))];
}
