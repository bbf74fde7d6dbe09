// Fused linear. The matmul kernel with a bias, an activation, a pre-activation output and a
// second K segment is checked against the CPU reference on awkward sizes. The linear op's
// gradients are checked against finite differences, and Linear against the unfused matmul
// and add that it replaced.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { Device } from '../engine/device.ts';
import { setDevice } from '../engine/devices.ts';
import { defineKernel, type Kernel } from '../engine/kernel.ts';
import { Linear } from '../engine/nn/layers.ts';
import { add, gelu, silu } from '../engine/ops/elementwise.ts';
import { fusedMatmulKernel, linear, type LinearActivation } from '../engine/ops/linear.ts';
import { matmul, matmulReference } from '../engine/ops/matmul.ts';
import { Random } from '../engine/random.ts';
import { fromHost, noGrad, tidy, type Tensor } from '../engine/tensor.ts';
import { matmulProgram, type MatmulShape } from '../kernels/matmul.ts';
import type { DeviceCaps } from '../kernels/types.ts';
import { assertGradients } from './gradcheck.ts';
import { compare, cpu, randomArray, runOn, webgpu } from './helpers.ts';

type FusedParams = Parameters<typeof fusedMatmulKernel.cpu>[3];

const f32 = (shape: number[]) => ({ shape, dtype: 'f32' as const });
const sizeOf = (shape: number[]) => shape.reduce((p, d) => p * d, 1);

function assertClose(label: string, actual: ArrayLike<number>, expected: ArrayLike<number>, atol: number, rtol: number): void {
  const result = compare(actual, expected, atol, rtol);
  assert.ok(result.ok, `${label}: ${result.message}`);
}

/** Builds the fused kernel with its WGSL program generated for other adapter caps. */
function kernelWithCaps(name: string, adjust: (caps: DeviceCaps) => DeviceCaps): Kernel<FusedParams> {
  return defineKernel({ ...fusedMatmulKernel, name, wgsl: (specs, params, caps) => fusedMatmulKernel.wgsl(specs, params, adjust(caps)) });
}

// On lavapipe `adapter` is the subgroup variant with 8 loading lanes. `subgroup4` generates it
// for a subgroup size of 4, and `blocked` is the variant for adapters without subgroups.
const variants: Array<[string, Kernel<FusedParams>]> = [
  ['adapter', fusedMatmulKernel],
  ['blocked', kernelWithCaps('fused-blocked', (caps) => ({ ...caps, subgroups: false }))],
  ['subgroup4', kernelWithCaps('fused-subgroup4', (caps) => ({ ...caps, subgroupMinSize: 4 }))],
];

// [x shape, N]: nothing a multiple of 4, then N and K multiples of 4 (vec4 loads and stores),
// M = 1, and leading axes that flatten into rows.
const epilogueShapes: Array<[number[], number]> = [
  [[7, 129], 33],
  [[33, 7], 129],
  [[1, 3], 5],
  [[65, 68], 36],
  [[2, 3, 20], 12],
];
const activations: LinearActivation[] = ['none', 'gelu', 'silu'];

// Every combination on the adapter's variant; the other variants share the epilogue code,
// so they run two combinations per shape to keep the suite short.
const epilogueCombinations: Array<[LinearActivation, boolean]> = activations.flatMap((activation) => [
  [activation, false],
  [activation, true],
]);
const otherVariantCombinations: Array<[LinearActivation, boolean]> = [
  ['none', false],
  ['gelu', true],
];

for (const [variant, kernel] of variants) {
  for (const [xShape, N] of epilogueShapes) {
    for (const [activation, bias] of variant === 'adapter' ? epilogueCombinations : otherVariantCombinations) {
      const preActivation = activation !== 'none';
      test(`fused epilogue ${variant} x${JSON.stringify(xShape)} N=${N} ${activation}${bias ? ' bias' : ''}`, async () => {
        const device = await webgpu();
        const K = xShape[xShape.length - 1];
        // Values up to ±3 before the activation, so gelu and silu are checked on both tails.
        const inputs = [randomArray(sizeOf(xShape)), randomArray(N * K, 3 / Math.sqrt(K))];
        const specs = [f32(xShape), f32([N, K])];
        if (bias) {
          inputs.push(randomArray(N));
          specs.push(f32([N]));
        }
        const params: FusedParams = { transB: true, second: null, bias, activation, preActivation };
        const expected = await runOn(cpu, fusedMatmulKernel, inputs, specs, params);
        const actual = await runOn(device, kernel, inputs, specs, params);
        assert.is(actual.length, preActivation ? 2 : 1);
        assertClose('y', actual[0], expected[0], 1e-4, 1e-4);
        if (preActivation) assertClose('pre-activation', actual[1], expected[1], 1e-4, 1e-4);
      });
    }
  }
}

// [M, N, K, K2]: awkward sizes, ranks that are and are not multiples of 4, and M = 1.
const secondShapes: Array<[number, number, number, number]> = [
  [7, 33, 129, 5],
  [33, 129, 7, 1],
  [65, 36, 68, 8],
  [1, 130, 37, 16],
  [40, 20, 12, 3],
];

for (const [variant, kernel] of variants) {
  for (const [M, N, K, K2] of secondShapes) {
    // transB = false is the layout of the LoRA dx backward; the adapter's variant checks it.
    for (const transB of variant === 'adapter' ? [true, false] : [true]) {
      test(`fused second segment ${variant} M=${M} N=${N} K=${K} K2=${K2}${transB ? ' tB' : ''}`, async () => {
        const device = await webgpu();
        const bShape = transB ? [N, K] : [K, N];
        const b2Shape = transB ? [N, K2] : [K2, N];
        const inputs = [randomArray(M * K), randomArray(N * K), randomArray(M * K2), randomArray(N * K2), randomArray(N)];
        const specs = [f32([M, K]), f32(bShape), f32([M, K2]), f32(b2Shape), f32([N])];
        const params: FusedParams = { transB, second: { transB, scale: 0.7 }, bias: true, activation: 'none', preActivation: false };
        const [expected] = await runOn(cpu, fusedMatmulKernel, inputs, specs, params);
        const [actual] = await runOn(device, kernel, inputs, specs, params);
        assertClose('y', actual, expected, 1e-4, 1e-4);
      });
    }
  }
}

test('fused CPU reference matches its definition', async () => {
  // act(x·Wᵀ + b), computed here from the plain matmul reference.
  const [M, N, K] = [9, 11, 13];
  const x = randomArray(M * K);
  const weight = randomArray(N * K);
  const bias = randomArray(N);
  const shape: MatmulShape = { batch: 1, M, N, K, transA: false, transB: true, strideA: 0, strideB: 0 };
  const product = new Float32Array(M * N);
  matmulReference(x, weight, product, shape);
  const specs = [f32([M, K]), f32([N, K]), f32([N])];
  const [y, pre] = await runOn(cpu, fusedMatmulKernel, [x, weight, bias], specs, { transB: true, second: null, bias: true, activation: 'silu', preActivation: true });
  const expectedPre = product.map((v, i) => v + bias[i % N]);
  assertClose('pre-activation', pre, expectedPre, 1e-6, 1e-6);
  assertClose('y', y, expectedPre.map((v) => v / (1 + Math.exp(-v))), 1e-6, 1e-6);
});

test('fused program keys identify the code', () => {
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
  const codeByKey = new Map<string, string>();
  for (const [M, N, K, K2] of secondShapes) {
    const shape: MatmulShape = { batch: 1, M, N, K, transA: false, transB: true, strideA: 0, strideB: 0 };
    const fusions = [
      {},
      { bias: true },
      { activation: 'gelu' as const },
      { activation: 'silu' as const, preActivation: true, bias: true },
      { second: { K: K2, transB: true, strideA: 0, strideB: 0, scale: 2 } },
      { second: { K: K2, transB: true, strideA: 0, strideB: 0, scale: 2 }, bias: true },
      { splitK: 2 },
    ];
    for (const fusion of fusions) {
      for (const variantCaps of [caps, { ...caps, subgroups: false }]) {
        const program = matmulProgram(shape, variantCaps, fusion);
        const previous = codeByKey.get(program.key);
        if (previous !== undefined) assert.is(program.code, previous, `key ${program.key} maps to two programs`);
        codeByKey.set(program.key, program.code);
      }
    }
  }
  assert.ok(codeByKey.size > 30, `only ${codeByKey.size} distinct programs`);
});

test('fused matmul rejects bad inputs', () => {
  const params: FusedParams = { transB: true, second: null, bias: true, activation: 'none', preActivation: false };
  assert.throws(() => fusedMatmulKernel.outputs([f32([4, 768]), f32([3072, 512]), f32([3072])], params), /x is \[4, 768\] but the weight is \[3072, 512\] \(\[out, in\]\): 768 vs 512 input features/);
  assert.throws(() => fusedMatmulKernel.outputs([f32([4, 8]), f32([6, 8]), f32([5])], params), /bias has shape \[5\], expected \[6\]/);
  assert.throws(() => fusedMatmulKernel.outputs([f32([4, 8]), f32([6, 8])], { ...params, bias: false, preActivation: true }), /preActivation needs an activation/);
  const lora: FusedParams = { ...params, bias: false, second: { transB: true, scale: 1 } };
  assert.throws(() => fusedMatmulKernel.outputs([f32([4, 8]), f32([6, 8]), f32([4, 2]), f32([6, 3])], lora), /u must be \[4, r\] and B \[6, r\]/);
});

// ---------- the linear op ----------

/** Computes act(x·Wᵀ + b) with separate ops, the composition that linear replaces. */
function unfusedLinear(x: Tensor, weight: Tensor, bias: Tensor | null, activation: LinearActivation): Tensor {
  const K = x.shape[x.shape.length - 1];
  const rows = x.size / K;
  let y = matmul(x.view([rows, K]), weight, { transB: true });
  if (bias) y = add(y, bias);
  if (activation === 'gelu') y = gelu(y);
  if (activation === 'silu') y = silu(y);
  return y.view([...x.shape.slice(0, -1), weight.shape[0]]);
}

/** Runs `fn` without recording and returns its output's values, disposing every tensor it made. */
async function valuesOf(fn: () => Tensor): Promise<ArrayLike<number>> {
  const out = noGrad(() => tidy(fn));
  const values = await out.data();
  out.dispose();
  return values;
}

async function checkAgainstUnfused(device: Device): Promise<void> {
  setDevice(device);
  for (const activation of activations) {
    const x = fromHost(randomArray(3 * 7 * 33), [3, 7, 33], 'f32', device);
    const weight = fromHost(randomArray(29 * 33, 0.5), [29, 33], 'f32', device);
    const bias = fromHost(randomArray(29), [29], 'f32', device);
    const fused = await valuesOf(() => linear(x, weight, bias, activation));
    const unfused = await valuesOf(() => unfusedLinear(x, weight, bias, activation));
    assertClose(`${device.kind} ${activation}`, fused, unfused, 1e-5, 1e-5);
    for (const tensor of [x, weight, bias]) tensor.dispose();
  }
}

test('linear equals matmul, add and activation (cpu)', async () => {
  await checkAgainstUnfused(cpu);
});

test('linear equals matmul, add and activation (webgpu)', async () => {
  await checkAgainstUnfused(await webgpu());
});

test('Linear.forward equals the unfused layer (webgpu)', async () => {
  const device = await webgpu();
  setDevice(device);
  const layer = new Linear(37, 29, new Random(3));
  layer.bias!.assign(randomArray(29));
  const x = fromHost(randomArray(2 * 11 * 37), [2, 11, 37], 'f32', device);
  const fused = await valuesOf(() => layer.forward(x));
  const unfused = await valuesOf(() => unfusedLinear(x, layer.weight, layer.bias, 'none'));
  assertClose('Linear', fused, unfused, 1e-6, 1e-6);
  layer.dispose();
  x.dispose();
});

for (const activation of activations) {
  for (const withBias of [true, false]) {
    test(`linear gradients ${activation}${withBias ? ' bias' : ''} (cpu)`, async () => {
      const inputs = [
        { name: 'x', data: randomArray(2 * 3 * 5), shape: [2, 3, 5] },
        { name: 'weight', data: randomArray(4 * 5), shape: [4, 5] },
      ];
      if (withBias) inputs.push({ name: 'bias', data: randomArray(4), shape: [4] });
      await assertGradients(`linear ${activation}`, (x, weight, bias) => linear(x, weight, bias ?? null, activation), inputs);
    });
  }
}

test('linear gradients gelu (webgpu)', async () => {
  const device = await webgpu();
  const inputs = [
    { name: 'x', data: randomArray(3 * 6), shape: [3, 6] },
    { name: 'weight', data: randomArray(5 * 6), shape: [5, 6] },
    { name: 'bias', data: randomArray(5), shape: [5] },
  ];
  await assertGradients('linear gelu', (x, weight, bias) => linear(x, weight, bias, 'gelu'), inputs, { device });
});

test('linear gradients frozen weight (cpu)', async () => {
  // Only x and the bias take gradients; the weight's stays unset.
  const inputs = [
    { name: 'x', data: randomArray(4 * 3), shape: [4, 3] },
    { name: 'weight', data: randomArray(2 * 3), shape: [2, 3], grad: false },
    { name: 'bias', data: randomArray(2), shape: [2] },
  ];
  await assertGradients('linear silu frozen', (x, weight, bias) => linear(x, weight, bias, 'silu'), inputs);
});

test.run();
