// Model and training configuration, with the `tiny` preset that trains on two CPU cores and
// the `paper` preset (s2d/hf/paper.ts) built from Hugging Face checkpoints.
import type { BertConfig } from './models/bert.ts';
import type { LlamaConfig } from './models/llama.ts';
import type { VitConfig } from './models/vit.ts';
import { PAPER_PRESET } from './hf/paper.ts';

export interface StageConfig {
  /** 1: image context; 2: adds the reference report; 3: adds key phrases. */
  stage: 1 | 2 | 3;
  epochs: number;
  peakLr: number;
}

export interface S2DConfig {
  preset: string;
  vision: VitConfig;
  text: Omit<BertConfig, 'vocabSize'>;
  decoder: Omit<LlamaConfig, 'vocabSize'>;
  memory: { queries: number; heads: number; mlpWidth: number };
  lora: { rank: number; alpha: number; dropout: number };
  data: {
    maxReportTokens: number;
    maxReferenceTokens: number;
    maxPhraseTokens: number;
    keyPhrases: number;
    minWordCount: number;
    /** Per-channel (RGB) mean and standard deviation of the image input; default 0.5 and 0.25 on every channel. */
    imageMean?: number[];
    imageStd?: number[];
  };
  training: {
    batchSize: number;
    warmupSteps: number;
    betas: [number, number];
    weightDecay: number;
    /** Stage order; any subset or order of 1, 2, 3 (the full curriculum is 1 → 2 → 3). */
    stages: StageConfig[];
    pretrainDecoderEpochs: number;
    pretrainTextEpochs: number;
    pretrainLr: number;
    seed: number;
  };
}

export const TINY: S2DConfig = {
  preset: 'tiny',
  vision: { imageSize: 112, patchSize: 16, channels: 3, hiddenSize: 128, layers: 4, heads: 4, mlpRatio: 4, layerNormEps: 1e-6, layerScaleInit: 1 },
  text: { hiddenSize: 128, layers: 2, heads: 4, intermediateSize: 256, maxPositions: 128, layerNormEps: 1e-12 },
  decoder: { hiddenSize: 256, intermediateSize: 512, layers: 4, heads: 4, ropeTheta: 10000, rmsNormEps: 1e-6, maxPositions: 160 },
  memory: { queries: 16, heads: 4, mlpWidth: 256 },
  lora: { rank: 16, alpha: 16, dropout: 0.1 },
  data: { maxReportTokens: 60, maxReferenceTokens: 60, maxPhraseTokens: 40, keyPhrases: 3, minWordCount: 3 },
  training: {
    batchSize: 8,
    warmupSteps: 10,
    betas: [0.9, 0.98],
    weightDecay: 0.05,
    stages: [
      { stage: 1, epochs: 8, peakLr: 3e-4 },
      { stage: 2, epochs: 5, peakLr: 1e-4 },
      { stage: 3, epochs: 3, peakLr: 5e-5 },
    ],
    pretrainDecoderEpochs: 30,
    pretrainTextEpochs: 10,
    pretrainLr: 1e-3,
    seed: 1234,
  },
};

/** Returns a copy of a model config without vocabSize, which S2DConfig leaves to the tokenizer or checkpoint. */
export function withoutVocabSize<T extends { vocabSize: number }>(config: T): Omit<T, 'vocabSize'> {
  const { vocabSize, ...rest } = config;
  return rest;
}

export const PRESETS: Record<string, S2DConfig> = { tiny: TINY, paper: PAPER_PRESET };

/**
 * Parses a stage schedule such as "1,2,3" (the full curriculum), "1,3" or "1,3,2" into stage
 * configs, taking each stage's epochs and peak learning rate from `defaults`.
 */
export function parseStages(text: string, defaults: StageConfig[]): StageConfig[] {
  const parts = text.split(',').map((part) => part.trim());
  return parts.map((part) => {
    const stage = Number(part);
    const found = defaults.find((d) => d.stage === stage);
    if (!found) throw new Error(`--stages ${text}: "${part}" is not a stage; use a comma-separated list of 1, 2 and 3, e.g. 1,2,3`);
    return { ...found };
  });
}
