// Hugging Face checkpoint folders: config.json plus weights in one `model.safetensors` or in
// shards listed by `model.safetensors.index.json`. Weights are copied into our modules tensor
// by tensor through an explicit name map (HF name → our parameter name), so a reader can
// match a file to the code by grep.
//
// The folder is reached through `CheckpointFolder`, so this file runs in Node (node-folder.ts)
// and in a browser alike.
import type { Device } from '../../engine/device.ts';
import type { Module } from '../../engine/nn/module.ts';
import { Random } from '../../engine/random.ts';
import type { Tensor } from '../../engine/tensor.ts';
import { allocationSize, type WebGpuDevice } from '../../engine/webgpu-device.ts';
import { floatArrayToHalf, shapeString, type DType } from '../../engine/dtype.ts';
import { openSafetensors, readTensor, readTensorBytes, type SafetensorsIndex, type TensorEntry } from '../../weights/safetensors.ts';
import { ShardedCheckpoint } from '../../weights/sharded.ts';
import { bytesSource, CheckpointError, type ByteSource } from '../../weights/source.ts';

export const HF_CONFIG_FILE = 'config.json';
export const HF_WEIGHTS_FILE = 'model.safetensors';
export const HF_SHARDED_INDEX_FILE = 'model.safetensors.index.json';

/** Read access to the files of one checkpoint folder. */
export interface CheckpointFolder {
  /** Folder path or URL, for messages. */
  readonly name: string;
  /** The file's text, or null when the folder has no such file. */
  readText(file: string): Promise<string | null>;
  /** Opens a file for ranged reads; rejects when it does not exist. */
  open(file: string): Promise<ByteSource>;
}

/** Reads config.json as a JSON object. */
export async function readHfConfig(folder: CheckpointFolder): Promise<Record<string, unknown>> {
  const text = await folder.readText(HF_CONFIG_FILE);
  if (text === null) throw new CheckpointError(folder.name, `${HF_CONFIG_FILE} not found; point at a Hugging Face model folder (the one holding config.json and the safetensors weights)`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new CheckpointError(folder.name, `${HF_CONFIG_FILE} is not valid JSON (${(error as Error).message}); download it again`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new CheckpointError(folder.name, `${HF_CONFIG_FILE} is not a JSON object`);
  }
  return parsed as Record<string, unknown>;
}

/** The tensors of a checkpoint, single-file or sharded, read one at a time. */
export interface HfWeights {
  readonly name: string;
  /** Every tensor name in the checkpoint. */
  names(): string[];
  entry(name: string): Promise<TensorEntry>;
  read(name: string): Promise<Float32Array | Int32Array>;
  /** The tensor's stored bytes (little-endian, in its checkpoint dtype). */
  readBytes(name: string): Promise<Uint8Array>;
  close(): Promise<void>;
}

/**
 * Reads a float tensor as f16 bit patterns: F16 tensors as stored, other float dtypes rounded
 * to f16 (nearest, ties to even). NOTE: BF16 and F32 values beyond ±65504 become ±Infinity and
 * values below 2^-24 become 0; frozen LLaMA and BERT weights lie well inside that range.
 */
export async function readHalf(weights: HfWeights, name: string): Promise<Uint16Array> {
  const entry = await weights.entry(name);
  if (entry.dtype !== 'F16') return floatArrayToHalf(await weights.read(name));
  // A copy aligns the bits for Uint16Array; safetensors and every supported host are little-endian.
  const bytes = (await weights.readBytes(name)).slice();
  return new Uint16Array(bytes.buffer, 0, bytes.byteLength / 2);
}

function singleFileWeights(index: SafetensorsIndex): HfWeights {
  return {
    name: index.source.name,
    names: () => [...index.tensors.keys()],
    async entry(name) {
      const entry = index.tensors.get(name);
      if (!entry) throw new CheckpointError(index.source.name, 'tensor not found', name);
      return entry;
    },
    read: (name) => readTensor(index, name),
    readBytes: (name) => readTensorBytes(index, name),
    close: async () => index.source.close?.(),
  };
}

function shardedWeights(checkpoint: ShardedCheckpoint, indexSource: ByteSource): HfWeights {
  return {
    name: checkpoint.name,
    names: () => [...checkpoint.weightMap.keys()],
    entry: (name) => checkpoint.entry(name),
    read: (name) => checkpoint.readTensor(name),
    readBytes: (name) => checkpoint.readTensorBytes(name),
    async close() {
      await checkpoint.close();
      await indexSource.close?.();
    },
  };
}

/** Opens model.safetensors, or model.safetensors.index.json and its shards. */
export async function openHfWeights(folder: CheckpointFolder): Promise<HfWeights> {
  if ((await folder.readText(HF_SHARDED_INDEX_FILE)) !== null) {
    const indexSource = await folder.open(HF_SHARDED_INDEX_FILE);
    return shardedWeights(await ShardedCheckpoint.open(indexSource, (file) => folder.open(file)), indexSource);
  }
  let source: ByteSource;
  try {
    source = await folder.open(HF_WEIGHTS_FILE);
  } catch (error) {
    const hasPickleShards = (await folder.readText('pytorch_model.bin.index.json')) !== null;
    const hint = hasPickleShards
      ? 'the folder holds PyTorch pickle shards (pytorch_model-*.bin); convert each with "s2d convert --in SHARD.bin --out SHARD.safetensors" and write a model.safetensors.index.json whose weight_map names the new files'
      : `download ${HF_WEIGHTS_FILE}, or convert a PyTorch pytorch_model.bin with "s2d convert --in pytorch_model.bin --out ${HF_WEIGHTS_FILE}"`;
    throw new CheckpointError(folder.name, `no ${HF_WEIGHTS_FILE} or ${HF_SHARDED_INDEX_FILE} found (${(error as Error).message}); ${hint}`, undefined, { cause: error });
  }
  return singleFileWeights(await openSafetensors(source));
}

/** One checkpoint tensor and the parameter it fills. */
export interface WeightMapEntry {
  /** Name in the checkpoint, e.g. `model.layers.0.self_attn.q_proj.weight`. */
  hf: string;
  /** Our parameter name (Module.namedParameters), e.g. `model.layers.0.self_attn.q_proj.base.weight`. */
  ours: string;
  /**
   * The shape the checkpoint stores. It may differ from our parameter's shape when the
   * element order is the same, e.g. a Conv2d patch weight [D, C, p, p] for our Linear [D, C·p·p].
   */
  shape: number[];
}

export interface LoadWeightsOptions {
  /** Model kind for messages, e.g. "Dinov2". */
  model: string;
  /** Checkpoint tensors that are known and deliberately not loaded (buffers, unused heads). */
  ignored?: (hfName: string) => boolean;
  /** Our parameters that the checkpoint does not provide (e.g. LoRA factors). */
  notInCheckpoint?: (oursName: string) => boolean;
  /** Storage of the parameters that `storesF16` selects (default f32). */
  weightDtype?: WeightDtype;
  /**
   * Frozen parameters that may be stored as f16 when `weightDtype` is 'f16': the weights of
   * layers that read f16 (embedding tables, linear weights). They are loaded with
   * requiresGrad = false.
   */
  storesF16?: (oursName: string) => boolean;
}

/** Storage dtype of frozen checkpoint weights. */
export type WeightDtype = Extract<DType, 'f16' | 'f32'>;

/** Formats a byte count in KiB, MiB or GiB. */
export function formatBytes(bytes: number): string {
  if (bytes >= 2 ** 30) return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
  if (bytes >= 2 ** 20) return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  return `${(bytes / 1024).toFixed(1)} KiB`;
}

function listNames(names: string[], limit = 12): string {
  if (names.length === 0) return 'none';
  const listed = names.slice(0, limit).join(', ');
  return names.length > limit ? `${listed}, … (${names.length - limit} more)` : listed;
}

const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((d, i) => d === b[i]);
const sizeOf = (shape: readonly number[]) => shape.reduce((p, d) => p * d, 1);

/**
 * Copies every checkpoint tensor named in `entries` into the matching parameter of `module`,
 * one tensor at a time (f16/bf16 become f32). Before anything is copied, throws one error that
 * lists the missing tensors (in the map, not in the checkpoint), the unexpected ones (in the
 * checkpoint, neither mapped nor ignored) and any shape that differs.
 */
export async function loadWeightMap(module: Module, entries: WeightMapEntry[], weights: HfWeights, options: LoadWeightsOptions): Promise<void> {
  const parameters = new Map<string, Tensor>(module.namedParameters());
  const available = new Set(weights.names());

  // Every parameter must be mapped once, or be declared as not coming from the checkpoint.
  const mapped = new Set<string>();
  for (const { hf, ours } of entries) {
    if (!parameters.has(ours)) throw new Error(`${options.model} name map: "${hf}" targets "${ours}", which the model does not have`);
    if (mapped.has(ours)) throw new Error(`${options.model} name map: "${ours}" is filled twice`);
    mapped.add(ours);
  }
  const unmapped = [...parameters.keys()].filter((name) => !mapped.has(name) && !options.notInCheckpoint?.(name));
  if (unmapped.length > 0) throw new Error(`${options.model} name map: parameters ${listNames(unmapped)} are not filled from the checkpoint`);

  const missing = entries.filter(({ hf }) => !available.has(hf)).map(({ hf }) => hf);
  const requested = new Set(entries.map(({ hf }) => hf));
  const unexpected = [...available].filter((name) => !requested.has(name) && !options.ignored?.(name));
  const badShapes: string[] = [];
  for (const { hf, shape } of entries) {
    if (!available.has(hf)) continue;
    const entry = await weights.entry(hf);
    if (!sameShape(entry.shape, shape)) badShapes.push(`${hf} is [${entry.shape.join(', ')}], expected [${shape.join(', ')}]`);
    else if (!['F32', 'F16', 'BF16', 'F64'].includes(entry.dtype)) badShapes.push(`${hf} has dtype ${entry.dtype}, expected a float dtype`);
  }
  if (missing.length || unexpected.length || badShapes.length) {
    const parts = [
      `${missing.length} missing tensors: ${listNames(missing)}`,
      `${unexpected.length} unexpected tensors: ${listNames(unexpected)}`,
    ];
    if (badShapes.length) parts.push(`${badShapes.length} tensors of another shape or dtype: ${listNames(badShapes, 6)}`);
    throw new CheckpointError(weights.name, `checkpoint does not match the ${options.model} config (${parts.join('; ')}); check that config.json belongs to these weights`);
  }

  let restored = false;
  for (const { hf, ours, shape } of entries) {
    const parameter = parameters.get(ours)!;
    if (sizeOf(parameter.shape) !== sizeOf(shape)) {
      throw new Error(`${options.model} name map: "${hf}" [${shape.join(', ')}] does not fit "${ours}" [${parameter.shape.join(', ')}]`);
    }
    if (options.weightDtype === 'f16' && options.storesF16?.(ours)) {
      // The f32 storage the model was built with is released once the f16 copy is uploaded.
      parameter.requiresGrad = false;
      const storage = parameter.device.upload(await readHalf(weights, hf), `${ours} ${shapeString(parameter.shape)} f16`);
      parameter.replaceStorage(storage, 'f16');
      restored = true;
    } else {
      parameter.assign(await weights.read(hf));
    }
  }
  // Hand the released f32 buffers back to the driver instead of keeping them pooled.
  if (restored && module.parameters()[0]?.device.kind === 'webgpu') (module.parameters()[0].device as WebGpuDevice).trimPool();
}

/**
 * Builds a model with `build` and loads the checkpoint of `folder` into it. `plan` returns the
 * weight map and load options for the opened checkpoint (they may depend on its tensor names).
 * Disposes the model when loading fails, and closes the checkpoint either way.
 */
export async function buildAndLoad<M extends Module>(
  folder: CheckpointFolder,
  build: () => M,
  plan: (weights: HfWeights) => { entries: WeightMapEntry[]; options: LoadWeightsOptions },
): Promise<M> {
  const weights = await openHfWeights(folder);
  try {
    const model = build();
    try {
      const { entries, options } = plan(weights);
      await loadWeightMap(model, entries, weights, options);
    } catch (error) {
      model.dispose();
      throw error;
    }
    return model;
  } finally {
    await weights.close();
  }
}

/**
 * Whether a checkpoint tensor is a token embedding table, which the embedding op gathers in
 * row ranges when it is larger than one binding.
 */
export function isEmbeddingTable(name: string): boolean {
  return /(^|\.)(embed_tokens|word_embeddings)\.weight$/.test(name);
}

/**
 * Returns whether a frozen checkpoint tensor is used in row ranges when it is larger than one
 * binding. In the LLaMA, BERT and Dinov2 maps, every 2-D `.weight` is an embedding table
 * (gathered by rows) or a linear weight [out, in] (multiplied by `frozenLinear` in row chunks).
 */
export function splitsByRows(name: string, shape: readonly number[]): boolean {
  return shape.length === 2 && name.endsWith('.weight');
}

/**
 * Throws before a model is built when one of its weights would not fit the WebGPU device.
 * Embedding tables and linear weights (see `splitsByRows`) must fit one buffer (maxBufferSize),
 * because the ops use them in row ranges. Every other weight must fit one binding
 * (maxStorageBufferBindingSize). Weights that `storesF16` selects count 2 bytes per element
 * when `weightDtype` is 'f16'. The error names every such tensor; `s2d plan` gives the whole
 * picture.
 */
export function assertWeightsFitDevice(entries: WeightMapEntry[], device: Device, model: string, options: Pick<LoadWeightsOptions, 'weightDtype' | 'storesF16'> = {}): void {
  if (device.kind !== 'webgpu') return;
  const { limits } = (device as WebGpuDevice).device;
  const binding = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
  const bytesOf = ({ ours, shape }: WeightMapEntry) => sizeOf(shape) * (options.weightDtype === 'f16' && options.storesF16?.(ours) ? 2 : 4);
  const describe = (entry: WeightMapEntry) => `${entry.hf} [${entry.shape.join(', ')}] (${formatBytes(bytesOf(entry))})`;
  const allocated = (entry: WeightMapEntry) => allocationSize(bytesOf(entry), { maxBindingBytes: limits.maxStorageBufferBindingSize });

  const split = (entry: WeightMapEntry) => splitsByRows(entry.hf, entry.shape);
  const tooLargeTables = entries.filter((entry) => split(entry) && allocated(entry) > limits.maxBufferSize);
  const tooLarge = entries.filter((entry) => !split(entry) && allocated(entry) > binding);
  const dtypeNote = options.weightDtype === 'f16' ? 'with frozen weights in f16' : 'in f32';
  const problems: string[] = [];
  if (tooLargeTables.length > 0) {
    problems.push(`${tooLargeTables.length} embedding tables or linear weights exceed this adapter's maxBufferSize of ${formatBytes(limits.maxBufferSize)} ${dtypeNote}: ${listNames(tooLargeTables.map(describe), 4)}`);
  }
  if (tooLarge.length > 0) {
    problems.push(`${tooLarge.length} weights exceed this adapter's binding limit of ${formatBytes(binding)} ${dtypeNote}: ${listNames(tooLarge.map(describe), 4)}`);
  }
  if (problems.length === 0) return;
  throw new Error(
    `${model}: ${problems.join('; ')}; ` +
      'only embedding tables and linear weights are split across bindings, so use an adapter with a larger maxStorageBufferBindingSize or maxBufferSize, or f16 weights (see "s2d plan")',
  );
}

/**
 * A Random whose arrays are all zeros: builds a model whose weights a checkpoint overwrites,
 * without spending time on draws that are thrown away.
 */
export class ZeroRandom extends Random {
  constructor() {
    super(0);
  }

  override normalArray(size: number): Float32Array {
    return new Float32Array(size);
  }

  override uniformArray(size: number): Float32Array {
    return new Float32Array(size);
  }
}

/**
 * Typed access to config.json fields. An absent field takes the default of the HF config class,
 * as transformers does. A present field of the wrong type throws, naming the file and the field.
 */
export class ConfigFields {
  constructor(readonly config: Record<string, unknown>, readonly where: string) {}

  has(key: string): boolean {
    return this.config[key] !== undefined && this.config[key] !== null;
  }

  /** Returns a positive integer field. */
  int(key: string, fallback?: number): number {
    const value = this.config[key] ?? fallback;
    if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0) this.fail(key, 'a positive integer');
    return value as number;
  }

  /** Returns a positive number field. */
  number(key: string, fallback?: number): number {
    const value = this.config[key] ?? fallback;
    if (typeof value !== 'number' || !(value > 0)) this.fail(key, 'a positive number');
    return value as number;
  }

  boolean(key: string, fallback: boolean): boolean {
    const value = this.config[key] ?? fallback;
    if (typeof value !== 'boolean') this.fail(key, 'true or false');
    return value as boolean;
  }

  /** Throws unless the field (or `fallback` when absent) is one of `allowed`; `supported` describes what is. */
  expect(key: string, allowed: unknown[], fallback: unknown, supported: string): void {
    const value = this.config[key] === undefined ? fallback : this.config[key];
    if (!allowed.some((item) => item === value)) {
      throw new Error(`${this.where}: "${key}" is ${JSON.stringify(value)}; ${supported}`);
    }
  }

  private fail(key: string, expected: string): never {
    throw new Error(`${this.where}: "${key}" is ${JSON.stringify(this.config[key])}, expected ${expected}`);
  }
}

/** Returns a checkpoint folder over files in memory (text or bytes), e.g. fetched in a browser. */
export function memoryFolder(name: string, files: Record<string, string | Uint8Array>): CheckpointFolder {
  const encoder = new TextEncoder();
  return {
    name,
    async readText(file) {
      const content = files[file];
      if (content === undefined) return null;
      return typeof content === 'string' ? content : new TextDecoder().decode(content);
    },
    async open(file) {
      const content = files[file];
      if (content === undefined) throw new CheckpointError(name, `file ${file} not found`);
      return bytesSource(typeof content === 'string' ? encoder.encode(content) : content, `${name}/${file}`);
    },
  };
}
