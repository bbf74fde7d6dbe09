// Sharded safetensors checkpoints, as Hugging Face writes them for large models: an index file
// (`model.safetensors.index.json`) of the form
//   {"metadata": {"total_size": 123}, "weight_map": {"bert.embeddings.word_embeddings.weight": "model-00001-of-00002.safetensors", ...}}
// beside the shard files it names. Shards are opened on first use and read tensor by tensor.
import { MAX_HEADER_BYTES, openSafetensors, readTensor, readTensorBytes, type SafetensorsIndex, type TensorEntry } from './safetensors.ts';
import { CheckpointError, urlSource, type ByteSource, type UrlSourceOptions } from './source.ts';

export const SHARDED_INDEX_SUFFIX = '.safetensors.index.json';

/** An invalid index file, a missing shard, or a shard that lacks a tensor the index maps to it. */
export class ShardedCheckpointError extends CheckpointError {}

/** Opens a shard by the file name that weight_map gives (relative to the index file). */
export type ShardOpener = (file: string) => Promise<ByteSource>;

const REDOWNLOAD = 'download the index and every shard it lists again, from the same revision';

export class ShardedCheckpoint {
  private readonly shards = new Map<string, Promise<SafetensorsIndex>>();

  private constructor(
    /** The index file's name, for error messages. */
    readonly name: string,
    /** The index's "metadata" object (Hugging Face writes {"total_size": bytes}). */
    readonly metadata: Record<string, unknown>,
    /** Tensor name → shard file, in the index's order. */
    readonly weightMap: ReadonlyMap<string, string>,
    private readonly openShard: ShardOpener,
  ) {}

  /** Reads and validates the index. A shard is opened when a tensor in it is first requested. */
  static async open(index: ByteSource, openShard: ShardOpener): Promise<ShardedCheckpoint> {
    const fail = (message: string, key?: string): never => {
      throw new ShardedCheckpointError(index.name, message, key);
    };
    if (index.size > MAX_HEADER_BYTES) fail(`index has ${index.size} bytes, more than the ${MAX_HEADER_BYTES}-byte limit; check that the file is a model.safetensors.index.json`);

    let parsed: unknown;
    try {
      parsed = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(await index.read(0, index.size)));
    } catch (error) {
      if (error instanceof CheckpointError) throw error;
      fail(`index is not valid UTF-8 JSON (${(error as Error).message}); ${REDOWNLOAD}`);
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) fail(`index is not a JSON object, expected {"metadata": {...}, "weight_map": {...}}; ${REDOWNLOAD}`);
    const { metadata = {}, weight_map: weightMap } = parsed as { metadata?: unknown; weight_map?: unknown };
    if (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata)) fail(`"metadata" is not a JSON object; ${REDOWNLOAD}`);
    if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) {
      fail(`"weight_map" is ${weightMap === undefined ? 'missing' : 'not a JSON object'}, so this is not a sharded-checkpoint index (expected {"tensor name": "shard file", ...}); pass a model.safetensors file or a model.safetensors.index.json`);
    }

    const map = new Map<string, string>();
    for (const [tensor, file] of Object.entries(weightMap as Record<string, unknown>)) {
      if (typeof file !== 'string' || file === '') fail(`weight_map value ${JSON.stringify(file)} is not a file name; ${REDOWNLOAD}`, tensor);
      if (!isRelativeFileName(file as string)) {
        fail(`weight_map names the shard ${JSON.stringify(file)}, which is not a relative path inside the checkpoint folder; shards must sit beside the index`, tensor);
      }
      map.set(tensor, file as string);
    }
    if (map.size === 0) fail(`"weight_map" lists no tensors; ${REDOWNLOAD}`);
    return new ShardedCheckpoint(index.name, metadata as Record<string, unknown>, map, openShard);
  }

  /** Shard files in the order the index first names them. */
  get shardFiles(): string[] {
    return [...new Set(this.weightMap.values())];
  }

  private shardOf(name: string): string {
    const file = this.weightMap.get(name);
    if (file === undefined) throw new ShardedCheckpointError(this.name, `tensor not found in weight_map (${this.weightMap.size} tensors); check the name with "s2d inspect"`, name);
    return file;
  }

  /** Opens (once) and validates the header of one shard. */
  openShardIndex(file: string, forTensor?: string): Promise<SafetensorsIndex> {
    let shard = this.shards.get(file);
    if (!shard) {
      shard = (async () => {
        let source: ByteSource;
        try {
          source = await this.openShard(file);
        } catch (error) {
          const count = [...this.weightMap.values()].filter((value) => value === file).length;
          throw new ShardedCheckpointError(
            this.name,
            `shard "${file}" (mapped to ${count} tensors) could not be opened: ${(error as Error).message}; download every shard listed in weight_map into the index's folder`,
            forTensor,
            { cause: error },
          );
        }
        return openSafetensors(source);
      })();
      this.shards.set(file, shard);
    }
    return shard;
  }

  private async locate(name: string): Promise<{ shard: SafetensorsIndex; entry: TensorEntry }> {
    const file = this.shardOf(name);
    const shard = await this.openShardIndex(file, name);
    const entry = shard.tensors.get(name);
    if (!entry) {
      throw new ShardedCheckpointError(this.name, `weight_map maps the tensor to "${file}", but that shard does not contain it; the index and the shards are from different versions, ${REDOWNLOAD}`, name);
    }
    return { shard, entry };
  }

  /** Returns the tensor's dtype, shape and byte range, opening its shard if needed. */
  async entry(name: string): Promise<TensorEntry> {
    return (await this.locate(name)).entry;
  }

  /** Reads one tensor as f32 or i32, like `readTensor` for a single file. */
  async readTensor(name: string): Promise<Float32Array | Int32Array> {
    return readTensor((await this.locate(name)).shard, name);
  }

  /** Reads one tensor's stored bytes, like `readTensorBytes` for a single file. */
  async readTensorBytes(name: string): Promise<Uint8Array> {
    return readTensorBytes((await this.locate(name)).shard, name);
  }

  /** Opens every shard, checks that each contains the tensors mapped to it, and returns the entries in index order. */
  async entries(): Promise<Map<string, TensorEntry>> {
    const entries = new Map<string, TensorEntry>();
    for (const name of this.weightMap.keys()) entries.set(name, await this.entry(name));
    return entries;
  }

  /** Closes the shards opened so far. The index source stays open for its owner to close. */
  async close(): Promise<void> {
    const opened = [...this.shards.values()];
    this.shards.clear();
    for (const shard of await Promise.allSettled(opened)) {
      if (shard.status === 'fulfilled') await shard.value.source.close?.();
    }
  }
}

/** Rejects absolute paths, URLs, backslashes and ".." segments, so an index cannot point outside its folder. */
function isRelativeFileName(file: string): boolean {
  if (file.startsWith('/') || file.includes('\\') || /^[a-z][a-z0-9+.-]*:/i.test(file)) return false;
  return file.split('/').every((segment) => segment !== '' && segment !== '..' && segment !== '.');
}

/** Opens a sharded checkpoint over HTTP: the index URL, and each shard resolved relative to it. */
export async function openShardedUrl(indexUrl: string | URL, options: UrlSourceOptions = {}): Promise<ShardedCheckpoint> {
  const index = await urlSource(indexUrl, options);
  return ShardedCheckpoint.open(index, (file) => urlSource(new URL(file, indexUrl), options));
}
