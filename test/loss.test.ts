import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { Device } from '../engine/device.ts';
import { crossEntropy, crossEntropyBackwardKernel, crossEntropyKernel, crossEntropyMeanKernel } from '../engine/ops/loss.ts';
import { fromHost } from '../engine/tensor.ts';
import { assertGradients } from './gradcheck.ts';
import { compare, cpu, randomArray, randomGenerator, runOn, webgpu } from './helpers.ts';

const f32 = (shape: number[]) => ({ shape, dtype: 'f32' as const });
const i32 = (shape: number[]) => ({ shape, dtype: 'i32' as const });
const IGNORE = -100;

function assertClose(label: string, actual: ArrayLike<number>, expected: ArrayLike<number>, atol: number, rtol: number): void {
  const result = compare(actual, expected, atol, rtol);
  assert.ok(result.ok, `${label}: ${result.message}`);
}

/** Random class indices in [0, V), with about `ignoredShare` of the rows set to IGNORE. */
function randomTargets(N: number, V: number, ignoredShare = 0.2, seed = (Math.random() * 2 ** 32) >>> 0): Int32Array {
  const next = randomGenerator(seed);
  return Int32Array.from({ length: N }, () => (next() < ignoredShare ? IGNORE : Math.floor(next() * V)));
}

// Vocabulary sizes around the workgroup of 64 lanes, 37 rows.
const cases = [
  { N: 37, V: 1 },
  { N: 37, V: 53 },
  { N: 37, V: 257 },
  { N: 37, V: 1000 },
  { N: 130, V: 65 },
];

// ---------- kernels on WebGPU against the CPU reference ----------

for (const { N, V } of cases) {
  test(`crossEntropy webgpu [${N}, ${V}]`, async () => {
    const device = await webgpu();
    const inputs = [randomArray(N * V, 4), randomTargets(N, V)];
    const specs = [f32([N, V]), i32([N])];
    const [lossExpected, lseExpected] = await runOn(cpu, crossEntropyKernel, inputs, specs, { ignoreIndex: IGNORE });
    const [lossActual, lseActual] = await runOn(device, crossEntropyKernel, inputs, specs, { ignoreIndex: IGNORE });
    assertClose('loss', lossActual, lossExpected, 1e-5, 1e-5);
    assertClose('logsumexp', lseActual, lseExpected, 1e-5, 1e-5);
  });

  test(`crossEntropy backward webgpu [${N}, ${V}]`, async () => {
    const device = await webgpu();
    const logits = randomArray(N * V, 4);
    const targets = randomTargets(N, V);
    const [loss, logsumexp] = await runOn(cpu, crossEntropyKernel, [logits, targets], [f32([N, V]), i32([N])], { ignoreIndex: IGNORE });
    const [, count] = await runOn(cpu, crossEntropyMeanKernel, [loss, targets], [f32([N]), i32([N])], { ignoreIndex: IGNORE });
    const inputs = [logits, targets, logsumexp, count, new Float32Array([0.7])];
    const specs = [f32([N, V]), i32([N]), f32([N]), f32([1]), f32([1])];
    const [expected] = await runOn(cpu, crossEntropyBackwardKernel, inputs, specs, { ignoreIndex: IGNORE });
    const [actual] = await runOn(device, crossEntropyBackwardKernel, inputs, specs, { ignoreIndex: IGNORE });
    assertClose('dlogits', actual, expected, 1e-6, 1e-4);
  });
}

for (const N of [1, 37, 1000]) {
  test(`crossEntropy mean webgpu N=${N}`, async () => {
    const device = await webgpu();
    const inputs = [randomArray(N, 3).map(Math.abs), randomTargets(N, 10, 0.3)];
    const specs = [f32([N]), i32([N])];
    const expected = await runOn(cpu, crossEntropyMeanKernel, inputs, specs, { ignoreIndex: IGNORE });
    const actual = await runOn(device, crossEntropyMeanKernel, inputs, specs, { ignoreIndex: IGNORE });
    assertClose('mean', actual[0], expected[0], 1e-6, 1e-5);
    assertClose('count', actual[1], expected[1], 0, 0);
  });
}

test('crossEntropy webgpu stable for large logits', async () => {
  // exp(500) overflows f32, so this passes only when the row max is subtracted first.
  const device = await webgpu();
  const [N, V] = [5, 300];
  const inputs = [randomArray(N * V, 4).map((v) => v + 500), randomTargets(N, V, 0)];
  const specs = [f32([N, V]), i32([N])];
  const [expected] = await runOn(cpu, crossEntropyKernel, inputs, specs, { ignoreIndex: IGNORE });
  const [actual] = await runOn(device, crossEntropyKernel, inputs, specs, { ignoreIndex: IGNORE });
  assertClose('loss', actual, expected, 1e-3, 1e-4);
});

test('crossEntropy webgpu writes NaN for an invalid target', async () => {
  // Targets computed on the device skip the host check, so the kernel marks the row with NaN.
  const device = await webgpu();
  const targets = new Int32Array([1, 7, -3, IGNORE]);
  const [loss] = await runOn(device, crossEntropyKernel, [randomArray(4 * 5), targets], [f32([4, 5]), i32([4])], { ignoreIndex: IGNORE });
  assert.ok(Number.isFinite(loss[0]), `row 0 (target 1) should be finite, got ${loss[0]}`);
  assert.ok(Number.isNaN(loss[1]), `row 1 (target 7 ≥ V = 5) should be NaN, got ${loss[1]}`);
  assert.ok(Number.isNaN(loss[2]), `row 2 (target -3) should be NaN, got ${loss[2]}`);
  assert.is(loss[3], 0, 'row 3 (ignored) should be 0');
});

// ---------- the op ----------

test('crossEntropy cpu known values', async () => {
  // Row 0: uniform over 3 classes, so ln 3. Row 1: ln(e⁰ + e¹ + e²) − 2. Row 2 is ignored.
  const logits = fromHost(new Float32Array([0, 0, 0, 0, 1, 2, 5, 5, 5]), [3, 3], 'f32', cpu);
  const targets = fromHost(new Int32Array([1, 2, IGNORE]), [3], 'i32', cpu);
  const loss = await crossEntropy(logits, targets).item();
  const row0 = Math.log(3);
  const row1 = Math.log(1 + Math.E + Math.E ** 2) - 2;
  assertClose('loss', [loss], [(row0 + row1) / 2], 1e-6, 1e-6);
});

test('crossEntropy with every row ignored is 0', async () => {
  const logits = fromHost(randomArray(12), [4, 3], 'f32', cpu);
  logits.requiresGrad = true;
  const targets = fromHost(new Int32Array(4).fill(IGNORE), [4], 'i32', cpu);
  const loss = crossEntropy(logits, targets);
  assert.is(await loss.item(), 0);
  loss.backward();
  assertClose('dlogits', await logits.grad!.data(), new Float32Array(12), 0, 0);
});

test('crossEntropy custom ignoreIndex', async () => {
  // With ignoreIndex 0, class 0 rows drop out and -100 becomes an invalid class.
  const logits = fromHost(new Float32Array([0, 0, 3, 1]), [2, 2], 'f32', cpu);
  const targets = fromHost(new Int32Array([0, 1]), [2], 'i32', cpu);
  const loss = await crossEntropy(logits, targets, 0).item();
  assertClose('loss', [loss], [Math.log(Math.exp(3) + Math.E) - 1], 1e-6, 1e-6);
  const invalid = fromHost(new Int32Array([IGNORE, 1]), [2], 'i32', cpu);
  assert.throws(() => crossEntropy(logits, invalid, 0), /target -100 at row 0 is outside \[0, 2\) and is not ignoreIndex \(0\)/);
});

test('crossEntropy gradcheck', async () => {
  for (const { shape, ignoredShare } of [
    { shape: [6, 5], ignoredShare: 0.3 },
    { shape: [2, 3, 4], ignoredShare: 0 },
    { shape: [4, 1], ignoredShare: 0.5 },
  ]) {
    const V = shape[shape.length - 1];
    const N = shape.reduce((p, d) => p * d, 1) / V;
    const targets = randomTargets(N, V, ignoredShare, 7);
    await assertGradients(`crossEntropy ${JSON.stringify(shape)}`, (logits, t) => crossEntropy(logits, t), [
      { name: 'logits', data: randomArray(N * V, 2), shape },
      { name: 'targets', data: targets, shape: shape.slice(0, -1) },
    ]);
  }
});

/** Loss and logits gradient of crossEntropy on `device`. */
async function lossAndGrad(device: Device, logitsData: Float32Array, targetsData: Int32Array, shape: number[], labelSmoothing?: number): Promise<[number, Float32Array]> {
  const logits = fromHost(logitsData, shape, 'f32', device);
  logits.requiresGrad = true;
  const targets = fromHost(targetsData, shape.slice(0, -1), 'i32', device);
  const loss = labelSmoothing === undefined ? crossEntropy(logits, targets) : crossEntropy(logits, targets, IGNORE, { labelSmoothing });
  loss.backward();
  const value = await loss.item();
  const grad = (await logits.grad!.data()) as Float32Array;
  for (const t of [logits, targets, loss]) t.dispose();
  return [value, grad];
}

test('crossEntropy autograd webgpu matches cpu', async () => {
  const device = await webgpu();
  const [N, V] = [23, 129];
  const logits = randomArray(N * V, 3);
  const targets = randomTargets(N, V);
  const [lossExpected, gradExpected] = await lossAndGrad(cpu, logits, targets, [N, V]);
  const [lossActual, gradActual] = await lossAndGrad(device, logits, targets, [N, V]);
  assertClose('loss', [lossActual], [lossExpected], 1e-5, 1e-5);
  assertClose('dlogits', gradActual, gradExpected, 1e-6, 1e-4);
});

// ---------- label smoothing ----------

const SMOOTHING = 0.1;

for (const { N, V } of cases) {
  test(`crossEntropy smoothed webgpu [${N}, ${V}]`, async () => {
    const device = await webgpu();
    const inputs = [randomArray(N * V, 4), randomTargets(N, V)];
    const specs = [f32([N, V]), i32([N])];
    const params = { ignoreIndex: IGNORE, labelSmoothing: SMOOTHING };
    const [lossExpected, lseExpected] = await runOn(cpu, crossEntropyKernel, inputs, specs, params);
    const [lossActual, lseActual] = await runOn(device, crossEntropyKernel, inputs, specs, params);
    assertClose('loss', lossActual, lossExpected, 1e-5, 1e-5);
    assertClose('logsumexp', lseActual, lseExpected, 1e-5, 1e-5);
  });

  test(`crossEntropy smoothed backward webgpu [${N}, ${V}]`, async () => {
    const device = await webgpu();
    const logits = randomArray(N * V, 4);
    const targets = randomTargets(N, V);
    const params = { ignoreIndex: IGNORE, labelSmoothing: SMOOTHING };
    const [loss, logsumexp] = await runOn(cpu, crossEntropyKernel, [logits, targets], [f32([N, V]), i32([N])], params);
    const [, count] = await runOn(cpu, crossEntropyMeanKernel, [loss, targets], [f32([N]), i32([N])], params);
    const inputs = [logits, targets, logsumexp, count, new Float32Array([0.7])];
    const specs = [f32([N, V]), i32([N]), f32([N]), f32([1]), f32([1])];
    const [expected] = await runOn(cpu, crossEntropyBackwardKernel, inputs, specs, params);
    const [actual] = await runOn(device, crossEntropyBackwardKernel, inputs, specs, params);
    assertClose('dlogits', actual, expected, 1e-6, 1e-4);
  });
}

test('crossEntropy smoothed cpu known values', async () => {
  // Reference in f64 from the definition: (1 − ε)·(−log p[target]) + ε·mean_v(−log p[v]), row 2 ignored.
  const epsilon = 0.25;
  const rows = [[0, 1, 2], [3, -1, 0.5]];
  const targetIds = [2, 0];
  let total = 0;
  rows.forEach((row, n) => {
    const lse = Math.log(row.reduce((sum, x) => sum + Math.exp(x), 0));
    const logProbabilities = row.map((x) => x - lse);
    const uniformTerm = -logProbabilities.reduce((sum, l) => sum + l, 0) / row.length;
    total += (1 - epsilon) * -logProbabilities[targetIds[n]] + epsilon * uniformTerm;
  });
  const logits = fromHost(new Float32Array([...rows.flat(), 9, 9, 9]), [3, 3], 'f32', cpu);
  const targets = fromHost(new Int32Array([...targetIds, IGNORE]), [3], 'i32', cpu);
  const loss = await crossEntropy(logits, targets, IGNORE, { labelSmoothing: epsilon }).item();
  assertClose('loss', [loss], [total / 2], 1e-6, 1e-6);
});

test('crossEntropy smoothing 0 is bit-identical', async () => {
  for (const device of [cpu, await webgpu()]) {
    const [N, V] = [19, 70];
    const logitsData = randomArray(N * V, 3);
    const targetsData = randomTargets(N, V);
    const [plainLoss, plainGrad] = await lossAndGrad(device, logitsData, targetsData, [N, V]);
    const [zeroLoss, zeroGrad] = await lossAndGrad(device, logitsData, targetsData, [N, V], 0);
    assert.is(zeroLoss, plainLoss, `${device.kind} loss: ours=${zeroLoss} | reference=${plainLoss}`);
    assertClose(`${device.kind} dlogits`, zeroGrad, plainGrad, 0, 0);
  }
});

test('crossEntropy smoothed gradcheck', async () => {
  for (const { shape, ignoredShare, epsilon } of [
    { shape: [6, 5], ignoredShare: 0.3, epsilon: 0.1 },
    { shape: [2, 3, 4], ignoredShare: 0, epsilon: 0.5 },
    { shape: [4, 1], ignoredShare: 0.5, epsilon: 0.9 },
  ]) {
    const V = shape[shape.length - 1];
    const N = shape.reduce((p, d) => p * d, 1) / V;
    const targets = randomTargets(N, V, ignoredShare, 11);
    await assertGradients(`crossEntropy ε=${epsilon} ${JSON.stringify(shape)}`, (logits, t) => crossEntropy(logits, t, IGNORE, { labelSmoothing: epsilon }), [
      { name: 'logits', data: randomArray(N * V, 2), shape },
      { name: 'targets', data: targets, shape: shape.slice(0, -1) },
    ]);
  }
});

test('crossEntropy smoothed autograd webgpu matches cpu', async () => {
  const device = await webgpu();
  const [N, V] = [23, 129];
  const logits = randomArray(N * V, 3);
  const targets = randomTargets(N, V);
  const [lossExpected, gradExpected] = await lossAndGrad(cpu, logits, targets, [N, V], 0.2);
  const [lossActual, gradActual] = await lossAndGrad(device, logits, targets, [N, V], 0.2);
  assertClose('loss', [lossActual], [lossExpected], 1e-5, 1e-5);
  assertClose('dlogits', gradActual, gradExpected, 1e-6, 1e-4);
});

test('crossEntropy rejects invalid labelSmoothing', () => {
  const logits = fromHost(randomArray(2 * 3), [2, 3], 'f32', cpu);
  const targets = fromHost(new Int32Array([0, 1]), [2], 'i32', cpu);
  for (const epsilon of [-0.1, 1, 1.5, Number.NaN]) {
    assert.throws(() => crossEntropy(logits, targets, IGNORE, { labelSmoothing: epsilon }), /crossEntropy: labelSmoothing must be in \[0, 1\)/, `ε = ${epsilon}`);
  }
});

// ---------- bad inputs ----------

test('crossEntropy rejects target out of range', () => {
  const logits = fromHost(randomArray(3 * 5), [3, 5], 'f32', cpu);
  const high = fromHost(new Int32Array([0, 5, 1]), [3], 'i32', cpu);
  assert.throws(() => crossEntropy(logits, high), /crossEntropy: target 5 at row 1 is outside \[0, 5\) and is not ignoreIndex \(-100\)/);
  const negative = fromHost(new Int32Array([0, 1, -1]), [3], 'i32', cpu);
  assert.throws(() => crossEntropy(logits, negative), /crossEntropy: target -1 at row 2 is outside \[0, 5\)/);
});

test('crossEntropy rejects target out of range on webgpu', async () => {
  // Targets made from host data are checked on the host, before any kernel runs.
  const device = await webgpu();
  const logits = fromHost(randomArray(2 * 4), [2, 4], 'f32', device);
  const targets = fromHost(new Int32Array([4, 0]), [2], 'i32', device);
  assert.throws(() => crossEntropy(logits, targets), /crossEntropy: target 4 at row 0 is outside \[0, 4\)/);
});

test('crossEntropy rejects mismatched targets shape', () => {
  const logits = fromHost(randomArray(3 * 5), [3, 5], 'f32', cpu);
  const targets = fromHost(new Int32Array(4), [4], 'i32', cpu);
  assert.throws(() => crossEntropy(logits, targets), /crossEntropy: targets have shape \[4\], expected \[3\]/);
});

test('crossEntropy rejects f32 targets', () => {
  const logits = fromHost(randomArray(3 * 5), [3, 5], 'f32', cpu);
  const targets = fromHost(new Float32Array(3), [3], 'f32', cpu);
  assert.throws(() => crossEntropy(logits, targets), /crossEntropy: expected an i32 tensor/);
});

test('crossEntropy rejects logits without a class axis', () => {
  const logits = fromHost(randomArray(5), [5], 'f32', cpu);
  const targets = fromHost(new Int32Array([1]), [], 'i32', cpu);
  assert.throws(() => crossEntropy(logits, targets), /crossEntropy: logits \[5\] need at least 2 axes/);
});

test.run();
