import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { argmax, argmaxKernel, topK, topKKernel } from '../engine/ops/select.ts';
import { fromHost, noGrad } from '../engine/tensor.ts';
import { cpu, randomArray, runOn, webgpu } from './helpers.ts';

const f32 = (shape: number[]) => ({ shape, dtype: 'f32' as const });

/** Exact equality element by element (infinities included), printing the first difference. */
function assertEqual(label: string, actual: ArrayLike<number>, expected: ArrayLike<number>): void {
  assert.is(actual.length, expected.length, `${label}: length ours=${actual.length} | reference=${expected.length}`);
  for (let i = 0; i < expected.length; i++) {
    if (actual[i] !== expected[i]) assert.unreachable(`${label}: element ${i}: ours=${actual[i]} | reference=${expected[i]}`);
  }
}

/** Random values rounded to multiples of 1/2, so rows contain many ties. */
function tiedArray(size: number, scale: number): Float32Array {
  return randomArray(size, scale).map((v) => Math.round(v * 2) / 2);
}

// Row widths around the workgroup of 64 lanes, odd row counts, and one grid past 65,535 rows.
const cases = [
  { shape: [37, 1], k: 1 },
  { shape: [37, 53], k: 5 },
  { shape: [5, 1000], k: 17 },
  { shape: [130, 65], k: 65 },
  { shape: [3, 4, 257], k: 3 },
  { shape: [70_000, 3], k: 2 },
];

// ---------- kernels on WebGPU against the CPU reference ----------

for (const { shape, k } of cases) {
  for (const [name, data] of [
    ['distinct', () => randomArray(shape.reduce((p, d) => p * d, 1), 4)],
    ['tied', () => tiedArray(shape.reduce((p, d) => p * d, 1), 3)],
  ] as const) {
    test(`argmax webgpu ${JSON.stringify(shape)} ${name}`, async () => {
      const device = await webgpu();
      const inputs = [data()];
      const [expected] = await runOn(cpu, argmaxKernel, inputs, [f32(shape)], { k: 1 });
      const [actual] = await runOn(device, argmaxKernel, inputs, [f32(shape)], { k: 1 });
      assertEqual('indices', actual, expected);
    });

    test(`topK webgpu ${JSON.stringify(shape)} k=${k} ${name}`, async () => {
      const device = await webgpu();
      const inputs = [data()];
      const [valuesExpected, indicesExpected] = await runOn(cpu, topKKernel, inputs, [f32(shape)], { k });
      const [valuesActual, indicesActual] = await runOn(device, topKKernel, inputs, [f32(shape)], { k });
      assertEqual('values', valuesActual, valuesExpected);
      assertEqual('indices', indicesActual, indicesExpected);
    });
  }
}

test('topK webgpu with infinities', async () => {
  const device = await webgpu();
  const inputs = [new Float32Array([-Infinity, -Infinity, 2, -Infinity, Infinity, 0, Infinity, -Infinity])];
  const [values, indices] = await runOn(device, topKKernel, inputs, [f32([2, 4])], { k: 4 });
  assertEqual('values', values, [2, -Infinity, -Infinity, -Infinity, Infinity, Infinity, 0, -Infinity]);
  assertEqual('indices', indices, [2, 0, 1, 3, 0, 2, 1, 3]);
});

// ---------- the ops ----------

test('argmax known values', async () => {
  for (const device of [cpu, await webgpu()]) {
    const x = fromHost(new Float32Array([1, 3, 3, 2, -5, -4, -4, -6]), [2, 4], 'f32', device);
    const indices = argmax(x);
    assert.equal(indices.shape, [2]);
    assert.is(indices.dtype, 'i32');
    assertEqual(`${device.kind} indices`, await indices.data(), [1, 1]);
  }
});

test('argmax of a vector is a scalar', async () => {
  const indices = argmax(fromHost(new Float32Array([0, 7, 2]), [3], 'f32', cpu));
  assert.equal(indices.shape, []);
  assertEqual('index', await indices.data(), [1]);
});

test('topK known values', async () => {
  for (const device of [cpu, await webgpu()]) {
    const x = fromHost(new Float32Array([0.5, 2, 2, -1, 2, 0, 1, 2, 3, 4]), [2, 5], 'f32', device);
    const { values, indices } = topK(x, 3);
    assert.equal(values.shape, [2, 3]);
    assert.equal(indices.shape, [2, 3]);
    assert.is(indices.dtype, 'i32');
    assertEqual(`${device.kind} values`, await values.data(), [2, 2, 2, 4, 3, 2]);
    assertEqual(`${device.kind} indices`, await indices.data(), [1, 2, 4, 4, 3, 2]);
  }
});

test('argmax does not record a graph', () => {
  const x = fromHost(randomArray(6), [2, 3], 'f32', cpu);
  x.requiresGrad = true;
  const indices = argmax(x);
  assert.is(indices.requiresGrad, false);
  assert.is(indices.backwardFn, null);
});

test('topK rejects x that requires grad', () => {
  const x = fromHost(randomArray(6), [2, 3], 'f32', cpu);
  x.requiresGrad = true;
  assert.throws(() => topK(x, 2), /topK: x .* requires a gradient, but topK has no backward; run it under noGrad\(\)/);
  const { values } = noGrad(() => topK(x, 2));
  assert.is(values.requiresGrad, false);
});

test('cpu reference ranks NaN last', async () => {
  const [values, indices] = await runOn(cpu, topKKernel, [new Float32Array([Number.NaN, 1, Number.NaN, 2])], [f32([1, 4])], { k: 4 });
  assertEqual('indices', indices, [3, 1, 0, 2]);
  assertEqual('values', values.slice(0, 2), [2, 1]);
});

// ---------- bad inputs ----------

test('topK rejects invalid k', () => {
  const x = fromHost(randomArray(2 * 5), [2, 5], 'f32', cpu);
  for (const k of [0, 6, 1.5, -1]) {
    assert.throws(() => topK(x, k), new RegExp(`topK: k = ${k} must be an integer in \\[1, 5\\]`), `k = ${k}`);
  }
});

test('select rejects bad x', () => {
  assert.throws(() => argmax(fromHost(new Int32Array(4), [2, 2], 'i32', cpu)), /argmax: expected an f32 tensor/);
  assert.throws(() => argmax(fromHost(new Float32Array(0), [2, 0], 'f32', cpu)), /argmax: x \[2, 0\] has an empty last axis/);
  assert.throws(() => topK(fromHost(new Float32Array([1]), [], 'f32', cpu), 1), /topK: x is a scalar/);
});

test.run();
