// Model and training configuration, with the `tiny` preset that trains on two CPU cores and
// the `paper` preset (s2d/hf/paper.ts) built from Hugging Face checkpoints.
import type { WeightDtype } from './hf/checkpoint.ts';
import type { BertConfig } from './models/bert.ts';
import type { LlamaConfig } from './models/llama.ts';
import type { VitConfig } from './models/vit.ts';
import { PAPER_PRESET } from './hf/paper.ts';

/** A PAG stage: 1 feeds the decoder the image context, 2 adds the reference report, 3 adds key phrases. */
export type StageNumber = 1 | 2 | 3;

export interface StageConfig {
  /**
   * The stage this entry trains. In a joint entry, its highest member, which sets the trained
   * parameters and the longest context.
   */
  stage: StageNumber;
  /**
   * Members of a joint stage in ascending order (e.g. [1, 2, 3] for `1+2+3`). Each step's loss is
   * then the mean of the members' report losses on one batch. Absent for a single stage.
   */
  joint?: StageNumber[];
  epochs: number;
  peakLr: number;
}

export interface S2DConfig {
  preset: string;
  /**
   * Storage of the frozen checkpoint weights in paper mode: with 'f16', the linear weights and
   * word embeddings of the three checkpoints and LLaMA's lm_head. Absent means f32. The tiny
   * preset builds its models at random and does not read it.
   */
  weightDtype?: WeightDtype;
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
    /**
     * Stage order: any subset or order of 1, 2, 3, with some stages possibly joined into joint
     * stages (the full curriculum is 1 → 2 → 3). parseStages accepts each stage at most once.
     */
    stages: StageConfig[];
    pretrainDecoderEpochs: number;
    pretrainTextEpochs: number;
    pretrainLr: number;
    seed: number;
    /**
     * Steps whose losses are read back from the device together (default 8). Larger values
     * keep the device busier; a non-finite loss is then noticed up to this many steps late.
     */
    lossReadInterval?: number;
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

/**
 * Returns `config` with checkpointBlocks set on its vision, text and decoder sections, so the
 * models recompute each block's activations in backward instead of keeping them. It takes
 * effect in the decoder and in the tiny preset's text-encoder pretraining. A frozen model whose
 * inputs need no gradient records no graph, so the ViT (its features are extracted before
 * training) and the text encoder during PAG stages run as before.
 */
export function withCheckpointBlocks(config: S2DConfig): S2DConfig {
  return {
    ...config,
    vision: { ...config.vision, checkpointBlocks: true },
    text: { ...config.text, checkpointBlocks: true },
    decoder: { ...config.decoder, checkpointBlocks: true },
  };
}

/** Returns a copy of a model config without vocabSize, which S2DConfig leaves to the tokenizer or checkpoint. */
export function withoutVocabSize<T extends { vocabSize: number }>(config: T): Omit<T, 'vocabSize'> {
  const { vocabSize, ...rest } = config;
  return rest;
}

export const PRESETS: Record<string, S2DConfig> = { tiny: TINY, paper: PAPER_PRESET };

/** Returns the stages an entry trains: the members of a joint stage, or the single stage. */
export function stageMembers(entry: StageConfig): StageNumber[] {
  return entry.joint ?? [entry.stage];
}

/** Returns the progress label of an entry, e.g. "PAG stage 2" or "PAG stages 1+2+3 (joint)". */
export function stageLabel(entry: StageConfig): string {
  return entry.joint ? `PAG stages ${entry.joint.join('+')} (joint)` : `PAG stage ${entry.stage}`;
}

/**
 * Parses a stage schedule into stage configs. Commas separate stages that run one after
 * another: "1,2,3" is the full curriculum, and "1,3" or "1,3,2" also work. A `+` joins stages
 * into one joint stage ("1+2+3", "1,2+3"). Each stage takes its epochs and peak learning rate
 * from `defaults`. A joint stage trains for the sum of its members' epochs, the same number of
 * passes as running them in sequence. Its peak learning rate is the smallest of its members',
 * the rate of the stage with the most trainable parameters in the presets.
 */
export function parseStages(text: string, defaults: StageConfig[]): StageConfig[] {
  const usage = 'use stages 1, 2 and 3, separated by "," (in sequence) or "+" (joint), e.g. 1,2,3 or 1+2+3';
  const seen = new Set<StageNumber>();
  return text.split(',').map((part) => {
    const members = part.split('+').map((item) => {
      const name = item.trim();
      if (name === '') throw new Error(`--stages ${text}: a stage number is missing (an empty schedule, or a "," or "+" doubled or at an end); ${usage}`);
      const found = defaults.find((d) => !d.joint && String(d.stage) === name);
      if (!found) throw new Error(`--stages ${text}: "${name}" is not a stage; ${usage}`);
      if (seen.has(found.stage)) throw new Error(`--stages ${text}: stage ${found.stage} is used twice; list each stage once`);
      seen.add(found.stage);
      return found;
    });
    if (members.length === 1) return { ...members[0] };

    const stages = members.map((m) => m.stage).sort((a, b) => a - b);
    return {
      stage: stages[stages.length - 1],
      joint: stages,
      epochs: members.reduce((total, m) => total + m.epochs, 0),
      peakLr: Math.min(...members.map((m) => m.peakLr)),
    };
  });
}
