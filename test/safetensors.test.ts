import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { bfloat16BitsToFloat, floatToBfloat16Bits, floatToHalfBits, halfBitsToFloat } from '../weights/float16.ts';
import { fileSource } from '../weights/node-files.ts';
import { encodeSafetensors, openSafetensors, readTensor, readTensorBytes, SafetensorsError, type TensorToWrite } from '../weights/safetensors.ts';
import { openShardedUrl, ShardedCheckpoint } from '../weights/sharded.ts';
import { ByteSourceError, bytesSource, urlSource, type ByteSource } from '../weights/source.ts';
import { concat } from './fixtures/builders.ts';

async function roundTrip(tensors: TensorToWrite[], metadata?: Record<string, string>) {
  const bytes = concat(encodeSafetensors(tensors, metadata));
  return { bytes, index: await openSafetensors(bytesSource(bytes, 'roundtrip.safetensors')) };
}

function assertValues(actual: ArrayLike<number>, expected: ArrayLike<number>, label: string) {
  assert.is(actual.length, expected.length, `${label}: length ours=${actual.length} | expected=${expected.length}`);
  for (let i = 0; i < expected.length; i++) {
    assert.ok(Object.is(actual[i], expected[i]) || actual[i] === expected[i], `${label}[${i}]: ours=${actual[i]} | expected=${expected[i]}`);
  }
}

test('round trip keeps every dtype', async () => {
  const floats = [0, -1.5, 3.25, 1024, -0.0625, 65504];
  const tensors: TensorToWrite[] = [
    { name: 'f32', dtype: 'F32', shape: [2, 3], data: Float32Array.from(floats) },
    { name: 'f16', dtype: 'F16', shape: [6], data: Float32Array.from(floats) },
    { name: 'bf16', dtype: 'BF16', shape: [3, 2], data: Float32Array.from([0, -1.5, 3.25, 1024, -0.0625, 65536]) },
    { name: 'f64', dtype: 'F64', shape: [2], data: Float32Array.from([0.1, -2]) },
    { name: 'i64', dtype: 'I64', shape: [3], data: Int32Array.from([-2147483648, 2147483647, 0]) },
    { name: 'i32', dtype: 'I32', shape: [2], data: Int32Array.from([-5, 7]) },
    { name: 'i16', dtype: 'I16', shape: [2], data: Int32Array.from([-32768, 32767]) },
    { name: 'i8', dtype: 'I8', shape: [2], data: Int32Array.from([-128, 127]) },
    { name: 'u8', dtype: 'U8', shape: [3], data: Int32Array.from([0, 128, 255]) },
    { name: 'flags', dtype: 'BOOL', shape: [3], data: Int32Array.from([1, 0, 1]) },
  ];
  const { index } = await roundTrip(tensors);
  for (const tensor of tensors) {
    const entry = index.tensors.get(tensor.name)!;
    assert.is(entry.dtype, tensor.dtype, `${tensor.name} dtype`);
    assert.equal(entry.shape, [...tensor.shape], `${tensor.name} shape`);
    const values = await readTensor(index, tensor.name);
    assert.is(values instanceof Float32Array, tensor.data instanceof Float32Array, `${tensor.name}: decoded array type`);
    assertValues(values, Array.from(tensor.data), tensor.name);
  }
});

test('round trip keeps metadata, scalars, empty tensors', async () => {
  const { index } = await roundTrip(
    [
      { name: 'scalar', dtype: 'F32', shape: [], data: Float32Array.from([2.5]) },
      { name: 'empty', dtype: 'F16', shape: [0, 4], data: new Float32Array(0) },
    ],
    { format: 'pt', note: 'ünïcode ✓' },
  );
  assert.equal(index.metadata, { format: 'pt', note: 'ünïcode ✓' });
  assertValues(await readTensor(index, 'scalar'), [2.5], 'scalar');
  assert.equal(index.tensors.get('empty')!.shape, [0, 4]);
  assert.is((await readTensor(index, 'empty')).length, 0);
});

test('raw bytes are written as given', async () => {
  const raw = Uint8Array.from([0x00, 0x3c, 0x00, 0xc0]); // f16 1.0 and -2.0, little-endian
  const { index } = await roundTrip([{ name: 'half', dtype: 'F16', shape: [2], data: raw }]);
  assert.equal([...(await readTensorBytes(index, 'half'))], [...raw]);
  assertValues(await readTensor(index, 'half'), [1, -2], 'half');
});

test('layout aligns each tensor to its dtype', async () => {
  const { bytes, index } = await roundTrip([
    { name: 'odd_f16', dtype: 'F16', shape: [3], data: Float32Array.from([1, 2, 3]) },
    { name: 'flag', dtype: 'BOOL', shape: [1], data: Int32Array.from([1]) },
    { name: 'ids', dtype: 'I64', shape: [1], data: Int32Array.from([9]) },
    { name: 'weight', dtype: 'F32', shape: [3], data: Float32Array.from([1, 2, 3]) },
  ]);
  const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.is((8 + headerLength) % 8, 0, `data section starts at ${8 + headerLength}, expected a multiple of 8`);
  for (const entry of index.tensors.values()) {
    const size = { F16: 2, BOOL: 1, I64: 8, F32: 4 }[entry.dtype as 'F16'];
    assert.is(entry.begin % size, 0, `${entry.name} (${entry.dtype}) starts at byte ${entry.begin}`);
  }
});

test('encode rejects mismatched data', () => {
  const cases: [TensorToWrite, RegExp][] = [
    [{ name: 'short', dtype: 'F32', shape: [2, 2], data: new Float32Array(3) }, /"short": 3 values for shape \[2, 2\], expected 4/],
    [{ name: 'ints', dtype: 'I32', shape: [1], data: new Float32Array(1) }, /"ints": Float32Array data cannot be written as I32/],
    [{ name: 'floats', dtype: 'F16', shape: [1], data: new Int32Array(1) }, /"floats": Int32Array data cannot be written as F16/],
    [{ name: 'byte', dtype: 'I8', shape: [1], data: Int32Array.from([200]) }, /"byte": element 0 \(200\) is outside the I8 range/],
    [{ name: 'raw', dtype: 'F32', shape: [2], data: new Uint8Array(7) }, /"raw": 7 bytes of F32 data for shape \[2\], expected 8/],
    [{ name: '__metadata__', dtype: 'F32', shape: [1], data: new Float32Array(1) }, /reserved for the metadata/],
  ];
  for (const [tensor, pattern] of cases) {
    assert.throws(() => encodeSafetensors([tensor]), (error: Error) => error instanceof SafetensorsError && pattern.test(error.message), tensor.name);
  }
  const twice: TensorToWrite = { name: 'w', dtype: 'F32', shape: [1], data: new Float32Array(1) };
  assert.throws(() => encodeSafetensors([twice, twice]), /"w": occurs twice/);
});

test('f16 encode inverts decode for all bits', () => {
  for (let bits = 0; bits < 0x10000; bits++) {
    const value = halfBitsToFloat(bits);
    const encoded = floatToHalfBits(value);
    if (Number.isNaN(value)) {
      assert.ok(Number.isNaN(halfBitsToFloat(encoded)), `NaN bits 0x${bits.toString(16)} encode to 0x${encoded.toString(16)}, not a NaN`);
    } else if (encoded !== bits) {
      assert.unreachable(`0x${bits.toString(16)} (${value}) encodes to 0x${encoded.toString(16)}`);
    }
  }
});

test('f16 rounds to nearest even', () => {
  // Between every pair of neighbouring positive f16 values: the midpoint goes to the even one,
  // and one f32 step either side of it goes to the nearer one.
  const step = (value: number, direction: 1 | -1) => {
    const bits = new Uint32Array(new Float32Array([value]).buffer)[0];
    return new Float32Array(new Uint32Array([bits + direction]).buffer)[0];
  };
  for (let low = 0; low < 0x7bff; low++) {
    const midpoint = (halfBitsToFloat(low) + halfBitsToFloat(low + 1)) / 2;
    const even = low % 2 === 0 ? low : low + 1;
    assert.is(floatToHalfBits(midpoint), even, `midpoint ${midpoint} of 0x${low.toString(16)} and 0x${(low + 1).toString(16)}`);
    if (midpoint > 0) assert.is(floatToHalfBits(step(midpoint, -1)), low, `just below ${midpoint}`);
    assert.is(floatToHalfBits(step(midpoint, 1)), low + 1, `just above ${midpoint}`);
  }
});

test('f16 overflow, underflow, signs', () => {
  const cases: [number, number][] = [
    [65504, 0x7bff],
    [65519.996, 0x7bff],
    [65520, 0x7c00], // the midpoint to the next (nonexistent) value rounds up to Infinity
    [1e9, 0x7c00],
    [-1e9, 0xfc00],
    [Infinity, 0x7c00],
    [-Infinity, 0xfc00],
    [2 ** -24, 0x0001],
    [2 ** -25, 0x0000], // tie between 0 and the smallest subnormal: even is 0
    [2 ** -25 * 1.0001, 0x0001],
    [3 * 2 ** -25, 0x0002], // tie between 1 and 2 units: even is 2
    [2 ** -14, 0x0400],
    [2 ** -14 - 2 ** -25, 0x0400], // largest subnormal + half a unit rounds up into the normals
    [1e-10, 0x0000],
    [-1e-10, 0x8000],
    [-0, 0x8000],
    [1 + 2 ** -11, 0x3c00], // tie at 1: even keeps 1.0
    [1 + 3 * 2 ** -11, 0x3c02],
  ];
  for (const [value, bits] of cases) {
    assert.is(floatToHalfBits(value), bits, `${value}: ours=0x${floatToHalfBits(value).toString(16)} | expected=0x${bits.toString(16)}`);
  }
  assert.ok(Number.isNaN(halfBitsToFloat(floatToHalfBits(NaN))), 'NaN stays NaN');
});

test('bf16 encode inverts decode for all bits', () => {
  for (let bits = 0; bits < 0x10000; bits++) {
    const value = bfloat16BitsToFloat(bits);
    const encoded = floatToBfloat16Bits(value);
    if (Number.isNaN(value)) {
      assert.ok(Number.isNaN(bfloat16BitsToFloat(encoded)), `NaN bits 0x${bits.toString(16)} encode to a non-NaN`);
    } else if (encoded !== bits) {
      assert.unreachable(`0x${bits.toString(16)} (${value}) encodes to 0x${encoded.toString(16)}`);
    }
  }
});

test('bf16 rounds to nearest even', () => {
  const cases: [number, number][] = [
    [1 + 2 ** -8, 0x3f80], // tie: 0x3f80 is even
    [1 + 3 * 2 ** -8, 0x3f82], // tie: 0x3f82 is even
    [1 + 2 ** -8 + 2 ** -20, 0x3f81],
    [-(1 + 2 ** -8 + 2 ** -20), 0xbf81],
    [3.4e38, 0x7f80], // rounds past the largest bf16 to Infinity
    [-Infinity, 0xff80],
  ];
  for (const [value, bits] of cases) {
    assert.is(floatToBfloat16Bits(value), bits, `${value}: ours=0x${floatToBfloat16Bits(value).toString(16)} | expected=0x${bits.toString(16)}`);
  }
  assert.ok(Number.isNaN(bfloat16BitsToFloat(floatToBfloat16Bits(NaN))), 'NaN stays NaN');
});

/** Writes two shards and their index into a fresh folder. */
async function writeShardedCheckpoint(folder: string) {
  const shard1 = concat(encodeSafetensors([
    { name: 'embeddings.weight', dtype: 'F32', shape: [2, 2], data: Float32Array.from([1, 2, 3, 4]) },
    { name: 'embeddings.ids', dtype: 'I64', shape: [2], data: Int32Array.from([7, 8]) },
  ]));
  const shard2 = concat(encodeSafetensors([{ name: 'head.weight', dtype: 'BF16', shape: [3], data: Float32Array.from([0.5, -1, 2]) }]));
  await writeFile(join(folder, 'model-00001-of-00002.safetensors'), shard1);
  await writeFile(join(folder, 'model-00002-of-00002.safetensors'), shard2);
  const index = {
    metadata: { total_size: 30 },
    weight_map: {
      'embeddings.weight': 'model-00001-of-00002.safetensors',
      'embeddings.ids': 'model-00001-of-00002.safetensors',
      'head.weight': 'model-00002-of-00002.safetensors',
    },
  };
  await writeFile(join(folder, 'model.safetensors.index.json'), JSON.stringify(index));
  return { shard1, shard2, index };
}

test('sharded checkpoint opens shards lazily', async () => {
  const folder = await mkdtemp(join(tmpdir(), 's2d-sharded-'));
  try {
    await writeShardedCheckpoint(folder);
    const opened: string[] = [];
    const indexSource = await fileSource(join(folder, 'model.safetensors.index.json'));
    const checkpoint = await ShardedCheckpoint.open(indexSource, (file) => {
      opened.push(file);
      return fileSource(join(folder, file));
    });
    assert.equal(checkpoint.metadata, { total_size: 30 });
    assert.equal(checkpoint.shardFiles, ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
    assert.equal(opened, [], 'no shard is opened before a tensor is read');

    assertValues(await checkpoint.readTensor('head.weight'), [0.5, -1, 2], 'head.weight');
    assert.equal(opened, ['model-00002-of-00002.safetensors']);
    assertValues(await checkpoint.readTensor('embeddings.weight'), [1, 2, 3, 4], 'embeddings.weight');
    assertValues(await checkpoint.readTensor('embeddings.ids'), [7, 8], 'embeddings.ids');
    assert.equal(opened, ['model-00002-of-00002.safetensors', 'model-00001-of-00002.safetensors'], 'each shard is opened once');

    const entries = await checkpoint.entries();
    assert.equal([...entries.keys()], ['embeddings.weight', 'embeddings.ids', 'head.weight']);
    assert.is(entries.get('head.weight')!.dtype, 'BF16');
    await checkpoint.close();
    await indexSource.close?.();
  } finally {
    await rm(folder, { recursive: true, force: true });
  }
});

interface TestServer {
  url: string;
  requests: { path: string; range: string | undefined }[];
  close(): Promise<void>;
}

/** Serves `files` on 127.0.0.1 with range requests (or, with `ignoreRange`, always the whole file). */
async function serve(files: Record<string, Uint8Array>, options: { ignoreRange?: boolean } = {}): Promise<TestServer> {
  const requests: TestServer['requests'] = [];
  const server: Server = createServer((request, response) => {
    const path = decodeURIComponent(new URL(request.url ?? '/', 'http://localhost').pathname.slice(1));
    requests.push({ path, range: request.headers.range });
    const body = files[path];
    if (!body) {
      response.writeHead(404).end('not found');
      return;
    }
    const range = /^bytes=(\d+)-(\d+)$/.exec(request.headers.range ?? '');
    if (!range || options.ignoreRange) {
      response.writeHead(200, { 'content-length': body.byteLength }).end(body);
      return;
    }
    const first = Number(range[1]);
    const last = Math.min(Number(range[2]), body.byteLength - 1);
    if (first >= body.byteLength) {
      response.writeHead(416, { 'content-range': `bytes */${body.byteLength}` }).end();
      return;
    }
    response.writeHead(206, { 'content-range': `bytes ${first}-${last}/${body.byteLength}`, 'content-length': last - first + 1 });
    response.end(body.subarray(first, last + 1));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

test('urlSource reads only requested ranges', async () => {
  const big = new Float32Array(4096).map((_, i) => i);
  const bytes = concat(encodeSafetensors([
    { name: 'big', dtype: 'F32', shape: [4096], data: big },
    { name: 'small', dtype: 'F32', shape: [2], data: Float32Array.from([5, 6]) },
  ]));
  const server = await serve({ 'model.safetensors': bytes });
  try {
    const source = await urlSource(`${server.url}model.safetensors`, { timeoutMs: 5000 });
    assert.is(source.size, bytes.byteLength);
    const index = await openSafetensors(source);
    assertValues(await readTensor(index, 'small'), [5, 6], 'small');
    // Size probe, 8-byte header length, header, one tensor: 4 requests, and 'big' is never fetched.
    assert.is(server.requests.length, 4, `requests: ${JSON.stringify(server.requests)}`);
    const entry = index.tensors.get('small')!;
    assert.is(server.requests[3].range, `bytes=${entry.begin}-${entry.end - 1}`);
  } finally {
    await server.close();
  }
});

test('urlSource rejects servers without ranges', async () => {
  const server = await serve({ 'model.safetensors': new Uint8Array(64) }, { ignoreRange: true });
  try {
    await assertRejects(urlSource(`${server.url}model.safetensors`, { timeoutMs: 5000 }), ByteSourceError, /ignored the Range header/);
    await assertRejects(urlSource(`${server.url}missing.safetensors`, { timeoutMs: 5000 }), ByteSourceError, /HTTP status 404/);
    assert.ok(server.requests.length <= 2, `${server.requests.length} requests`);
  } finally {
    await server.close();
  }
});

test('sharded checkpoint over HTTP', async () => {
  const folder = await mkdtemp(join(tmpdir(), 's2d-sharded-http-'));
  try {
    const { shard1, shard2, index } = await writeShardedCheckpoint(folder);
    const server = await serve({
      'repo/model.safetensors.index.json': new TextEncoder().encode(JSON.stringify(index)),
      'repo/model-00001-of-00002.safetensors': shard1,
      'repo/model-00002-of-00002.safetensors': shard2,
    });
    try {
      const checkpoint = await openShardedUrl(`${server.url}repo/model.safetensors.index.json`, { timeoutMs: 5000 });
      assertValues(await checkpoint.readTensor('head.weight'), [0.5, -1, 2], 'head.weight');
      assert.not.ok(server.requests.some((request) => request.path.includes('00001')), 'shard 1 is not requested');
      assert.ok(server.requests.length <= 10, `${server.requests.length} requests`);
    } finally {
      await server.close();
    }
  } finally {
    await rm(folder, { recursive: true, force: true });
  }
});

async function assertRejects(promise: Promise<unknown>, type: new (...args: never[]) => Error, pattern: RegExp) {
  try {
    await promise;
  } catch (error) {
    assert.instance(error, type);
    assert.match((error as Error).message, pattern);
    return;
  }
  assert.unreachable(`expected a ${type.name} matching ${pattern}`);
}

test('s2d inspect lists safetensors and shards', async () => {
  const folder = await mkdtemp(join(tmpdir(), 's2d-inspect-'));
  try {
    await writeShardedCheckpoint(folder);
    const single = spawnSync(process.execPath, ['scripts/s2d.mjs', 'inspect', join(folder, 'model-00001-of-00002.safetensors')], { encoding: 'utf8' });
    assert.is(single.status, 0, single.stderr);
    assert.match(single.stdout, /safetensors/);
    assert.match(single.stdout, /embeddings\.weight\s+F32\s+\[2, 2\]\s+16/);
    assert.match(single.stdout, /embeddings\.ids\s+I64\s+\[2\]\s+16/);
    assert.match(single.stdout, /total: 2 tensors, 6 elements, 32 bytes/);

    const sharded = spawnSync(process.execPath, ['scripts/s2d.mjs', 'inspect', join(folder, 'model.safetensors.index.json')], { encoding: 'utf8' });
    assert.is(sharded.status, 0, sharded.stderr);
    assert.match(sharded.stdout, /sharded safetensors \(2 shards\)/);
    assert.match(sharded.stdout, /head\.weight\s+BF16\s+\[3\]\s+6\s+model-00002-of-00002\.safetensors/);
    assert.match(sharded.stdout, /total: 3 tensors, 9 elements, 38 bytes/);
  } finally {
    await rm(folder, { recursive: true, force: true });
  }
});

test('existing checkpoint API still works', async () => {
  // s2d/checkpoint.ts writes F32 parameters with metadata and reads them back through ByteSource.
  const source: ByteSource = bytesSource(concat(encodeSafetensors([{ name: 'w', dtype: 'F32', shape: [2], data: Float32Array.from([1, 2]) }], { format: 's2d-align' })));
  const index = await openSafetensors(source);
  assert.is(index.metadata.format, 's2d-align');
  assertValues(await readTensor(index, 'w'), [1, 2], 'w');
});

test.run();
