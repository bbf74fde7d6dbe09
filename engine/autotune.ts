// Matmul tile autotuning: times the subgroup kernel's tile sizes on the adapter at hand and
// records the fastest per shape class in the device's caps, where the matmul planner reads it.
//
// Candidates are timed in interleaved rounds, every candidate once per round and each round
// starting with the next candidate, so that a slow stretch of a shared machine hits them alike.
// Tiles that generate the same program as another candidate (small M caps the rows) are timed
// once. The winner has the lowest median time. A tile
// is kept only when it beats the built-in default by more than `minGain`, so noise does not
// replace the default with an equal tile. The table can be saved as JSON and loaded again on
// the same adapter, so tuning runs once per machine.
import type { DeviceCaps, MatmulTile } from '../kernels/types.ts';
import { matmulPlan, matmulProgram, matmulTileKey, validTile, type MatmulShape } from '../kernels/matmul.ts';
import type { TensorSpec } from './kernel.ts';
import { matmulKernel } from './ops/matmul.ts';
import type { WebGpuDevice } from './webgpu-device.ts';

export interface AutotuneOptions {
  /** Rows of C per workgroup to try (default 16, 32, 64). */
  rows?: number[];
  /** Lanes per workgroup to try (default 64, 128, 256). Sizes that do not suit the adapter are skipped. */
  workgroupSizes?: number[];
  /** Interleaved timing rounds (default 5). */
  rounds?: number;
  /** Wall-clock milliseconds each timing aims for (default 60). */
  targetMs?: number;
  /** Fraction by which a tile must beat the default to replace it (default 0.05). */
  minGain?: number;
  /** Called with one line per shape when it is done. */
  log?: (line: string) => void;
}

export interface TileTiming {
  tile: MatmulTile;
  /** Median milliseconds per matmul. */
  ms: number;
}

export interface AutotuneResult {
  /** The shape class (matmulTileKey). */
  key: string;
  shape: MatmulShape;
  /** The tile the planner picks without tuning, and its time. */
  fallback: TileTiming;
  /** The tile recorded for the class (the default when none beat it by minGain). */
  chosen: TileTiming;
  timings: TileTiming[];
}

/** Serialised table, tied to the adapter it was measured on. */
export interface MatmulTuningFile {
  adapter: string;
  tiles: Record<string, MatmulTile>;
}

const DEFAULT_OPTIONS = { rows: [16, 32, 64], workgroupSizes: [64, 128, 256], rounds: 5, targetMs: 60, minGain: 0.05 };

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

function randomValues(size: number): Float32Array {
  const values = new Float32Array(size);
  for (let i = 0; i < size; i++) values[i] = Math.random() - 0.5;
  return values;
}

/**
 * Times the candidate tiles for each of `shapes` (batch 1) on `device` and records the fastest
 * per shape class in `device.caps.matmulTiles`. Needs the subgroup kernel (an adapter with
 * subgroups); without it, returns an empty list and changes nothing.
 */
export async function autotuneMatmul(device: WebGpuDevice, shapes: MatmulShape[], options: AutotuneOptions = {}): Promise<AutotuneResult[]> {
  const settings = { ...DEFAULT_OPTIONS, ...options };
  const caps = device.caps;
  const tiles = caps.matmulTiles;
  if (!tiles || !caps.subgroups) return [];
  const results: AutotuneResult[] = [];

  for (const shape of shapes) {
    if (shape.batch !== 1) throw new Error(`autotuneMatmul: batch ${shape.batch} is invalid; tune one matrix (batch 1), because the tile then applies to every batch`);
    const key = matmulTileKey(shape);
    const previous = tiles.get(key);
    tiles.delete(key);
    const { M, N, K, transA, transB } = shape;
    const specs: TensorSpec[] = [
      { shape: transA ? [K, M] : [M, K], dtype: 'f32' },
      { shape: transB ? [N, K] : [K, N], dtype: 'f32' },
    ];
    const a = device.upload(randomValues(M * K));
    const b = device.upload(randomValues(K * N));
    const params = { transA, transB };

    // Runs `count` matmuls with `tile` (null: the default) and one small readback.
    const time = async (tile: MatmulTile | null, count: number): Promise<number> => {
      if (tile) tiles.set(key, tile);
      else tiles.delete(key);
      const started = performance.now();
      let last = null;
      for (let i = 0; i < count; i++) {
        if (last) device.release(last);
        last = device.run(matmulKernel, [a, b], specs, params).storages[0];
      }
      await device.read(last!, 'f32', 1);
      device.release(last!);
      return performance.now() - started;
    };

    try {
      const candidates: Array<MatmulTile | null> = [null];
      const programs = new Set([programKey(device, shape, null)]);
      for (const rows of settings.rows) {
        for (const workgroupSize of settings.workgroupSizes) {
          const tile = { rows, workgroupSize };
          if (!validTile(tile, caps)) continue;
          const program = programKey(device, shape, tile);
          if (programs.has(program)) continue;
          programs.add(program);
          candidates.push(tile);
        }
      }
      // The first run of each compiles its pipeline; the second sizes the timed runs.
      const counts = new Map<MatmulTile | null, number>();
      for (const tile of candidates) {
        await time(tile, 1);
        const once = await time(tile, 1);
        counts.set(tile, Math.max(1, Math.min(200, Math.round(settings.targetMs / Math.max(once, 0.01)))));
      }
      const samples = new Map<MatmulTile | null, number[]>(candidates.map((tile) => [tile, []]));
      for (let round = 0; round < settings.rounds; round++) {
        for (let i = 0; i < candidates.length; i++) {
          const tile = candidates[(round + i) % candidates.length];
          const count = counts.get(tile)!;
          samples.get(tile)!.push((await time(tile, count)) / count);
        }
      }

      const planned = defaultTile(device, shape);
      const timings = candidates.map((tile) => ({ tile: tile ?? planned, ms: median(samples.get(tile)!) }));
      const fallback = timings[0];
      const best = timings.reduce((winner, timing) => (timing.ms < winner.ms ? timing : winner));
      const chosen = best.ms < fallback.ms * (1 - settings.minGain) ? best : fallback;
      if (chosen === fallback) tiles.delete(key);
      else tiles.set(key, chosen.tile);
      results.push({ key, shape, fallback, chosen, timings });
      settings.log?.(
        `${key}: default r${fallback.tile.rows}/w${fallback.tile.workgroupSize} ${fallback.ms.toFixed(2)} ms, ` +
          `chosen r${chosen.tile.rows}/w${chosen.tile.workgroupSize} ${chosen.ms.toFixed(2)} ms`,
      );
    } catch (error) {
      if (previous) tiles.set(key, previous);
      else tiles.delete(key);
      throw error;
    } finally {
      device.release(a);
      device.release(b);
    }
  }
  return results;
}

/** Returns the caps of `device` with `tile` (null: none) as the only tuned entry, for `shape`'s class. */
function capsWith(device: WebGpuDevice, shape: MatmulShape, tile: MatmulTile | null): DeviceCaps {
  return { ...device.caps, matmulTiles: new Map(tile ? [[matmulTileKey(shape), tile]] : []) };
}

/** Returns the key of the program the planner generates for `shape` with `tile` (null: the default). */
function programKey(device: WebGpuDevice, shape: MatmulShape, tile: MatmulTile | null): string {
  return matmulProgram(shape, capsWith(device, shape, tile)).key;
}

/** Returns the tile the planner uses for `shape` when no tuned entry exists. */
function defaultTile(device: WebGpuDevice, shape: MatmulShape): MatmulTile {
  const { rows, workgroupSize } = matmulPlan(shape, capsWith(device, shape, null));
  return { rows, workgroupSize };
}

/** Returns the device's tuned tiles as JSON-ready data, tagged with the adapter description. */
export function exportMatmulTuning(device: WebGpuDevice): MatmulTuningFile {
  return { adapter: device.description, tiles: Object.fromEntries(device.caps.matmulTiles ?? []) };
}

/**
 * Loads tiles saved by `exportMatmulTuning`. Returns false and loads nothing when they were
 * measured on another adapter. Throws on malformed data, naming the entry.
 */
export function importMatmulTuning(device: WebGpuDevice, data: MatmulTuningFile): boolean {
  if (typeof data !== 'object' || data === null || typeof data.adapter !== 'string' || typeof data.tiles !== 'object' || data.tiles === null) {
    throw new Error('importMatmulTuning: expected { adapter: string, tiles: { key: { rows, workgroupSize } } } as written by exportMatmulTuning');
  }
  if (data.adapter !== device.description) return false;
  const tiles = device.caps.matmulTiles;
  if (!tiles) return false;
  const entries = Object.entries(data.tiles);
  for (const [key, tile] of entries) {
    if (!tile || !validTile(tile, device.caps)) {
      throw new Error(`importMatmulTuning: tile ${JSON.stringify(tile)} for ${key} does not suit this adapter; tune again`);
    }
  }
  for (const [key, tile] of entries) tiles.set(key, { rows: tile.rows, workgroupSize: tile.workgroupSize });
  return true;
}
