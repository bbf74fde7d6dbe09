import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { TensorSpec } from '../engine/kernel.ts';
import { mul, sum } from '../engine/ops/elementwise.ts';
import { MASKED_SCORE, maskKernel, maskScores, type MaskOptions } from '../engine/ops/mask.ts';
import { fromHost, noGrad, type Tensor } from '../engine/tensor.ts';
import { compare, cpu, randomArray, runOn, webgpu } from './helpers.ts';

const sizeOf = (shape: readonly number[]) => shape.reduce((p, d) => p * d, 1);

interface MaskCase {
  shape: [number, number, number, number];
  causal: boolean;
  queryOffset: number;
  keyLengths?: number[];
}

const cases: MaskCase[] = [
  { shape: [2, 3, 17, 17], causal: true, queryOffset: 0 },
  { shape: [3, 2, 1, 41], causal: true, queryOffset: 29 },
  { shape: [3, 5, 9, 23], causal: false, queryOffset: 0, keyLengths: [23, 0, 11] },
  { shape: [2, 4, 13, 19], causal: true, queryOffset: 6, keyLengths: [7, 25] },
  { shape: [1, 1, 6, 4], causal: true, queryOffset: -2 },
];

/** Inputs, specs and params of `maskKernel` for a case; `fill` picks forward (−1e9) or backward (0). */
function kernelArgs({ shape, causal, queryOffset, keyLengths }: MaskCase, fill: number) {
  const scores = randomArray(sizeOf(shape), 3);
  const inputs: Array<Float32Array | Int32Array> = [scores];
  const specs: TensorSpec[] = [{ shape, dtype: 'f32' }];
  if (keyLengths) {
    inputs.push(Int32Array.from(keyLengths));
    specs.push({ shape: [keyLengths.length], dtype: 'i32' });
  }
  return { inputs, specs, params: { causal, queryOffset, fill } };
}

// ---------- kernel: webgpu against the CPU reference ----------

for (const c of cases) {
  const label = `${JSON.stringify(c.shape)} causal=${c.causal} offset=${c.queryOffset}${c.keyLengths ? ` lengths=${c.keyLengths}` : ''}`;
  for (const fill of [MASKED_SCORE, 0]) {
    test(`mask webgpu ${label} fill ${fill}`, async () => {
      const device = await webgpu();
      const { inputs, specs, params } = kernelArgs(c, fill);
      const [expected] = await runOn(cpu, maskKernel, inputs, specs, params);
      const [actual] = await runOn(device, maskKernel, inputs, specs, params);
      const result = compare(actual, expected, 0, 0);
      assert.ok(result.ok, result.message);
    });
  }
}

test('mask cpu reference follows the rules', async () => {
  // B = 2, H = 1, Tq = 3, Tk = 5; causal with queryOffset 1 and keyLengths [4, 2].
  const shape = [2, 1, 3, 5];
  const scores = new Float32Array(30).fill(1);
  const specs = [{ shape, dtype: 'f32' as const }, { shape: [2], dtype: 'i32' as const }];
  const [out] = await runOn(cpu, maskKernel, [scores, new Int32Array([4, 2])], specs, { causal: true, queryOffset: 1, fill: MASKED_SCORE });
  const keepFlags = Array.from(out, (v) => (v === 1 ? 1 : 0));
  // Batch 0 keeps key j for query i when j <= i + 1 and j < 4. Batch 1 also needs j < 2.
  assert.equal(keepFlags, [
    1, 1, 0, 0, 0,
    1, 1, 1, 0, 0,
    1, 1, 1, 1, 0,
    1, 1, 0, 0, 0,
    1, 1, 0, 0, 0,
    1, 1, 0, 0, 0,
  ]);
  assert.ok(out.every((v) => v === 1 || v === MASKED_SCORE), 'masked scores are filled with -1e9');
});

// ---------- autograd op ----------

async function checkGradient(shape: number[], options: MaskOptions, seed: number): Promise<void> {
  const data = randomArray(sizeOf(shape), 1, seed);
  const weights = randomArray(sizeOf(shape), 1, seed + 1);
  const scores = fromHost(data, shape, 'f32', cpu);
  scores.requiresGrad = true;
  sum(mul(maskScores(scores, options), fromHost(weights, shape, 'f32', cpu))).backward();

  const lossAt = async (values: Float32Array): Promise<number> => {
    const out = await noGrad(() => maskScores(fromHost(values, shape, 'f32', cpu), options)).data();
    // Masked outputs are the constant −1e9 and would only add rounding error of about
    // 1e9·2⁻⁵³ per term, so they are left out of the sum.
    let total = 0;
    for (let i = 0; i < out.length; i++) if (out[i] !== MASKED_SCORE) total += out[i] * weights[i];
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
  const result = compare(await (scores.grad as Tensor).data(), numeric, 1e-3, 1e-2);
  assert.ok(result.ok, result.message);
}

test('mask gradient matches finite differences', async () => {
  const shape = [2, 2, 4, 5];
  const keyLengths = fromHost(new Int32Array([3, 5]), [2], 'i32', cpu);
  await checkGradient(shape, { causal: true, queryOffset: 1, keyLengths }, 51);
});

test('mask gradient is zero where masked', async () => {
  const device = await webgpu();
  const shape = [2, 3, 5, 7];
  const scores = fromHost(randomArray(sizeOf(shape)), shape, 'f32', device);
  scores.requiresGrad = true;
  const keyLengths = fromHost(new Int32Array([7, 3]), [2], 'i32', device);
  const out = maskScores(scores, { causal: true, queryOffset: 2, keyLengths });
  sum(out).backward();
  const values = await out.data();
  const grad = await (scores.grad as Tensor).data();
  for (let i = 0; i < values.length; i++) {
    const expected = values[i] === MASKED_SCORE ? 0 : 1;
    assert.is(grad[i], expected, `element ${i}: gradient ${grad[i]}, output ${values[i]}`);
  }
});

test('mask without causal or lengths is the identity', async () => {
  const data = randomArray(2 * 3 * 4 * 5);
  const scores = fromHost(data, [2, 3, 4, 5], 'f32', cpu);
  const out = maskScores(scores, { causal: false });
  assert.not.ok(out === scores, 'a separate tensor (a view)');
  assert.equal(Array.from(await out.data()), Array.from(data));
});

// ---------- invalid inputs ----------

test('mask rejects bad shapes', () => {
  const scores3d = fromHost(randomArray(24), [2, 3, 4], 'f32', cpu);
  assert.throws(() => maskScores(scores3d, { causal: true }), /mask: scores must be f32 \[B, H, Tq, Tk\], got \[2, 3, 4\] f32/);
  const scores = fromHost(randomArray(2 * 1 * 3 * 3), [2, 1, 3, 3], 'f32', cpu);
  const wrongLengths = fromHost(new Int32Array([1, 2, 3]), [3], 'i32', cpu);
  assert.throws(() => maskScores(scores, { causal: false, keyLengths: wrongLengths }), /mask: keyLengths must be i32 \[2\] for scores \[2, 1, 3, 3\], got \[3\] i32/);
  const floatLengths = fromHost(new Float32Array([1, 2]), [2], 'f32', cpu);
  assert.throws(() => maskScores(scores, { causal: false, keyLengths: floatLengths }), /mask: keyLengths must be i32 \[2\]/);
  assert.throws(() => maskScores(scores, { causal: true, queryOffset: 0.5 }), /mask: queryOffset 0.5 is invalid/);
});

test.run();
