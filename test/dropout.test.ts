import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { dropout, dropoutKernel, dropoutThreshold, pcgHash } from '../engine/ops/dropout.ts';
import { mul, sum } from '../engine/ops/elementwise.ts';
import { fromHost, noGrad, type Tensor } from '../engine/tensor.ts';
import { compare, cpu, randomArray, runOn, webgpu } from './helpers.ts';

const f32 = (shape: number[]) => ({ shape, dtype: 'f32' as const });

/** Indices of the zero elements: the dropped ones when the input has no zeros. */
function droppedIndices(values: ArrayLike<number>): number[] {
  const dropped: number[] = [];
  for (let i = 0; i < values.length; i++) if (values[i] === 0) dropped.push(i);
  return dropped;
}

/** Ones with no zero, so an output of 0 marks exactly the dropped elements. */
const ones = (size: number) => new Float32Array(size).fill(1);

// ---------- the hash ----------

test('pcg hash matches a BigInt reference', () => {
  // The same formula in exact integer arithmetic reduced mod 2^32, so Math.imul and the
  // unsigned shifts are checked independently.
  const reference = (input: number): number => {
    const state = Number((BigInt(input) * 747796405n + 2891336453n) % 2n ** 32n);
    const shift = Number(BigInt(state) >> 28n) + 4;
    const word = Number(((BigInt(state >>> shift) ^ BigInt(state)) * 277803737n) % 2n ** 32n);
    return (word >>> 22) ^ word;
  };
  for (const input of [0, 1, 2, 12345, 2 ** 31, 2 ** 32 - 1]) {
    assert.is(pcgHash(input), reference(input) >>> 0, `pcgHash(${input})`);
  }
});

test('threshold of p is ceil(p * 2^32)', () => {
  assert.is(dropoutThreshold(0), 0);
  assert.is(dropoutThreshold(0.5), 2 ** 31);
  assert.is(dropoutThreshold(0.1), Math.ceil(0.1 * 2 ** 32));
  assert.is(dropoutThreshold(1 - 2 ** -40), 2 ** 32 - 1);
});

// ---------- kernel: webgpu against the CPU reference ----------

const cases = [
  { size: 1, p: 0.5, seed: 1 },
  { size: 1000, p: 0.1, seed: 42 },
  { size: 4097, p: 0.5, seed: 2 ** 32 - 1 },
  { size: 12345, p: 0.9, seed: 7 },
];

for (const { size, p, seed } of cases) {
  test(`dropout webgpu ${size} elements p=${p} seed=${seed}`, async () => {
    const device = await webgpu();
    const x = randomArray(size, 2);
    const [expected] = await runOn(cpu, dropoutKernel, [x], [f32([size])], { p, seed });
    const [actual] = await runOn(device, dropoutKernel, [x], [f32([size])], { p, seed });
    const result = compare(actual, expected, 1e-6, 1e-6);
    assert.ok(result.ok, result.message);
    assert.equal(droppedIndices(actual), droppedIndices(expected), 'same dropped elements');
  });
}

test('dropout webgpu large input folds the grid into 2-D', async () => {
  // 4,200,007 elements > 65,535 workgroups × 64 lanes, so the 2-D grid's second row is used.
  const device = await webgpu();
  const size = 4_200_007;
  const params = { p: 0.3, seed: 99 };
  const [expected] = await runOn(cpu, dropoutKernel, [ones(size)], [f32([size])], params);
  const [actual] = await runOn(device, dropoutKernel, [ones(size)], [f32([size])], params);
  let mismatches = 0;
  let firstMismatch = -1;
  for (let i = 0; i < size; i++) {
    if (actual[i] !== expected[i]) {
      mismatches += 1;
      if (firstMismatch < 0) firstMismatch = i;
    }
  }
  assert.is(mismatches, 0, `first mismatch at ${firstMismatch}: ours=${actual[firstMismatch]} | reference=${expected[firstMismatch]}`);
  // The kept fraction of 4.2 M draws lies within 0.1 % of 1 − p (its standard deviation is 0.02 %).
  const keptFraction = 1 - droppedIndices(actual).length / size;
  assert.ok(Math.abs(keptFraction - 0.7) < 1e-3, `kept fraction ${keptFraction}, expected 0.7 ± 0.001`);
});

test('dropout scales kept elements by 1/(1 - p)', async () => {
  const [out] = await runOn(cpu, dropoutKernel, [ones(1000)], [f32([1000])], { p: 0.25, seed: 3 });
  for (const value of out) assert.ok(value === 0 || Math.abs(value - 1 / 0.75) < 1e-6, `value ${value} is neither 0 nor 1/(1 - p)`);
});

test('dropout masks differ between seeds', async () => {
  const [a] = await runOn(cpu, dropoutKernel, [ones(2000)], [f32([2000])], { p: 0.5, seed: 10 });
  const [b] = await runOn(cpu, dropoutKernel, [ones(2000)], [f32([2000])], { p: 0.5, seed: 11 });
  let same = 0;
  for (let i = 0; i < a.length; i++) if ((a[i] === 0) === (b[i] === 0)) same += 1;
  // Independent masks agree on about half the elements (1000 ± 22).
  assert.ok(same > 850, `masks agree on ${same} of 2000 elements, expected about 1000`);
  assert.ok(same < 1150, `masks agree on ${same} of 2000 elements, expected about 1000`);
});

// ---------- autograd op ----------

test('dropout with p = 0 returns x', () => {
  const x = fromHost(randomArray(5), [5], 'f32', cpu);
  assert.ok(dropout(x, 0, 1) === x);
});

test('dropout gradient matches finite differences', async () => {
  const shape = [7, 9];
  const data = randomArray(63, 1, 41);
  const weights = randomArray(63, 1, 42);
  const x = fromHost(data, shape, 'f32', cpu);
  x.requiresGrad = true;
  sum(mul(dropout(x, 0.4, 1234), fromHost(weights, shape, 'f32', cpu))).backward();

  const lossAt = async (values: Float32Array): Promise<number> => {
    const out = await noGrad(() => dropout(fromHost(values, shape, 'f32', cpu), 0.4, 1234)).data();
    let total = 0;
    for (let i = 0; i < out.length; i++) total += out[i] * weights[i];
    return total;
  };
  const delta = 1e-2;
  const numeric = new Float64Array(data.length);
  for (let i = 0; i < data.length; i++) {
    const plus = data.slice();
    const minus = data.slice();
    plus[i] += delta;
    minus[i] -= delta;
    numeric[i] = ((await lossAt(plus)) - (await lossAt(minus))) / (2 * delta);
  }
  const result = compare(await (x.grad as Tensor).data(), numeric, 1e-3, 1e-2);
  assert.ok(result.ok, result.message);
});

test('dropout backward webgpu applies the forward mask', async () => {
  const device = await webgpu();
  const size = 3001;
  const x = fromHost(randomArray(size), [size], 'f32', device);
  x.requiresGrad = true;
  const y = dropout(x, 0.3, 77);
  sum(y).backward();
  const forward = await y.data();
  const grad = await (x.grad as Tensor).data();
  assert.equal(droppedIndices(grad), droppedIndices(forward), 'gradient is zero exactly where the output was dropped');
  for (const value of grad) assert.ok(value === 0 || Math.abs(value - 1 / 0.7) < 1e-6, `gradient ${value} is neither 0 nor 1/(1 - p)`);
});

// ---------- invalid inputs ----------

test('dropout rejects bad p and seed', () => {
  const x = fromHost(randomArray(4), [4], 'f32', cpu);
  assert.throws(() => dropout(x, 1, 0), /dropout: p = 1 is invalid; use a drop probability in \[0, 1\)/);
  assert.throws(() => dropout(x, -0.1, 0), /dropout: p = -0.1 is invalid/);
  assert.throws(() => dropout(x, 0.5, 1.5), /dropout: seed 1.5 is invalid; use an integer in \[0, 2\^32\)/);
  assert.throws(() => dropout(x, 0.5, -1), /dropout: seed -1 is invalid/);
});

test.run();
