// Elementwise and reduction kernels on WebGPU against the CPU reference.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { binaryKernel, sumToKernel, unaryKernel } from '../engine/ops/elementwise.ts';
import { coalesceAxes } from '../kernels/elementwise.ts';
import { compare, cpu, randomArray, runOn, webgpu } from './helpers.ts';

const size = (shape: number[]) => shape.reduce((p, d) => p * d, 1);
const f32 = (shape: number[]) => ({ shape, dtype: 'f32' as const });

const binaryCases: Array<[number[], number[]]> = [
  [[37, 53], [37, 53]],
  [[7, 61, 33], [33]],
  [[7, 1, 33], [1, 13, 1]],
  [[5, 3, 1, 9], [3, 11, 1]],
  [[2, 3, 4, 5, 6, 7], [1, 3, 1, 5, 1, 7]],
  [[1], [129]],
  [[70001], [1]],
];

for (const [shapeA, shapeB] of binaryCases) {
  for (const op of ['add', 'sub', 'mul', 'div', 'max', 'gelu_backward', 'silu_backward', 'relu_backward'] as const) {
    test(`binary ${op} [${shapeA}] with [${shapeB}]`, async () => {
      const device = await webgpu();
      const a = randomArray(size(shapeA));
      // Keep divisors away from zero.
      const b = randomArray(size(shapeB)).map((v) => (op === 'div' ? Math.sign(v || 1) * (0.5 + Math.abs(v)) : v));
      const specs = [f32(shapeA), f32(shapeB)];
      const [expected] = await runOn(cpu, binaryKernel, [a, b], specs, { op });
      const [actual] = await runOn(device, binaryKernel, [a, b], specs, { op });
      const result = compare(actual, expected, 1e-5, 1e-5);
      assert.ok(result.ok, result.message);
    });
  }
}

for (const op of ['affine', 'neg', 'exp', 'log', 'sqrt', 'rsqrt', 'relu', 'gelu', 'silu', 'square'] as const) {
  test(`unary ${op} on 1000 values`, async () => {
    const device = await webgpu();
    const positive = op === 'log' || op === 'sqrt' || op === 'rsqrt';
    const x = randomArray(1000, 4).map((v) => (positive ? Math.abs(v) + 0.1 : v));
    const params = { op, alpha: 1.7, beta: -0.3 };
    const [expected] = await runOn(cpu, unaryKernel, [x], [f32([1000])], params);
    const [actual] = await runOn(device, unaryKernel, [x], [f32([1000])], params);
    const result = compare(actual, expected, 1e-5, 1e-5);
    assert.ok(result.ok, result.message);
  });
}

const reduceCases: Array<[number[], number[]]> = [
  [[37, 53], [1, 53]],
  [[37, 53], [37, 1]],
  [[6, 7, 9], [1, 7, 1]],
  [[6, 7, 9], [1, 1, 1]],
  [[3, 1, 5, 2], [3, 1, 1, 2]],
];

for (const [inShape, outShape] of reduceCases) {
  test(`sum_to [${inShape}] to [${outShape}]`, async () => {
    const device = await webgpu();
    const x = randomArray(size(inShape));
    const [expected] = await runOn(cpu, sumToKernel, [x], [f32(inShape)], { shape: outShape });
    const [actual] = await runOn(device, sumToKernel, [x], [f32(inShape)], { shape: outShape });
    const result = compare(actual, expected, 1e-4, 1e-4);
    assert.ok(result.ok, result.message);
  });
}

test('coalesceAxes merges contiguous and broadcast runs', () => {
  assert.equal(coalesceAxes([8, 61, 256], [15616, 256, 1], [15616, 256, 1]), { dims: [124928], sa: [1], sb: [1] });
  assert.equal(coalesceAxes([8, 61, 256], [15616, 256, 1], [0, 0, 1]), { dims: [488, 256], sa: [256, 1], sb: [0, 1] });
  assert.equal(coalesceAxes([1, 1], [0, 0], [0, 0]), { dims: [1], sa: [0], sb: [0] });
});

test('binary rejects shapes that do not broadcast', () => {
  assert.throws(() => binaryKernel.outputs([f32([4, 3]), f32([5])], { op: 'add' }), /add: shapes \[4, 3\] and \[5\] do not broadcast/);
});

test.run();
