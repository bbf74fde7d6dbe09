import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { Device } from '../engine/device.ts';
import { buildRowIndex, embedding, embeddingBackwardKernel, embeddingKernel } from '../engine/ops/embedding.ts';
import { mul, sum } from '../engine/ops/elementwise.ts';
import { permute } from '../engine/ops/shape.ts';
import { fromHost, noGrad, type Tensor } from '../engine/tensor.ts';
import { compare, cpu, randomArray, randomGenerator, runOn, webgpu } from './helpers.ts';

const sizeOf = (shape: readonly number[]) => shape.reduce((p, d) => p * d, 1);

/** Ids in [0, vocabSize), drawn from a seeded generator; `skew` repeats low ids more often. */
function randomIds(count: number, vocabSize: number, seed: number, skew = 1): Int32Array {
  const next = randomGenerator(seed);
  return Int32Array.from({ length: count }, () => Math.floor(next() ** skew * vocabSize));
}

/**
 * Compares the autograd gradient of L = Σ embedding(weight, ids)·w with respect to weight
 * against central differences on the CPU device.
 */
async function checkWeightGradient(vocabSize: number, dim: number, ids: Int32Array, idShape: number[], seed: number): Promise<void> {
  const weightData = randomArray(vocabSize * dim, 1, seed);
  const idTensor = fromHost(ids, idShape, 'i32', cpu);
  const weight = fromHost(weightData, [vocabSize, dim], 'f32', cpu);
  weight.requiresGrad = true;
  const out = embedding(weight, idTensor);
  const weights = randomArray(out.size, 1, seed + 1);
  sum(mul(out, fromHost(weights, out.shape, 'f32', cpu))).backward();

  const lossAt = async (data: Float32Array): Promise<number> => {
    const values = await noGrad(() => embedding(fromHost(data, [vocabSize, dim], 'f32', cpu), idTensor)).data();
    let total = 0;
    for (let i = 0; i < values.length; i++) total += values[i] * weights[i];
    return total;
  };
  const delta = 1e-2;
  const numeric = new Float64Array(weightData.length);
  for (let i = 0; i < numeric.length; i++) {
    const plus = weightData.slice();
    const minus = weightData.slice();
    plus[i] += delta;
    minus[i] -= delta;
    numeric[i] = ((await lossAt(plus)) - (await lossAt(minus))) / (2 * delta);
  }
  const result = compare(await (weight.grad as Tensor).data(), numeric, 1e-3, 1e-2);
  assert.ok(result.ok, result.message);
}

// ---------- kernels: webgpu against the CPU reference ----------

const cases = [
  { vocabSize: 97, dim: 13, idShape: [5, 11] },
  { vocabSize: 1000, dim: 67, idShape: [3, 41] },
  { vocabSize: 5, dim: 130, idShape: [77] },
  { vocabSize: 3001, dim: 1, idShape: [2, 3, 9] },
];

for (const { vocabSize, dim, idShape } of cases) {
  const label = `V=${vocabSize} D=${dim} ids ${JSON.stringify(idShape)}`;

  test(`embedding webgpu ${label}`, async () => {
    const device = await webgpu();
    const weight = randomArray(vocabSize * dim);
    const ids = randomIds(sizeOf(idShape), vocabSize, vocabSize + dim);
    const specs = [{ shape: [vocabSize, dim], dtype: 'f32' as const }, { shape: idShape, dtype: 'i32' as const }];
    const [expected] = await runOn(cpu, embeddingKernel, [weight, ids], specs, {});
    const [actual] = await runOn(device, embeddingKernel, [weight, ids], specs, {});
    assert.is(actual.length, sizeOf(idShape) * dim);
    const result = compare(actual, expected, 0, 0);
    assert.ok(result.ok, result.message);
  });

  test(`embedding backward webgpu ${label}`, async () => {
    const device = await webgpu();
    const count = sizeOf(idShape);
    // Skewed ids repeat low rows many times, as real token streams do.
    const ids = randomIds(count, vocabSize, 7 * vocabSize + dim, 3);
    const { rowStart, positions } = buildRowIndex(ids, vocabSize);
    const grad = randomArray(count * dim);
    const specs = [
      { shape: [...idShape, dim], dtype: 'f32' as const },
      { shape: [vocabSize + 1], dtype: 'i32' as const },
      { shape: [count], dtype: 'i32' as const },
    ];
    const [expected] = await runOn(cpu, embeddingBackwardKernel, [grad, rowStart, positions], specs, { vocabSize });
    const [actual] = await runOn(device, embeddingBackwardKernel, [grad, rowStart, positions], specs, { vocabSize });
    const result = compare(actual, expected, 1e-5, 1e-5);
    assert.ok(result.ok, result.message);
  });
}

test('row index lists positions per row in order', () => {
  const { rowStart, positions } = buildRowIndex([2, 0, 2, 3, 0, 2], 5);
  assert.equal(Array.from(rowStart), [0, 2, 2, 5, 6, 6]);
  assert.equal(Array.from(positions), [1, 4, 0, 2, 5, 3]);
});

// ---------- autograd op ----------

test('embedding gradient matches finite differences', async () => {
  // Row 3 is used three times and row 0 never, so both the sum and the zero rows are checked.
  await checkWeightGradient(6, 4, new Int32Array([3, 1, 3, 5, 2, 3, 4, 1]), [2, 4], 21);
});

test('embedding gradient after a shape op on the output', async () => {
  const ids = new Int32Array([0, 2, 2, 1, 4, 0]);
  const weightData = randomArray(5 * 3, 1, 31);
  const weight = fromHost(weightData, [5, 3], 'f32', cpu);
  weight.requiresGrad = true;
  const out = permute(embedding(weight, fromHost(ids, [2, 3], 'i32', cpu)), [2, 0, 1]);
  sum(out).backward();
  // d(sum)/d(weight[v, d]) is the number of times id v occurs.
  const expected = [2, 1, 2, 0, 1].flatMap((count) => [count, count, count]);
  assert.equal(Array.from(await (weight.grad as Tensor).data()), expected);
});

test('embedding backward webgpu matches cpu', async () => {
  const device = await webgpu();
  const [vocabSize, dim] = [203, 29];
  const ids = randomIds(4 * 37, vocabSize, 5, 2);
  const weightData = randomArray(vocabSize * dim);
  const outWeights = randomArray(4 * 37 * dim);
  const run = async (on: Device) => {
    const weight = fromHost(weightData, [vocabSize, dim], 'f32', on);
    weight.requiresGrad = true;
    const out = embedding(weight, fromHost(ids, [4, 37], 'i32', on));
    sum(mul(out, fromHost(outWeights, out.shape, 'f32', on))).backward();
    return { out: await out.data(), grad: await (weight.grad as Tensor).data() };
  };
  const expected = await run(cpu);
  const actual = await run(device);
  const forward = compare(actual.out, expected.out, 0, 0);
  assert.ok(forward.ok, `forward: ${forward.message}`);
  const backward = compare(actual.grad, expected.grad, 1e-5, 1e-5);
  assert.ok(backward.ok, `gradient: ${backward.message}`);
});

test('embedding backward webgpu is deterministic', async () => {
  const device = await webgpu();
  const [vocabSize, dim] = [50, 17];
  const ids = randomIds(999, vocabSize, 9, 4);
  const weightData = randomArray(vocabSize * dim);
  const outWeights = randomArray(999 * dim, 100);
  const gradient = async () => {
    const weight = fromHost(weightData, [vocabSize, dim], 'f32', device);
    weight.requiresGrad = true;
    const out = embedding(weight, fromHost(ids, [999], 'i32', device));
    sum(mul(out, fromHost(outWeights, out.shape, 'f32', device))).backward();
    return Array.from(await (weight.grad as Tensor).data());
  };
  assert.equal(await gradient(), await gradient());
});

// ---------- invalid inputs ----------

test('embedding rejects ids out of range', () => {
  const weight = fromHost(randomArray(10 * 4), [10, 4], 'f32', cpu);
  const tooLarge = fromHost(new Int32Array([1, 2, 10, 3]), [4], 'i32', cpu);
  assert.throws(() => embedding(weight, tooLarge), /embedding: id 10 at position 2 is out of range for a vocabulary of V = 10 rows; ids must be in \[0, 10\)/);
  const negative = fromHost(new Int32Array([-1]), [1], 'i32', cpu);
  assert.throws(() => embedding(weight, negative), /embedding: id -1 at position 0 is out of range/);
});

test('embedding rejects ids without a host copy', () => {
  const weight = fromHost(randomArray(10 * 4), [10, 4], 'f32', cpu);
  const ids = fromHost(new Int32Array([1, 2]), [2], 'i32', cpu);
  ids.hostData = null;
  assert.throws(() => embedding(weight, ids), /embedding: ids .* have no host copy; embedding needs ids created from host data/);
});

test('embedding rejects f32 ids and a 1-D weight', () => {
  const weight = fromHost(randomArray(10 * 4), [10, 4], 'f32', cpu);
  const floatIds = fromHost(new Float32Array([1, 2]), [2], 'f32', cpu);
  assert.throws(() => embedding(weight, floatIds), /embedding: expected an i32 tensor/);
  const flat = fromHost(randomArray(10), [10], 'f32', cpu);
  assert.throws(() => embedding(flat, fromHost(new Int32Array([1]), [1], 'i32', cpu)), /embedding: weight must be \[V, D\]/);
});

test.run();
