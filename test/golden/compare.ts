// Shared pieces of the golden tests: reading the fixtures that make_golden.py writes, and the
// relative-error check that prints both sides.
import * as assert from 'uvu/assert';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openSafetensors, readTensor } from '../../weights/safetensors.ts';
import { fileSource } from '../../weights/node-files.ts';

/** test/golden, where the fixture folders live. */
export const GOLDEN_ROOT = dirname(fileURLToPath(import.meta.url));

/** The golden tolerance: relative error as defined by `relativeError`. */
export const GOLDEN_TOLERANCE = 1e-4;

export interface GoldenTensor {
  shape: number[];
  data: Float32Array | Int32Array;
}

/** Reads every tensor of `<fixture>/<file>` (I64 ids arrive as i32). */
export async function readGolden(fixture: string, file = 'golden.safetensors'): Promise<Map<string, GoldenTensor>> {
  const source = await fileSource(join(GOLDEN_ROOT, fixture, file));
  try {
    const index = await openSafetensors(source);
    const out = new Map<string, GoldenTensor>();
    for (const [name, entry] of index.tensors) out.set(name, { shape: entry.shape, data: await readTensor(index, name) });
    return out;
  } finally {
    await source.close?.();
  }
}

/** Looks up a golden tensor, failing the test with the available names when it is absent. */
export function goldenTensor(golden: Map<string, GoldenTensor>, name: string): GoldenTensor {
  const tensor = golden.get(name);
  assert.ok(tensor, `golden tensor "${name}" not found; have ${[...golden.keys()].join(', ')}; rerun test/golden/make_golden.py`);
  return tensor!;
}

export interface RelativeError {
  /** max |ours − ref| / (max |ref| + 1e-30). */
  relative: number;
  maxDiff: number;
  maxRef: number;
  worst: number;
}

/** Relative error of a whole tensor: the largest absolute difference over the largest reference magnitude. */
export function relativeError(ours: ArrayLike<number>, reference: ArrayLike<number>): RelativeError {
  let maxDiff = 0;
  let maxRef = 0;
  let worst = 0;
  for (let i = 0; i < reference.length; i++) {
    const diff = Math.abs(ours[i] - reference[i]);
    if (!(diff <= maxDiff)) {
      maxDiff = Number.isNaN(diff) ? Infinity : diff;
      worst = i;
    }
    maxRef = Math.max(maxRef, Math.abs(reference[i]));
  }
  return { relative: maxDiff / (maxRef + 1e-30), maxDiff, maxRef, worst };
}

/** Largest relative error per model and device ("dinov2 (cpu)"), for a summary at the end of a test file. */
export const worstErrors = new Map<string, number>();

/**
 * Asserts relative error ≤ GOLDEN_TOLERANCE and prints one line with both sides at the worst
 * element, whether or not the check passes.
 */
export function assertGolden(label: string, ours: ArrayLike<number>, reference: GoldenTensor): void {
  assert.is(ours.length, reference.data.length, `${label}: ours has ${ours.length} values, the reference ${reference.data.length} (shape [${reference.shape.join(', ')}])`);
  const { relative, maxDiff, maxRef, worst } = relativeError(ours, reference.data);
  const line =
    `${label}: relative error ${relative.toExponential(2)} (max |ours − ref| ${maxDiff.toExponential(2)} / max |ref| ${maxRef.toPrecision(4)}, tolerance ${GOLDEN_TOLERANCE}); ` +
    `worst element ${worst}: ours=${ours[worst]} | reference=${reference.data[worst]}`;
  console.log(`  ${line}`);
  const group = `${label.split(' ')[0]} ${/\((cpu|webgpu)\)/.exec(label)?.[0] ?? ''}`;
  worstErrors.set(group, Math.max(worstErrors.get(group) ?? 0, relative));
  assert.ok(relative <= GOLDEN_TOLERANCE, line);
}
