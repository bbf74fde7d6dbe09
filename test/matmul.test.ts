import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { defineKernel, type Kernel } from '../engine/kernel.ts';
import { matmulKernel, matmulShape } from '../engine/ops/matmul.ts';
import type { DeviceCaps } from '../kernels/types.ts';
import { matmulNaiveProgram, matmulPlan, matmulProgram, type MatmulShape } from '../kernels/matmul.ts';
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

test.run();
