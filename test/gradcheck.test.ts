// Gradients of the core ops against central finite differences on the CPU device.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  accumulateGradInto,
  add,
  affine,
  broadcastTo,
  div,
  exp,
  gelu,
  log,
  matmul,
  mean,
  mul,
  neg,
  record,
  relu,
  reshape,
  silu,
  sqrt,
  square,
  sub,
  sum,
} from '../engine/ops/index.ts';
import type { CpuStorage } from '../engine/cpu-device.ts';
import { fromHost, noGrad, type Tensor } from '../engine/tensor.ts';
import { assertGradients, gradcheck } from './gradcheck.ts';
import { cpu, randomArray } from './helpers.ts';

const sizeOf = (shape: number[]) => shape.reduce((p, d) => p * d, 1);

/** Uniform values in ±[low, high]: kept at least `low` away from 0 (relu's kink, division). */
function awayFromZero(size: number, low: number, high: number): Float32Array {
  const values = randomArray(size, 1);
  return values.map((v) => Math.sign(v || 1) * (low + Math.abs(v) * (high - low)));
}

/** Uniform values in [low, high] (inputs of log and sqrt). */
function positive(size: number, low: number, high: number): Float32Array {
  return randomArray(size, 1).map((v) => low + ((v + 1) / 2) * (high - low));
}

// ---------- the helper itself ----------

test('gradcheck catches a wrong backward', async () => {
  // x² with the gradient missing its factor 2.
  const wrongSquare = (x: Tensor) => {
    const out = noGrad(() => square(x));
    return record(out, [x], (g) => accumulateGradInto(x, mul(g, x)));
  };
  const results = await gradcheck(wrongSquare, [{ name: 'x', data: awayFromZero(6, 0.5, 1), shape: [2, 3] }]);
  assert.is(results.length, 1);
  assert.not.ok(results[0].ok, `a missing factor of 2 passed: ${results[0].message}`);
});

test('gradcheck catches a permuted gradient', async () => {
  // 3x with the right gradient values in reversed order. Under L = Σ out every value of g is
  // 1 and the permutation would pass; the random weights of L make it fail.
  const reversedGradient = (x: Tensor) => {
    const out = noGrad(() => affine(x, 3));
    return record(out, [x], (g) => {
      const values = (g.storage as CpuStorage).data.slice().reverse() as Float32Array;
      accumulateGradInto(x, affine(fromHost(values, g.shape, 'f32', cpu), 3));
    });
  };
  const results = await gradcheck(reversedGradient, [{ name: 'x', data: randomArray(6), shape: [2, 3] }]);
  assert.not.ok(results[0].ok, `a reversed gradient passed: ${results[0].message}`);
});

// ---------- binary ops with broadcasting ----------

const broadcastCases = [
  { a: [3, 4], b: [3, 4] },
  { a: [3, 4], b: [4] },
  { a: [2, 1, 3], b: [4, 1] },
  { a: [1], b: [2, 3] },
  { a: [2, 3, 1], b: [2, 1, 5] },
];

const binaryOps = { add, sub, mul, div };

for (const [name, op] of Object.entries(binaryOps)) {
  for (const { a, b } of broadcastCases) {
    test(`${name} gradcheck ${JSON.stringify(a)} with ${JSON.stringify(b)}`, async () => {
      // Divisors stay in ±[0.5, 1.5], where 1/b is smooth at the finite-difference scale.
      const bData = name === 'div' ? awayFromZero(sizeOf(b), 0.5, 1.5) : randomArray(sizeOf(b));
      await assertGradients(`${name} ${JSON.stringify(a)} ${JSON.stringify(b)}`, (x, y) => op(x, y), [
        { name: 'a', data: randomArray(sizeOf(a)), shape: a },
        { name: 'b', data: bData, shape: b },
      ]);
    });
  }
}

test('mul gradcheck same tensor twice', async () => {
  // Both operands are x, so its gradient accumulates from two paths: 2x.
  await assertGradients('mul(x, x)', (x) => mul(x, x), [{ name: 'x', data: randomArray(12), shape: [3, 4] }]);
  await assertGradients('add(x, x)', (x) => add(x, x), [{ name: 'x', data: randomArray(12), shape: [3, 4] }]);
});

test('broadcastTo gradcheck', async () => {
  await assertGradients('broadcastTo [3, 1] to [2, 3, 4]', (x) => broadcastTo(x, [2, 3, 4]), [{ name: 'x', data: randomArray(3), shape: [3, 1] }]);
});

// ---------- unary ops ----------

const unaryCases: Array<{ name: string; fn: (x: Tensor) => Tensor; data: () => Float32Array }> = [
  { name: 'affine', fn: (x) => affine(x, 2.5, -1), data: () => randomArray(15) },
  { name: 'neg', fn: (x) => neg(x), data: () => randomArray(15) },
  { name: 'exp', fn: (x) => exp(x), data: () => randomArray(15) },
  { name: 'log', fn: (x) => log(x), data: () => positive(15, 0.5, 2) },
  { name: 'square', fn: (x) => square(x), data: () => randomArray(15, 2) },
  { name: 'sqrt', fn: (x) => sqrt(x), data: () => positive(15, 0.5, 2) },
  { name: 'gelu', fn: (x) => gelu(x), data: () => randomArray(15, 3) },
  { name: 'silu', fn: (x) => silu(x), data: () => randomArray(15, 3) },
  // relu has a kink at 0: keep inputs farther from it than the finite-difference step.
  { name: 'relu', fn: (x) => relu(x), data: () => awayFromZero(15, 0.1, 2) },
];

for (const { name, fn, data } of unaryCases) {
  test(`${name} gradcheck`, async () => {
    await assertGradients(name, fn, [{ name: 'x', data: data(), shape: [3, 5] }]);
  });
}

// ---------- reductions and reshape ----------

const reductionCases: Array<{ axes?: number[]; keepDims?: boolean }> = [
  {},
  { axes: [0] },
  { axes: [1], keepDims: true },
  { axes: [-1] },
  { axes: [0, 2] },
  { axes: [0, 1, 2], keepDims: true },
];

for (const { axes, keepDims } of reductionCases) {
  const label = `axes=${JSON.stringify(axes ?? 'all')} keepDims=${keepDims ?? false}`;
  test(`sum gradcheck ${label}`, async () => {
    await assertGradients(`sum ${label}`, (x) => sum(x, axes, keepDims), [{ name: 'x', data: randomArray(24), shape: [2, 3, 4] }]);
  });
  test(`mean gradcheck ${label}`, async () => {
    await assertGradients(`mean ${label}`, (x) => mean(x, axes, keepDims), [{ name: 'x', data: randomArray(24), shape: [2, 3, 4] }]);
  });
}

test('reshape gradcheck', async () => {
  await assertGradients('reshape [3, 4] to [6, 2]', (x) => reshape(x, [6, 2]), [{ name: 'x', data: randomArray(12), shape: [3, 4] }]);
  await assertGradients('reshape [3, 4] to [2, -1, 3]', (x) => reshape(x, [2, -1, 3]), [{ name: 'x', data: randomArray(12), shape: [3, 4] }]);
  // A reshape feeding a nonlinear op, so the gradient passing through the view is not all ones.
  await assertGradients('square(reshape)', (x) => square(reshape(x, [4, 3])), [{ name: 'x', data: randomArray(12), shape: [2, 6] }]);
});

// ---------- matmul ----------

const matmulCases = [
  { a: [3, 4], b: [4, 5], transA: false, transB: false },
  { a: [4, 3], b: [4, 5], transA: true, transB: false },
  { a: [3, 4], b: [5, 4], transA: false, transB: true },
  { a: [4, 3], b: [5, 4], transA: true, transB: true },
  { a: [2, 3, 4], b: [2, 4, 5], transA: false, transB: false },
  { a: [2, 4, 3], b: [2, 5, 4], transA: true, transB: true },
  { a: [2, 3, 4], b: [4, 5], transA: false, transB: false },
  { a: [3, 4], b: [2, 4, 5], transA: false, transB: false },
  { a: [2, 3, 4], b: [5, 4], transA: false, transB: true },
  { a: [2, 2, 3, 4], b: [2, 2, 4, 2], transA: false, transB: false },
];

for (const c of matmulCases) {
  const label = `${JSON.stringify(c.a)} x ${JSON.stringify(c.b)} tA=${c.transA} tB=${c.transB}`;
  test(`matmul gradcheck ${label}`, async () => {
    await assertGradients(`matmul ${label}`, (a, b) => matmul(a, b, { transA: c.transA, transB: c.transB }), [
      { name: 'a', data: randomArray(sizeOf(c.a)), shape: c.a },
      { name: 'b', data: randomArray(sizeOf(c.b)), shape: c.b },
    ]);
  });
}

// ---------- a small composite ----------

test('two-layer MLP gradcheck', async () => {
  // x·W1 + b1 → gelu → ·W2, averaged: the gradients chain through matmul, broadcast and mean.
  const mlp = (x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor) => mean(matmul(gelu(add(matmul(x, w1), b1)), w2), [1]);
  await assertGradients('mlp', mlp, [
    { name: 'x', data: randomArray(12), shape: [3, 4] },
    { name: 'w1', data: randomArray(20), shape: [4, 5] },
    { name: 'b1', data: randomArray(5), shape: [5] },
    { name: 'w2', data: randomArray(10), shape: [5, 2] },
  ]);
});

test.run();
