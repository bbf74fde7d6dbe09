// Matmul tile autotuning: every tile the tuner may pick computes the same product as the CPU
// reference, the planner uses a recorded tile, and the table survives a JSON round trip.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { autotuneMatmul, exportMatmulTuning, importMatmulTuning } from '../engine/autotune.ts';
import { matmulKernel, matmulReference, matmulShape } from '../engine/ops/matmul.ts';
import type { TensorSpec } from '../engine/kernel.ts';
import { matmulTileKey, validTile } from '../kernels/matmul.ts';
import { compare, randomArray, runOn, webgpu } from './helpers.ts';

const TILES = [16, 32, 64].flatMap((rows) => [64, 128, 256].map((workgroupSize) => ({ rows, workgroupSize })));

test('every candidate tile matches the CPU reference', async () => {
  const device = await webgpu();
  const tiles = device.caps.matmulTiles!;
  // Awkward sizes, vec4 sizes, and both transposes.
  const problems: Array<[number[], number[], boolean, boolean]> = [
    [[67, 45], [45, 83], false, false],
    [[96, 64], [128, 64], false, true],
    [[40, 72], [40, 36], true, false],
  ];
  for (const [shapeA, shapeB, transA, transB] of problems) {
    const specs: TensorSpec[] = [{ shape: shapeA, dtype: 'f32' }, { shape: shapeB, dtype: 'f32' }];
    const { shape } = matmulShape(specs[0], specs[1], { transA, transB });
    const a = randomArray(shapeA[0] * shapeA[1], 1, 3);
    const b = randomArray(shapeB[0] * shapeB[1], 1, 4);
    const expected = new Float32Array(shape.M * shape.N);
    matmulReference(a, b, expected, shape);
    const key = matmulTileKey(shape);
    for (const tile of TILES.filter((t) => validTile(t, device.caps))) {
      tiles.set(key, tile);
      const program = matmulKernel.wgsl(specs, { transA, transB }, device.caps);
      assert.ok(program.key.includes(`:w${tile.workgroupSize}:`), `program ${program.key} should use workgroup size ${tile.workgroupSize}`);
      const [out] = await runOn(device, matmulKernel, [a, b], specs, { transA, transB });
      const { ok, message } = compare(out, expected, 1e-4, 1e-4);
      assert.ok(ok, `[${shapeA}]${transA ? 'ᵀ' : ''} · [${shapeB}]${transB ? 'ᵀ' : ''} with r${tile.rows}/w${tile.workgroupSize}: ${message}`);
    }
    tiles.delete(key);
  }
});

test('autotune records a valid tile or keeps the default, and the table round-trips', async () => {
  const device = await webgpu();
  const tiles = device.caps.matmulTiles!;
  tiles.clear();
  const shape = { batch: 1, M: 128, N: 96, K: 80, transA: false, transB: true, strideA: 0, strideB: 0 };
  const lines: string[] = [];
  const [result] = await autotuneMatmul(device, [shape], { rounds: 2, targetMs: 5, log: (line) => lines.push(line) });
  assert.is(result.key, matmulTileKey(shape));
  assert.ok(result.timings.length >= 2, 'the default and at least one candidate are timed');
  assert.ok(result.timings.every((t) => t.ms > 0 && Number.isFinite(t.ms)), `timings: ${JSON.stringify(result.timings)}`);
  assert.ok(validTile(result.chosen.tile, device.caps), `chosen ${JSON.stringify(result.chosen.tile)}`);
  assert.ok(result.chosen.ms <= result.fallback.ms, 'the chosen tile is never slower than the default');
  assert.is(lines.length, 1);
  if (result.chosen !== result.fallback) assert.equal(tiles.get(result.key), result.chosen.tile);
  else assert.not.ok(tiles.has(result.key), 'no entry when the default wins');

  tiles.set('nn:m64:n64:k64', { rows: 16, workgroupSize: 128 });
  const saved = JSON.parse(JSON.stringify(exportMatmulTuning(device)));
  tiles.clear();
  assert.ok(importMatmulTuning(device, saved));
  assert.equal(tiles.get('nn:m64:n64:k64'), { rows: 16, workgroupSize: 128 });
  assert.not.ok(importMatmulTuning(device, { ...saved, adapter: 'another adapter' }), 'a table from another adapter is ignored');
  assert.throws(() => importMatmulTuning(device, { adapter: saved.adapter, tiles: { 'nn:m64:n64:k64': { rows: 3, workgroupSize: 128 } } }), /does not suit this adapter; tune again/);
  assert.throws(() => importMatmulTuning(device, null as never), /expected \{ adapter: string, tiles/);
  tiles.clear();
});

test('tile keys group shapes by power-of-two classes', () => {
  assert.is(matmulTileKey({ M: 1, N: 3072, K: 768, transA: false, transB: true }), 'nt:m1:n4096:k1024');
  assert.is(matmulTileKey({ M: 5000, N: 12, K: 100000, transA: true, transB: false }), 'tn:m1024:n16:k4096');
  assert.is(matmulTileKey({ M: 1023, N: 1023, K: 1023, transA: false, transB: false }), 'nn:m1024:n1024:k1024:v1');
});

test.run();
