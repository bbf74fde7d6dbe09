// LoRA linear: the fused op matches the unfused definition and its gradients match finite
// differences, and merging the update into the base weight gives the same outputs and can be
// undone.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { CpuDevice } from '../engine/cpu-device.ts';
import type { Device } from '../engine/device.ts';
import { floatArrayToHalf, halfArrayToFloat } from '../engine/dtype.ts';
import { setDevice } from '../engine/devices.ts';
import { dropoutSeedState, LoRALinear, nextDropoutSeed, setDropoutSeedState } from '../engine/nn/layers.ts';
import { dropout } from '../engine/ops/dropout.ts';
import { add, affine } from '../engine/ops/elementwise.ts';
import { loraLinear } from '../engine/ops/linear.ts';
import { matmul } from '../engine/ops/matmul.ts';
import { Random } from '../engine/random.ts';
import { fromHost, noGrad, tidy, type Tensor } from '../engine/tensor.ts';
import { assertGradients } from './gradcheck.ts';
import { WebGpuDevice } from '../engine/webgpu-device.ts';
import { compare, cpu, randomArray, webgpu } from './helpers.ts';

/** Computes y = x·Wᵀ + b + s·dropout(x)·Aᵀ·Bᵀ with separate ops, for x [M, K]. */
function unfusedLora(x: Tensor, weight: Tensor, bias: Tensor | null, loraA: Tensor, loraB: Tensor, scale: number, p: number, seed: number): Tensor {
  let y = matmul(x, weight, { transB: true });
  if (bias) y = add(y, bias);
  const down = matmul(dropout(x, p, seed), loraA, { transB: true });
  return add(y, affine(matmul(down, loraB, { transB: true }), scale));
}

/** Runs `fn` without recording and returns its output's values, disposing every tensor it made. */
async function valuesOf(fn: () => Tensor): Promise<ArrayLike<number>> {
  const out = noGrad(() => tidy(fn));
  const values = await out.data();
  out.dispose();
  return values;
}

async function checkFusedForward(device: Device): Promise<void> {
  setDevice(device);
  // [M, K, N, rank]: awkward sizes, then multiples of 4 (vec4 loads), then one row.
  const shapes: Array<[number, number, number, number]> = [
    [33, 37, 29, 5],
    [64, 68, 36, 8],
    [1, 129, 7, 3],
  ];
  for (const [M, K, N, rank] of shapes) {
    for (const p of [0, 0.3]) {
      for (const withBias of [true, false]) {
        const x = fromHost(randomArray(M * K), [M, K], 'f32', device);
        const weight = fromHost(randomArray(N * K, 0.3), [N, K], 'f32', device);
        const bias = withBias ? fromHost(randomArray(N), [N], 'f32', device) : null;
        const loraA = fromHost(randomArray(rank * K, 0.3), [rank, K], 'f32', device);
        const loraB = fromHost(randomArray(N * rank), [N, rank], 'f32', device);
        const options = { scale: 1.75, dropout: p, seed: 12345 };
        const fused = await valuesOf(() => loraLinear(x, weight, bias, loraA, loraB, options));
        const unfused = await valuesOf(() => unfusedLora(x, weight, bias, loraA, loraB, options.scale, p, options.seed));
        const result = compare(fused, unfused, 1e-4, 1e-4);
        assert.ok(result.ok, `${device.kind} M=${M} K=${K} N=${N} rank=${rank} p=${p}${withBias ? ' bias' : ''}: ${result.message}`);
        for (const tensor of [x, weight, bias, loraA, loraB]) tensor?.dispose();
      }
    }
  }
}

test('loraLinear equals the unfused update (cpu)', async () => {
  await checkFusedForward(cpu);
});

test('loraLinear equals the unfused update (webgpu)', async () => {
  await checkFusedForward(await webgpu());
});

/** Returns inputs of a small LoRA linear for gradient checks: x [2, 3, 6], W [5, 6], A [3, 6], B [5, 3] and bias [5]. */
function loraInputs(weightGrad: boolean) {
  return [
    { name: 'x', data: randomArray(2 * 3 * 6), shape: [2, 3, 6] },
    { name: 'weight', data: randomArray(5 * 6), shape: [5, 6], grad: weightGrad },
    { name: 'loraA', data: randomArray(3 * 6), shape: [3, 6] },
    { name: 'loraB', data: randomArray(5 * 3), shape: [5, 3] },
    { name: 'bias', data: randomArray(5), shape: [5] },
  ];
}

for (const p of [0, 0.4]) {
  test(`loraLinear gradients p=${p} (cpu)`, async () => {
    const fn = (x: Tensor, weight: Tensor, loraA: Tensor, loraB: Tensor, bias: Tensor) => loraLinear(x, weight, bias, loraA, loraB, { scale: 0.8, dropout: p, seed: 77 });
    await assertGradients(`loraLinear p=${p}`, fn, loraInputs(false));
  });
}

test('loraLinear gradients with a trainable weight (cpu)', async () => {
  const fn = (x: Tensor, weight: Tensor, loraA: Tensor, loraB: Tensor, bias: Tensor) => loraLinear(x, weight, bias, loraA, loraB, { scale: 2, dropout: 0, seed: 0 });
  await assertGradients('loraLinear trainable weight', fn, loraInputs(true));
});

for (const p of [0, 0.4]) {
  test(`loraLinear gradients p=${p} (webgpu)`, async () => {
    const device = await webgpu();
    const fn = (x: Tensor, weight: Tensor, loraA: Tensor, loraB: Tensor, bias: Tensor) => loraLinear(x, weight, bias, loraA, loraB, { scale: 0.8, dropout: p, seed: 91 });
    await assertGradients(`loraLinear p=${p}`, fn, loraInputs(false), { device });
  });
}

test('LoRALinear.forward equals the unfused update in eval mode', async () => {
  setDevice(cpu);
  const rng = new Random(5);
  const layer = new LoRALinear(11, 7, rng, { rank: 4, alpha: 6, dropout: 0.2 });
  layer.loraB.assign(rng.normalArray(layer.loraB.size, 0.3));
  layer.base.bias!.assign(rng.normalArray(7, 1));
  layer.loraEnabled = true;
  const x = fromHost(rng.normalArray(2 * 5 * 11, 1), [2, 5, 11]);
  const fused = await valuesOf(() => layer.forward(x));
  const unfused = await valuesOf(() => unfusedLora(x.view([10, 11]), layer.base.weight, layer.base.bias, layer.loraA, layer.loraB, 6 / 4, 0, 0));
  const result = compare(fused, unfused, 1e-5, 1e-5);
  assert.ok(result.ok, result.message);
  layer.dispose();
  x.dispose();
});

test('loraLinear rejects factors that do not fit the weight', () => {
  setDevice(cpu);
  const x = fromHost(randomArray(2 * 6), [2, 6]);
  const weight = fromHost(randomArray(5 * 6), [5, 6]);
  const loraA = fromHost(randomArray(3 * 6), [3, 6]);
  const wrongB = fromHost(randomArray(5 * 2), [5, 2]);
  assert.throws(
    () => loraLinear(x, weight, null, loraA, wrongB, { scale: 1, dropout: 0, seed: 0 }),
    /LoRA factors A \[3, 6\] and B \[5, 2\] do not fit the weight \[5, 6\]; expected A \[rank, 6\] and B \[5, rank\]/,
  );
  for (const tensor of [x, weight, loraA, wrongB]) tensor.dispose();
});

async function checkMerge(device: Device): Promise<void> {
  setDevice(device);
  const rng = new Random(12);
  const layer = new LoRALinear(37, 29, rng, { rank: 5, alpha: 7, dropout: 0.1 });
  layer.loraB.assign(rng.normalArray(layer.loraB.size, 0.3));
  layer.loraEnabled = true;
  const x = fromHost(rng.normalArray(3 * 11 * 37, 1), [3, 11, 37]);
  const weightBefore = await layer.base.weight.data();

  const unmerged = await noGrad(() => tidy(() => layer.forward(x))).data();
  layer.merge();
  assert.ok(layer.merged);
  const merged = await noGrad(() => tidy(() => layer.forward(x))).data();
  const same = compare(merged, unmerged, 1e-4, 1e-4);
  assert.ok(same.ok, `merged vs unmerged output: ${same.message}`);

  // The merged weight is W + (alpha/rank)·B·A, computed here on the host.
  const a = await layer.loraA.data();
  const b = await layer.loraB.data();
  const expected = Float32Array.from(weightBefore);
  for (let o = 0; o < 29; o++) {
    for (let i = 0; i < 37; i++) {
      let total = 0;
      for (let r = 0; r < 5; r++) total += b[o * 5 + r] * a[r * 37 + i];
      expected[o * 37 + i] += (7 / 5) * total;
    }
  }
  const weightMerged = compare(await layer.base.weight.data(), expected, 1e-5, 1e-5);
  assert.ok(weightMerged.ok, `merged weight: ${weightMerged.message}`);

  layer.unmerge();
  const restored = compare(await layer.base.weight.data(), weightBefore, 1e-5, 1e-5);
  assert.ok(restored.ok, `unmerged weight: ${restored.message}`);
  layer.dispose();
  x.dispose();
}

test('LoRA merge and unmerge (cpu)', async () => {
  await checkMerge(cpu);
});

test('LoRA merge and unmerge (webgpu)', async () => {
  await checkMerge(await webgpu());
});

test('merged LoRA rejects training', () => {
  setDevice(cpu);
  const layer = new LoRALinear(4, 3, new Random(1), { rank: 2, alpha: 2, dropout: 0 });
  assert.throws(() => layer.merge(), /merge\(\) needs the LoRA update enabled/);
  layer.loraEnabled = true;
  layer.merge();
  layer.train(true);
  assert.throws(() => layer.forward(fromHost(new Float32Array(8), [2, 4])), /call unmerge\(\) before training/);
});

/** Re-stores `weight` as f16 in place, as the checkpoint loader does for frozen weights. */
function storeAsHalf(weight: Tensor, bits: Uint16Array): void {
  weight.requiresGrad = false;
  weight.replaceStorage(weight.device.upload(bits), 'f16');
}

for (const [name, getSmall, getNormal] of [
  ['cpu', async () => new CpuDevice({ maxBindingBytes: 4096 }), async () => cpu],
  ['webgpu', async () => { const gpu = await webgpu(); return new WebGpuDevice(gpu.device, gpu.adapterInfo, { maxBindingBytes: 4096 }); }, webgpu],
] as const) {
  test(`LoRALinear split and f16 bases (${name})`, async () => {
    const xData = randomArray(3 * 5 * 36, 1, 22);
    const bData = randomArray(40 * 4, 0.5, 21);
    /** Builds the same layer (same seed and B) on the current device, and the input. */
    const makeLayer = () => {
      const layer = new LoRALinear(36, 40, new Random(5), { rank: 4, alpha: 8, dropout: 0.25 });
      layer.loraEnabled = true;
      layer.loraB.assign(bData);
      // The base is frozen, as in LoRA fine-tuning.
      layer.base.weight.requiresGrad = false;
      return { layer, x: fromHost(xData, [3, 5, 36]) };
    };
    const normal = await getNormal();
    /** Computes the layer's output with separate ops on `normal`, from host copies of its tensors. */
    const reference = async (layer: LoRALinear, w: Float32Array, p: number, seed: number) => {
      const on = async (t: Tensor) => fromHost((await t.data()) as Float32Array, [...t.shape], 'f32', normal);
      const [bias, loraA, loraB] = [await on(layer.base.bias!), await on(layer.loraA), await on(layer.loraB)];
      const values = await valuesOf(() => unfusedLora(fromHost(xData, [15, 36], 'f32', normal), fromHost(w, [40, 36], 'f32', normal), bias, loraA, loraB, 2, p, seed));
      for (const t of [bias, loraA, loraB]) t.dispose();
      return values;
    };

    // [out, in] = [40, 36] is 5760 bytes as f32, over the 4096-byte binding limit, so the base
    // product runs in row chunks instead of the fused kernel. In training mode the dropout
    // mask must be the one `dropout` draws from the layer's seed.
    setDevice(await getSmall());
    const split = makeLayer();
    const weight32 = (await split.layer.weight.data()) as Float32Array;
    split.layer.train();
    const seedState = dropoutSeedState();
    const trained = await valuesOf(() => split.layer.forward(split.x));
    const afterForward = dropoutSeedState();
    setDropoutSeedState(seedState);
    const seed = nextDropoutSeed();
    setDropoutSeedState(afterForward);
    let check = compare(trained, await reference(split.layer, weight32, 0.25, seed), 1e-5, 1e-4);
    assert.ok(check.ok, `split f32 base with dropout: ${check.message}`);
    // Merging works chunk by chunk on the split base.
    split.layer.eval();
    const unmergedOutput = await valuesOf(() => split.layer.forward(split.x));
    split.layer.merge();
    check = compare(await valuesOf(() => split.layer.forward(split.x)), unmergedOutput, 1e-5, 1e-4);
    assert.ok(check.ok, `merged split base: ${check.message}`);
    split.layer.unmerge();
    check = compare(await split.layer.weight.data(), weight32, 1e-6, 1e-5);
    assert.ok(check.ok, `unmerged split weight: ${check.message}`);
    split.x.dispose();
    split.layer.dispose();

    // An f16 base on a device without the small limit; merging rounds W + update to f16.
    setDevice(normal);
    const { layer, x } = makeLayer();
    layer.eval();
    const bits = floatArrayToHalf(weight32);
    storeAsHalf(layer.weight, bits);
    assert.is(layer.weight.dtype, 'f16');
    const rounded = halfArrayToFloat(bits);
    const half = await valuesOf(() => layer.forward(x));
    check = compare(half, await reference(layer, rounded, 0, 0), 1e-5, 1e-4);
    assert.ok(check.ok, `f16 base: ${check.message}`);
    layer.merge();
    check = compare(await valuesOf(() => layer.forward(x)), half, 2e-2, 2e-2);
    assert.ok(check.ok, `merged f16 base: ${check.message}`);
    layer.unmerge();
    check = compare(halfArrayToFloat((await layer.weight.data()) as Uint16Array), rounded, 2e-3, 2e-2);
    assert.ok(check.ok, `unmerged f16 weight: ${check.message}`);
    x.dispose();
    layer.dispose();
  });
}

test.run();
