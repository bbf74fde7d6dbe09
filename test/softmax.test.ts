import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { logSoftmax, softmax, softmaxBackwardKernel, softmaxKernel } from '../engine/ops/softmax.ts';
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

for (const shape of [[37, 1], [5, 257], [3, 1000], [2, 3, 7]]) {
  test(`log-softmax forward and backward webgpu ${JSON.stringify(shape)}`, async () => {
    const device = await webgpu();
    const x = randomArray(sizeOf(shape), 5);
    const [expected] = await runOn(cpu, softmaxKernel, [x], [f32(shape)], { log: true });
    const [actual] = await runOn(device, softmaxKernel, [x], [f32(shape)], { log: true });
    let result = compare(actual, expected, 1e-5, 1e-5);
    assert.ok(result.ok, `forward: ${result.message}`);
    const dy = randomArray(sizeOf(shape), 9);
    const specs = [f32(shape), f32(shape)];
    const [dxExpected] = await runOn(cpu, softmaxBackwardKernel, [expected, dy], specs, { log: true });
    const [dxActual] = await runOn(device, softmaxBackwardKernel, [expected, dy], specs, { log: true });
    result = compare(dxActual, dxExpected, 1e-5, 1e-4);
    assert.ok(result.ok, `backward: ${result.message}`);
  });
}

test('log-softmax is the log of softmax, and finite where softmax underflows (webgpu)', async () => {
  const device = await webgpu();
  const shape = [6, 50];
  const x = randomArray(sizeOf(shape), 4);
  const [logY] = await runOn(device, softmaxKernel, [x], [f32(shape)], { log: true });
  const [y] = await runOn(device, softmaxKernel, [x], [f32(shape)], {});
  const result = compare(logY, y.map((v) => Math.log(v)), 1e-5, 1e-5);
  assert.ok(result.ok, result.message);
  // A gap of 200 puts exp(-200) below the smallest f32, so softmax gives 0 and log-softmax -200.
  const [wide] = await runOn(device, softmaxKernel, [new Float32Array([0, -200])], [f32([1, 2])], { log: true });
  assert.ok(Math.abs(wide[1] + 200) < 1e-3, `log-softmax of the small entry: ${wide[1]}, expected about -200`);
});

test('log-softmax gradcheck', async () => {
  await assertGradients('logSoftmax [4, 7]', (x) => logSoftmax(x), [{ name: 'x', data: randomArray(28, 2), shape: [4, 7] }]);
});

test('softmax rejects a scalar', () => {
  assert.throws(() => softmax(fromHost(new Float32Array([1]), [], 'f32', cpu)), /softmax: expected at least one axis/);
});

test('softmax backward rejects mismatched dy', () => {
  assert.throws(() => softmaxBackwardKernel.outputs([f32([4, 8]), f32([4, 9])], {}), /softmax_backward: dy has shape \[4, 9\], expected \[4, 8\]/);
});

test.run();
