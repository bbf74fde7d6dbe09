// Malformed checkpoints, each generated here: every one must raise a typed error whose message
// names the file, the tensor or entry when there is one, and what to do.
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { zipSync } from 'fflate';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { fileSource } from '../weights/node-files.ts';
import { UnpicklingError } from '../weights/pickle.ts';
import { openPytorchCheckpoint, PytorchCheckpointError } from '../weights/pytorch.ts';
import { encodeSafetensors, MAX_HEADER_BYTES, openSafetensors, readTensor, SafetensorsError } from '../weights/safetensors.ts';
import { ShardedCheckpoint, ShardedCheckpointError } from '../weights/sharded.ts';
import { bytesSource, CheckpointError } from '../weights/source.ts';
import { concat, f32Bytes, op, pickle, safetensorsFile, stateDictPickle, tensorOps, torchZip, u64 } from './fixtures/builders.ts';

/** Words that tell the reader what to do next. Every message must contain one. */
const ADVICE = /download|export|save|check|convert|rename|serve|use |keep/i;

interface Case {
  name: string;
  /** File name given to the source. The message must start with it. */
  file: string;
  /** The tensor or entry the message must name (as `"key"`). */
  key?: string;
  type: new (...args: never[]) => CheckpointError;
  pattern: RegExp;
  run(file: string): Promise<unknown>;
}

const cases: Case[] = [];

function safetensorsCase(name: string, bytes: Uint8Array, type: Case['type'], pattern: RegExp, key?: string) {
  const file = `${name.replace(/[^a-z0-9]+/gi, '-')}.safetensors`;
  cases.push({ name, file, key, type, pattern, run: (f) => openSafetensors(bytesSource(bytes, f)) });
}

function pytorchCase(name: string, bytes: Uint8Array, type: Case['type'], pattern: RegExp, key?: string) {
  const file = `${name.replace(/[^a-z0-9]+/gi, '-')}.bin`;
  cases.push({ name, file, key, type, pattern, run: (f) => openPytorchCheckpoint(bytes, f) });
}

const goodEntry = { dtype: 'F32', shape: [2], data_offsets: [0, 8] };
const eightBytes = new Uint8Array(8);

// --- safetensors ---
safetensorsCase('empty file', new Uint8Array(0), SafetensorsError, /file has 0 bytes, fewer than the 8-byte header length/);
safetensorsCase('7-byte file', new Uint8Array(7), SafetensorsError, /file has 7 bytes/);
safetensorsCase('header length past end', concat([u64(100), new Uint8Array(20)]), SafetensorsError, /header length 100 runs past the end of the file \(28 bytes\)/);
safetensorsCase('header length over cap', concat([u64(MAX_HEADER_BYTES + 1), new Uint8Array(8)]), SafetensorsError, /exceeds the 104857600-byte limit/);
safetensorsCase('header length 2^64-1', concat([u64(2n ** 64n - 1n), new Uint8Array(8)]), SafetensorsError, /header length 18446744073709551615 exceeds/);
safetensorsCase('header not UTF-8', concat([u64(4), [0x7b, 0xff, 0xfe, 0x7d]]), SafetensorsError, /header is not valid UTF-8/);
safetensorsCase('invalid JSON', safetensorsFile('{"w": {"dtype": "F32",'), SafetensorsError, /header is not valid JSON/);
safetensorsCase('JSON array header', safetensorsFile([1, 2]), SafetensorsError, /header is a JSON array, expected a JSON object/);
safetensorsCase('JSON null header', safetensorsFile('null'), SafetensorsError, /header is null, expected a JSON object/);
safetensorsCase('entry not an object', safetensorsFile({ w: 5 }, eightBytes), SafetensorsError, /entry is the number 5, expected \{dtype, shape, data_offsets\}/, 'w');
safetensorsCase('unknown dtype', safetensorsFile({ w: { ...goodEntry, dtype: 'Q8' } }, eightBytes), SafetensorsError, /dtype "Q8" is not supported \(supported: F64, F32/, 'w');
safetensorsCase('dtype missing', safetensorsFile({ w: { shape: [2], data_offsets: [0, 8] } }, eightBytes), SafetensorsError, /dtype is missing is not supported|dtype .* is not supported/, 'w');
safetensorsCase('shape not list', safetensorsFile({ w: { ...goodEntry, shape: '2' } }, eightBytes), SafetensorsError, /shape is the string "2", expected a list/, 'w');
safetensorsCase('negative dim', safetensorsFile({ w: { ...goodEntry, shape: [2, -1] } }, eightBytes), SafetensorsError, /shape \[2,-1\] has dimension 1 = -1, expected a non-negative integer/, 'w');
safetensorsCase('fractional dim', safetensorsFile({ w: { ...goodEntry, shape: [1.5] } }, eightBytes), SafetensorsError, /dimension 0 = 1.5/, 'w');
safetensorsCase('element count overflow', safetensorsFile({ w: { ...goodEntry, shape: [2 ** 30, 2 ** 30, 2 ** 30] } }, eightBytes), SafetensorsError, /more elements than can be addressed/, 'w');
safetensorsCase('data_offsets missing', safetensorsFile({ w: { dtype: 'F32', shape: [2] } }, eightBytes), SafetensorsError, /data_offsets is missing is not \[begin, end\]|data_offsets .* is not \[begin, end\]/, 'w');
safetensorsCase('three data_offsets', safetensorsFile({ w: { ...goodEntry, data_offsets: [0, 4, 8] } }, eightBytes), SafetensorsError, /data_offsets \[0,4,8\] is not \[begin, end\]/, 'w');
safetensorsCase('negative offset', safetensorsFile({ w: { ...goodEntry, data_offsets: [-8, 0] } }, eightBytes), SafetensorsError, /data_offsets \[-8,0\] is not \[begin, end\] with non-negative integers/, 'w');
safetensorsCase('begin > end', safetensorsFile({ w: { ...goodEntry, data_offsets: [8, 0] } }, eightBytes), SafetensorsError, /data_offsets \[8, 0\] has begin > end/, 'w');
safetensorsCase('offsets past data', safetensorsFile({ w: { ...goodEntry, data_offsets: [8, 16] } }, eightBytes), SafetensorsError, /data_offsets end 16 lies past the end of the data section \(8 bytes\); the file is truncated/, 'w');
safetensorsCase('shape/bytes mismatch', safetensorsFile({ w: { ...goodEntry, shape: [3] } }, eightBytes), SafetensorsError, /F32 shape \[3\] needs 12 bytes but data_offsets \[0, 8\] span 8/, 'w');
safetensorsCase(
  'overlapping offsets',
  safetensorsFile({ a: { ...goodEntry, data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, eightBytes),
  SafetensorsError,
  /overlap those of tensor "a"/,
  'b',
);
safetensorsCase('metadata value not string', safetensorsFile({ __metadata__: { epochs: 3 }, w: goodEntry }, eightBytes), SafetensorsError, /value of "epochs" is the number 3, expected a string/, '__metadata__');
safetensorsCase('metadata is an array', safetensorsFile({ __metadata__: ['pt'], w: goodEntry }, eightBytes), SafetensorsError, /is a JSON array, expected an object of string values/, '__metadata__');
safetensorsCase(
  'duplicate tensor key',
  safetensorsFile('{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', eightBytes),
  SafetensorsError,
  /header contains the key "w" twice/,
);
cases.push({
  name: 'tensor not found',
  file: 'lookup.safetensors',
  key: 'missing.weight',
  type: SafetensorsError,
  pattern: /tensor not found \(the file has 1 tensors\)/,
  run: async (file) => readTensor(await openSafetensors(bytesSource(safetensorsFile({ w: goodEntry }, eightBytes), file)), 'missing.weight'),
});

// --- sharded index ---
function shardedCase(name: string, index: string, shards: Record<string, Uint8Array>, pattern: RegExp, key?: string, read = 'w', type: Case['type'] = ShardedCheckpointError) {
  cases.push({
    name,
    file: 'model.safetensors.index.json',
    key,
    type,
    pattern,
    run: async (file) => {
      const checkpoint = await ShardedCheckpoint.open(bytesSource(new TextEncoder().encode(index), file), async (shard) => {
        if (!shards[shard]) throw new Error(`${shard}: file not found; check the checkpoint path`);
        return bytesSource(shards[shard], shard);
      });
      return checkpoint.readTensor(read);
    },
  });
}
const shardBytes = concat(encodeSafetensors([{ name: 'w', dtype: 'F32', shape: [2], data: Float32Array.from([1, 2]) }]));
shardedCase('index JSON invalid', '{"weight_map": {', {}, /index is not valid UTF-8 JSON/);
shardedCase('index is an array', '[]', {}, /index is not a JSON object/);
shardedCase('weight_map missing', '{"metadata": {}}', {}, /"weight_map" is missing/);
shardedCase('weight_map value not string', '{"weight_map": {"w": 3}}', {}, /weight_map value 3 is not a file name/, 'w');
shardedCase('shard path traversal', '{"weight_map": {"w": "../../etc/passwd"}}', {}, /not a relative path inside the checkpoint folder/, 'w');
shardedCase('empty weight_map', '{"weight_map": {}}', {}, /"weight_map" lists no tensors/);
shardedCase('index names missing shard', '{"weight_map": {"w": "model-00001-of-00002.safetensors"}}', {}, /shard "model-00001-of-00002\.safetensors" \(mapped to 1 tensors\) could not be opened/, 'w');
shardedCase('shard lacks mapped tensor', '{"weight_map": {"w": "a.safetensors", "v": "a.safetensors"}}', { 'a.safetensors': shardBytes }, /maps the tensor to "a\.safetensors", but that shard does not contain it/, 'v', 'v');
shardedCase('tensor not in weight_map', '{"weight_map": {"w": "a.safetensors"}}', { 'a.safetensors': shardBytes }, /tensor not found in weight_map/, 'nope', 'nope');
cases.push({
  name: 'corrupt shard names shard',
  file: 'broken-shard.safetensors',
  type: SafetensorsError,
  pattern: /file has 3 bytes/,
  run: async () => {
    const checkpoint = await ShardedCheckpoint.open(bytesSource(new TextEncoder().encode('{"weight_map": {"w": "broken-shard.safetensors"}}'), 'index.json'), async (shard) =>
      bytesSource(new Uint8Array(3), shard),
    );
    return checkpoint.readTensor('w');
  },
});

// --- PyTorch zip and pickle ---
const tensorW = { name: 'w', storage: 'FloatStorage', key: '0', numel: 2, shape: [2] };
const goodZip = torchZip({ 'data.pkl': stateDictPickle([tensorW]), 'data/0': f32Bytes([1, 2]) });
const goodPickle = stateDictPickle([tensorW]);

pytorchCase('not a zip', new TextEncoder().encode('hello, this is text'), PytorchCheckpointError, /is not a zip archive/);
pytorchCase('legacy pickle', pickle(op.proto(2), [0x8a, 0x0a], new Array(10).fill(1), op.stop), PytorchCheckpointError, /legacy PyTorch format/);
pytorchCase('truncated zip', goodZip.subarray(0, Math.floor(goodZip.byteLength / 2)), PytorchCheckpointError, /is not a valid zip archive/);
pytorchCase('zip without data.pkl', torchZip({ 'data/0': f32Bytes([1, 2]), version: '3\n' }), PytorchCheckpointError, /has no "<archive>\/data\.pkl" entry/);
pytorchCase('TorchScript archive', torchZip({ 'constants.pkl': goodPickle, 'data.pkl': goodPickle, 'code/model.py': 'def forward(self): pass' }), PytorchCheckpointError, /TorchScript archive/);
pytorchCase('two data.pkl entries', zipSync({ 'a/data.pkl': goodPickle, 'b/data.pkl': goodPickle }, { level: 0 }), PytorchCheckpointError, /has 2 data\.pkl entries/);
pytorchCase(
  'forged zip entry count',
  (() => {
    const forged = new Uint8Array(goodZip);
    const view = new DataView(forged.buffer);
    const end = forged.byteLength - 22;
    view.setUint16(end + 8, 0xffff, true);
    view.setUint16(end + 10, 0xffff, true);
    return forged;
  })(),
  PytorchCheckpointError,
  /central directory claims 65535 entries/,
);
pytorchCase(
  'unsupported compression',
  (() => {
    // Set every central-directory entry's compression method (offset 10) to 12 (bzip2).
    const patched = new Uint8Array(goodZip);
    const view = new DataView(patched.buffer);
    for (let i = 0; i + 4 <= patched.byteLength; i++) if (view.getUint32(i, true) === 0x02014b50) view.setUint16(i + 10, 12, true);
    return patched;
  })(),
  PytorchCheckpointError,
  /zip compression method 12 is not supported/,
  'archive/data.pkl',
);
pytorchCase(
  'forbidden global os.system',
  torchZip({ 'data.pkl': pickle(op.proto(2), op.global('os', 'system'), op.string('echo hacked'), op.tuple1, op.reduce, op.stop) }),
  UnpicklingError,
  /forbidden global os\.system/,
  'archive/data.pkl',
);
pytorchCase(
  'forbidden global in tensor',
  torchZip({ 'data.pkl': pickle(op.proto(2), op.emptyDict, op.string('w'), op.global('torch', 'load'), op.emptyTuple, op.reduce, op.setItem, op.stop) }),
  UnpicklingError,
  /forbidden global torch\.load/,
  'archive/data.pkl',
);
pytorchCase('pickle truncated', torchZip({ 'data.pkl': goodPickle.subarray(0, 40), 'data/0': f32Bytes([1, 2]) }), UnpicklingError, /ends inside an opcode's argument/, 'archive/data.pkl');
pytorchCase('pickle without STOP', torchZip({ 'data.pkl': goodPickle.subarray(0, goodPickle.byteLength - 1), 'data/0': f32Bytes([1, 2]) }), UnpicklingError, /ends without STOP/, 'archive/data.pkl');
pytorchCase('unknown opcode', torchZip({ 'data.pkl': pickle(op.proto(2), [0xff], op.stop) }), UnpicklingError, /byte 2: unknown opcode 0xff/, 'archive/data.pkl');
pytorchCase('unsupported opcode NEWOBJ', torchZip({ 'data.pkl': pickle(op.proto(2), op.emptyTuple, op.emptyTuple, [0x81], op.stop) }), UnpicklingError, /opcode NEWOBJ \(0x81\) is not supported/, 'archive/data.pkl');
pytorchCase('memo read before write', torchZip({ 'data.pkl': pickle(op.proto(2), op.binGet(7), op.stop) }), UnpicklingError, /memo entry 7 is read before it is written/, 'archive/data.pkl');
pytorchCase('stack underflow', torchZip({ 'data.pkl': pickle(op.proto(2), op.tuple2, op.stop) }), UnpicklingError, /TUPLE2 needs a value but the stack is empty/, 'archive/data.pkl');
pytorchCase('SETITEMS without MARK', torchZip({ 'data.pkl': pickle(op.proto(2), op.emptyDict, op.setItems, op.stop) }), UnpicklingError, /SETITEMS has no matching MARK/, 'archive/data.pkl');
pytorchCase('missing storage record', torchZip({ 'data.pkl': goodPickle }), PytorchCheckpointError, /storage record "archive\/data\/0" is missing/, 'w');
pytorchCase('storage size mismatch', torchZip({ 'data.pkl': goodPickle, 'data/0': f32Bytes([1]) }), PytorchCheckpointError, /storage record "archive\/data\/0" has 4 bytes, but the pickle declares 2 F32 elements \(8 bytes\)/, 'w');
pytorchCase(
  'view beyond storage',
  torchZip({ 'data.pkl': stateDictPickle([{ ...tensorW, offset: 1, shape: [2] }]), 'data/0': f32Bytes([1, 2]) }),
  UnpicklingError,
  /reaches element 2, but storage "0" has 2 elements/,
  'archive/data.pkl',
);
pytorchCase(
  'stride rank mismatch',
  torchZip({ 'data.pkl': stateDictPickle([{ ...tensorW, shape: [2], stride: [1, 1] }]), 'data/0': f32Bytes([1, 2]) }),
  UnpicklingError,
  /stride \[1,1\] does not match size \[2\]/,
  'archive/data.pkl',
);
pytorchCase(
  'unknown storage class',
  torchZip({ 'data.pkl': stateDictPickle([{ ...tensorW, storage: 'ComplexFloatStorage' }]), 'data/0': f32Bytes([1, 2]) }),
  UnpicklingError,
  /forbidden global torch\.ComplexFloatStorage/,
  'archive/data.pkl',
);
pytorchCase(
  'malformed persistent id',
  torchZip({ 'data.pkl': pickle(op.proto(2), op.emptyDict, op.string('w'), op.string('tensor'), op.tuple1, op.binPersId, op.setItem, op.stop) }),
  UnpicklingError,
  /persistent id is a list or tuple, expected \('storage'/,
  'archive/data.pkl',
);
pytorchCase('invalid byteorder', torchZip({ 'data.pkl': goodPickle, 'data/0': f32Bytes([1, 2]), byteorder: 'middle' }), PytorchCheckpointError, /byteorder record is "middle"/, 'archive/byteorder');
pytorchCase(
  'single tensor, not a dict',
  torchZip({ 'data.pkl': pickle(op.proto(2), tensorOps(tensorW), op.stop), 'data/0': f32Bytes([1, 2]) }),
  PytorchCheckpointError,
  /the checkpoint is a single tensor, not a dict of named tensors/,
  'archive/data.pkl',
);
pytorchCase('no tensors', torchZip({ 'data.pkl': pickle(op.proto(2), op.emptyDict, op.string('epoch'), op.int(3), op.setItem, op.stop) }), PytorchCheckpointError, /contains no tensors/);
pytorchCase(
  'BUILD on a list',
  torchZip({ 'data.pkl': pickle(op.proto(2), op.emptyList, op.emptyDict, op.build, op.stop) }),
  UnpicklingError,
  /BUILD \(__setstate__\) on a list or tuple with a dict is not supported/,
  'archive/data.pkl',
);

for (const testCase of cases) {
  test(`rejects ${testCase.name}`, async () => {
    let caught: unknown;
    try {
      await testCase.run(testCase.file);
    } catch (error) {
      caught = error;
    }
    assert.ok(caught !== undefined, `${testCase.name}: no error raised`);
    const error = caught as Error;
    assert.instance(error, testCase.type, `${testCase.name}: ${error.name}: ${error.message}`);
    assert.match(error.message, testCase.pattern);
    assert.ok(error.message.startsWith(`${testCase.file}: `), `message does not start with the file name "${testCase.file}": ${error.message}`);
    assert.is((error as CheckpointError).file, testCase.file);
    if (testCase.key !== undefined) {
      assert.is((error as CheckpointError).key, testCase.key, `key in: ${error.message}`);
      assert.ok(error.message.includes(`"${testCase.key}"`), `message does not name "${testCase.key}": ${error.message}`);
    }
    assert.match(error.message, ADVICE, `message gives no next step: ${error.message}`);
    assert.not.match(error.message, /\n/, 'message is one line');
  });
}

test('malformed suite has 30+ cases', () => {
  assert.ok(cases.length >= 30, `${cases.length} cases`);
});

test('missing shard file on disk', async () => {
  const folder = await mkdtemp(join(tmpdir(), 's2d-missing-shard-'));
  try {
    const indexPath = join(folder, 'model.safetensors.index.json');
    await writeFile(indexPath, JSON.stringify({ weight_map: { w: 'model-00002-of-00002.safetensors' } }));
    const checkpoint = await ShardedCheckpoint.open(await fileSource(indexPath), (file) => fileSource(join(folder, file)));
    try {
      await checkpoint.readTensor('w');
      assert.unreachable('missing shard was accepted');
    } catch (error) {
      assert.instance(error, ShardedCheckpointError);
      assert.match((error as Error).message, /shard "model-00002-of-00002\.safetensors" \(mapped to 1 tensors\) could not be opened: .*file not found/);
    }
  } finally {
    await rm(folder, { recursive: true, force: true });
  }
});

test('s2d inspect prints one error line', async () => {
  const folder = await mkdtemp(join(tmpdir(), 's2d-inspect-bad-'));
  try {
    const files: Record<string, Uint8Array> = {
      'truncated.safetensors': concat([u64(100), new Uint8Array(20)]),
      'overlap.safetensors': safetensorsFile({ a: goodEntry, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, eightBytes),
      'evil.bin': torchZip({ 'data.pkl': pickle(op.proto(2), op.global('os', 'system'), op.string('echo hacked'), op.tuple1, op.reduce, op.stop) }),
      'model.safetensors.index.json': new TextEncoder().encode('{"weight_map": {"w": "absent.safetensors"}}'),
    };
    for (const [name, bytes] of Object.entries(files)) {
      const path = join(folder, name);
      await writeFile(path, bytes);
      const result = spawnSync(process.execPath, ['scripts/s2d.mjs', 'inspect', path], { encoding: 'utf8' });
      assert.is(result.status, 1, `${name}: exit code ${result.status}, stderr ${result.stderr}`);
      assert.is(result.stdout, '', `${name}: stdout`);
      const lines = result.stderr.trimEnd().split('\n');
      assert.is(lines.length, 1, `${name}: stderr has ${lines.length} lines: ${result.stderr}`);
      assert.ok(lines[0].startsWith(`s2d inspect: ${path}`), `${name}: ${lines[0]}`);
    }
  } finally {
    await rm(folder, { recursive: true, force: true });
  }
});

test.run();
