// gather (index selection along an axis): values against a direct host computation on both
// devices, and gradients, with repeated indices, against finite differences.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { Device } from '../engine/device.ts';
import { gather } from '../engine/ops/gather.ts';
import { fromHost, noGrad } from '../engine/tensor.ts';
import { assertGradients } from './gradcheck.ts';
import { compare, cpu, randomArray, webgpu } from './helpers.ts';

/** Host reference: picks `indices` along `axis` of a row-major array of `shape`. */
function gatherReference(data: Float32Array, shape: number[], axis: number, indices: number[]): Float32Array {
  const outer = shape.slice(0, axis).reduce((p, d) => p * d, 1);
  const inner = shape.slice(axis + 1).reduce((p, d) => p * d, 1);
  const out = new Float32Array(outer * indices.length * inner);
  for (let o = 0; o < outer; o++) {
    indices.forEach((index, j) => {
      const from = (o * shape[axis] + index) * inner;
      out.set(data.subarray(from, from + inner), (o * indices.length + j) * inner);
    });
  }
  return out;
}

const CASES: Array<{ shape: number[]; axis: number; indices: number[] }> = [
  { shape: [3, 5, 7], axis: 0, indices: [2, 0, 0, 1] },
  { shape: [3, 5, 7], axis: 1, indices: [4, 4, 1] },
  { shape: [3, 5, 7], axis: 2, indices: [6, 0, 3, 3, 5] },
  { shape: [33], axis: 0, indices: [32, 0, 17] },
];

async function checkValues(device: Device): Promise<void> {
  for (const { shape, axis, indices } of CASES) {
    const data = randomArray(shape.reduce((p, d) => p * d, 1), 1, 7 + axis);
    const out = noGrad(() => gather(fromHost(data, shape, 'f32', device), axis, indices));
    const expectedShape = shape.map((d, i) => (i === axis ? indices.length : d));
    assert.equal([...out.shape], expectedShape, `shape for axis ${axis}`);
    const { ok, message } = compare(await out.data(), gatherReference(data, shape, axis, indices), 0, 0);
    assert.ok(ok, `[${shape}] axis ${axis} indices ${indices}: ${message}`);
    out.dispose();
  }
}

test('gather picks the indexed entries (cpu)', () => checkValues(cpu));
test('gather picks the indexed entries (webgpu)', async () => checkValues(await webgpu()));

test('gather gradients add up repeated indices (finite differences)', async () => {
  for (const { shape, axis, indices } of CASES.slice(0, 3)) {
    await assertGradients(`gather axis ${axis}`, (x) => gather(x, axis, indices), [{ name: 'x', data: randomArray(shape.reduce((p, d) => p * d, 1), 1, 3), shape }]);
  }
});

test('gather names a bad index or axis', () => {
  const x = fromHost(new Float32Array(6), [2, 3], 'f32', cpu);
  assert.throws(() => gather(x, 1, [0, 3]), /index 3 at position 1 is outside axis 1 .*\(0\.\.2\)/);
  assert.throws(() => gather(x, 2, [0]), /axis 2 is out of range .* use -2\.\.1/);
  assert.throws(() => gather(x, 0, []), /no indices given/);
  x.dispose();
});

test.run();
