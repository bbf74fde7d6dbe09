// Tensors larger than one storage binding: row-range planning and views, the limit errors,
// and the embedding gather and frozenLinear in row chunks. The split paths run under a 1 MiB
// binding limit set for the test, on the CPU and the WebGPU device. One real table is larger
// than lavapipe's 128 MiB binding limit.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { CpuDevice } from '../engine/cpu-device.ts';
import type { Device } from '../engine/device.ts';
import { floatArrayToHalf, halfArrayToFloat } from '../engine/dtype.ts';
import { cast } from '../engine/ops/cast.ts';
import { embedding } from '../engine/ops/embedding.ts';
import { mul, sum } from '../engine/ops/elementwise.ts';
import { matmul } from '../engine/ops/matmul.ts';
import { frozenLinear, rowChunks, rowRange } from '../engine/ops/row-chunks.ts';
import { fromHost, tidy, zeros, type Tensor } from '../engine/tensor.ts';
import { WebGpuDevice } from '../engine/webgpu-device.ts';
import { assertGradients } from './gradcheck.ts';
import { compare, cpu, randomArray, randomGenerator, webgpu } from './helpers.ts';

const MiB = 1024 * 1024;
const LIMITS_1MIB = { maxBindingBytes: MiB, maxStorageBytes: Infinity, bindingOffsetAlignment: 256 };

const smallCpu = new CpuDevice({ maxBindingBytes: MiB });
let smallGpus: Array<{ label: string; device: WebGpuDevice }> | null = null;

/** WebGPU devices on the test adapter with a 1 MiB binding limit, with and without `enable f16;`. */
async function smallGpuVariants(): Promise<Array<{ label: string; device: WebGpuDevice }>> {
  const gpu = await webgpu();
  smallGpus ??= [
    { label: 'webgpu', device: new WebGpuDevice(gpu.device, gpu.adapterInfo, { maxBindingBytes: MiB }) },
    { label: 'webgpu without shader-f16', device: new WebGpuDevice(gpu.device, gpu.adapterInfo, { maxBindingBytes: MiB, shaderF16: false }) },
  ];
  return smallGpus;
}

async function splitDevices(): Promise<Array<{ label: string; device: Device }>> {
  return [{ label: 'cpu', device: smallCpu }, ...(await smallGpuVariants())];
}

function randomIds(count: number, vocabSize: number, seed: number): Int32Array {
  const next = randomGenerator(seed);
  return Int32Array.from({ length: count }, () => Math.floor(next() * vocabSize));
}

/** Host copy of `values` after a round trip through f16, for f16 weights. */
function decoded(values: Float32Array, dtype: 'f32' | 'f16'): Float32Array {
  return dtype === 'f16' ? halfArrayToFloat(floatArrayToHalf(values)) : values;
}

// ---------- planning and views ----------

test('rowChunks keeps one chunk when it fits', () => {
  assert.equal(rowChunks(100, 400, LIMITS_1MIB), [{ start: 0, count: 100 }]);
});

test('rowChunks splits at aligned offsets', () => {
  // 1200-byte rows: chunk starts must be multiples of 16 rows (16 · 1200 = 75 · 256).
  const chunks = rowChunks(1000, 1200, LIMITS_1MIB);
  assert.equal(chunks, [{ start: 0, count: 864 }, { start: 864, count: 136 }]);
  for (const { start, count } of chunks) {
    assert.is((start * 1200) % 256, 0, `chunk at row ${start} is aligned`);
    assert.ok(count * 1200 <= MiB, `chunk of ${count} rows fits 1 MiB`);
  }
});

test('rowChunks sizes chunks by the bound row size', () => {
  // f16 rows of 258 bytes cast to f32 bind 516 bytes: at most 2032 rows, in steps of 128.
  const chunks = rowChunks(5003, 258, LIMITS_1MIB, 516);
  assert.equal(chunks.map((c) => c.count), [1920, 1920, 1163]);
});

test('rowChunks rejects rows larger than a binding', () => {
  assert.throws(() => rowChunks(4, 2 * MiB, LIMITS_1MIB), /rowChunks: 1 rows of 2097152 bytes .* exceed the binding limit of 1048576 bytes/);
});

test('rowRange reads the selected rows', async () => {
  for (const { label, device } of await splitDevices()) {
    const values = randomArray(300 * 64);
    const table = fromHost(values, [300, 64], 'f32', device);
    const rows = rowRange(table, 8, 17);
    assert.equal(rows.shape, [17, 64]);
    const result = compare(await rows.data(), values.subarray(8 * 64, 25 * 64), 0, 0);
    assert.ok(result.ok, `${label}: ${result.message}`);
    rows.dispose();
    table.dispose();
  }
});

test('rowRange rejects an unaligned start', () => {
  const table = fromHost(randomArray(30 * 3), [30, 3], 'f32', cpu);
  assert.throws(() => rowRange(table, 1, 2), /slice: byte offset 12 is not a multiple of the device's binding offset alignment \(256 bytes/);
  assert.throws(() => rowRange(table, 29, 2), /rowRange: rows \[29, 31\) are not inside tensor \[30, 3\] f32/);
  table.dispose();
});

// ---------- limit errors ----------

test('op binding a tensor over the limit names it', async () => {
  for (const { label, device } of await splitDevices()) {
    const big = fromHost(floatArrayToHalf(randomArray(600 * 1024)), [600, 1024], 'f16', device);
    assert.throws(() => cast(big, 'f32'), /cast: input 0 \[600, 1024\] f16 is 1228800 bytes, more than the device's maxStorageBufferBindingSize of 1048576 bytes/, label);
    big.dispose();
  }
});

test('allocation over maxBufferSize names the tensor and the limit', async () => {
  const device = await webgpu();
  const rows = Math.ceil(device.limits.maxStorageBytes / 4096) + 1;
  assert.throws(() => zeros([rows, 1024], 'f32', device), new RegExp(`tensor \\[${rows}, 1024\\] f32 needs \\d+ bytes, more than the device's maxBufferSize of ${device.limits.maxStorageBytes} bytes`));
});

// ---------- embedding in row chunks ----------

for (const dtype of ['f32', 'f16'] as const) {
  test(`embedding from a split ${dtype} table`, async () => {
    // 5003 × 129 rows are 2.5 MiB in f32 and 1.2 MiB in f16: more than the 1 MiB binding.
    const [vocabSize, dim] = [5003, 129];
    const values = randomArray(vocabSize * dim);
    const data = dtype === 'f16' ? floatArrayToHalf(values) : values;
    const ids = randomIds(3 * 41, vocabSize, 17);
    ids[0] = 0;
    ids[1] = vocabSize - 1;
    const reference = fromHost(data, [vocabSize, dim], dtype, cpu);
    const referenceIds = fromHost(ids, [3, 41], 'i32', cpu);
    const referenceOut = embedding(reference, referenceIds);
    const expected = await referenceOut.data();
    for (const t of [reference, referenceIds, referenceOut]) t.dispose();
    for (const { label, device } of await splitDevices()) {
      const table = fromHost(data, [vocabSize, dim], dtype, device);
      assert.ok(table.storage.byteSize > MiB, `${label}: the table is larger than one binding`);
      const idTensor = fromHost(ids, [3, 41], 'i32', device);
      const out = embedding(table, idTensor);
      assert.equal(out.shape, [3, 41, dim]);
      const result = compare(await out.data(), expected, 0, 0);
      assert.ok(result.ok, `${label}: ${result.message}`);
      for (const t of [table, idTensor, out]) t.dispose();
    }
  });
}

test('split embedding dispatches only chunks with ids', async () => {
  const [{ device }] = await smallGpuVariants();
  const table = fromHost(randomArray(5003 * 129), [5003, 129], 'f32', device);
  const ids = fromHost(new Int32Array([3, 1000, 1983]), [3], 'i32', device);
  device.takeDispatchCounts();
  const out = embedding(table, ids);
  assert.is(device.takeDispatchCounts().get('embedding_chunk'), 1);
  for (const t of [table, ids, out]) t.dispose();
});

test('split embedding rejects a trainable table', () => {
  const table = fromHost(randomArray(5003 * 129), [5003, 129], 'f32', smallCpu);
  table.requiresGrad = true;
  const ids = fromHost(new Int32Array([1]), [1], 'i32', smallCpu);
  assert.throws(() => embedding(table, ids), /embedding: tensor \[5003, 129\] f32 requires a gradient, but an f16 table or one larger than a binding \(1048576 bytes\) is frozen/);
  table.dispose();
  ids.dispose();
});

// ---------- frozenLinear in row chunks ----------

for (const dtype of ['f32', 'f16'] as const) {
  test(`frozenLinear with a split ${dtype} weight`, async () => {
    const [batch, inFeatures, outFeatures] = [7, 129, 3001];
    const weightValues = randomArray(outFeatures * inFeatures);
    const weightData = dtype === 'f16' ? floatArrayToHalf(weightValues) : weightValues;
    const xValues = randomArray(batch * inFeatures);
    const dyValues = randomArray(batch * outFeatures);

    // Reference: a plain matmul with the f32 values of the weight on the unlimited CPU device.
    const x0 = fromHost(xValues, [batch, inFeatures], 'f32', cpu);
    x0.requiresGrad = true;
    const w0 = fromHost(decoded(weightValues, dtype), [outFeatures, inFeatures], 'f32', cpu);
    const y0 = matmul(x0, w0, { transB: true });
    tidy(() => sum(mul(y0, fromHost(dyValues, y0.shape, 'f32', cpu))).backward());
    const expectedY = await y0.data();
    const expectedDx = await (x0.grad as Tensor).data();
    for (const t of [x0, w0, y0]) t.dispose();

    for (const { label, device } of await splitDevices()) {
      const weight = fromHost(weightData, [outFeatures, inFeatures], dtype, device);
      const x = fromHost(xValues, [batch, inFeatures], 'f32', device);
      x.requiresGrad = true;
      const y = frozenLinear(x, weight);
      tidy(() => sum(mul(y, fromHost(dyValues, y.shape, 'f32', device))).backward());
      const forward = compare(await y.data(), expectedY, 1e-4, 1e-4);
      assert.ok(forward.ok, `${label} y: ${forward.message}`);
      const backward = compare(await (x.grad as Tensor).data(), expectedDx, 1e-4, 1e-4);
      assert.ok(backward.ok, `${label} dx: ${backward.message}`);
      for (const t of [weight, x, y]) t.dispose();
    }
  });
}

test('frozenLinear gradient matches finite differences', async () => {
  // A 4 KiB binding splits the [300, 8] f16 weight (16 bytes a row) into 2 chunks,
  // and one binding still fits the output [3, 300].
  const tiny = new CpuDevice({ maxBindingBytes: 4096 });
  const weight = fromHost(floatArrayToHalf(randomArray(300 * 8)), [300, 8], 'f16', tiny);
  assert.is(rowChunks(300, 16, tiny.limits).length, 2);
  await assertGradients('frozenLinear f16 split', (x) => frozenLinear(x, weight), [{ name: 'x', data: randomArray(3 * 8), shape: [3, 8] }], { device: tiny });
  weight.dispose();
});

test('frozenLinear rejects a weight that requires a gradient', () => {
  const weight = fromHost(floatArrayToHalf(randomArray(6 * 4)), [6, 4], 'f16', cpu);
  weight.requiresGrad = true;
  const x = fromHost(randomArray(2 * 4), [2, 4], 'f32', cpu);
  assert.throws(() => frozenLinear(x, weight), /frozenLinear: tensor \[6, 4\] f16 requires a gradient, but an f16 weight or one larger than a binding .* is frozen/);
  assert.throws(() => frozenLinear(x, fromHost(randomArray(6 * 3), [6, 3], 'f32', cpu)), /frozenLinear: expected x \[N, K\] and weight \[M, K\], got x \[2, 4\] and tensor \[6, 3\] f32/);
});

// ---------- a real table larger than one binding ----------

test('f16 table over the adapter binding limit', async () => {
  const device = await webgpu();
  const [vocabSize, dim] = [68000, 1024];
  // 139 MB in f16, more than lavapipe's 128 MiB binding; skipped on adapters with larger bindings.
  if (vocabSize * dim * 2 <= device.limits.maxBindingBytes) return;

  // Bit patterns of finite f16 values below 2 in magnitude, without a slow per-element encode.
  const bits = new Uint16Array(vocabSize * dim);
  for (let i = 0; i < bits.length; i++) bits[i] = (Math.imul(i, 2654435761) >>> 16) & 0xbbff;
  const table = fromHost(bits, [vocabSize, dim], 'f16', device);

  const ids = new Int32Array([0, 1, 65535, 65536, vocabSize - 1, 31000]);
  const idTensor = fromHost(ids, [ids.length], 'i32', device);
  const gathered = embedding(table, idTensor);
  const rows = await gathered.data();
  ids.forEach((id, n) => {
    const expected = halfArrayToFloat(bits.subarray(id * dim, (id + 1) * dim));
    const result = compare(rows.subarray(n * dim, (n + 1) * dim), expected, 0, 0);
    assert.ok(result.ok, `row of id ${id}: ${result.message}`);
  });

  const batch = 2;
  const xValues = randomArray(batch * dim);
  const x = fromHost(xValues, [batch, dim], 'f32', device);
  const linear = frozenLinear(x, table);
  const y = await linear.data();
  // Check the columns around every chunk boundary against a host dot product.
  const chunks = rowChunks(vocabSize, dim * 2, device.limits);
  const columns = chunks.flatMap(({ start, count }) => [start, start + count - 1]);
  for (const column of columns) {
    const weightRow = halfArrayToFloat(bits.subarray(column * dim, (column + 1) * dim));
    for (let b = 0; b < batch; b++) {
      let dot = 0;
      for (let k = 0; k < dim; k++) dot += xValues[b * dim + k] * weightRow[k];
      const result = compare([y[b * vocabSize + column]], [dot], 1e-3, 1e-4);
      assert.ok(result.ok, `y[${b}, ${column}]: ${result.message}`);
    }
  }
  for (const t of [table, idTensor, gathered, x, linear]) t.dispose();
});

test.run();
