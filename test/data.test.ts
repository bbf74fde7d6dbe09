import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { deflateSync } from 'node:zlib';
import jpeg from 'jpeg-js';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { parseAnnotation } from '../s2d/data/annotation.ts';
import { buildDataset } from '../s2d/data/dataset.ts';
import { decodeGray, detectImageFormat, loadImage, preprocessImage, resizeGray } from '../s2d/data/image.ts';
import { extractKeyPhrases, findKeyPhrases, sampleKeyPhrases } from '../s2d/data/keyphrases.ts';
import { nodeFiles, readAnnotationFile, readDatasetFolder } from '../s2d/data/node-files.ts';
import { cleanReport } from '../s2d/data/report.ts';
import { Vocabulary } from '../s2d/data/vocab.ts';
import { compare } from './helpers.ts';

const sampleDir = fileURLToPath(new URL('../examples/data/covid-cxr-sample', import.meta.url));
const scratch = mkdtempSync(join(tmpdir(), 's2d-data-test-'));

// --- annotation and dataset on the shipped sample ---

test('sample annotation split sizes', async () => {
  const annotation = await readAnnotationFile(join(sampleDir, 'annotation.json'));
  assert.is(annotation.train.length, 92);
  assert.is(annotation.val.length, 13);
  assert.is(annotation.test.length, 27);
  const first = annotation.train[0];
  assert.type(first.report, 'string');
  assert.ok(first.image_path.length > 0, `${first.id} has no images`);
  assert.type(first.license, 'string', 'extra keys are kept');
});

test('sample images decode to finite [3, S, S]', async () => {
  const annotation = await readAnnotationFile(join(sampleDir, 'annotation.json'));
  const size = 32;
  const plane = size * size;
  let count = 0;
  for (const entry of [...annotation.train, ...annotation.val, ...annotation.test]) {
    for (const relative of entry.image_path) {
      const path = join(sampleDir, 'images', relative);
      const input = await loadImage(nodeFiles, path, { size });
      assert.is(input.length, 3 * plane, `${path}: length`);
      const nonFinite = input.findIndex((value) => !Number.isFinite(value));
      assert.is(nonFinite, -1, `${path}: element ${nonFinite} is ${input[nonFinite]}`);
      // Default normalisation maps [0, 1] to [−2, 2].
      const [min, max] = [Math.min(...input), Math.max(...input)];
      assert.ok(min >= -2 - 1e-5, `${path}: min ${min} < −2`);
      assert.ok(max <= 2 + 1e-5, `${path}: max ${max} > 2`);
      assert.equal(input.subarray(plane, 2 * plane), input.subarray(0, plane), `${path}: channel 1 differs from channel 0`);
      assert.equal(input.subarray(2 * plane), input.subarray(0, plane), `${path}: channel 2 differs from channel 0`);
      count++;
    }
  }
  assert.is(count, 156);
});

test('sample dataset samples', async () => {
  const dataset = await readDatasetFolder(sampleDir);
  const { train, val, test: testSplit } = dataset.splits;
  assert.is(train.length, 92);
  assert.is(val.length, 13);
  assert.is(testSplit.length, 27);

  const vocabulary = dataset.vocabulary;
  assert.ok(vocabulary.size > 100, `vocabulary has only ${vocabulary.size} words`);
  for (const sample of [...train, ...val, ...testSplit]) {
    assert.is(sample.tokens[sample.tokens.length - 1], vocabulary.eosId, `${sample.id}: tokens end with <eos>`);
    assert.is(sample.tokens.length, sample.report.split(' ').length + 1, `${sample.id}: one id per cleaned token plus <eos>`);
    assert.ok(sample.imagePaths.every((path) => path.startsWith(join(sampleDir, 'images'))), `${sample.id}: image path ${sample.imagePaths[0]}`);
  }
  // Train words seen ≥ 3 times are all known, so no train report is cut short by <unk> from them.
  const trainUnknown = train.flatMap((sample) => sample.tokens).filter((id) => id === vocabulary.unkId).length;
  const trainTotal = train.reduce((sum, sample) => sum + sample.tokens.length, 0);
  assert.ok(trainUnknown < trainTotal / 2, `${trainUnknown} of ${trainTotal} train tokens are <unk>`);
});

test('dataset maxLength cuts tokens', () => {
  const annotation = parseAnnotation(JSON.stringify({
    train: [{ id: 'a', report: 'no effusion . no effusion . no effusion .', image_path: ['a/0.png'] }],
    val: [],
    test: [],
  }), 'inline');
  const dataset = buildDataset(annotation, { imageRoot: 'root', maxLength: 4 });
  const [sample] = dataset.splits.train;
  assert.is(sample.tokens.length, 4);
  assert.is(sample.tokens[3], dataset.vocabulary.eosId);
  assert.equal(sample.imagePaths, ['root/a/0.png']);
  assert.equal(dataset.vocabulary.decode(sample.tokens), 'no effusion .');
});

// --- annotation errors ---

test('annotation without train', () => {
  assert.throws(() => parseAnnotation('{"val": [], "test": []}', 'ann.json'), /annotation file ann\.json: missing "train"/);
});

test('annotation entry errors', () => {
  const wrap = (entry: unknown) => JSON.stringify({ train: [entry], val: [], test: [] });
  assert.throws(() => parseAnnotation(wrap({ id: 'x', image_path: ['x.png'] }), 'a.json'), /a\.json: train\[0\] \(id "x"\): "report" must be a string, got nothing/);
  assert.throws(() => parseAnnotation(wrap({ id: 'x', report: 'ok' }), 'a.json'), /a\.json: train\[0\] \(id "x"\): "image_path" must be a non-empty array/);
  assert.throws(() => parseAnnotation(wrap({ id: 'x', report: 'ok', image_path: [] }), 'a.json'), /"image_path" must be a non-empty array.*got an array of length 0/);
  assert.throws(() => parseAnnotation(wrap({ id: 'x', report: 'ok', image_path: [3] }), 'a.json'), /image_path\[0\] must be a non-empty string, got number 3/);
  assert.throws(() => parseAnnotation(wrap({ report: 'ok', image_path: ['x.png'] }), 'a.json'), /train\[0\]: "id" must be a non-empty string/);
  assert.throws(() => parseAnnotation(wrap('x'), 'a.json'), /train\[0\]: expected an object, got string "x"/);
});

test('annotation file-level errors', () => {
  assert.throws(() => parseAnnotation('{"train": [', 'bad.json'), /annotation file bad\.json: invalid JSON/);
  assert.throws(() => parseAnnotation('[]', 'list.json'), /list\.json: expected an object with "train", "val" and "test" arrays, got an array/);
  assert.throws(() => parseAnnotation('{"train": {}, "val": [], "test": []}', 'a.json'), /"train" must be an array of entries, got an object/);
  const entry = { id: 'same', report: 'r', image_path: ['p.png'] };
  assert.throws(() => parseAnnotation(JSON.stringify({ train: [entry], val: [], test: [entry] }), 'a.json'), /id "same" appears twice \(train\[0\] and test\[0\]\)/);
});

test('missing annotation file', async () => {
  const path = join(scratch, 'no-such-annotation.json');
  try {
    await readAnnotationFile(path);
    assert.unreachable('expected an error');
  } catch (error) {
    assert.match((error as Error).message, `annotation file not found: ${path}`);
  }
});

// --- image decoding errors ---

async function loadError(path: string): Promise<string> {
  try {
    await loadImage(nodeFiles, path, { size: 8 });
  } catch (error) {
    return (error as Error).message;
  }
  assert.unreachable(`expected ${path} to fail`);
  return '';
}

test('missing image file', async () => {
  const path = join(scratch, 'missing.png');
  const message = await loadError(path);
  assert.match(message, `image not found: ${path}`);
});

test('garbage image bytes', async () => {
  const path = join(scratch, 'garbage.png');
  writeFileSync(path, Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]));
  const message = await loadError(path);
  assert.match(message, `image ${path}: unknown format (first bytes: 01 02 03 04 05 06 07 08); expected PNG or JPEG`);

  const empty = join(scratch, 'empty.jpg');
  writeFileSync(empty, new Uint8Array(0));
  assert.match(await loadError(empty), 'the file is empty');
});

test('corrupt PNG and JPEG', async () => {
  const png = join(scratch, 'corrupt.png');
  writeFileSync(png, Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, 1, 2, 3, 4, 5, 6]));
  assert.match(await loadError(png), `image ${png}: invalid PNG data (`);

  const jpg = join(scratch, 'corrupt.jpg');
  writeFileSync(jpg, Uint8Array.from([0xff, 0xd8, 0xff, 0xe0, 0, 16, 9, 9, 9, 9]));
  assert.match(await loadError(jpg), `image ${jpg}: invalid JPEG data (`);
});

// --- image decoding and resizing ---

// A minimal PNG writer for the formats pngjs's encoder cannot produce (16-bit, paletted, 1-bit):
// one IDAT chunk, filter type 0 on every row.
function crc32(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of bytes) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0xedb88320 : crc >>> 1;
  }
  return (crc ^ 0xffffffff) >>> 0;
}

function pngChunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  out.set(new TextEncoder().encode(type), 4);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

function encodePng(width: number, height: number, bitDepth: number, colorType: number, rows: number[][], palette?: number[]): Uint8Array {
  const header = new Uint8Array(13);
  const view = new DataView(header.buffer);
  view.setUint32(0, width);
  view.setUint32(4, height);
  header.set([bitDepth, colorType, 0, 0, 0], 8);
  const raw = rows.flatMap((row) => [0, ...row]);
  const chunks = [pngChunk('IHDR', header)];
  if (palette) chunks.push(pngChunk('PLTE', Uint8Array.from(palette)));
  chunks.push(pngChunk('IDAT', deflateSync(Uint8Array.from(raw))), pngChunk('IEND', new Uint8Array(0)));
  const signature = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  return Uint8Array.from([...signature, ...chunks.flatMap((chunk) => [...chunk])]);
}

const luma = (r: number, g: number, b: number) => 0.299 * r + 0.587 * g + 0.114 * b;

const pngCases = [
  {
    name: '16-bit gray',
    bytes: () => encodePng(2, 1, 16, 0, [[0x00, 0x00, 0xff, 0xff]]),
    expected: [0, 1],
  },
  {
    name: '16-bit gray mid value',
    bytes: () => encodePng(1, 1, 16, 0, [[0x80, 0x01]]),
    expected: [0x8001 / 65535],
  },
  {
    name: '1-bit gray',
    bytes: () => encodePng(3, 1, 1, 0, [[0b10100000]]),
    expected: [1, 0, 1],
  },
  {
    name: '8-bit gray+alpha',
    bytes: () => encodePng(2, 1, 8, 4, [[51, 255, 204, 0]]),
    expected: [51 / 255, 204 / 255],
  },
  {
    name: '8-bit RGB',
    bytes: () => encodePng(1, 1, 8, 2, [[255, 0, 0]]),
    expected: [luma(255, 0, 0) / 255],
  },
  {
    name: '8-bit paletted',
    bytes: () => encodePng(2, 1, 8, 3, [[1, 0]], [0, 0, 0, 10, 200, 30]),
    expected: [luma(10, 200, 30) / 255, 0],
  },
];

for (const c of pngCases) {
  test(`decode PNG ${c.name}`, () => {
    const bytes = c.bytes();
    assert.is(detectImageFormat(bytes), 'png');
    const image = decodeGray(bytes, c.name);
    assert.is(image.width * image.height, c.expected.length);
    const result = compare(image.pixels, c.expected, 1e-6, 0);
    assert.ok(result.ok, result.message);
  });
}

test('decode JPEG gray level', () => {
  const [width, height] = [16, 8];
  const rgba = new Uint8Array(width * height * 4).fill(128);
  const bytes = new Uint8Array(jpeg.encode({ data: rgba, width, height }, 95).data);
  assert.is(detectImageFormat(bytes), 'jpeg');
  const image = decodeGray(bytes, 'gray.jpg');
  assert.is(image.width, width);
  assert.is(image.height, height);
  const result = compare(image.pixels, new Float32Array(width * height).fill(128 / 255), 0.01, 0);
  assert.ok(result.ok, result.message);
});

test('resize area filter averages blocks', () => {
  // 4×2 → 2×1: each output pixel is the mean of a 2×2 block.
  const image = { width: 4, height: 2, pixels: Float32Array.from([0, 1, 2, 3, 4, 5, 6, 7]) };
  const out = resizeGray(image, 2, 1);
  const result = compare(out.pixels, [(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4], 1e-6, 0);
  assert.ok(result.ok, result.message);

  // 3 → 2 across: output 0 covers input [0, 1.5), so it weighs pixel 0 by 1 and pixel 1 by 0.5.
  const row = resizeGray({ width: 3, height: 1, pixels: Float32Array.from([0, 3, 6]) }, 2, 1);
  const partial = compare(row.pixels, [(0 * 1 + 3 * 0.5) / 1.5, (3 * 0.5 + 6 * 1) / 1.5], 1e-6, 0);
  assert.ok(partial.ok, partial.message);
});

test('resize bilinear when enlarging', () => {
  // 2 → 4 across, pixel centres at +0.5: sources −0.25, 0.25, 0.75, 1.25, clamped to [0, 1].
  const out = resizeGray({ width: 2, height: 1, pixels: Float32Array.from([0, 1]) }, 4, 1);
  const result = compare(out.pixels, [0, 0.25, 0.75, 1], 1e-6, 0);
  assert.ok(result.ok, result.message);
});

test('resize keeps a constant image', () => {
  const image = { width: 37, height: 23, pixels: new Float32Array(37 * 23).fill(0.3) };
  for (const [width, height] of [[8, 8], [64, 50], [37, 23], [1, 1]]) {
    const result = compare(resizeGray(image, width, height).pixels, new Float32Array(width * height).fill(0.3), 1e-6, 0);
    assert.ok(result.ok, `${width}×${height}: ${result.message}`);
  }
});

test('preprocess normalisation options', () => {
  const bytes = encodePng(2, 2, 8, 0, [[51, 51], [51, 51]]);
  const gray = 51 / 255;
  const byDefault = preprocessImage(bytes, 'gray.png', { size: 3 });
  assert.is(byDefault.length, 27);
  const expectedDefault = compare(byDefault, new Float32Array(27).fill((gray - 0.5) / 0.25), 1e-6, 0);
  assert.ok(expectedDefault.ok, expectedDefault.message);

  const custom = preprocessImage(bytes, 'gray.png', { size: 3, mean: 0.1, std: 2 });
  const expectedCustom = compare(custom, new Float32Array(27).fill((gray - 0.1) / 2), 1e-6, 0);
  assert.ok(expectedCustom.ok, expectedCustom.message);

  assert.throws(() => preprocessImage(bytes, 'gray.png', { size: 0 }), /image size must be a positive integer, got 0/);
  assert.throws(() => preprocessImage(bytes, 'gray.png', { size: 4, std: 0 }), /image std must be positive, got 0/);
});

// --- report cleaning ---

const cleaningCases = [
  ['Heart size is normal. No effusion, no pneumothorax.', 'heart size is normal . no effusion , no pneumothorax .'],
  ['1. Heart normal. 2. Lungs clear', 'heart normal . lungs clear .'],
  ['Heart normal; 2. Lungs clear.', 'heart normal . lungs clear .'],
  ['Nodule of 2.5 cm at rib 5. Stable.', 'nodule of 2.5 cm at rib 5 . stable .'],
  ['Patient\'s "ground-glass" opacity..  (bilateral)', 'patients ground glass opacity . bilateral .'],
  ['  , . Lungs clear ,', 'lungs clear .'],
  ['XXXX opacity , . seen', 'xxxx opacity . seen .'],
  ['', ''],
  ['?!', ''],
];

test('cleanReport cases', () => {
  for (const [input, expected] of cleaningCases) {
    assert.is(cleanReport(input), expected, `input ${JSON.stringify(input)}`);
    assert.is(cleanReport(expected), expected, `cleaning ${JSON.stringify(expected)} again`);
  }
});

// --- vocabulary ---

const vocabularyReports = [
  'The heart is normal. No effusion.',
  'The heart is enlarged. No effusion.',
  'The lungs are clear. No effusion, no pneumothorax.',
  'The heart is normal. The lungs are clear.',
];

test('vocabulary minCount and specials', () => {
  const vocabulary = Vocabulary.build(vocabularyReports, 3);
  assert.equal(vocabulary.words.slice(0, 4), ['<pad>', '<bos>', '<eos>', '<unk>']);
  assert.equal(vocabulary.words.slice(4), ['.', 'effusion', 'heart', 'is', 'no', 'the']);
  assert.is(vocabulary.padId, 0);
  assert.is(vocabulary.idOf('lungs'), vocabulary.unkId, 'lungs is seen twice, below minCount');
});

test('vocabulary encode/decode round trip', () => {
  const vocabulary = Vocabulary.build(vocabularyReports, 1);
  for (const report of vocabularyReports) {
    const ids = vocabulary.encode(report);
    assert.is(ids[ids.length - 1], vocabulary.eosId);
    assert.is(vocabulary.decode(ids), cleanReport(report));
  }
  const withBos = vocabulary.encode('No effusion.', { addBos: true });
  assert.is(withBos[0], vocabulary.bosId);
  assert.is(vocabulary.decode(withBos), 'no effusion .');
  assert.equal(vocabulary.encode('No effusion.', { addEos: false }), withBos.slice(1, -1));
});

test('vocabulary unknown words and truncation', () => {
  const vocabulary = Vocabulary.build(vocabularyReports, 3);
  const ids = vocabulary.encode('The heart is huge.');
  assert.equal(ids, [vocabulary.idOf('the'), vocabulary.idOf('heart'), vocabulary.idOf('is'), vocabulary.unkId, vocabulary.idOf('.'), vocabulary.eosId]);
  assert.is(vocabulary.decode(ids), 'the heart is .', '<unk> is left out');

  const cut = vocabulary.encode('The heart is normal. No effusion.', { maxLength: 3 });
  assert.equal(cut, [vocabulary.idOf('the'), vocabulary.idOf('heart'), vocabulary.eosId]);
  assert.throws(() => vocabulary.encode('x', { maxLength: 2, addBos: true }), /maxLength 2 leaves no room/);

  assert.is(vocabulary.decode([vocabulary.idOf('no'), vocabulary.eosId, vocabulary.idOf('the')]), 'no', 'stops at <eos>');
  assert.throws(() => vocabulary.decode([vocabulary.size]), new RegExp(`id ${vocabulary.size} at position 0 is outside the vocabulary`));
});

test('vocabulary JSON round trip', () => {
  const vocabulary = Vocabulary.build(vocabularyReports, 2);
  const restored = Vocabulary.fromJSON(JSON.parse(JSON.stringify(vocabulary)));
  assert.equal(restored.words, vocabulary.words);
  assert.is(restored.minCount, 2);
  assert.equal(restored.encode(vocabularyReports[2]), vocabulary.encode(vocabularyReports[2]));

  assert.throws(() => Vocabulary.fromJSON({ words: ['a', 'b', 'c', 'd'], minCount: 1 }), /first words must be <pad>, <bos>, <eos>, <unk>/);
  assert.throws(() => Vocabulary.fromJSON({ words: ['<pad>', '<bos>', '<eos>', '<unk>', 'x', 'x'], minCount: 1 }), /duplicates/);
});

// --- key phrases ---

const findingsReport =
  'The heart size is normal. There is a small left pleural effusion; no pneumothorax. ' +
  'Patchy opacity in the right lower lobe measuring 2.5 cm. Patient has fever.';

test('key phrases from findings', () => {
  const phrases = findKeyPhrases(findingsReport);
  assert.equal(phrases, [
    'The heart size is normal.',
    'There is a small left pleural effusion.',
    'No pneumothorax.',
    'Patchy opacity in the right lower lobe measuring 2.5 cm.',
  ]);
  assert.equal(findKeyPhrases('No effusion, pneumothorax or consolidation.'), ['No effusion, pneumothorax or consolidation.'], 'a negated list stays whole');
  assert.equal(findKeyPhrases('Fever and cough for two days.'), []);
});

test('key phrase sampling is seeded', () => {
  const phrases = findKeyPhrases(findingsReport);
  const first = extractKeyPhrases(findingsReport, { maxPhrases: 2, seed: 7 });
  assert.is(first.length, 2);
  assert.equal(extractKeyPhrases(findingsReport, { maxPhrases: 2, seed: 7 }), first, 'same seed, same phrases');
  assert.ok(first.every((phrase) => phrases.includes(phrase)));
  assert.ok(phrases.indexOf(first[0]) < phrases.indexOf(first[1]), 'report order is kept');

  const picks = new Set<string>();
  for (let seed = 0; seed < 20; seed++) picks.add(sampleKeyPhrases(phrases, 2, seed).join('|'));
  assert.ok(picks.size > 1, 'different seeds give different picks');
  assert.equal(sampleKeyPhrases(phrases, 10, 1), phrases, 'all phrases when there are few');
});

test('sample reports yield key phrases', async () => {
  const annotation = await readAnnotationFile(join(sampleDir, 'annotation.json'));
  const withPhrases = annotation.train.filter((entry) => findKeyPhrases(entry.report).length > 0).length;
  assert.ok(withPhrases >= annotation.train.length * 0.8, `only ${withPhrases} of ${annotation.train.length} train reports have key phrases`);
});

test.after(() => rmSync(scratch, { recursive: true, force: true }));

test.run();
