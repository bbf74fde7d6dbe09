// f16 storage: host conversions, device upload/read/copy, the f16 ↔ f32 cast kernels (with
// `enable f16;` and the pack/unpack fallback), f16 embedding tables, and re-storing a frozen
// weight as f16.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { Device } from '../engine/device.ts';
import { floatArrayToHalf, floatToHalfBits, halfArrayToFloat, halfBitsToFloat } from '../engine/dtype.ts';
import { cast, castKernel, withF32 } from '../engine/ops/cast.ts';
import { embedding, embeddingKernel } from '../engine/ops/embedding.ts';
import { matmul } from '../engine/ops/matmul.ts';
import { fromHost, noGrad, tidy, zeros } from '../engine/tensor.ts';
import { WebGpuDevice } from '../engine/webgpu-device.ts';
import { setDevice } from '../engine/devices.ts';
import { loadLlama } from '../s2d/hf/llama.ts';
import { nodeFolder } from '../s2d/hf/node-folder.ts';
import { GOLDEN_ROOT } from './golden/compare.ts';
import { compare, cpu, randomArray, randomGenerator, runOn, webgpu } from './helpers.ts';

const sizes = [1, 7, 33, 129, 4099];

let fallback: WebGpuDevice | null = null;

/** Returns the WebGPU device and a second one on the same adapter that generates the kernels without `enable f16;`. */
async function gpuVariants(): Promise<Array<{ label: string; device: Device }>> {
  const device = await webgpu();
  fallback ??= new WebGpuDevice(device.device, device.adapterInfo, { shaderF16: false });
  const variants = [{ label: 'pack2x16float fallback', device: fallback as Device }];
  if (device.caps.shaderF16) variants.unshift({ label: 'enable f16', device });
  return variants;
}

/** Values that exercise rounding: random normals, exact ties between two f16 values, subnormals, zeros and the range ends. */
function awkwardValues(size: number, seed: number): Float32Array {
  const next = randomGenerator(seed);
  const special = [0, -0, 65504, -65504, 2 ** -24, 2 ** -25 * 3, 6.1e-5, 1 + 2 ** -11, 1 + 3 * 2 ** -11, -(2 + 2 ** -10), 1e-8];
  return Float32Array.from({ length: size }, (_, i) => (i < special.length && size > 20 ? special[i] : (next() * 2 - 1) * 10 ** Math.floor(next() * 6 - 3)));
}

// ---------- host conversions ----------

test('f16 rounding is nearest even', () => {
  // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: the tie goes to the even 1.
  assert.is(floatToHalfBits(1 + 2 ** -11), 0x3c00);
  // 1 + 3·2^-11 lies halfway between 1 + 2^-10 (odd) and 1 + 2^-9 (even).
  assert.is(floatToHalfBits(1 + 3 * 2 ** -11), 0x3c02);
  assert.is(floatToHalfBits(65520), 0x7c00);
  assert.is(floatToHalfBits(2 ** -25), 0);
  assert.is(halfBitsToFloat(0x0001), 2 ** -24);
});

test('f16 array conversion matches scalar one', () => {
  const values = awkwardValues(4099, 3);
  const bits = floatArrayToHalf(values);
  for (let i = 0; i < values.length; i++) assert.is(bits[i], floatToHalfBits(values[i]), `element ${i} (${values[i]})`);
  const back = halfArrayToFloat(bits);
  for (let i = 0; i < bits.length; i++) assert.is(back[i], halfBitsToFloat(bits[i]), `element ${i} (bits ${bits[i]})`);
});

// ---------- storage on both devices ----------

for (const size of sizes) {
  test(`f16 upload and read round-trip, ${size} elements`, async () => {
    const bits = floatArrayToHalf(randomArray(size, 4));
    for (const device of [cpu, await webgpu()] as Device[]) {
      const t = fromHost(bits, [size], 'f16', device);
      assert.is(t.dtype, 'f16');
      const back = await t.data();
      assert.instance(back, Uint16Array, `${device.kind}: data() of an f16 tensor`);
      assert.equal(Array.from(back), Array.from(bits), `${device.kind}: bits read back`);
      t.dispose();
    }
  });
}

test('f16 zeros, assign and copyFrom', async () => {
  for (const device of [cpu, await webgpu()] as Device[]) {
    const bits = floatArrayToHalf(randomArray(33));
    const target = zeros([3, 11], 'f16', device);
    assert.equal(Array.from(await target.data()), new Array(33).fill(0), `${device.kind}: zeros`);
    target.assign(bits);
    assert.equal(Array.from(await target.data()), Array.from(bits), `${device.kind}: assign`);
    const copy = zeros([3, 11], 'f16', device);
    copy.copyFrom(target);
    assert.equal(Array.from(await copy.data()), Array.from(bits), `${device.kind}: copyFrom`);
    assert.throws(() => target.assign(randomArray(33)), /assign: f32 values \(Float32Array\) for tensor \[3, 11\] f16; f16 tensors take Uint16Array bit patterns/);
    target.dispose();
    copy.dispose();
  }
});

test('fromHost rounds f32 values to f16', async () => {
  const values = awkwardValues(129, 8);
  const t = fromHost(values, [129], 'f16', cpu);
  assert.equal(Array.from(await t.data()), Array.from(floatArrayToHalf(values)));
  t.dispose();
});

// ---------- cast kernels: WebGPU against the CPU reference ----------

for (const size of sizes) {
  test(`cast f16 to f32 webgpu, ${size} elements`, async () => {
    const bits = floatArrayToHalf(awkwardValues(size, size));
    const specs = [{ shape: [size], dtype: 'f16' as const }];
    const [expected] = await runOn(cpu, castKernel, [bits], specs, { to: 'f32' });
    for (const { label, device } of await gpuVariants()) {
      const [actual] = await runOn(device, castKernel, [bits], specs, { to: 'f32' });
      const result = compare(actual, expected, 0, 0);
      assert.ok(result.ok, `${label}: ${result.message}`);
    }
  });

  test(`cast f32 to f16 webgpu, ${size} elements`, async () => {
    const values = awkwardValues(size, 2 * size);
    const specs = [{ shape: [size], dtype: 'f32' as const }];
    const [expected] = await runOn(cpu, castKernel, [values], specs, { to: 'f16' });
    for (const { label, device } of await gpuVariants()) {
      const [actual] = await runOn(device, castKernel, [values], specs, { to: 'f16' });
      assert.instance(actual, Uint16Array);
      for (let i = 0; i < size; i++) {
        assert.is(actual[i], expected[i], `${label}: element ${i} (${values[i]}): ours=0x${actual[i].toString(16)} | reference=0x${expected[i].toString(16)}`);
      }
    }
  });
}

// ---------- cast op ----------

test('cast op round-trips through f16', async () => {
  for (const device of [cpu, await webgpu()] as Device[]) {
    const values = randomArray(7 * 33, 3);
    const x = fromHost(values, [7, 33], 'f32', device);
    const half = cast(x, 'f16');
    const back = cast(half, 'f32');
    assert.equal(half.shape, [7, 33]);
    const expected = halfArrayToFloat(floatArrayToHalf(values));
    const result = compare(await back.data(), expected, 0, 0);
    assert.ok(result.ok, `${device.kind}: ${result.message}`);
    for (const t of [x, half, back]) t.dispose();
  }
});

test('cast rejects a tensor that requires a gradient', () => {
  const x = fromHost(randomArray(4), [4], 'f32', cpu);
  x.requiresGrad = true;
  assert.throws(() => cast(x, 'f16'), /cast: tensor \[4\] f32 requires a gradient, but no gradient flows through a cast/);
  const half = noGrad(() => cast(x, 'f16'));
  half.requiresGrad = true;
  assert.throws(() => cast(half, 'f32'), /cast: tensor \[4\] f16 requires a gradient/);
});

test('cast rejects i32 tensors', () => {
  const ids = fromHost(new Int32Array([1, 2]), [2], 'i32', cpu);
  assert.throws(() => cast(ids, 'f32'), /cast: cannot cast tensor \[2\] i32 to f32; only f16 ↔ f32 casts exist/);
  ids.dispose();
});

test('withF32 frees the f32 copy after use', async () => {
  const device = await webgpu();
  const weight = fromHost(randomArray(9 * 13), [9, 13], 'f16', device);
  const x = fromHost(randomArray(5 * 13), [5, 13], 'f32', device);
  const before = device.memory().liveStorages;
  const y = withF32(weight, (w) => matmul(x, w, { transB: true }));
  assert.is(device.memory().liveStorages, before + 1, 'only the output stays live');
  const reference = tidy(() => matmul(x, cast(weight, 'f32'), { transB: true }));
  const result = compare(await y.data(), await reference.data(), 0, 0);
  assert.ok(result.ok, result.message);
  for (const t of [weight, x, y, reference]) t.dispose();
});

test('withF32 keeps the copy for a recorded backward', async () => {
  const weight = fromHost(randomArray(4 * 3), [4, 3], 'f16', cpu);
  const x = fromHost(randomArray(2 * 3), [2, 3], 'f32', cpu);
  x.requiresGrad = true;
  let copy: { disposed: boolean } | null = null;
  tidy(() => {
    withF32(weight, (w) => {
      copy = w;
      return matmul(x, w, { transB: true });
    });
    assert.not.ok(copy!.disposed, 'the backward of y reads the f32 copy');
  });
  assert.ok(copy!.disposed, 'the enclosing tidy frees the copy');
  weight.dispose();
  x.dispose();
});

// ---------- embedding from an f16 table ----------

const tables = [
  { vocabSize: 97, dim: 13, count: 55 },
  { vocabSize: 1000, dim: 67, count: 129 },
  { vocabSize: 5, dim: 1, count: 33 },
];

for (const { vocabSize, dim, count } of tables) {
  test(`embedding from f16 table webgpu V=${vocabSize} D=${dim} N=${count}`, async () => {
    const table = floatArrayToHalf(randomArray(vocabSize * dim));
    const next = randomGenerator(vocabSize + dim);
    const ids = Int32Array.from({ length: count }, () => Math.floor(next() * vocabSize));
    const specs = [{ shape: [vocabSize, dim], dtype: 'f16' as const }, { shape: [count], dtype: 'i32' as const }];
    const [expected] = await runOn(cpu, embeddingKernel, [table, ids], specs, {});
    // The reference gathers the decoded rows exactly.
    const decoded = halfArrayToFloat(table);
    for (let n = 0; n < count; n++) assert.is(expected[n * dim], decoded[ids[n] * dim], `reference row ${n}`);
    for (const { label, device } of await gpuVariants()) {
      const [actual] = await runOn(device, embeddingKernel, [table, ids], specs, {});
      const result = compare(actual, expected, 0, 0);
      assert.ok(result.ok, `${label}: ${result.message}`);
    }
  });
}

test('embedding op rejects an f16 table that requires a gradient', () => {
  const table = fromHost(floatArrayToHalf(randomArray(10 * 4)), [10, 4], 'f16', cpu);
  table.requiresGrad = true;
  const ids = fromHost(new Int32Array([1, 2]), [2], 'i32', cpu);
  assert.throws(() => embedding(table, ids), /embedding: tensor \[10, 4\] f16 requires a gradient, but an f16 table .* is frozen/);
  table.dispose();
  ids.dispose();
});

// ---------- re-storing a frozen weight ----------

test('replaceStorage re-stores a weight as f16', async () => {
  for (const device of [cpu, await webgpu()] as Device[]) {
    const values = randomArray(7 * 5);
    const weight = fromHost(values, [7, 5], 'f32', device);
    const live = device.memory().liveStorages;
    weight.replaceStorage(device.upload(floatArrayToHalf(values)), 'f16');
    assert.is(weight.dtype, 'f16');
    assert.is(device.memory().liveStorages, live, `${device.kind}: the f32 storage is released`);
    assert.equal(Array.from(await weight.data()), Array.from(floatArrayToHalf(values)));
    weight.dispose();

    const trainable = fromHost(values, [7, 5], 'f32', device);
    trainable.requiresGrad = true;
    const half = device.upload(floatArrayToHalf(values));
    assert.throws(() => trainable.replaceStorage(half, 'f16'), /replaceStorage: tensor \[7, 5\] f32 requires a gradient, and f16 tensors cannot be trained/);
    device.release(half);
    trainable.dispose();
  }
});

// ---------- loading frozen weights as f16 ----------

test('loadLlama stores frozen weights as f16', async () => {
  for (const device of [cpu, await webgpu()] as Device[]) {
    setDevice(device);
    const folder = nodeFolder(`${GOLDEN_ROOT}/llama`);
    const f32 = await loadLlama(folder);
    const f16 = await loadLlama(folder, { weightDtype: 'f16' });
    const reference = new Map(f32.model.namedParameters());
    let halves = 0;
    for (const [name, parameter] of f16.model.namedParameters()) {
      const expectedDtype = name.endsWith('.base.weight') || name === 'model.embed_tokens.weight' || name === 'lm_head.weight' ? 'f16' : 'f32';
      assert.is(parameter.dtype, expectedDtype, `${device.kind}: ${name}`);
      if (parameter.dtype !== 'f16') continue;
      halves += 1;
      const values = (await reference.get(name)!.data()) as Float32Array;
      assert.equal(Array.from(await parameter.data()), Array.from(floatArrayToHalf(values)), `${device.kind}: ${name} holds the f16 rounding of the checkpoint`);
    }
    assert.ok(halves > 3, `${device.kind}: ${halves} f16 weights`);
    assert.ok(f16.model.loraParameters().every((p) => p.dtype === 'f32' && p.requiresGrad), `${device.kind}: LoRA factors stay f32 and trainable`);
    f32.model.dispose();
    f16.model.dispose();
  }
  setDevice(cpu);
});

test.run();
