import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { Device } from '../engine/device.ts';
import { mul, sum } from '../engine/ops/elementwise.ts';
import { concat, insertKernel, pad, permute, permuteKernel, slice, sliceKernel, transpose } from '../engine/ops/shape.ts';
import { fromHost, noGrad, type Tensor } from '../engine/tensor.ts';
import { compare, cpu, randomArray, runOn, webgpu } from './helpers.ts';

const f32 = (shape: number[]) => ({ shape, dtype: 'f32' as const });
const sizeOf = (shape: readonly number[]) => shape.reduce((p, d) => p * d, 1);

/**
 * Compares autograd gradients of L = Σ forward(inputs)·w with central differences on the CPU
 * device, for every element of every input.
 */
async function checkGradients(forward: (inputs: Tensor[]) => Tensor, shapes: number[][], seed: number): Promise<void> {
  const datas = shapes.map((shape, i) => randomArray(sizeOf(shape), 1, seed + i));
  const leaves = datas.map((data, i) => {
    const leaf = fromHost(data, shapes[i], 'f32', cpu);
    leaf.requiresGrad = true;
    return leaf;
  });
  const out = forward(leaves);
  const weights = randomArray(out.size, 1, seed + 100);
  sum(mul(out, fromHost(weights, out.shape, 'f32', cpu))).backward();

  const lossAt = async (perturbed: Float32Array[]): Promise<number> => {
    const values = await noGrad(() => forward(perturbed.map((data, i) => fromHost(data, shapes[i], 'f32', cpu)))).data();
    let total = 0;
    for (let i = 0; i < values.length; i++) total += values[i] * weights[i];
    return total;
  };
  const delta = 1e-2;
  for (let input = 0; input < datas.length; input++) {
    const numeric = new Float64Array(datas[input].length);
    for (let i = 0; i < numeric.length; i++) {
      const plus = datas.map((data) => data.slice());
      const minus = datas.map((data) => data.slice());
      plus[input][i] += delta;
      minus[input][i] -= delta;
      numeric[i] = ((await lossAt(plus)) - (await lossAt(minus))) / (2 * delta);
    }
    const analytic = await (leaves[input].grad as Tensor).data();
    const result = compare(analytic, numeric, 1e-3, 1e-2);
    assert.ok(result.ok, `input ${input}: ${result.message}`);
  }
}

// ---------- kernels: webgpu against the CPU reference ----------

const permuteCases = [
  { shape: [67, 129], axes: [1, 0] },
  { shape: [3, 5, 7], axes: [2, 0, 1] },
  { shape: [2, 3, 4, 5, 6, 7], axes: [5, 3, 1, 0, 2, 4] },
  { shape: [1, 9, 1, 13], axes: [3, 2, 0, 1] },
];

for (const { shape, axes } of permuteCases) {
  test(`permute webgpu ${JSON.stringify(shape)} by ${JSON.stringify(axes)}`, async () => {
    const device = await webgpu();
    const x = randomArray(sizeOf(shape));
    const [expected] = await runOn(cpu, permuteKernel, [x], [f32(shape)], { axes });
    const [actual] = await runOn(device, permuteKernel, [x], [f32(shape)], { axes });
    const result = compare(actual, expected, 0, 0);
    assert.ok(result.ok, result.message);
  });
}

test('permute cpu reference moves elements', async () => {
  // x[i, j, k] = 100i + 10j + k for shape [2, 3, 4]; out[k, i, j] must equal x[i, j, k].
  const x = new Float32Array(24).map((_, n) => 100 * Math.floor(n / 12) + 10 * (Math.floor(n / 4) % 3) + (n % 4));
  const [out] = await runOn(cpu, permuteKernel, [x], [f32([2, 3, 4])], { axes: [2, 0, 1] });
  for (let k = 0; k < 4; k++) {
    for (let i = 0; i < 2; i++) {
      for (let j = 0; j < 3; j++) assert.is(out[k * 6 + i * 3 + j], 100 * i + 10 * j + k, `out[${k}, ${i}, ${j}]`);
    }
  }
});

const sliceCases = [
  { shape: [5, 37, 11], axis: 1, start: 3, end: 30 },
  { shape: [5, 37, 11], axis: 0, start: 4, end: 5 },
  { shape: [5, 37, 11], axis: 2, start: 0, end: 11 },
  { shape: [2, 3, 2, 5, 3, 7], axis: 4, start: 1, end: 2 },
  { shape: [9, 13], axis: 1, start: 6, end: 6 },
];

for (const { shape, axis, start, end } of sliceCases) {
  test(`slice webgpu ${JSON.stringify(shape)} axis ${axis} [${start}, ${end})`, async () => {
    const device = await webgpu();
    const x = randomArray(sizeOf(shape));
    const params = { axis, start, end };
    const [expected] = await runOn(cpu, sliceKernel, [x], [f32(shape)], params);
    const [actual] = await runOn(device, sliceKernel, [x], [f32(shape)], params);
    const result = compare(actual, expected, 0, 0);
    assert.ok(result.ok, result.message);
  });
}

test('slice webgpu large output folds the grid into 2-D', async () => {
  // 2100 × 2001 = 4,202,100 outputs > 65,535 workgroups × 64 lanes.
  const device = await webgpu();
  const shape = [2100, 2003];
  const x = randomArray(sizeOf(shape));
  const params = { axis: 1, start: 1, end: 2002 };
  const [expected] = await runOn(cpu, sliceKernel, [x], [f32(shape)], params);
  const [actual] = await runOn(device, sliceKernel, [x], [f32(shape)], params);
  assert.is(actual.length, 2100 * 2001);
  const result = compare(actual, expected, 0, 0);
  assert.ok(result.ok, result.message);
});

test('slice webgpu i32 values exact', async () => {
  const device = await webgpu();
  const shape = [7, 19];
  const x = Int32Array.from({ length: sizeOf(shape) }, (_, i) => i * 7919 - 50000);
  const params = { axis: 1, start: 2, end: 17 };
  const specs = [{ shape, dtype: 'i32' as const }];
  const [expected] = await runOn(cpu, sliceKernel, [x], specs, params);
  const [actual] = await runOn(device, sliceKernel, [x], specs, params);
  assert.ok(actual instanceof Int32Array, 'webgpu output is i32');
  assert.equal(Array.from(actual), Array.from(expected));
});

test('insert webgpu writes into the target in place', async () => {
  const device = await webgpu();
  const targetShape = [4, 13, 6];
  const sourceShape = [4, 5, 6];
  const target = randomArray(sizeOf(targetShape));
  const source = randomArray(sizeOf(sourceShape));
  const specs = [f32(targetShape), f32(sourceShape)];
  const params = { axis: 1, start: 7 };
  const [expected] = await runOn(cpu, insertKernel, [target, source], specs, params);
  const [actual] = await runOn(device, insertKernel, [target, source], specs, params);
  const result = compare(actual, expected, 0, 0);
  assert.ok(result.ok, result.message);
  // Untouched rows keep their values: target[0, 0, 0] is outside [7, 12) on axis 1.
  assert.is(expected[0], target[0], 'target[0, 0, 0] unchanged');
  assert.is(expected[7 * 6], source[0], 'target[0, 7, 0] = source[0, 0, 0]');
});

// ---------- autograd ops ----------

test('concat and pad webgpu match cpu', async () => {
  const device = await webgpu();
  const shapes = [[3, 2, 5], [3, 7, 5], [3, 1, 5]];
  const datas = shapes.map((shape) => randomArray(sizeOf(shape)));
  const run = async (on: Device) => {
    const parts = datas.map((data, i) => fromHost(data, shapes[i], 'f32', on));
    const joined = concat(parts, -2);
    const padded = pad(joined, 2, 3, 1);
    return { joined: await joined.data(), padded: await padded.data(), shape: padded.shape };
  };
  const expected = await run(cpu);
  const actual = await run(device);
  assert.equal(actual.shape, [3, 10, 9]);
  const joined = compare(actual.joined, expected.joined, 0, 0);
  assert.ok(joined.ok, `concat: ${joined.message}`);
  const padded = compare(actual.padded, expected.padded, 0, 0);
  assert.ok(padded.ok, `pad: ${padded.message}`);
  assert.is(expected.padded[0], 0, 'padding is zero');
});

test('backward webgpu matches cpu', async () => {
  const device = await webgpu();
  const shapes = [[4, 6, 5], [4, 3, 5]];
  const datas = shapes.map((shape) => randomArray(sizeOf(shape)));
  const grads = async (on: Device) => {
    const [a, b] = datas.map((data, i) => {
      const leaf = fromHost(data, shapes[i], 'f32', on);
      leaf.requiresGrad = true;
      return leaf;
    });
    const y = slice(transpose(concat([a, b, a], 1), 0, 2), 2, 1, 3);
    const weights = randomArray(y.size, 1, 77);
    sum(mul(y, fromHost(weights, y.shape, 'f32', on))).backward();
    return [await (a.grad as Tensor).data(), await (b.grad as Tensor).data()];
  };
  const expected = await grads(cpu);
  const actual = await grads(device);
  for (let i = 0; i < 2; i++) {
    const result = compare(actual[i], expected[i], 1e-6, 1e-5);
    assert.ok(result.ok, `input ${i}: ${result.message}`);
  }
});

test('permute gradient matches finite differences', async () => {
  await checkGradients(([x]) => permute(x, [2, 0, 3, 1]), [[2, 3, 4, 3]], 11);
});

test('transpose gradient matches finite differences', async () => {
  await checkGradients(([x]) => transpose(x, -1, 0), [[5, 2, 7]], 12);
});

test('slice gradient matches finite differences', async () => {
  await checkGradients(([x]) => slice(x, 1, 2, 6), [[3, 7, 4]], 13);
});

test('pad gradient matches finite differences', async () => {
  await checkGradients(([x]) => pad(x, 0, 2, 3), [[4, 5]], 14);
});

test('concat gradient matches finite differences', async () => {
  await checkGradients(([a, b, c]) => concat([a, b, c], 0), [[2, 6], [3, 6], [1, 6]], 15);
});

test('concat gradient with a repeated input', async () => {
  await checkGradients(([a, b]) => concat([a, b, a], 2), [[2, 3, 2], [2, 3, 5]], 16);
});

test('slice and concat keep the host copy of i32 ids', async () => {
  const ids = fromHost(new Int32Array([5, 1, 4, 2, 3, 9, 8, 7]), [2, 4], 'i32', cpu);
  const inputs = slice(ids, 1, 0, 3);
  const targets = slice(ids, 1, 1, 4);
  assert.equal(Array.from(inputs.hostData ?? []), [5, 1, 4, 3, 9, 8]);
  assert.equal(Array.from(targets.hostData ?? []), [1, 4, 2, 9, 8, 7]);
  const joined = concat([targets, inputs], 0);
  assert.equal(Array.from(joined.hostData ?? []), [1, 4, 2, 9, 8, 7, 5, 1, 4, 3, 9, 8]);
  assert.equal(Array.from(transpose(ids, 0, 1).hostData ?? []), [5, 3, 1, 9, 4, 8, 2, 7]);
});

test('concat of one tensor returns a view', async () => {
  const values = randomArray(6);
  const x = fromHost(values, [2, 3], 'f32', cpu);
  const y = concat([x], 0);
  assert.not.ok(y === x, 'a separate tensor, so disposing it keeps x');
  y.dispose();
  assert.equal(Array.from(await x.data()), Array.from(values));
});

// ---------- invalid inputs ----------

test('concat rejects mismatched shapes', () => {
  const a = fromHost(randomArray(6), [2, 3], 'f32', cpu);
  const b = fromHost(randomArray(8), [2, 4], 'f32', cpu);
  assert.throws(() => concat([a, b], 0), /concat: tensor 1 has shape \[2, 4\], which does not match tensor 0 \[2, 3\] on the axes other than 0/);
  assert.throws(() => concat([], 0), /concat: no tensors given/);
  const ids = fromHost(new Int32Array(6), [2, 3], 'i32', cpu);
  assert.throws(() => concat([a, ids], 0), /concat: tensor 1 is i32 but tensor 0 is f32/);
});

test('slice rejects out-of-range bounds', () => {
  const x = fromHost(randomArray(20), [4, 5], 'f32', cpu);
  assert.throws(() => slice(x, 1, 2, 6), /slice: range \[2, 6\) is out of range for axis 1 of x \[4, 5\] \(length 5\)/);
  assert.throws(() => slice(x, 0, 3, 2), /slice: range \[3, 2\) is out of range/);
  assert.throws(() => slice(x, 2, 0, 1), /slice: axis 2 is out of range for shape \[4, 5\]; use an integer in \[-2, 1\]/);
});

test('permute and transpose reject bad axes', () => {
  const x = fromHost(randomArray(24), [2, 3, 4], 'f32', cpu);
  assert.throws(() => permute(x, [0, 0, 1]), /permute: axes \[0, 0, 1\] are not a permutation of 0..2 for x \[2, 3, 4\]/);
  assert.throws(() => permute(x, [0, 1]), /not a permutation/);
  assert.throws(() => transpose(x, 0, 3), /transpose: axis 3 is out of range for shape \[2, 3, 4\]/);
  assert.throws(() => pad(x, 0, -1, 0), /pad: padding \(-1, 0\) on axis 0 of x \[2, 3, 4\] is invalid/);
});

test('shape ops reject rank above 6', () => {
  const x = fromHost(randomArray(128), [2, 2, 2, 2, 2, 2, 2], 'f32', cpu);
  assert.throws(() => slice(x, 0, 0, 1), /slice: rank 7 \(\[2, 2, 2, 2, 2, 2, 2\]\) exceeds the supported 6/);
});

test.run();
