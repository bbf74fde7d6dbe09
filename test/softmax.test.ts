import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { softmax, softmaxBackwardKernel, softmaxKernel } from '../engine/ops/softmax.ts';
import { fromHost } from '../engine/tensor.ts';
import { assertGradients } from './gradcheck.ts';
import { compare, cpu, randomArray, runOn, webgpu } from './helpers.ts';

const f32 = (shape: number[]) => ({ shape, dtype: 'f32' as const });
const sizeOf = (shape: number[]) => shape.reduce((p, d) => p * d, 1);

// Widths around the workgroup of 64 lanes (1, 53 < 64, 257 and 1000 > 64) and row counts that
// are not multiples of anything.
const shapes = [[37, 1], [37, 53], [5, 257], [3, 1000], [2, 3, 7], [130, 65]];

for (const shape of shapes) {
  test(`softmax webgpu ${JSON.stringify(shape)}`, async () => {
    const device = await webgpu();
    const x = randomArray(sizeOf(shape), 5);
    const [expected] = await runOn(cpu, softmaxKernel, [x], [f32(shape)], {});
    const [actual] = await runOn(device, softmaxKernel, [x], [f32(shape)], {});
    const result = compare(actual, expected, 1e-6, 1e-4);
    assert.ok(result.ok, result.message);
  });

  test(`softmax backward webgpu ${JSON.stringify(shape)}`, async () => {
    const device = await webgpu();
    const [y] = await runOn(cpu, softmaxKernel, [randomArray(sizeOf(shape), 3)], [f32(shape)], {});
    const dy = randomArray(sizeOf(shape));
    const specs = [f32(shape), f32(shape)];
    const [expected] = await runOn(cpu, softmaxBackwardKernel, [y, dy], specs, {});
    const [actual] = await runOn(device, softmaxBackwardKernel, [y, dy], specs, {});
    const result = compare(actual, expected, 1e-6, 1e-4);
    assert.ok(result.ok, result.message);
  });
}

test('softmax webgpu stable for large logits', async () => {
  const device = await webgpu();
  // exp(100) overflows f32, so this passes only when the row max is subtracted first.
  const x = randomArray(4 * 300, 5).map((v) => v + 100);
  const [actual] = await runOn(device, softmaxKernel, [x], [f32([4, 300])], {});
  const [expected] = await runOn(cpu, softmaxKernel, [x], [f32([4, 300])], {});
  const result = compare(actual, expected, 1e-6, 1e-4);
  assert.ok(result.ok, result.message);
});

test('softmax webgpu rows sum to 1', async () => {
  const device = await webgpu();
  const [rows, C] = [19, 777];
  const [y] = await runOn(device, softmaxKernel, [randomArray(rows * C, 8)], [f32([rows, C])], {});
  const sums = new Float64Array(rows);
  for (let i = 0; i < y.length; i++) sums[Math.floor(i / C)] += y[i];
  const result = compare(sums, new Float64Array(rows).fill(1), 1e-5, 0);
  assert.ok(result.ok, result.message);
});

test('softmax gradcheck', async () => {
  await assertGradients('softmax [4, 7]', (x) => softmax(x), [{ name: 'x', data: randomArray(28, 2), shape: [4, 7] }]);
  await assertGradients('softmax [2, 3, 5]', (x) => softmax(x), [{ name: 'x', data: randomArray(30, 2), shape: [2, 3, 5] }]);
});

test('softmax rejects a scalar', () => {
  assert.throws(() => softmax(fromHost(new Float32Array([1]), [], 'f32', cpu)), /softmax: expected at least one axis/);
});

test('softmax backward rejects mismatched dy', () => {
  assert.throws(() => softmaxBackwardKernel.outputs([f32([4, 8]), f32([4, 9])], {}), /softmax_backward: dy has shape \[4, 9\], expected \[4, 8\]/);
});

test.run();
