import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { Device } from '../engine/device.ts';
import { applyRope, ropeTables } from '../engine/nn/attention.ts';
import { mul, sum } from '../engine/ops/index.ts';
import { rope, ropeKernel } from '../engine/ops/rope.ts';
import { fromHost, type Tensor } from '../engine/tensor.ts';
import { assertGradients } from './gradcheck.ts';
import { compare, cpu, randomArray, runOn, webgpu } from './helpers.ts';

const f32 = (shape: number[]) => ({ shape, dtype: 'f32' as const });
const THETA = 10000;
const LOG2_THETA = Math.fround(Math.log2(THETA));

function assertClose(label: string, actual: ArrayLike<number>, expected: ArrayLike<number>, atol: number, rtol: number): void {
  const result = compare(actual, expected, atol, rtol);
  assert.ok(result.ok, `${label}: ${result.message}`);
}

/** Unit in the last place of an f32 near |value|. */
function ulpF32(value: number): number {
  return 2 ** (Math.floor(Math.log2(Math.abs(value))) - 23);
}

/**
 * Tolerance for rope against exact angles at positions below `maxPosition`: the f32 angle is off
 * by up to ulp(angle)/2 plus the rounding of inv_freq, and an angle error δ moves an output by at
 * most δ·(|x₁| + |x₂|).
 */
function angleTolerance(maxPosition: number, scale: number): number {
  return 2 * ulpF32(Math.max(maxPosition, 1)) * 2 * scale + 1e-6;
}

/**
 * The same bound for WGSL results: WGSL lets sin and cos be off by 2^-11 in absolute terms, so
 * an output x₁·cos ∓ x₂·sin may move by up to 2^-11·(|x₁| + |x₂|) more. SwiftShader's trig
 * builtins use that freedom (errors near 2e-4 were measured there); lavapipe's do not.
 */
function wgslTolerance(maxPosition: number, scale: number): number {
  return angleTolerance(maxPosition, scale) + 2 ** -11 * 2 * scale;
}

// [B, H, T, Dh] with odd T and head widths around a power of two; rotaryDim < Dh rotates a prefix.
const cases = [
  { shape: [2, 3, 37, 10], rotaryDim: 10, offset: 0 },
  { shape: [1, 5, 17, 6], rotaryDim: 4, offset: 3 },
  { shape: [1, 2, 48, 130], rotaryDim: 130, offset: 2000 },
  { shape: [3, 1, 5, 64], rotaryDim: 32, offset: 511 },
];

// ---------- kernel on WebGPU against the CPU reference ----------

for (const { shape, rotaryDim, offset } of cases) {
  for (const direction of [1, -1] as const) {
    test(`rope webgpu ${JSON.stringify(shape)} R=${rotaryDim} offset=${offset} direction=${direction}`, async () => {
      const device = await webgpu();
      const size = shape.reduce((p, d) => p * d, 1);
      const inputs = [randomArray(size, 1)];
      const params = { offset, rotaryDim, log2Theta: LOG2_THETA, direction };
      const [expected] = await runOn(cpu, ropeKernel, inputs, [f32(shape)], params);
      const [actual] = await runOn(device, ropeKernel, inputs, [f32(shape)], params);
      // Both sides round the angle the same way, so only the exp2, cos and sin implementations differ.
      const maxPosition = offset + shape[2];
      assertClose('out', actual, expected, wgslTolerance(maxPosition, 1), 1e-5);
    });
  }
}

// ---------- against applyRope with f64 tables ----------

/** ropeTables on the CPU device (ropeTables itself uses the current default device). */
async function cpuRopeTables(seqLen: number, headDim: number, offset: number): Promise<{ cos: Tensor; sin: Tensor }> {
  const tables = ropeTables(seqLen, headDim, THETA, offset);
  const cos = fromHost(await tables.cos.data(), [seqLen, headDim], 'f32', cpu);
  const sin = fromHost(await tables.sin.data(), [seqLen, headDim], 'f32', cpu);
  tables.cos.dispose();
  tables.sin.dispose();
  return { cos, sin };
}

for (const { T, Dh, offset } of [
  { T: 7, Dh: 16, offset: 0 },
  { T: 33, Dh: 12, offset: 5 },
  { T: 48, Dh: 64, offset: 2000 },
]) {
  test(`rope matches applyRope T=${T} Dh=${Dh} offset=${offset}`, async () => {
    const shape = [2, 3, T, Dh];
    const data = randomArray(shape.reduce((p, d) => p * d, 1), 1);
    const x = fromHost(data, shape, 'f32', cpu);
    const { cos, sin } = await cpuRopeTables(T, Dh, offset);
    const expected = await applyRope(x, cos, sin).data();
    for (const device of [cpu, await webgpu()]) {
      const actual = await rope(fromHost(data, shape, 'f32', device), { theta: THETA, offset }).data();
      const tolerance = device.kind === 'webgpu' ? wgslTolerance(offset + T, 1) : angleTolerance(offset + T, 1);
      assertClose(`${device.kind} out`, actual, expected, tolerance, 0);
    }
  });
}

test('rope at offset 0 rotates row 0 by nothing', async () => {
  const data = randomArray(2 * 8, 1);
  const out = await rope(fromHost(data, [1, 1, 2, 8], 'f32', cpu), { theta: THETA }).data();
  assertClose('row 0', out.slice(0, 8), data.slice(0, 8), 0, 0);
});

test('rope headDim rotates a prefix only', async () => {
  const shape = [1, 2, 9, 10];
  const data = randomArray(180, 1);
  const out = await rope(fromHost(data, shape, 'f32', cpu), { theta: THETA, offset: 4, headDim: 6 }).data();
  for (let row = 0; row < 18; row++) {
    assertClose(`row ${row} pass-through columns`, out.slice(row * 10 + 6, row * 10 + 10), data.slice(row * 10 + 6, row * 10 + 10), 0, 0);
  }

  // The rotated prefix equals applyRope on that prefix alone.
  const prefix = new Float32Array(18 * 6);
  for (let row = 0; row < 18; row++) prefix.set(data.slice(row * 10, row * 10 + 6), row * 6);
  const { cos, sin } = await cpuRopeTables(9, 6, 4);
  const expected = await applyRope(fromHost(prefix, [1, 2, 9, 6], 'f32', cpu), cos, sin).data();
  const actualPrefix = new Float32Array(18 * 6);
  for (let row = 0; row < 18; row++) actualPrefix.set(out.slice(row * 10, row * 10 + 6), row * 6);
  assertClose('rotated prefix', actualPrefix, expected, angleTolerance(13, 1), 0);
});

// ---------- gradients ----------

test('rope gradcheck', async () => {
  for (const { shape, headDim, offset } of [
    { shape: [1, 2, 3, 4], headDim: 4, offset: 0 },
    { shape: [2, 1, 5, 6], headDim: 4, offset: 7 },
    { shape: [3, 8], headDim: 8, offset: 100 },
  ]) {
    await assertGradients(`rope ${JSON.stringify(shape)} headDim=${headDim} offset=${offset}`, (x) => rope(x, { theta: THETA, offset, headDim }), [
      { name: 'x', data: randomArray(shape.reduce((p, d) => p * d, 1), 1), shape },
    ]);
  }
});

/** Output and x gradient of rope on `device`, with output weights `weights`. */
async function ropeAndGrad(device: Device, data: Float32Array, weights: Float32Array, shape: number[], offset: number): Promise<[Float32Array, Float32Array]> {
  const x = fromHost(data, shape, 'f32', device);
  x.requiresGrad = true;
  const out = rope(x, { theta: THETA, offset });
  sum(mul(out, fromHost(weights, shape, 'f32', device))).backward();
  const values = (await out.data()) as Float32Array;
  const grad = (await x.grad!.data()) as Float32Array;
  for (const t of [x, out, x.grad!]) t.dispose();
  return [values, grad];
}

test('rope autograd webgpu matches cpu', async () => {
  const device = await webgpu();
  const shape = [2, 3, 29, 18];
  const size = shape.reduce((p, d) => p * d, 1);
  const data = randomArray(size, 1);
  const weights = randomArray(size, 1);
  const [outExpected, gradExpected] = await ropeAndGrad(cpu, data, weights, shape, 1000);
  const [outActual, gradActual] = await ropeAndGrad(device, data, weights, shape, 1000);
  assertClose('out', outActual, outExpected, wgslTolerance(1029, 1), 1e-5);
  assertClose('dx', gradActual, gradExpected, wgslTolerance(1029, 1), 1e-5);
});

// ---------- bad inputs ----------

test('rope rejects invalid options', () => {
  const x = fromHost(randomArray(2 * 3 * 8), [2, 3, 8], 'f32', cpu);
  assert.throws(() => rope(x, { theta: THETA, headDim: 5 }), /rope: headDim 5 must be an even integer in \[2, 8\]/);
  assert.throws(() => rope(x, { theta: THETA, headDim: 10 }), /rope: headDim 10 must be an even integer in \[2, 8\]/);
  assert.throws(() => rope(x, { theta: 0 }), /rope: theta must be a finite number > 0, got 0/);
  assert.throws(() => rope(x, { theta: THETA, offset: -1 }), /rope: offset -1 must be an integer ≥ 0/);
  assert.throws(() => rope(x, { theta: THETA, offset: 1.5 }), /rope: offset 1.5 must be an integer ≥ 0/);
});

test('rope rejects bad x', () => {
  assert.throws(() => rope(fromHost(randomArray(8), [8], 'f32', cpu), { theta: THETA }), /rope: x \[8\] needs at least 2 axes/);
  assert.throws(() => rope(fromHost(new Int32Array(8), [2, 4], 'i32', cpu), { theta: THETA }), /rope: expected an f32 tensor/);
});

test.run();
