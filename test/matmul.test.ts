import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { defineKernel, type Kernel } from '../engine/kernel.ts';
import { setDevice } from '../engine/devices.ts';
import { matmul, matmulKernel, matmulShape, matmulSplitKernel, sumSlicesKernel } from '../engine/ops/matmul.ts';
import { fromHost, noGrad, tidy } from '../engine/tensor.ts';
import type { DeviceCaps } from '../kernels/types.ts';
import { matmulNaiveProgram, matmulPlan, matmulProgram, splitKLayout, splitKSlices, type MatmulShape } from '../kernels/matmul.ts';
import { assertGradients } from './gradcheck.ts';
import { compare, cpu, randomArray, runOn, webgpu } from './helpers.ts';

type MatmulParams = { transA: boolean; transB: boolean };

/** Builds the engine's matmul kernel with its WGSL program generated for other adapter caps. */
function kernelWithCaps(name: string, adjust: (caps: DeviceCaps) => DeviceCaps): Kernel<MatmulParams> {
  return defineKernel({
    ...matmulKernel,
    name,
    wgsl: ([a, b], params, caps) => matmulProgram(matmulShape(a, b, params).shape, adjust(caps)),
  });
}

const naiveKernel = defineKernel({
  ...matmulKernel,
  name: 'matmul-naive',
  wgsl: ([a, b], params) => matmulNaiveProgram(matmulShape(a, b, params).shape),
});

// The variants under test. On lavapipe `adapter` is the subgroup variant with 8 lanes that
// load rows of A. `subgroup4` generates it for a subgroup size of 4 (as on SwiftShader) while
// the adapter runs 8-wide subgroups. `blocked` is the fallback for adapters without subgroups.
const variants: Array<[string, Kernel<MatmulParams>]> = [
  ['adapter', matmulKernel],
  ['blocked', kernelWithCaps('matmul-blocked', (caps) => ({ ...caps, subgroups: false }))],
  ['subgroup4', kernelWithCaps('matmul-subgroup4', (caps) => ({ ...caps, subgroupMinSize: 4 }))],
  ['naive', naiveKernel],
];

interface Case {
  a: number[];
  b: number[];
  transA?: boolean;
  transB?: boolean;
}

/** Lists the four transpose combinations of C[M, N] = A[M, K] · B[K, N], with batch axes in front. */
function allTransposes(M: number, N: number, K: number, batchA: number[] = [], batchB: number[] = []): Case[] {
  const cases: Case[] = [];
  for (const transA of [false, true]) {
    for (const transB of [false, true]) {
      cases.push({
        a: [...batchA, ...(transA ? [K, M] : [M, K])],
        b: [...batchB, ...(transB ? [N, K] : [K, N])],
        transA,
        transB,
      });
    }
  }
  return cases;
}

const cases: Case[] = [
  // Awkward sizes: nothing a multiple of 4, so every operand takes the scalar loaders.
  ...allTransposes(1, 1, 1),
  ...allTransposes(3, 3, 3),
  ...allTransposes(65, 127, 130),
  ...allTransposes(127, 257, 65),
  ...allTransposes(130, 65, 127),
  // N and K multiples of 4 (vec4 loads and stores), with an M that leaves a partial row block.
  ...allTransposes(257, 68, 132),
  ...allTransposes(33, 260, 36),
  // M = 1 (decoding) and K = 1 (outer product).
  ...allTransposes(1, 130, 257),
  ...allTransposes(1, 260, 36),
  ...allTransposes(65, 130, 1),
  // Small M takes fewer rows per workgroup: 2, 4, 8 and 16 rows.
  ...allTransposes(2, 36, 20),
  ...allTransposes(5, 33, 17),
  ...allTransposes(8, 64, 64),
  ...allTransposes(4, 9, 7),
  ...allTransposes(12, 20, 10),
  // Batched, and broadcast of a single matrix over the batch on either side.
  ...allTransposes(17, 9, 33, [3], [3]),
  ...allTransposes(17, 12, 36, [3], []),
  ...allTransposes(20, 24, 36, [], [4]),
  ...allTransposes(6, 7, 5, [2, 3], [1]),
  ...allTransposes(6, 8, 12, [1], [2, 3]),
  { a: [37, 53], b: [53, 29] },
  { a: [1, 5], b: [5, 130] },
];

const size = (shape: number[]) => shape.reduce((p, d) => p * d, 1);
const label = (c: Case) => `${c.a.join('x')} · ${c.b.join('x')}${c.transA ? ' tA' : ''}${c.transB ? ' tB' : ''}`;

for (const [variant, kernel] of variants) {
  // The naive kernel is a second reference: run it on a subset to keep the suite short.
  const variantCases = variant === 'naive' ? cases.filter((_, i) => i % 5 === 0) : cases;
  for (const c of variantCases) {
    test(`matmul ${variant} ${label(c)}`, async () => {
      const device = await webgpu();
      const a = randomArray(size(c.a));
      const b = randomArray(size(c.b));
      const specs = [
        { shape: c.a, dtype: 'f32' as const },
        { shape: c.b, dtype: 'f32' as const },
      ];
      const params = { transA: c.transA ?? false, transB: c.transB ?? false };
      const [expected] = await runOn(cpu, matmulKernel, [a, b], specs, params);
      const [actual] = await runOn(device, kernel, [a, b], specs, params);
      const result = compare(actual, expected, 1e-4, 1e-4);
      assert.ok(result.ok, result.message);
    });
  }
}

test('matmul batch over the workgroup limit', async () => {
  // 65,600 matrices need 2 × 65,535 workgroups along the batch, folded into y.
  const device = await webgpu();
  const specs = [
    { shape: [65600, 2, 4], dtype: 'f32' as const },
    { shape: [4, 3], dtype: 'f32' as const },
  ];
  const a = randomArray(size(specs[0].shape));
  const b = randomArray(size(specs[1].shape));
  const params = { transA: false, transB: false };
  const [expected] = await runOn(cpu, matmulKernel, [a, b], specs, params);
  for (const [variant, kernel] of variants.slice(0, 2)) {
    const [actual] = await runOn(device, kernel, [a, b], specs, params);
    const result = compare(actual, expected, 1e-4, 1e-4);
    assert.ok(result.ok, `${variant}: ${result.message}`);
  }
});

test('matmul uses subgroups when the adapter has them', async () => {
  const device = await webgpu();
  const shape: MatmulShape = { batch: 1, M: 64, N: 64, K: 64, transA: false, transB: false, strideA: 0, strideB: 0 };
  const plan = matmulPlan(shape, device.caps);
  assert.is(plan.variant, device.caps.subgroups ? 'subgroup' : 'blocked');
  assert.is(matmulPlan(shape, { ...device.caps, subgroups: false }).variant, 'blocked');
});

test('matmul program keys identify the code', () => {
  const caps: DeviceCaps = {
    subgroups: true,
    subgroupMinSize: 8,
    subgroupMaxSize: 8,
    shaderF16: false,
    maxComputeWorkgroupSizeX: 256,
    maxComputeInvocationsPerWorkgroup: 256,
    maxComputeWorkgroupStorageSize: 16384,
    maxComputeWorkgroupsPerDimension: 65535,
  };
  const capsVariants = [caps, { ...caps, subgroups: false }, { ...caps, subgroupMinSize: 4, subgroupMaxSize: 4 }, { ...caps, subgroupMaxSize: 128 }];
  const codeByKey = new Map<string, string>();
  for (const c of cases) {
    const specs = [
      { shape: c.a, dtype: 'f32' as const },
      { shape: c.b, dtype: 'f32' as const },
    ];
    const { shape } = matmulShape(specs[0], specs[1], { transA: c.transA ?? false, transB: c.transB ?? false });
    for (const variantCaps of capsVariants) {
      const program = matmulProgram(shape, variantCaps);
      const previous = codeByKey.get(program.key);
      if (previous !== undefined) assert.is(program.code, previous, `key ${program.key} maps to two programs`);
      codeByKey.set(program.key, program.code);
    }
  }
  assert.ok(codeByKey.size > 20, `only ${codeByKey.size} distinct programs`);
});

test('matmul rejects mismatched inner dimensions', () => {
  assert.throws(
    () => matmulKernel.outputs([{ shape: [4, 768], dtype: 'f32' }, { shape: [512, 3072], dtype: 'f32' }], { transA: false, transB: false }),
    /inner dimensions differ \(a is \[4, 768\], b is \[512, 3072\]: 768 vs 512\)/,
  );
});

// ---------- split-K ----------

type SplitParams = MatmulParams & { slices: number };

function splitKernelWithCaps(name: string, adjust: (caps: DeviceCaps) => DeviceCaps): Kernel<SplitParams> {
  return defineKernel({ ...matmulSplitKernel, name, wgsl: (specs, params, caps) => matmulSplitKernel.wgsl(specs, params, adjust(caps)) });
}

const splitVariants: Array<[string, Kernel<SplitParams>]> = [
  ['adapter', matmulSplitKernel],
  ['blocked', splitKernelWithCaps('matmul-split-blocked', (caps) => ({ ...caps, subgroups: false }))],
  ['subgroup4', splitKernelWithCaps('matmul-split-subgroup4', (caps) => ({ ...caps, subgroupMinSize: 4 }))],
];

// The weight-gradient shape dW = dYᵀ·X (transA, K = tokens) and others, with K not a multiple
// of 4 or of the slice length, a batch, and a single matrix broadcast over the batch.
const splitCases: Array<Case & { slices: number }> = [
  { a: [1029, 16], b: [1029, 37], transA: true, slices: 4 },
  { a: [1024, 5], b: [1024, 68], transA: true, slices: 7 },
  { a: [33, 515], b: [7, 515], transB: true, slices: 3 },
  { a: [3, 9, 130], b: [130, 12], slices: 5 },
  { a: [2, 3, 4, 66], b: [66, 5], slices: 2 },
  { a: [1, 257], b: [257, 9], slices: 64 },
];

for (const [variant, kernel] of splitVariants) {
  for (const c of splitCases) {
    test(`matmul split-K ${variant} ${label(c)} S=${c.slices}`, async () => {
      const device = await webgpu();
      const a = randomArray(size(c.a));
      const b = randomArray(size(c.b));
      const specs = [
        { shape: c.a, dtype: 'f32' as const },
        { shape: c.b, dtype: 'f32' as const },
      ];
      const { shape } = matmulShape(specs[0], specs[1], { transA: c.transA ?? false, transB: c.transB ?? false });
      const params = { transA: c.transA ?? false, transB: c.transB ?? false, slices: splitKLayout(shape.K, c.slices).slices };
      const [expectedPartial] = await runOn(cpu, matmulSplitKernel, [a, b], specs, params);
      const [partial] = await runOn(device, kernel, [a, b], specs, params);
      const partials = compare(partial, expectedPartial, 1e-4, 1e-4);
      assert.ok(partials.ok, `partial products: ${partials.message}`);

      // The slices add up to the unsplit product.
      const partialSpec = [{ shape: [params.slices, ...matmulShape(specs[0], specs[1], params).out], dtype: 'f32' as const }];
      const [sum] = await runOn(device, sumSlicesKernel, [partial], partialSpec, { slices: params.slices });
      const [expected] = await runOn(cpu, matmulKernel, [a, b], specs, params);
      const total = compare(sum, expected, 1e-4, 1e-4);
      assert.ok(total.ok, `sum of slices: ${total.message}`);
    });
  }
}

test('matmul split-K sums slices in order on both devices', async () => {
  // With equal partial products, the CPU and WebGPU sums round the same way: bit for bit.
  const device = await webgpu();
  for (const width of [4, 5]) {
    const slices = 6;
    const partial = randomArray(slices * 3 * width);
    const spec = [{ shape: [slices, 3, width], dtype: 'f32' as const }];
    const [expected] = await runOn(cpu, sumSlicesKernel, [partial], spec, { slices });
    const [actual] = await runOn(device, sumSlicesKernel, [partial], spec, { slices });
    assert.equal(Array.from(actual), Array.from(expected), `width ${width}`);
  }
});

test('matmul split-K is bitwise repeatable', async () => {
  const device = await webgpu();
  setDevice(device);
  const a = fromHost(randomArray(2048 * 24), [2048, 24], 'f32', device);
  const b = fromHost(randomArray(2048 * 70), [2048, 70], 'f32', device);
  const runs: Float32Array[] = [];
  for (let run = 0; run < 3; run++) {
    const out = noGrad(() => matmul(a, b, { transA: true, splitK: 8 }));
    runs.push((await out.data()) as Float32Array);
    out.dispose();
  }
  assert.equal(Array.from(runs[1]), Array.from(runs[0]), 'second run differs from the first');
  assert.equal(Array.from(runs[2]), Array.from(runs[0]), 'third run differs from the first');
  const unsplit = noGrad(() => matmul(a, b, { transA: true, splitK: 1 }));
  const result = compare(runs[0], await unsplit.data(), 1e-4, 1e-4);
  assert.ok(result.ok, `split vs unsplit: ${result.message}`);
  for (const tensor of [a, b, unsplit]) tensor.dispose();
});

test('matmul splits K automatically for the weight-gradient shape', async () => {
  const device = await webgpu();
  setDevice(device);
  // dW = dYᵀ·X with 16 output rows, 40 input features and 2048 tokens: one workgroup unsplit.
  const dwShape: MatmulShape = { batch: 1, M: 16, N: 40, K: 2048, transA: true, transB: false, strideA: 0, strideB: 0 };
  const slices = splitKSlices(dwShape, device.caps);
  assert.ok(slices > 1, `expected a split, got ${slices} slice(s)`);
  // A grid that fills the device, and a short K, are not split.
  assert.is(splitKSlices({ ...dwShape, M: 1024, N: 1024 }, device.caps), 1);
  assert.is(splitKSlices({ ...dwShape, K: 300 }, device.caps), 1);

  const a = fromHost(randomArray(2048 * 16), [2048, 16], 'f32', device);
  const b = fromHost(randomArray(2048 * 40), [2048, 40], 'f32', device);
  device.takeDispatchCounts();
  const out = noGrad(() => matmul(a, b, { transA: true }));
  const counts = device.takeDispatchCounts();
  assert.is(counts.get('matmul_split_k'), 1);
  assert.is(counts.get('sum_slices'), 1);
  assert.is(counts.get('matmul'), undefined);
  const expected = noGrad(() => matmul(a, b, { transA: true, splitK: 1 }));
  const result = compare(await out.data(), await expected.data(), 1e-4, 1e-4);
  assert.ok(result.ok, result.message);
  for (const tensor of [a, b, out, expected]) tensor.dispose();
});

test('matmul split-K gradients (cpu)', async () => {
  setDevice(cpu);
  const inputs = [
    { name: 'a', data: randomArray(2 * 13 * 3), shape: [2, 13, 3] },
    { name: 'b', data: randomArray(13 * 4), shape: [13, 4] },
  ];
  await assertGradients('split-K', (a, b) => matmul(a, b, { transA: true, splitK: 3 }), inputs);
});

test('matmul split-K on the CPU device equals the unsplit product', async () => {
  setDevice(cpu);
  const a = fromHost(randomArray(9 * 1001), [9, 1001], 'f32', cpu);
  const b = fromHost(randomArray(1001 * 6), [1001, 6], 'f32', cpu);
  const split = tidy(() => noGrad(() => matmul(a, b, { splitK: 10 })));
  const unsplit = tidy(() => noGrad(() => matmul(a, b)));
  const result = compare(await split.data(), await unsplit.data(), 1e-5, 1e-5);
  assert.ok(result.ok, result.message);
  for (const tensor of [a, b, split, unsplit]) tensor.dispose();
});

test('matmul rejects an invalid splitK', () => {
  setDevice(cpu);
  const a = fromHost(randomArray(8), [2, 4], 'f32', cpu);
  assert.throws(() => matmul(a, a, { transB: true, splitK: 0 }), /splitK = 0 is invalid; use 1 \(no split\) or a whole number of slices ≥ 2/);
  assert.throws(() => matmul(a, a, { transB: true, splitK: 2.5 }), /splitK = 2.5 is invalid/);
  assert.throws(
    () => matmulSplitKernel.outputs([{ shape: [2, 4], dtype: 'f32' }, { shape: [4, 3], dtype: 'f32' }], { transA: false, transB: false, slices: 3 }),
    /K = 4 fills only 1 of 3 slices/,
  );
  a.dispose();
});

test.run();
