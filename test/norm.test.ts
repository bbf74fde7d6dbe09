import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { Device } from '../engine/device.ts';
import {
  layerNorm,
  layerNormBackwardKernel,
  layerNormKernel,
  layerNormParamGradKernel,
  rmsNorm,
  rmsNormBackwardKernel,
  rmsNormKernel,
  rmsNormWeightGradKernel,
} from '../engine/ops/norm.ts';
import { mul, sum } from '../engine/ops/elementwise.ts';
import { fromHost, tidy } from '../engine/tensor.ts';
import { assertGradients } from './gradcheck.ts';
import { compare, cpu, randomArray, runOn, webgpu } from './helpers.ts';

const f32 = (shape: number[]) => ({ shape, dtype: 'f32' as const });
const sizeOf = (shape: number[]) => shape.reduce((p, d) => p * d, 1);

function assertClose(label: string, actual: ArrayLike<number>, expected: ArrayLike<number>, atol: number, rtol: number): void {
  const result = compare(actual, expected, atol, rtol);
  assert.ok(result.ok, `${label}: ${result.message}`);
}

/** Rows of random values around a nonzero mean, so a one-pass variance would lose digits. */
function offsetRows(shape: number[]): Float32Array {
  return randomArray(sizeOf(shape), 2).map((v, i) => v + 3 + (i % 5));
}

// Widths around the workgroup of 64 lanes and row counts that are not multiples of anything.
const shapes = [[37, 1], [37, 53], [5, 257], [3, 1000], [2, 3, 7]];

// ---------- LayerNorm kernels on WebGPU against the CPU reference ----------

for (const shape of shapes) {
  const C = shape[shape.length - 1];
  const rows = sizeOf(shape) / C;

  test(`layerNorm webgpu ${JSON.stringify(shape)}`, async () => {
    const device = await webgpu();
    const inputs = [offsetRows(shape), randomArray(C, 2), randomArray(C)];
    const specs = [f32(shape), f32([C]), f32([C])];
    const expected = await runOn(cpu, layerNormKernel, inputs, specs, { eps: 1e-5 });
    const actual = await runOn(device, layerNormKernel, inputs, specs, { eps: 1e-5 });
    assertClose('y', actual[0], expected[0], 1e-5, 1e-4);
    assertClose('mean', actual[1], expected[1], 1e-5, 1e-5);
    assertClose('rstd', actual[2], expected[2], 1e-5, 1e-4);
  });

  test(`layerNorm backward webgpu ${JSON.stringify(shape)}`, async () => {
    const device = await webgpu();
    const x = offsetRows(shape);
    const weight = randomArray(C, 2);
    const [, mean, rstd] = await runOn(cpu, layerNormKernel, [x, weight, randomArray(C)], [f32(shape), f32([C]), f32([C])], { eps: 1e-5 });
    const dy = randomArray(sizeOf(shape));

    const dxInputs = [x, weight, mean, rstd, dy];
    const dxSpecs = [f32(shape), f32([C]), f32([rows]), f32([rows]), f32(shape)];
    const [dxExpected] = await runOn(cpu, layerNormBackwardKernel, dxInputs, dxSpecs, {});
    const [dxActual] = await runOn(device, layerNormBackwardKernel, dxInputs, dxSpecs, {});
    assertClose('dx', dxActual, dxExpected, 1e-4, 1e-3);

    const paramInputs = [x, mean, rstd, dy];
    const paramSpecs = [f32(shape), f32([rows]), f32([rows]), f32(shape)];
    const expected = await runOn(cpu, layerNormParamGradKernel, paramInputs, paramSpecs, {});
    const actual = await runOn(device, layerNormParamGradKernel, paramInputs, paramSpecs, {});
    assertClose('dweight', actual[0], expected[0], 1e-4, 1e-4);
    assertClose('dbias', actual[1], expected[1], 1e-4, 1e-4);
  });
}

test('layerNorm webgpu more rows than one grid axis', async () => {
  // 70,000 rows need more than 65,535 workgroups, so the grid folds into two dimensions.
  const device = await webgpu();
  const [rows, C] = [70_000, 3];
  // Zero-centred rows: among 70,000 rows of 3 offset values some have so small a variance that
  // f32 rounding of x − mean, times rstd, exceeds the tolerance.
  const inputs = [randomArray(rows * C), randomArray(C, 2), randomArray(C)];
  const specs = [f32([rows, C]), f32([C]), f32([C])];
  const expected = await runOn(cpu, layerNormKernel, inputs, specs, { eps: 1e-5 });
  const actual = await runOn(device, layerNormKernel, inputs, specs, { eps: 1e-5 });
  assertClose('y', actual[0], expected[0], 1e-4, 1e-3);
});

// ---------- RMSNorm kernels on WebGPU against the CPU reference ----------

for (const shape of shapes) {
  const C = shape[shape.length - 1];
  const rows = sizeOf(shape) / C;

  test(`rmsNorm webgpu ${JSON.stringify(shape)}`, async () => {
    const device = await webgpu();
    const inputs = [randomArray(sizeOf(shape), 3), randomArray(C, 2)];
    const specs = [f32(shape), f32([C])];
    const expected = await runOn(cpu, rmsNormKernel, inputs, specs, { eps: 1e-6 });
    const actual = await runOn(device, rmsNormKernel, inputs, specs, { eps: 1e-6 });
    assertClose('y', actual[0], expected[0], 1e-5, 1e-4);
    assertClose('rstd', actual[1], expected[1], 1e-5, 1e-4);
  });

  test(`rmsNorm backward webgpu ${JSON.stringify(shape)}`, async () => {
    const device = await webgpu();
    const x = randomArray(sizeOf(shape), 3);
    const weight = randomArray(C, 2);
    const [, rstd] = await runOn(cpu, rmsNormKernel, [x, weight], [f32(shape), f32([C])], { eps: 1e-6 });
    const dy = randomArray(sizeOf(shape));

    const dxInputs = [x, weight, rstd, dy];
    const dxSpecs = [f32(shape), f32([C]), f32([rows]), f32(shape)];
    const [dxExpected] = await runOn(cpu, rmsNormBackwardKernel, dxInputs, dxSpecs, {});
    const [dxActual] = await runOn(device, rmsNormBackwardKernel, dxInputs, dxSpecs, {});
    assertClose('dx', dxActual, dxExpected, 1e-4, 1e-3);

    const weightInputs = [x, rstd, dy];
    const weightSpecs = [f32(shape), f32([rows]), f32(shape)];
    const [dwExpected] = await runOn(cpu, rmsNormWeightGradKernel, weightInputs, weightSpecs, {});
    const [dwActual] = await runOn(device, rmsNormWeightGradKernel, weightInputs, weightSpecs, {});
    assertClose('dweight', dwActual, dwExpected, 1e-4, 1e-4);
  });
}

// ---------- the CPU references against hand-computed values ----------

test('layerNorm cpu known values', async () => {
  // x = [1, 2, 3, 4]: mean 2.5, biased variance 1.25.
  const x = fromHost(new Float32Array([1, 2, 3, 4]), [1, 4], 'f32', cpu);
  const weight = fromHost(new Float32Array([1, 2, 1, 1]), [4], 'f32', cpu);
  const bias = fromHost(new Float32Array([0, 0, 0, 10]), [4], 'f32', cpu);
  const y = await layerNorm(x, weight, bias, 0).data();
  const s = 1 / Math.sqrt(1.25);
  assertClose('y', y, [-1.5 * s, -0.5 * s * 2, 0.5 * s, 1.5 * s + 10], 1e-6, 1e-6);
});

test('rmsNorm cpu known values', async () => {
  // x = [3, 4]: mean(x²) = 12.5.
  const x = fromHost(new Float32Array([3, 4]), [1, 2], 'f32', cpu);
  const weight = fromHost(new Float32Array([1, 0.5]), [2], 'f32', cpu);
  const y = await rmsNorm(x, weight, 0).data();
  const s = 1 / Math.sqrt(12.5);
  assertClose('y', y, [3 * s, 4 * s * 0.5], 1e-6, 1e-6);
});

// ---------- backward against finite differences ----------

test('layerNorm gradcheck', async () => {
  for (const shape of [[3, 7], [2, 2, 5], [4, 1]]) {
    const C = shape[shape.length - 1];
    await assertGradients(`layerNorm ${JSON.stringify(shape)}`, (x, weight, bias) => layerNorm(x, weight, bias, 1e-5), [
      { name: 'x', data: offsetRows(shape), shape },
      { name: 'weight', data: randomArray(C, 2), shape: [C] },
      { name: 'bias', data: randomArray(C), shape: [C] },
    ]);
  }
});

test('rmsNorm gradcheck', async () => {
  for (const shape of [[3, 7], [2, 2, 5], [4, 1]]) {
    const C = shape[shape.length - 1];
    // A row whose values are all near 0 bends too sharply for the finite-difference step (with
    // C = 1, y ≈ sign(x)·weight), so keep |x| ≥ 0.3.
    const x = randomArray(sizeOf(shape), 2).map((v) => Math.sign(v || 1) * (0.3 + Math.abs(v)));
    await assertGradients(`rmsNorm ${JSON.stringify(shape)}`, (x, weight) => rmsNorm(x, weight, 1e-6), [
      { name: 'x', data: x, shape },
      { name: 'weight', data: randomArray(C, 2), shape: [C] },
    ]);
  }
});

test('layerNorm gradcheck without input gradient', async () => {
  // Only weight and bias take gradients: the backward must skip dx and still fill both.
  await assertGradients('layerNorm weight only', (x, weight, bias) => layerNorm(x, weight, bias), [
    { name: 'x', data: offsetRows([3, 6]), shape: [3, 6], grad: false },
    { name: 'weight', data: randomArray(6, 2), shape: [6] },
    { name: 'bias', data: randomArray(6), shape: [6] },
  ]);
});

// ---------- autograd on WebGPU against autograd on the CPU ----------

/** Gradients of Σ norm(x) · w on `device`, in the order x, weight, bias. */
async function normGradients(device: Device, kind: 'layer' | 'rms', shape: number[], data: Float32Array[]): Promise<Float32Array[]> {
  const C = shape[shape.length - 1];
  const x = fromHost(data[0], shape, 'f32', device);
  const weight = fromHost(data[1], [C], 'f32', device);
  const bias = fromHost(data[2], [C], 'f32', device);
  const leaves = kind === 'layer' ? [x, weight, bias] : [x, weight];
  for (const leaf of leaves) leaf.requiresGrad = true;
  tidy(() => {
    const y = kind === 'layer' ? layerNorm(x, weight, bias) : rmsNorm(x, weight);
    sum(mul(y, fromHost(data[3], shape, 'f32', device))).backward();
  });
  const grads: Float32Array[] = [];
  for (const leaf of leaves) grads.push((await leaf.grad!.data()) as Float32Array);
  for (const leaf of [x, weight, bias]) leaf.dispose();
  return grads;
}

for (const kind of ['layer', 'rms'] as const) {
  test(`${kind}Norm autograd webgpu matches cpu`, async () => {
    const device = await webgpu();
    const shape = [6, 45];
    const data = [offsetRows(shape), randomArray(45, 2), randomArray(45), randomArray(sizeOf(shape))];
    const expected = await normGradients(cpu, kind, shape, data);
    const actual = await normGradients(device, kind, shape, data);
    for (let i = 0; i < expected.length; i++) assertClose(['dx', 'dweight', 'dbias'][i], actual[i], expected[i], 1e-4, 1e-3);
  });
}

// ---------- bad inputs ----------

test('layerNorm rejects weight of wrong width', () => {
  const x = fromHost(randomArray(32), [4, 8], 'f32', cpu);
  const weight = fromHost(randomArray(5), [5], 'f32', cpu);
  const bias = fromHost(randomArray(8), [8], 'f32', cpu);
  assert.throws(() => layerNorm(x, weight, bias), /layerNorm: weight has shape \[5\], expected \[8\] to match the last axis of x \[4, 8\]/);
});

test('layerNorm rejects bias of wrong width', () => {
  const x = fromHost(randomArray(32), [4, 8], 'f32', cpu);
  const weight = fromHost(randomArray(8), [8], 'f32', cpu);
  const bias = fromHost(randomArray(16), [2, 8], 'f32', cpu);
  assert.throws(() => layerNorm(x, weight, bias), /layerNorm: bias has shape \[2, 8\], expected \[8\]/);
});

test('rmsNorm rejects weight of wrong width', () => {
  const x = fromHost(randomArray(32), [4, 8], 'f32', cpu);
  const weight = fromHost(randomArray(4), [4], 'f32', cpu);
  assert.throws(() => rmsNorm(x, weight), /rmsNorm: weight has shape \[4\], expected \[8\]/);
});

test('layerNorm rejects negative eps', () => {
  const x = fromHost(randomArray(8), [1, 8], 'f32', cpu);
  const weight = fromHost(randomArray(8), [8], 'f32', cpu);
  assert.throws(() => layerNorm(x, weight, weight, -1), /layerNorm: eps must be a finite number ≥ 0, got -1/);
});

test('layerNorm rejects an empty last axis', () => {
  const x = fromHost(new Float32Array(0), [3, 0], 'f32', cpu);
  const weight = fromHost(new Float32Array(0), [0], 'f32', cpu);
  assert.throws(() => layerNorm(x, weight, weight), /layerNorm: x \[3, 0\] has an empty last axis/);
});

test('layerNorm backward rejects dy of wrong shape', () => {
  const specs = [f32([4, 8]), f32([8]), f32([4]), f32([4]), f32([4, 7])];
  assert.throws(() => layerNormBackwardKernel.outputs(specs, {}), /layerNorm backward: dy has shape \[4, 7\], expected \[4, 8\]/);
});

test.run();
