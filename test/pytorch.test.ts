import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { unzipSync, zipSync } from 'fflate';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { UnpicklingError } from '../weights/pickle.ts';
import { openPytorchCheckpoint, pytorchToSafetensors, readPytorchCheckpoint } from '../weights/pytorch.ts';
import { openSafetensors, readTensor, readTensorBytes } from '../weights/safetensors.ts';
import { bytesSource, CheckpointError } from '../weights/source.ts';
import { concat, f32Bytes, op, pickle, stateDictPickle, tensorOps, torchZip } from './fixtures/builders.ts';

const FIXTURES = 'test/fixtures/pytorch';

interface ExpectedTensor {
  dtype: string;
  shape: number[];
  values: number[];
}
const expected = JSON.parse(await readFile(join(FIXTURES, 'expected.json'), 'utf8')) as Record<string, Record<string, ExpectedTensor>>;

function fixture(name: string): Promise<Uint8Array> {
  return readFile(join(FIXTURES, name));
}

function assertValues(actual: ArrayLike<number>, reference: ArrayLike<number>, label: string) {
  assert.is(actual.length, reference.length, `${label}: length ours=${actual.length} | reference=${reference.length}`);
  for (let i = 0; i < reference.length; i++) {
    assert.is(actual[i], reference[i], `${label}[${i}]: ours=${actual[i]} | reference=${reference[i]}`);
  }
}

/** Reference values as the reader returns them: f32 for floats (F64 narrowed), exact ints. */
function asReturned(tensor: ExpectedTensor): number[] {
  return ['F64', 'F32', 'F16', 'BF16'].includes(tensor.dtype) ? Array.from(Float32Array.from(tensor.values)) : tensor.values;
}

for (const file of ['float32.bin', 'dtypes.bin', 'views.bin', 'bert-tiny.bin', 'parameters.bin', 'nested.pt', 'protocol4.bin']) {
  test(`${file} matches PyTorch`, async () => {
    const tensors = await readPytorchCheckpoint(await fixture(file), file);
    const reference = expected[file];
    assert.equal(new Set(tensors.keys()), new Set(Object.keys(reference)), `${file}: tensor names`);
    for (const [name, want] of Object.entries(reference)) {
      const got = tensors.get(name)!;
      assert.is(got.dtype, want.dtype, `${file} ${name}: dtype`);
      assert.equal(got.shape, want.shape, `${file} ${name}: shape`);
      assertValues(got.data, asReturned(want), `${file} ${name}`);
    }
  });
}

test('views materialise row-major', async () => {
  const tensors = await readPytorchCheckpoint(await fixture('views.bin'), 'views.bin');
  const grid = Array.from(tensors.get('grid')!.data); // 4×6, values 0..23
  const transposed = Array.from(tensors.get('transposed')!.data);
  for (let row = 0; row < 6; row++) {
    for (let column = 0; column < 4; column++) {
      assert.is(transposed[row * 4 + column], grid[column * 6 + row], `transposed[${row}][${column}]`);
    }
  }
  assertValues(tensors.get('offset_block')!.data, [8, 9, 10, 14, 15, 16], 'grid[1:3, 2:5]');
  assertValues(tensors.get('every_other_column')!.data, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22], 'grid[:, ::2]');
  assertValues(tensors.get('broadcast')!.data, [2, 3, 4, 2, 3, 4], 'row[2:5].expand(2, 3)');
  assertValues(tensors.get('scalar')!.data, [15], 'grid[2, 3]');

  const checkpoint = await openPytorchCheckpoint(await fixture('views.bin'), 'views.bin');
  const info = checkpoint.tensors.get('transposed')!;
  assert.equal(info.stride, [1, 6]);
  assert.is(checkpoint.tensors.get('flat_slice')!.storageOffset, 7);
  assert.is(info.storageKey, checkpoint.tensors.get('grid')!.storageKey, 'views share the storage of grid');
});

test('BERT state dict keeps HF names', async () => {
  const checkpoint = await openPytorchCheckpoint(await fixture('bert-tiny.bin'), 'bert-tiny.bin');
  const names = [...checkpoint.tensors.keys()];
  for (const name of [
    'bert.embeddings.word_embeddings.weight',
    'bert.embeddings.LayerNorm.bias',
    'bert.encoder.layer.0.attention.self.query.weight',
    'bert.encoder.layer.0.output.LayerNorm.weight',
  ]) {
    assert.ok(names.includes(name), `${name} missing from ${names.join(', ')}`);
  }
  assert.is(checkpoint.tensors.get('bert.embeddings.position_ids')!.dtype, 'I64');
  assert.equal(checkpoint.tensors.get('bert.encoder.layer.0.intermediate.dense.weight')!.shape, [16, 8]);
});

test('large int64 fails as i32, not as bytes', async () => {
  const checkpoint = await openPytorchCheckpoint(await fixture('int64-large.bin'), 'int64-large.bin');
  assert.throws(
    () => checkpoint.readTensor('ids'),
    (error: Error) => error instanceof CheckpointError && error.key === 'ids' && /int64-large\.bin: "ids": I64 element 1 \(1099511627776\) does not fit in i32/.test(error.message),
  );
  const raw = checkpoint.readTensorBytes('ids');
  assert.equal([...new BigInt64Array(raw.buffer, raw.byteOffset, 2)], [1n, 2n ** 40n]);
});

test('convert keeps dtypes and values', async () => {
  for (const file of ['dtypes.bin', 'views.bin', 'int64-large.bin']) {
    const checkpoint = await openPytorchCheckpoint(await fixture(file), file);
    const index = await openSafetensors(bytesSource(concat(pytorchToSafetensors(checkpoint)), `${file}.safetensors`));
    assert.equal(index.metadata, { format: 'pt' });
    for (const [name, info] of checkpoint.tensors) {
      const entry = index.tensors.get(name)!;
      assert.is(entry.dtype, info.dtype === 'F64' ? 'F32' : info.dtype, `${file} ${name}: dtype`);
      assert.equal(entry.shape, info.shape, `${file} ${name}: shape`);
      if (info.dtype === 'F64') {
        assertValues(await readTensor(index, name), checkpoint.readTensor(name).data, `${file} ${name}`);
      } else {
        assertValues(await readTensorBytes(index, name), checkpoint.readTensorBytes(name), `${file} ${name} bytes`);
      }
    }
  }
});

test('big-endian storages are swapped', async () => {
  const values = [1.5, -2, 1024];
  const bigEndian = new Uint8Array(12);
  values.forEach((value, i) => new DataView(bigEndian.buffer).setFloat32(i * 4, value, false));
  const zip = torchZip({
    'data.pkl': stateDictPickle([{ name: 'w', storage: 'FloatStorage', key: '0', numel: 3, shape: [3] }]),
    'data/0': bigEndian,
    byteorder: 'big',
  });
  const tensors = await readPytorchCheckpoint(zip, 'big-endian.bin');
  assertValues(tensors.get('w')!.data, values, 'w');
});

test('deflated zip entries are read', async () => {
  // torch.save stores entries uncompressed, but a re-zipped checkpoint uses DEFLATE.
  const stored = await fixture('float32.bin');
  const deflated = zipSync(unzipSync(stored), { level: 6 });
  const tensors = await readPytorchCheckpoint(deflated, 'deflated.bin');
  assertValues(tensors.get('weight')!.data, asReturned(expected['float32.bin'].weight), 'weight');
});

test('shared storage is read per tensor', async () => {
  // Two tensors in one storage with different offsets, built by hand.
  const zip = torchZip({
    'data.pkl': stateDictPickle([
      { name: 'head', storage: 'FloatStorage', key: '0', numel: 6, shape: [2] },
      { name: 'tail', storage: 'FloatStorage', key: '0', numel: 6, offset: 2, shape: [2, 2], stride: [1, 2] },
    ]),
    'data/0': f32Bytes([0, 1, 2, 3, 4, 5]),
  });
  const tensors = await readPytorchCheckpoint(zip, 'shared.bin');
  assertValues(tensors.get('head')!.data, [0, 1], 'head');
  assertValues(tensors.get('tail')!.data, [2, 4, 3, 5], 'tail (transposed view at offset 2)');
});

test('forbidden globals are rejected', async () => {
  const fromFixture = openPytorchCheckpoint(await fixture('forbidden-global.bin'), 'forbidden-global.bin');
  await fromFixture.then(
    () => assert.unreachable('os.system was accepted'),
    (error: Error) => {
      assert.instance(error, UnpicklingError);
      assert.match(error.message, /^forbidden-global\.bin: "forbidden\/data\.pkl": forbidden global os\.system/);
      assert.match(error.message, /rejected without running/);
    },
  );

  // builtins.eval through STACK_GLOBAL (protocol 4), inside an otherwise valid state dict.
  const evalPickle = pickle(op.proto(4), op.emptyDict, op.string('x'), op.string('builtins'), op.string('eval'), op.stackGlobal, op.string('1+1'), op.tuple1, op.reduce, op.setItem, op.stop);
  await openPytorchCheckpoint(torchZip({ 'data.pkl': evalPickle }), 'eval.bin').then(
    () => assert.unreachable('builtins.eval was accepted'),
    (error: Error) => {
      assert.instance(error, UnpicklingError);
      assert.match(error.message, /eval\.bin: "archive\/data\.pkl": forbidden global builtins\.eval/);
    },
  );
});

test('non-tensor values are skipped', async () => {
  const tensor = tensorOps({ name: 'w', storage: 'FloatStorage', key: '0', numel: 1, shape: [1] });
  const body = pickle(
    op.proto(2),
    op.emptyDict,
    op.mark,
    op.string('epoch'), op.int(3),
    op.string('name'), op.string('run'),
    op.string('none'), op.none,
    op.string('weights'), op.emptyList, op.mark, tensor, op.appends,
    op.setItems,
    op.stop,
  );
  const tensors = await readPytorchCheckpoint(torchZip({ 'data.pkl': body, 'data/0': f32Bytes([4]) }), 'mixed.pt');
  assert.equal([...tensors.keys()], ['weights.0']);
});

test('s2d convert writes safetensors', async () => {
  const folder = await mkdtemp(join(tmpdir(), 's2d-convert-'));
  try {
    const out = join(folder, 'bert.safetensors');
    const result = spawnSync(process.execPath, ['scripts/s2d.mjs', 'convert', '--in', join(FIXTURES, 'bert-tiny.bin'), '--out', out], { encoding: 'utf8' });
    assert.is(result.status, 0, result.stderr);
    assert.match(result.stdout, /wrote 22 tensors/);
    const index = await openSafetensors(bytesSource(await readFile(out), out));
    const reference = expected['bert-tiny.bin']['bert.embeddings.word_embeddings.weight'];
    assertValues(await readTensor(index, 'bert.embeddings.word_embeddings.weight'), asReturned(reference), 'word_embeddings');

    const inspect = spawnSync(process.execPath, ['scripts/s2d.mjs', 'inspect', join(FIXTURES, 'views.bin')], { encoding: 'utf8' });
    assert.is(inspect.status, 0, inspect.stderr);
    assert.match(inspect.stdout, /PyTorch checkpoint/);
    assert.match(inspect.stdout, /transposed\s+F32\s+\[6, 4\]\s+96/);
    assert.match(inspect.stdout, /total: 9 tensors, 85 elements, 388 bytes/);
  } finally {
    await rm(folder, { recursive: true, force: true });
  }
});

test.run();
