// matmul with an f16 B (a frozen weight): the kernel reads the f16 values, with `enable f16;`
// or unpacked from u32 words, and accumulates in f32. The kernel is checked against the CPU
// reference on the f16-rounded values and against the same kernel with an f32 B that contains
// those values, on awkward sizes and both transB settings. Then come the op, frozenLinear under
// a small binding limit, and the gradient of x.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { CpuDevice } from '../engine/cpu-device.ts';
import type { Device } from '../engine/device.ts';
import { floatArrayToHalf, halfArrayToFloat, type TypedArray } from '../engine/dtype.ts';
import { defineKernel, type Kernel, type TensorSpec } from '../engine/kernel.ts';
import { mul, sum } from '../engine/ops/elementwise.ts';
import { matmul, matmulKernel, matmulShape, matmulSplitKernel } from '../engine/ops/matmul.ts';
import { frozenLinear, rowChunks } from '../engine/ops/row-chunks.ts';
import { fromHost, noGrad, tidy, type Tensor } from '../engine/tensor.ts';
import { WebGpuDevice } from '../engine/webgpu-device.ts';
import { matmulPlan, splitKLayout } from '../kernels/matmul.ts';
import type { DeviceCaps } from '../kernels/types.ts';
import { assertGradients } from './gradcheck.ts';
import { compare, cpu, randomArray, runOn, webgpu } from './helpers.ts';

type MatmulParams = { transA: boolean; transB: boolean };

/**
 * Relative tolerance between an f16 B and an f32 B with the same rounded values: both run
 * the same f32 products in the same order, so they differ by rounding noise at most.
 */
const SAME_MATH_RTOL = 1e-5;
/** Tolerance against the CPU reference, which sums in float64 (as in test/matmul.test.ts). */
const REFERENCE_TOL = 1e-4;

let fallback: WebGpuDevice | null = null;

/** Returns the WebGPU device with `enable f16;` (when the adapter has shader-f16) and one on the same adapter without it. */
async function gpuVariants(): Promise<Array<{ label: string; device: WebGpuDevice }>> {
  const device = await webgpu();
  fallback ??= new WebGpuDevice(device.device, device.adapterInfo, { shaderF16: false });
  const variants = [{ label: 'unpack2x16float', device: fallback }];
  if (device.caps.shaderF16) variants.unshift({ label: 'enable f16', device });
  return variants;
}

/** Builds the engine's matmul kernel with its program generated for adjusted adapter caps. */
function kernelWithCaps(name: string, adjust: (caps: DeviceCaps) => DeviceCaps): Kernel<MatmulParams, TypedArray> {
  return defineKernel<MatmulParams, TypedArray>({ ...matmulKernel, name, wgsl: (specs, params, caps) => matmulKernel.wgsl(specs, params, adjust(caps)) });
}

// `adapter` is the subgroup variant on lavapipe; `blocked` is the fallback without subgroups.
const kernelVariants: Array<[string, Kernel<MatmulParams, TypedArray>]> = [
  ['adapter', matmulKernel],
  ['blocked', kernelWithCaps('matmul-f16-blocked', (caps) => ({ ...caps, subgroups: false }))],
];

/** Random values for B and their f16 bits and decoded (rounded) values. */
function halfOperand(size: number): { bits: Uint16Array; rounded: Float32Array } {
  const bits = floatArrayToHalf(randomArray(size));
  return { bits, rounded: halfArrayToFloat(bits) };
}

interface Case {
  M: number;
  N: number;
  K: number;
  /** Matrices of A and B; B has a batch axis only when this is set. */
  batch?: number;
}

const cases: Case[] = [
  // K and N odd: scalar loads, and with unpack2x16float rows that start mid-word.
  { M: 7, N: 33, K: 129 },
  { M: 3, N: 5, K: 1 },
  // M = 1 (decoding), K odd and K a multiple of 4.
  { M: 1, N: 130, K: 257 },
  { M: 1, N: 260, K: 36 },
  // K and N multiples of 4: vec4 loads of B.
  { M: 33, N: 68, K: 132 },
  // K a multiple of 4 with N odd, and N a multiple of 4 with K odd.
  { M: 65, N: 129, K: 64 },
  { M: 17, N: 36, K: 33 },
  // A batch of B matrices: odd and multiple-of-4 batch strides.
  { M: 5, N: 7, K: 9, batch: 3 },
  { M: 6, N: 8, K: 12, batch: 2 },
];

const size = (shape: number[]) => shape.reduce((p, d) => p * d, 1);

function shapesOf({ M, N, K, batch }: Case, transB: boolean): { a: number[]; b: number[] } {
  const lead = batch ? [batch] : [];
  return { a: [...lead, M, K], b: [...lead, ...(transB ? [N, K] : [K, N])] };
}

// ---------- kernel: f16 B against the CPU reference and the f32 kernel ----------

for (const c of cases) {
  for (const transB of [false, true]) {
    const { a: shapeA, b: shapeB } = shapesOf(c, transB);
    test(`matmul f16 b ${shapeA.join('x')} · ${shapeB.join('x')}${transB ? ' tB' : ''}`, async () => {
      const a = randomArray(size(shapeA));
      const b = halfOperand(size(shapeB));
      const specs16: TensorSpec[] = [{ shape: shapeA, dtype: 'f32' }, { shape: shapeB, dtype: 'f16' }];
      const specs32: TensorSpec[] = [{ shape: shapeA, dtype: 'f32' }, { shape: shapeB, dtype: 'f32' }];
      const params = { transA: false, transB };
      const [expected] = await runOn(cpu, matmulKernel, [a, b.rounded], specs32, params);

      const [onCpu] = await runOn(cpu, matmulKernel, [a, b.bits], specs16, params);
      const cpuResult = compare(onCpu, expected, 0, SAME_MATH_RTOL);
      assert.ok(cpuResult.ok, `cpu: ${cpuResult.message}`);

      for (const { label, device } of await gpuVariants()) {
        const plan = matmulPlan(matmulShape(specs16[0], specs16[1], params).shape, device.caps);
        assert.is(plan.storageB, device.caps.shaderF16 ? 'f16' : 'f16-in-u32', `${label}: storage of B`);
        for (const [variant, kernel] of kernelVariants) {
          const [actual] = await runOn(device, kernel, [a, b.bits], specs16, params);
          const [actual32] = await runOn(device, kernel, [a, b.rounded], specs32, params);
          const sameMath = compare(actual, actual32, 0, SAME_MATH_RTOL);
          assert.ok(sameMath.ok, `${label} ${variant} vs f32 B: ${sameMath.message}`);
          const reference = compare(actual, expected, REFERENCE_TOL, REFERENCE_TOL);
          assert.ok(reference.ok, `${label} ${variant} vs CPU reference: ${reference.message}`);
        }
      }
    });
  }
}

test('matmul f16 b split-K', async () => {
  const shapeA = [33, 515];
  const shapeB = [7, 515];
  const a = randomArray(size(shapeA));
  const b = halfOperand(size(shapeB));
  const specs16: TensorSpec[] = [{ shape: shapeA, dtype: 'f32' }, { shape: shapeB, dtype: 'f16' }];
  const specs32: TensorSpec[] = [{ shape: shapeA, dtype: 'f32' }, { shape: shapeB, dtype: 'f32' }];
  const params = { transA: false, transB: true, slices: splitKLayout(515, 3).slices };
  const [expected] = await runOn(cpu, matmulSplitKernel, [a, b.rounded], specs32, params);
  const [onCpu] = await runOn(cpu, matmulSplitKernel, [a, b.bits], specs16, params);
  const cpuResult = compare(onCpu, expected, 0, SAME_MATH_RTOL);
  assert.ok(cpuResult.ok, `cpu: ${cpuResult.message}`);
  for (const { label, device } of await gpuVariants()) {
    const [actual] = await runOn(device, matmulSplitKernel, [a, b.bits], specs16, params);
    const result = compare(actual, expected, REFERENCE_TOL, REFERENCE_TOL);
    assert.ok(result.ok, `${label}: ${result.message}`);
  }
});

test('matmul f16 b program keys name the storage', () => {
  const caps: DeviceCaps = {
    subgroups: true,
    subgroupMinSize: 8,
    subgroupMaxSize: 8,
    shaderF16: true,
    maxComputeWorkgroupSizeX: 256,
    maxComputeInvocationsPerWorkgroup: 256,
    maxComputeWorkgroupStorageSize: 16384,
    maxComputeWorkgroupsPerDimension: 65535,
  };
  const specs = (dtype: 'f32' | 'f16'): TensorSpec[] => [{ shape: [8, 12], dtype: 'f32' }, { shape: [16, 12], dtype }];
  const params = { transA: false, transB: true };
  const keys = new Set<string>();
  const codes = new Set<string>();
  for (const [dtype, shaderF16] of [['f32', true], ['f16', true], ['f16', false]] as const) {
    const program = matmulKernel.wgsl(specs(dtype), params, { ...caps, shaderF16 });
    keys.add(program.key);
    codes.add(program.code);
    assert.is(program.code.includes('enable f16;'), dtype === 'f16' && shaderF16, `${dtype} with shaderF16 = ${shaderF16}: enable f16`);
  }
  assert.is(keys.size, 3, `keys: ${[...keys].join(', ')}`);
  assert.is(codes.size, 3);
});

// ---------- op ----------

test('matmul op reads f16 b without a cast', async () => {
  const [M, N, K] = [9, 33, 17];
  const a = randomArray(M * K);
  const b = halfOperand(N * K);
  for (const transB of [false, true]) {
    const shapeB = transB ? [N, K] : [K, N];
    const expected = tidy(() => matmul(fromHost(a, [M, K], 'f32', cpu), fromHost(b.rounded, shapeB, 'f32', cpu), { transB }));
    const expectedValues = await expected.data();
    expected.dispose();
    for (const { label, device } of [{ label: 'cpu', device: cpu as Device }, ...(await gpuVariants())]) {
      const x = fromHost(a, [M, K], 'f32', device);
      const weight = fromHost(b.bits, shapeB, 'f16', device);
      if (device instanceof WebGpuDevice) device.takeDispatchCounts();
      const y = matmul(x, weight, { transB });
      if (device instanceof WebGpuDevice) {
        const counts = device.takeDispatchCounts();
        assert.is(counts.get('cast'), undefined, `${label}: no cast dispatch`);
        assert.is(counts.get('matmul'), 1, `${label}: one matmul dispatch`);
      }
      const result = compare(await y.data(), expectedValues, REFERENCE_TOL, REFERENCE_TOL);
      assert.ok(result.ok, `${label} transB = ${transB}: ${result.message}`);
      for (const t of [x, weight, y]) t.dispose();
    }
  }
});

test('matmul rejects an f16 b that requires a gradient', () => {
  const x = fromHost(randomArray(2 * 4), [2, 4], 'f32', cpu);
  const weight = fromHost(floatArrayToHalf(randomArray(3 * 4)), [3, 4], 'f16', cpu);
  weight.requiresGrad = true;
  assert.throws(() => matmul(x, weight, { transB: true }), /matmul: b tensor \[3, 4\] f16 requires a gradient, but an f16 b is read as a frozen weight/);
  // Without recording, no gradient is needed.
  const y = noGrad(() => matmul(x, weight, { transB: true }));
  assert.equal(y.shape, [2, 3]);
  for (const t of [x, weight, y]) t.dispose();
});

test('matmul rejects f16 a and i32 b', () => {
  const half = fromHost(floatArrayToHalf(randomArray(2 * 4)), [2, 4], 'f16', cpu);
  const x = fromHost(randomArray(4 * 3), [4, 3], 'f32', cpu);
  assert.throws(() => matmul(half, x), /matmul: expected an f32 tensor, got tensor \[2, 4\] f16/);
  const ids = fromHost(new Int32Array(12), [4, 3], 'i32', cpu);
  const a = fromHost(randomArray(8), [2, 4], 'f32', cpu);
  assert.throws(() => matmul(a, ids), /matmul: expected an f32 tensor, got tensor \[4, 3\] i32/);
  assert.throws(
    () => matmulKernel.outputs([{ shape: [2, 4], dtype: 'f32' }, { shape: [4, 3], dtype: 'i32' }], { transA: false, transB: false }),
    /matmul: a must be f32 and b f32 or f16, got a f32 and b i32/,
  );
  for (const t of [half, x, ids, a]) t.dispose();
});

// ---------- gradient of x through an f16 b ----------

const gradCases: Array<{ label: string; x: number[]; w: number[]; options: { transA?: boolean; transB?: boolean } }> = [
  { label: 'x·Wᵀ', x: [3, 5], w: [7, 5], options: { transB: true } },
  { label: 'x·W', x: [3, 5], w: [5, 7], options: {} },
  // b is the left operand of dx here, which takes an f32 copy of b.
  { label: 'xᵀ·Wᵀ', x: [5, 3], w: [7, 5], options: { transA: true, transB: true } },
  { label: 'xᵀ·W', x: [4, 3], w: [4, 6], options: { transA: true } },
];

for (const { label, x, w, options } of gradCases) {
  test(`matmul f16 b gradient of x, ${label}`, async () => {
    const weightBits = floatArrayToHalf(randomArray(size(w)));
    const xValues = randomArray(size(x));
    for (const { label: deviceLabel, device } of [{ label: 'cpu', device: cpu as Device }, ...(await gpuVariants())]) {
      const weight = fromHost(weightBits, w, 'f16', device);
      await assertGradients(`${label} ${deviceLabel}`, (input) => matmul(input, weight, options), [{ name: 'x', data: xValues, shape: x }], { device });
      weight.dispose();
    }
  });
}

// ---------- frozenLinear in row chunks of an f16 weight ----------

const KiB = 1024;

/** Devices with a `maxBindingBytes` binding limit: CPU, and WebGPU with and without shader-f16. */
async function limitedDevices(maxBindingBytes: number): Promise<Array<{ label: string; device: Device }>> {
  const gpu = await webgpu();
  const devices: Array<{ label: string; device: Device }> = [
    { label: 'cpu', device: new CpuDevice({ maxBindingBytes }) },
    { label: 'webgpu unpack2x16float', device: new WebGpuDevice(gpu.device, gpu.adapterInfo, { maxBindingBytes, shaderF16: false }) },
  ];
  if (gpu.caps.shaderF16) devices.push({ label: 'webgpu enable f16', device: new WebGpuDevice(gpu.device, gpu.adapterInfo, { maxBindingBytes }) });
  return devices;
}

for (const inFeatures of [67, 64]) {
  test(`frozenLinear f16 weight in chunks, K=${inFeatures}`, async () => {
    // 1001 rows of 67 or 64 f16 values (134 or 128 KB) split into chunks of 128 or 256 rows
    // under a 32 KiB binding.
    const [batch, outFeatures] = [5, 1001];
    const maxBindingBytes = 32 * KiB;
    const weight = halfOperand(outFeatures * inFeatures);
    const xValues = randomArray(batch * inFeatures);
    const dyValues = randomArray(batch * outFeatures);

    // Reference: a plain matmul with the rounded weight on the unlimited CPU device.
    const x0 = fromHost(xValues, [batch, inFeatures], 'f32', cpu);
    x0.requiresGrad = true;
    const weight0 = fromHost(weight.rounded, [outFeatures, inFeatures], 'f32', cpu);
    const y0 = matmul(x0, weight0, { transB: true });
    tidy(() => sum(mul(y0, fromHost(dyValues, y0.shape, 'f32', cpu))).backward());
    const expectedY = await y0.data();
    const expectedDx = await (x0.grad as Tensor).data();
    for (const t of [x0, weight0, y0]) t.dispose();

    for (const { label, device } of await limitedDevices(maxBindingBytes)) {
      assert.ok(rowChunks(outFeatures, inFeatures * 2, device.limits).length > 1, `${label}: the weight is split`);

      // The same limited device with the rounded weight as f32 (also split).
      const x32 = fromHost(xValues, [batch, inFeatures], 'f32', device);
      x32.requiresGrad = true;
      const weight32 = fromHost(weight.rounded, [outFeatures, inFeatures], 'f32', device);
      const y32 = frozenLinear(x32, weight32);
      tidy(() => sum(mul(y32, fromHost(dyValues, y32.shape, 'f32', device))).backward());

      const x = fromHost(xValues, [batch, inFeatures], 'f32', device);
      x.requiresGrad = true;
      const weight16 = fromHost(weight.bits, [outFeatures, inFeatures], 'f16', device);
      if (device instanceof WebGpuDevice) device.takeDispatchCounts();
      const y = frozenLinear(x, weight16);
      tidy(() => sum(mul(y, fromHost(dyValues, y.shape, 'f32', device))).backward());
      if (device instanceof WebGpuDevice) assert.is(device.takeDispatchCounts().get('cast'), undefined, `${label}: no cast dispatch`);

      const yValues = await y.data();
      const dxValues = await (x.grad as Tensor).data();
      const sameY = compare(yValues, await y32.data(), 0, SAME_MATH_RTOL);
      assert.ok(sameY.ok, `${label} y vs f32 weight: ${sameY.message}`);
      // dx adds one partial product per chunk, and an f16 chunk has more rows than an f32 one,
      // so the two sum in different groupings: compare them with the reference tolerance.
      const sameDx = compare(dxValues, await (x32.grad as Tensor).data(), REFERENCE_TOL, REFERENCE_TOL);
      assert.ok(sameDx.ok, `${label} dx vs f32 weight: ${sameDx.message}`);
      const referenceY = compare(yValues, expectedY, REFERENCE_TOL, REFERENCE_TOL);
      assert.ok(referenceY.ok, `${label} y vs CPU reference: ${referenceY.message}`);
      const referenceDx = compare(dxValues, expectedDx, REFERENCE_TOL, REFERENCE_TOL);
      assert.ok(referenceDx.ok, `${label} dx vs CPU reference: ${referenceDx.message}`);
      for (const t of [x32, weight32, y32, x, weight16, y]) t.dispose();
    }
  });
}

test('frozenLinear f16 weight in one binding', async () => {
  const gpu = await webgpu();
  const weight = fromHost(floatArrayToHalf(randomArray(9 * 13)), [9, 13], 'f16', gpu);
  const x = fromHost(randomArray(5 * 13), [5, 13], 'f32', gpu);
  gpu.takeDispatchCounts();
  const y = noGrad(() => frozenLinear(x, weight));
  const counts = gpu.takeDispatchCounts();
  assert.is(counts.get('matmul'), 1, 'one matmul dispatch');
  assert.is(counts.size, 1, `dispatches: ${[...counts.keys()].join(', ')}`);
  for (const t of [weight, x, y]) t.dispose();
});

test('frozenLinear f16 split gradient matches finite differences', async () => {
  // A 4 KiB binding splits the [300, 9] f16 weight (18 bytes a row) into chunks of 128 rows.
  for (const { label, device } of await limitedDevices(4 * KiB)) {
    const weight = fromHost(floatArrayToHalf(randomArray(300 * 9)), [300, 9], 'f16', device);
    assert.is(rowChunks(300, 18, device.limits).length, 3, `${label}: chunks`);
    await assertGradients(`frozenLinear f16 split ${label}`, (x) => frozenLinear(x, weight), [{ name: 'x', data: randomArray(3 * 9), shape: [3, 9] }], { device });
    weight.dispose();
  }
});

test.run();
