// `s2d inspect FILE`: lists the tensors of a .safetensors file, a sharded index
// (model.safetensors.index.json) or a PyTorch .bin/.pt checkpoint: name, dtype, shape and bytes,
// then the totals. A malformed file prints one error line and exits with code 1.
import { stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileSource } from '../../weights/node-files.ts';
import { openPytorchCheckpoint } from '../../weights/pytorch.ts';
import { BYTES_PER_ELEMENT, elementCount, openSafetensors, type SafetensorsDType } from '../../weights/safetensors.ts';
import { ShardedCheckpoint } from '../../weights/sharded.ts';
import { CheckpointError, type ByteSource } from '../../weights/source.ts';

const USAGE = 'usage: s2d inspect FILE (a .safetensors file, a model.safetensors.index.json, or a PyTorch .bin/.pt)';

interface TensorRow {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** Shard file, for sharded checkpoints. */
  shard?: string;
}

interface Listing {
  format: string;
  metadata: Record<string, unknown>;
  tensors: TensorRow[];
}

export async function inspectCommand(args: string[]): Promise<number> {
  const { positionals } = parseArgs({ args, allowPositionals: true, options: {} });
  if (positionals.length !== 1) {
    process.stderr.write(`s2d inspect: expected one FILE, found ${positionals.length}; ${USAGE}\n`);
    return 2;
  }
  let [path] = positionals;
  const inside = await checkpointInFolder(path);
  if (inside === null) {
    process.stderr.write(`s2d inspect: ${path} is a folder without ${FOLDER_FILES.join(', ')}; pass the checkpoint file itself\n`);
    return 1;
  }
  path = inside;
  try {
    process.stdout.write(formatListing(path, await listTensors(path)));
    return 0;
  } catch (error) {
    if (!(error instanceof CheckpointError)) throw error;
    process.stderr.write(`s2d inspect: ${error.message.replace(/\s*\n\s*/g, ' ')}\n`);
    return 1;
  }
}

/** Checkpoint files looked for, in this order, when `s2d inspect` is given a folder. */
const FOLDER_FILES = ['model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin'];

/** Returns `path` itself when it is not a folder, else the first of FOLDER_FILES inside it, or null. */
async function checkpointInFolder(path: string): Promise<string | null> {
  const isFolder = await stat(path).then((info) => info.isDirectory(), () => false);
  if (!isFolder) return path;
  for (const name of FOLDER_FILES) {
    const candidate = join(path, name);
    if (await stat(candidate).then((info) => info.isFile(), () => false)) return candidate;
  }
  return null;
}

/** Reads the header, index or pickle of `path` (never the tensor data) and lists its tensors. */
export async function listTensors(path: string): Promise<Listing> {
  const source = await openFile(path);
  try {
    if (path.endsWith('.json')) return await listSharded(path, source);
    const signature = await source.read(0, Math.min(2, source.size));
    const isPytorch = (signature[0] === 0x50 && signature[1] === 0x4b) || signature[0] === 0x80;
    if (isPytorch) {
      const checkpoint = await openPytorchCheckpoint(source);
      return { format: 'PyTorch checkpoint (zip)', metadata: {}, tensors: [...checkpoint.tensors.values()] };
    }
    const index = await openSafetensors(source);
    return { format: 'safetensors', metadata: index.metadata, tensors: [...index.tensors.values()] };
  } finally {
    await source.close?.();
  }
}

async function listSharded(path: string, indexSource: ByteSource): Promise<Listing> {
  const checkpoint = await ShardedCheckpoint.open(indexSource, (file) => openFile(join(dirname(path), file)));
  try {
    const entries = await checkpoint.entries();
    const tensors = [...entries.values()].map(({ name, dtype, shape }) => ({ name, dtype, shape, shard: checkpoint.weightMap.get(name) }));
    return { format: `sharded safetensors (${checkpoint.shardFiles.length} shards)`, metadata: checkpoint.metadata, tensors };
  } finally {
    await checkpoint.close();
  }
}

/** fileSource, with "file not found" as a CheckpointError so that it prints as one line. */
async function openFile(path: string): Promise<ByteSource> {
  try {
    return await fileSource(path);
  } catch (error) {
    throw new CheckpointError(path, `cannot be opened (${(error as Error).message.replace(`${path}: `, '')})`, undefined, { cause: error });
  }
}

function formatListing(path: string, listing: Listing): string {
  const rows = listing.tensors.map((tensor) => {
    const count = elementCount(tensor.shape);
    return { ...tensor, shapeText: `[${tensor.shape.join(', ')}]`, count, bytes: count * BYTES_PER_ELEMENT[tensor.dtype] };
  });
  const nameWidth = Math.max(4, ...rows.map((row) => row.name.length));
  const shapeWidth = Math.max(5, ...rows.map((row) => row.shapeText.length));
  const sharded = rows.some((row) => row.shard !== undefined);

  const lines = [`${path}: ${listing.format}`];
  for (const [key, value] of Object.entries(listing.metadata)) {
    lines.push(`metadata ${key}: ${typeof value === 'string' ? value : JSON.stringify(value)}`);
  }
  lines.push(`${'name'.padEnd(nameWidth)}  dtype  ${'shape'.padEnd(shapeWidth)}  ${'bytes'.padStart(12)}${sharded ? '  shard' : ''}`);
  for (const row of rows) {
    const shard = row.shard !== undefined ? `  ${row.shard}` : '';
    lines.push(`${row.name.padEnd(nameWidth)}  ${row.dtype.padEnd(5)}  ${row.shapeText.padEnd(shapeWidth)}  ${String(row.bytes).padStart(12)}${shard}`);
  }
  const elements = rows.reduce((total, row) => total + row.count, 0);
  const bytes = rows.reduce((total, row) => total + row.bytes, 0);
  lines.push(`total: ${rows.length} tensors, ${elements} elements, ${bytes} bytes`);
  return `${lines.join('\n')}\n`;
}
