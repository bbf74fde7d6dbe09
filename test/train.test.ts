// End to end on real samples: a few PAG steps lower the loss, and a saved model loads back
// with identical outputs.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { setDevice } from '../engine/devices.ts';
import { fromHost, noGrad, tidy } from '../engine/tensor.ts';
import { decoderBatch, type PreparedSample } from '../s2d/batches.ts';
import { encodeModel, loadModel, type SavedConfig } from '../s2d/checkpoint.ts';
import { parseStages, TINY, type S2DConfig } from '../s2d/config.ts';
import { loadAnnotation } from '../s2d/data/annotation.ts';
import { joinPath } from '../s2d/data/files.ts';
import { loadImage } from '../s2d/data/image.ts';
import { nodeFiles } from '../s2d/data/node-files.ts';
import { cleanReport } from '../s2d/data/report.ts';
import { Vocabulary } from '../s2d/data/vocab.ts';
import { extractImageFeatures, generateGreedy } from '../s2d/generate.ts';
import { S2DAlign } from '../s2d/model.ts';
import { nearestReferences, specialIds } from '../s2d/pipeline.ts';
import { featureShapeOf, trainStage, validationLoss } from '../s2d/train.ts';
import { silentProgress } from '../s2d/progress.ts';
import { Random } from '../engine/random.ts';
import { bytesSource } from '../weights/source.ts';
import { webgpu } from './helpers.ts';

const DATA = 'examples/data/covid-cxr-sample';

/** A small variant of the tiny preset so the test trains in seconds. */
const MICRO: S2DConfig = {
  ...TINY,
  preset: 'micro',
  vision: { ...TINY.vision, hiddenSize: 64, layers: 2, heads: 2 },
  text: { ...TINY.text, hiddenSize: 64, layers: 1, heads: 2, intermediateSize: 128 },
  decoder: { ...TINY.decoder, hiddenSize: 64, intermediateSize: 128, layers: 2, heads: 2 },
  memory: { queries: 8, heads: 2, mlpWidth: 64 },
  data: { ...TINY.data, maxReportTokens: 24, maxReferenceTokens: 24 },
  training: { ...TINY.training, batchSize: 8, warmupSteps: 1 },
};

async function prepare(model: S2DAlign, vocab: Vocabulary, entries: Array<{ id: string; report: string; image_path: string[] }>): Promise<PreparedSample[]> {
  const images = [];
  for (const entry of entries) images.push(await loadImage(nodeFiles, joinPath(`${DATA}/images`, entry.image_path[0]), { size: MICRO.vision.imageSize }));
  const features = await extractImageFeatures(model, images, 8);
  return entries.map((entry, i) => {
    const report = cleanReport(entry.report);
    return { id: entry.id, features: features[i], report, reportIds: vocab.encode(report, { maxLength: 24, addEos: false }), referenceIds: [], phraseIds: [] };
  });
}

function joinChunks(chunks: Uint8Array[]): Uint8Array {
  const bytes = new Uint8Array(chunks.reduce((n, c) => n + c.byteLength, 0));
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}

test('PAG stage 1 lowers the loss on real samples (webgpu)', async () => {
  setDevice(await webgpu());
  const annotation = await loadAnnotation(nodeFiles, `${DATA}/annotation.json`);
  const entries = annotation.train.slice(0, 16);
  const vocab = Vocabulary.build(annotation.train.map((e) => cleanReport(e.report)), 3);
  const model = new S2DAlign(MICRO, vocab.size, 5);
  const samples = await prepare(model, vocab, entries);
  nearestReferences(samples, samples, MICRO.vision.hiddenSize).forEach((ids, i) => (samples[i].referenceIds = ids));
  const ids = specialIds(vocab);

  const before = await validationLoss(model, 1, samples, ids);
  const result = await trainStage(model, { stage: 1, epochs: 6, peakLr: 3e-3 }, samples, samples, ids, silentProgress);
  assert.ok(Number.isFinite(before), `loss before training is ${before}, expected finite`);
  assert.ok(Number.isFinite(result.valLoss), `loss after training is ${result.valLoss}, expected finite`);
  assert.ok(result.valLoss < before - 0.1, `loss on the training samples should drop: before=${before.toFixed(4)} after=${result.valLoss.toFixed(4)}`);
  model.dispose();
});

test('stage 3 runs with reference and key-phrase context (webgpu)', async () => {
  setDevice(await webgpu());
  const annotation = await loadAnnotation(nodeFiles, `${DATA}/annotation.json`);
  const entries = annotation.train.slice(0, 8);
  const vocab = Vocabulary.build(annotation.train.map((e) => cleanReport(e.report)), 3);
  const model = new S2DAlign(MICRO, vocab.size, 6);
  const samples = await prepare(model, vocab, entries);
  samples.forEach((s, i) => {
    s.referenceIds = samples[(i + 1) % samples.length].reportIds;
    s.phraseIds = [s.reportIds.slice(0, 5), s.reportIds.slice(5, 9)];
  });
  const rng = new Random(1);
  const batch = decoderBatch(samples, featureShapeOf(model), specialIds(vocab), rng, 2, 16);
  const context = noGrad(() => tidy(() => model.context(3, batch.features, batch.reference, batch.phrases)));
  assert.equal([...context.shape], [8, 3 * MICRO.memory.queries, MICRO.decoder.hiddenSize]);
  context.dispose();
  const result = await trainStage(model, { stage: 3, epochs: 1, peakLr: 1e-3 }, samples, samples, specialIds(vocab), silentProgress);
  assert.ok(Number.isFinite(result.valLoss), `stage 3 val loss ${result.valLoss}`);
  model.dispose();
});

test('saved model loads back with equal generations (cpu)', async () => {
  const { CpuDevice } = await import('../engine/cpu-device.ts');
  setDevice(new CpuDevice());
  const model = new S2DAlign(MICRO, 40, 9);
  model.decoder.setLoraEnabled(true);
  // Non-zero LoRA B so the update matters in the comparison.
  for (const layer of model.decoder.loraLayers()) layer.loraB.assign(new Random(3).normalArray(layer.loraB.size, 0.05));
  const saved: SavedConfig = { format: 's2d-align', version: 1, config: MICRO, vocabSize: 40, loraEnabled: true };
  const bytes = joinChunks(await encodeModel(model, saved));
  const loaded = await loadModel(saved, bytesSource(bytes, 'model.safetensors'));
  const tokens = model.vision.patchCount + 1;
  const features = new Random(4).normalArray(2 * tokens * MICRO.vision.hiddenSize, 1);
  const ids = { pad: 0, bos: 1, eos: 2, unk: 3 };
  const a = await generateGreedy(model, fromHost(features, [2, tokens, MICRO.vision.hiddenSize]), { maxTokens: 6, ids });
  const b = await generateGreedy(loaded, fromHost(features, [2, tokens, MICRO.vision.hiddenSize]), { maxTokens: 6, ids });
  assert.equal(b, a);
  assert.ok(a[0].length > 0, 'generation produced no tokens');
});

test('loading rejects a checkpoint of another shape', async () => {
  const { CpuDevice } = await import('../engine/cpu-device.ts');
  setDevice(new CpuDevice());
  const model = new S2DAlign(MICRO, 40, 9);
  const saved: SavedConfig = { format: 's2d-align', version: 1, config: MICRO, vocabSize: 40, loraEnabled: false };
  const bytes = joinChunks(await encodeModel(model, saved));
  const other: SavedConfig = { ...saved, vocabSize: 41 };
  try {
    await loadModel(other, bytesSource(bytes, 'model.safetensors'));
    assert.unreachable('loading should fail');
  } catch (error) {
    assert.match((error as Error).message, /model\.safetensors: tensor "text\.embeddings\.word_embeddings\.weight" has shape \[41, 64\], the model expects \[42, 64\]/);
  }
});

test('parseStages reads schedules and rejects unknown stages', () => {
  const schedule = parseStages('1, 3,2', TINY.training.stages);
  assert.equal(schedule.map((s) => s.stage), [1, 3, 2]);
  assert.equal(schedule[1].peakLr, TINY.training.stages[2].peakLr);
  assert.throws(() => parseStages('1,4', TINY.training.stages), /--stages 1,4: "4" is not a stage/);
});

test.run();
