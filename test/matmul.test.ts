import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { matmulKernel } from '../engine/ops/matmul.ts';
import { compare, cpu, randomArray, runOn, webgpu } from './helpers.ts';

const cases = [
  { a: [37, 53], b: [53, 29], transA: false, transB: false },
  { a: [53, 37], b: [53, 29], transA: true, transB: false },
  { a: [37, 53], b: [29, 53], transA: false, transB: true },
  { a: [53, 37], b: [29, 53], transA: true, transB: true },
  { a: [3, 17, 33], b: [3, 33, 9], transA: false, transB: false },
  { a: [3, 17, 33], b: [33, 9], transA: false, transB: false },
  { a: [1, 5], b: [5, 130], transA: false, transB: false },
];

for (const c of cases) {
  test(`matmul webgpu ${c.a} x ${c.b} tA=${c.transA} tB=${c.transB}`, async () => {
    const device = await webgpu();
    const size = (s: number[]) => s.reduce((p, d) => p * d, 1);
    const a = randomArray(size(c.a));
    const b = randomArray(size(c.b));
    const specs = [{ shape: c.a, dtype: 'f32' as const }, { shape: c.b, dtype: 'f32' as const }];
    const params = { transA: c.transA, transB: c.transB };
    const [expected] = await runOn(cpu, matmulKernel, [a, b], specs, params);
    const [actual] = await runOn(device, matmulKernel, [a, b], specs, params);
    const result = compare(actual, expected, 1e-4, 1e-4);
    assert.ok(result.ok, result.message);
  });
}

test('matmul rejects mismatched inner dimensions', () => {
  assert.throws(
    () => matmulKernel.outputs([{ shape: [4, 768], dtype: 'f32' }, { shape: [512, 3072], dtype: 'f32' }], { transA: false, transB: false }),
    /inner dimensions differ \(a is \[4, 768\], b is \[512, 3072\]: 768 vs 512\)/,
  );
});

test.run();
