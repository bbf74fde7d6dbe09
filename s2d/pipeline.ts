// The main job: prepare the data, pretrain the tiny decoder and text encoder (the `paper`
// preset's checkpoints are pretrained), run the PAG curriculum, generate test reports from C1
// alone, score them, and return what to save.
import type { Device } from '../engine/device.ts';
import { fromHost, noGrad } from '../engine/tensor.ts';
import { loadAnnotation, type AnnotationEntry } from './data/annotation.ts';
import type { FileSource } from './data/files.ts';
import { joinPath } from './data/files.ts';
import { extractKeyPhrases } from './data/keyphrases.ts';
import { cleanReport } from './data/report.ts';
import { loadImage } from './data/image.ts';
import { Vocabulary } from './data/vocab.ts';
import type { PreparedSample, SpecialIds } from './batches.ts';
import { pipelineIds, wordLevelTokenizer, type ReportTokenizer } from './tokenizers.ts';
import type { S2DConfig } from './config.ts';
import { extractImageFeatures, generateGreedy } from './generate.ts';
import { scoreReports, type ReportScores } from './metrics.ts';
import { S2DAlign } from './model.ts';
import type { Progress } from './progress.ts';
import { pretrainDecoder, pretrainTextEncoder, trainStage, type StageResult } from './train.ts';

export interface MainJobOptions {
  dataDir: string;
  files: FileSource;
  /** The model configuration; with `pretrained`, the model's own config is used instead. */
  config: S2DConfig;
  device: Device;
  progress: Progress;
  /** Multiplies every epoch count (quick runs and tests use < 1); at least one epoch runs. */
  epochScale?: number;
  /** Number of generated reports shown beside their references. */
  examples?: number;
  /**
   * A model built around pretrained checkpoints (S2DAlign.fromParts) with the tokenizers of
   * its decoder and text encoder. Without it, the job builds a word-level vocabulary from the
   * training reports and a randomly initialised model from `config`.
   */
  pretrained?: PretrainedSetup;
}

export interface PretrainedSetup {
  model: S2DAlign;
  decoderTokenizer: ReportTokenizer;
  textTokenizer: ReportTokenizer;
  /** Images per ViT batch in feature extraction; default the training batch size. */
  imageBatchSize?: number;
}

export interface Example {
  id: string;
  generated: string;
  reference: string;
}

export interface MainJobResult {
  model: S2DAlign;
  /** The decoder's tokenizer. */
  tokenizer: ReportTokenizer;
  /** The word-level vocabulary built from the training reports; absent with a pretrained setup. */
  vocab?: Vocabulary;
  stages: StageResult[];
  scores: ReportScores;
  examples: Example[];
  loraEnabled: boolean;
  counts: { train: number; val: number; test: number };
}

export function specialIds(vocab: Vocabulary): SpecialIds {
  return { pad: vocab.padId, bos: vocab.bosId, eos: vocab.eosId, unk: vocab.unkId };
}

/**
 * Returns, for each query, the report of the nearest other study in `pool` by cosine
 * similarity of mean-pooled features, in the text encoder's ids.
 */
export function nearestReferences(queries: PreparedSample[], pool: PreparedSample[], width: number): number[][] {
  const pooled = (features: Float32Array) => {
    const tokens = features.length / width;
    const mean = new Float64Array(width);
    for (let t = 0; t < tokens; t++) for (let d = 0; d < width; d++) mean[d] += features[t * width + d];
    const norm = Math.hypot(...mean) || 1;
    return mean.map((v) => v / norm);
  };
  const poolVectors = pool.map((s) => pooled(s.features));
  return queries.map((query) => {
    const q = pooled(query.features);
    let best = -1;
    let bestScore = -Infinity;
    pool.forEach((candidate, i) => {
      if (candidate.id === query.id) return;
      let score = 0;
      for (let d = 0; d < width; d++) score += q[d] * poolVectors[i][d];
      if (score > bestScore) {
        bestScore = score;
        best = i;
      }
    });
    return best >= 0 ? pool[best].textIds ?? pool[best].reportIds : [];
  });
}

interface SplitTokenizers {
  decoder: ReportTokenizer;
  text: ReportTokenizer;
}

async function prepareSplit(entries: AnnotationEntry[], options: MainJobOptions, model: S2DAlign, tokenizers: SplitTokenizers, label: string): Promise<PreparedSample[]> {
  const { files, dataDir, progress } = options;
  const { config } = model;
  const imageOptions = { size: config.vision.imageSize, mean: config.data.imageMean, std: config.data.imageStd };
  const images: Float32Array[] = [];
  progress.start(`load ${label} images`, entries.length);
  for (const entry of entries) {
    // One image per study: the first listed (frontal views come first in the sample).
    images.push(await loadImage(files, joinPath(joinPath(dataDir, 'images'), entry.image_path[0]), imageOptions));
    progress.tick();
  }
  progress.stop();
  const features = await extractImageFeatures(model, images, options.pretrained?.imageBatchSize ?? config.training.batchSize, progress);
  const { decoder, text } = tokenizers;
  return entries.map((entry, i) => {
    const report = cleanReport(entry.report);
    const reportIds = decoder.encode(report, { maxLength: config.data.maxReportTokens });
    return {
      id: entry.id,
      features: features[i],
      report,
      reportIds,
      textIds: text === decoder ? undefined : text.encode(report, { maxLength: config.data.maxReferenceTokens }),
      referenceIds: [],
      phraseIds: extractKeyPhrases(report).map((phrase) => text.encode(cleanReport(phrase), { maxLength: config.data.maxPhraseTokens })),
    };
  });
}

export async function runMainJob(options: MainJobOptions): Promise<MainJobResult> {
  const { progress, files, dataDir } = options;
  const scale = options.epochScale ?? 1;
  const epochs = (n: number) => Math.max(1, Math.round(n * scale));

  const annotation = await loadAnnotation(files, joinPath(dataDir, 'annotation.json'));
  let vocab: Vocabulary | undefined;
  let model: S2DAlign;
  let tokenizers: SplitTokenizers;
  if (options.pretrained) {
    ({ model } = options.pretrained);
    const { pretrainDecoderEpochs, pretrainTextEpochs } = model.config.training;
    if (pretrainDecoderEpochs > 0 || pretrainTextEpochs > 0) {
      throw new Error(`pretraining epochs must be 0 with pretrained checkpoints, got pretrainDecoderEpochs ${pretrainDecoderEpochs} and pretrainTextEpochs ${pretrainTextEpochs}; the paper preset sets both to 0`);
    }
    tokenizers = { decoder: options.pretrained.decoderTokenizer, text: options.pretrained.textTokenizer };
    progress.log(`data: ${annotation.train.length} train / ${annotation.val.length} val / ${annotation.test.length} test studies; decoder tokenizer ${tokenizers.decoder.name} (${tokenizers.decoder.vocabSize} ids), text tokenizer ${tokenizers.text.name} (${tokenizers.text.vocabSize} ids)`);
  } else {
    const trainReports = annotation.train.map((e) => cleanReport(e.report));
    const { minWordCount } = options.config.data;
    vocab = Vocabulary.build(trainReports, minWordCount);
    const words = wordLevelTokenizer(vocab);
    tokenizers = { decoder: words, text: words };
    model = new S2DAlign(options.config, vocab.size);
    progress.log(`data: ${annotation.train.length} train / ${annotation.val.length} val / ${annotation.test.length} test studies; vocabulary ${vocab.size} words (seen ≥ ${minWordCount} times)`);
  }
  const { config } = model;
  progress.log(`device: ${options.device.description}`);

  model.eval();
  const train = await prepareSplit(annotation.train, options, model, tokenizers, 'train');
  const val = await prepareSplit(annotation.val, options, model, tokenizers, 'val');
  const test = await prepareSplit(annotation.test, options, model, tokenizers, 'test');

  // No study in this sample has a prior study of the same patient, so each study's reference
  // report is the nearest other training study by frozen image features.
  const width = config.vision.hiddenSize;
  for (const split of [train, val, test]) {
    nearestReferences(split, train, width).forEach((ids, i) => {
      split[i].referenceIds = ids.slice(0, config.data.maxReferenceTokens);
    });
  }

  const ids = pipelineIds(tokenizers.decoder, tokenizers.text, config.text.maxPositions);
  const { training } = config;
  if (training.pretrainDecoderEpochs > 0) {
    await pretrainDecoder(model, train, ids, epochs(training.pretrainDecoderEpochs), training.pretrainLr, progress);
  }
  if (training.pretrainTextEpochs > 0) {
    await pretrainTextEncoder(model, train.map((s) => s.reportIds), epochs(training.pretrainTextEpochs), training.pretrainLr, progress);
  }

  const stages: StageResult[] = [];
  for (const stage of training.stages) {
    const result = await trainStage(model, { ...stage, epochs: epochs(stage.epochs) }, train, val, ids, progress);
    stages.push(result);
    const summary = `${result.label}: ${result.steps} steps in ${result.seconds.toFixed(1)} s, train loss ${result.finalTrainLoss.toFixed(4)}, val loss ${result.valLoss.toFixed(4)}`;
    if (result.memberValLosses) {
      const members = result.memberValLosses.map(({ stage: member, valLoss }) => `stage ${member} ${valLoss.toFixed(4)} (C${member})`).join(', ');
      progress.log(`${summary} (C1), member val losses: ${members}`);
    } else {
      progress.log(summary);
    }
  }
  const loraEnabled = training.stages.some((s) => s.stage >= 2);

  // Inference discards the auxiliary context: reports come from C1 alone.
  const generated: string[] = [];
  const batchSize = Math.max(1, training.batchSize * 2);
  progress.start('generate test reports (greedy)', Math.ceil(test.length / batchSize));
  for (let start = 0; start < test.length; start += batchSize) {
    const group = test.slice(start, start + batchSize);
    const tokens = group[0].features.length;
    const features = new Float32Array(group.length * tokens);
    group.forEach((s, i) => features.set(s.features, i * tokens));
    const featureTensor = noGrad(() => fromHost(features, [group.length, tokens / width, width]));
    const out = await generateGreedy(model, featureTensor, { maxTokens: config.data.maxReportTokens, ids });
    featureTensor.dispose();
    generated.push(...out.map((list) => tokenizers.decoder.decode(list)));
    progress.tick();
  }
  progress.stop();

  const references = test.map((s) => s.report);
  const scores = scoreReports(references, generated);
  const examples = test.slice(0, options.examples ?? 3).map((s, i) => ({ id: s.id, generated: generated[i], reference: s.report }));
  return { model, tokenizer: tokenizers.decoder, vocab, stages, scores, examples, loraEnabled, counts: { train: train.length, val: val.length, test: test.length } };
}
