// End to end on real samples: a few PAG steps lower the loss, joint stages train the union of
// their members' parameters on the mean of their losses, and a saved model loads back with
// identical outputs.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { setDevice } from '../engine/devices.ts';
import { dropoutSeedState, setDropoutSeedState } from '../engine/nn/layers.ts';
import { fromHost, noGrad, tidy } from '../engine/tensor.ts';
import { decoderBatch, type PreparedSample } from '../s2d/batches.ts';
import { encodeModel, loadModel, type SavedConfig } from '../s2d/checkpoint.ts';
import { parseStages, stageLabel, TINY, type S2DConfig, type StageConfig, type StageNumber } from '../s2d/config.ts';
import { loadAnnotation } from '../s2d/data/annotation.ts';
import { joinPath } from '../s2d/data/files.ts';
import { loadImage } from '../s2d/data/image.ts';
import { nodeFiles } from '../s2d/data/node-files.ts';
import { cleanReport } from '../s2d/data/report.ts';
import { Vocabulary } from '../s2d/data/vocab.ts';
import { extractImageFeatures, generateGreedy } from '../s2d/generate.ts';
import { S2DAlign } from '../s2d/model.ts';
import { nearestReferences, specialIds } from '../s2d/pipeline.ts';
import { featureShapeOf, stageLoss, stageParameters, trainStage, validationLoss } from '../s2d/train.ts';
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

test('batched loss readback keeps losses and weights (webgpu)', async () => {
  setDevice(await webgpu());
  const annotation = await loadAnnotation(nodeFiles, `${DATA}/annotation.json`);
  const entries = annotation.train.slice(0, 16);
  const vocab = Vocabulary.build(annotation.train.map((e) => cleanReport(e.report)), 3);
  const ids = specialIds(vocab);
  const seedState = dropoutSeedState();
  const run = async (lossReadInterval: number) => {
    const config: S2DConfig = { ...MICRO, training: { ...MICRO.training, lossReadInterval } };
    const model = new S2DAlign(config, vocab.size, 5);
    const samples = await prepare(model, vocab, entries);
    samples.forEach((s, i) => (s.referenceIds = samples[(i + 3) % samples.length].reportIds));
    // Stage 2 trains LoRA with dropout: both runs start from the same dropout seeds.
    setDropoutSeedState(seedState);
    const result = await trainStage(model, { stage: 2, epochs: 3, peakLr: 1e-3 }, samples, samples, ids, silentProgress);
    const weights = await Promise.all(stageParameters(model, 2).map((p) => p.data()));
    model.dispose();
    return { result, weights };
  };
  const everyStep = await run(1);
  const batched = await run(4);
  assert.is(everyStep.result.trainLosses.length, 6);
  assert.equal(batched.result.trainLosses, everyStep.result.trainLosses);
  assert.is(batched.result.valLoss, everyStep.result.valLoss);
  everyStep.weights.forEach((expected, i) => {
    assert.equal(Array.from(batched.weights[i]), Array.from(expected), `trained tensor ${i} differs`);
  });
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
  for (const tensor of [batch.features, batch.inputIds, batch.targets, batch.reference.ids, batch.reference.lengths, batch.phrases.ids, batch.phrases.lengths]) tensor.dispose();
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
  const input = fromHost(features, [2, tokens, MICRO.vision.hiddenSize]);
  const a = await generateGreedy(model, input, { maxTokens: 6, ids });
  const b = await generateGreedy(loaded, input, { maxTokens: 6, ids });
  assert.equal(b, a);
  assert.ok(a[0].length > 0, 'generation produced no tokens');
  input.dispose();
  model.dispose();
  loaded.dispose();
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
  model.dispose();
});

test('parseStages reads schedules and rejects unknown stages', () => {
  const schedule = parseStages('1, 3,2', TINY.training.stages);
  assert.equal(schedule.map((s) => s.stage), [1, 3, 2]);
  assert.equal(schedule[1].peakLr, TINY.training.stages[2].peakLr);
  assert.throws(() => parseStages('1,4', TINY.training.stages), /--stages 1,4: "4" is not a stage/);
});

test('parseStages keeps the sequential default', () => {
  const schedule = parseStages('1,2,3', TINY.training.stages);
  assert.equal(schedule, TINY.training.stages);
  assert.ok(schedule.every((entry) => !('joint' in entry)), 'sequential entries have no joint field');
  assert.equal(schedule.map(stageLabel), ['PAG stage 1', 'PAG stage 2', 'PAG stage 3']);
});

test('parseStages builds joint stages', () => {
  const [s1, s2, s3] = TINY.training.stages;
  const [joint] = parseStages('1+2+3', TINY.training.stages);
  assert.equal(joint, { stage: 3, joint: [1, 2, 3], epochs: s1.epochs + s2.epochs + s3.epochs, peakLr: Math.min(s1.peakLr, s2.peakLr, s3.peakLr) });
  assert.is(stageLabel(joint), 'PAG stages 1+2+3 (joint)');

  const mixed = parseStages(' 1 , 3 + 2 ', TINY.training.stages);
  assert.equal(mixed, [{ ...s1 }, { stage: 3, joint: [2, 3], epochs: s2.epochs + s3.epochs, peakLr: Math.min(s2.peakLr, s3.peakLr) }]);
  assert.is(stageLabel(mixed[1]), 'PAG stages 2+3 (joint)');

  const [oneThree] = parseStages('3+1', TINY.training.stages);
  assert.equal(oneThree.joint, [1, 3]);
  assert.is(oneThree.stage, 3);
});

test('parseStages rejects bad schedules', () => {
  const cases: Array<[string, RegExp]> = [
    ['1+4', /--stages 1\+4: "4" is not a stage/],
    ['0,1', /--stages 0,1: "0" is not a stage/],
    ['1+x', /"x" is not a stage/],
    ['1+1', /--stages 1\+1: stage 1 is used twice/],
    ['1,1+2', /stage 1 is used twice/],
    ['2+3,3', /stage 3 is used twice/],
    ['1,,2', /--stages 1,,2: a stage number is missing/],
    ['1+', /--stages 1\+: a stage number is missing/],
    ['+2', /a stage number is missing/],
    ['1,', /a stage number is missing/],
    ['1+,2', /a stage number is missing/],
    ['', /a stage number is missing/],
    [' ', /a stage number is missing/],
  ];
  for (const [text, expected] of cases) {
    assert.throws(() => parseStages(text, TINY.training.stages), expected, `--stages "${text}" should fail with ${expected}`);
  }
});

/** Micro model and 8 training samples with reference reports and two key phrases each. */
async function jointSetup(seed: number) {
  const annotation = await loadAnnotation(nodeFiles, `${DATA}/annotation.json`);
  const entries = annotation.train.slice(0, 8);
  const vocab = Vocabulary.build(annotation.train.map((e) => cleanReport(e.report)), 3);
  const model = new S2DAlign(MICRO, vocab.size, seed);
  const samples = await prepare(model, vocab, entries);
  samples.forEach((s, i) => {
    s.referenceIds = samples[(i + 1) % samples.length].reportIds;
    s.phraseIds = [s.reportIds.slice(0, 5), s.reportIds.slice(5, 9)];
  });
  return { model, samples, ids: specialIds(vocab) };
}

test('joint loss is the mean of member losses (webgpu)', async () => {
  setDevice(await webgpu());
  const { model, samples, ids } = await jointSetup(7);
  model.decoder.setLoraEnabled(true);
  // Non-zero LoRA B, so LoRA dropout changes the losses and the dropout seeds must match.
  for (const layer of model.decoder.loraLayers()) layer.loraB.assign(new Random(3).normalArray(layer.loraB.size, 0.05));
  model.train(true);
  const batch = decoderBatch(samples, featureShapeOf(model), ids, new Random(1), MICRO.data.keyPhrases, MICRO.data.maxPhraseTokens);
  const seedState = dropoutSeedState();

  const memberSets: StageNumber[][] = [[1, 2, 3], [2, 3], [1, 3]];
  for (const members of memberSets) {
    const entry: StageConfig = { stage: members[members.length - 1], joint: members, epochs: 1, peakLr: 1e-3 };
    setDropoutSeedState(seedState);
    const jointLoss = noGrad(() => tidy(() => stageLoss(model, entry, batch)));
    const joint = await jointLoss.item();
    jointLoss.dispose();

    // The same batch and dropout seeds, each member's loss from its own model.context.
    setDropoutSeedState(seedState);
    const separate: number[] = [];
    for (const stage of members) {
      const loss = noGrad(() => tidy(() => model.reportLoss(model.context(stage, batch.features, batch.reference, batch.phrases), batch.inputIds, batch.targets)));
      separate.push(await loss.item());
      loss.dispose();
    }
    const mean = separate.reduce((a, b) => a + b, 0) / separate.length;
    const tolerance = 1e-5 * Math.max(1, Math.abs(mean));
    assert.ok(Math.abs(joint - mean) <= tolerance, `joint ${members.join('+')}: ours=${joint} | mean of members [${separate.join(', ')}]=${mean} (tolerance ${tolerance})`);
    assert.ok(Math.max(...separate) - Math.min(...separate) > 1e-3, `member losses [${separate.join(', ')}] should differ, or the check cannot tell the contexts apart`);
  }
  for (const tensor of [batch.features, batch.inputIds, batch.targets, batch.reference.ids, batch.reference.lengths, batch.phrases.ids, batch.phrases.lengths]) tensor.dispose();
  model.dispose();
});

test('joint stage trains the union of member parameters (webgpu)', async () => {
  setDevice(await webgpu());
  const { model, samples, ids } = await jointSetup(8);
  const named = model.namedParameters();
  const before = await Promise.all(named.map(([, p]) => p.data().then((d) => Array.from(d))));
  const union = new Set([...stageParameters(model, 1), ...stageParameters(model, 2), ...stageParameters(model, 3)]);

  const [entry] = parseStages('1+2+3', MICRO.training.stages);
  const result = await trainStage(model, { ...entry, epochs: 3, peakLr: 1e-3 }, samples, samples, ids, silentProgress);
  assert.is(result.label, 'PAG stages 1+2+3 (joint)');
  assert.is(result.steps, 3);
  assert.is(result.trainLosses.length, 3);
  assert.ok(model.decoder.loraLayers().every((layer) => layer.loraEnabled), 'LoRA is enabled after a joint stage with members 2 and 3');

  const after = await Promise.all(named.map(([, p]) => p.data().then((d) => Array.from(d))));
  named.forEach(([name, p], i) => {
    const changed = after[i].some((value, j) => value !== before[i][j]);
    assert.is(changed, union.has(p), `${name}: changed=${changed}, expected ${union.has(p) ? 'trained' : 'frozen'}`);
  });

  // The stage's validation loss uses C1, and each member's loss uses that member's context.
  assert.equal(result.memberValLosses?.map((m) => m.stage), [1, 2, 3]);
  const c1 = await validationLoss(model, 1, samples, ids);
  assert.is(result.valLoss, c1);
  for (const { stage, valLoss } of result.memberValLosses ?? []) {
    const expected = await validationLoss(model, stage, samples, ids);
    assert.is(valLoss, expected, `stage ${stage} val loss: ours=${valLoss} | separate=${expected}`);
  }
  model.dispose();
});

test.run();
