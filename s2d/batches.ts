// Turns prepared samples into decoder inputs: <bos>-prefixed ids, next-token targets with
// padding ignored, and the text-encoder batches for reference reports and key phrases.
import { Random } from '../engine/random.ts';
import { fromHost, type Tensor } from '../engine/tensor.ts';
import { IGNORE_INDEX, tokenBatch, type TokenBatch } from './model.ts';

export interface SpecialIds {
  pad: number;
  bos: number;
  eos: number;
  /** The unknown-word id, when the vocabulary has one. */
  unk?: number;
  /**
   * Framing and padding ids of text-encoder inputs, when the text encoder has a tokenizer of
   * its own (a BERT checkpoint). Without them the inputs are the raw ids, padded with 0.
   */
  text?: TextEncoderIds;
}

/** Special ids of a text encoder's tokenizer. */
export interface TextEncoderIds {
  pad: number;
  /** Put first in every text ([CLS] for BERT). */
  cls?: number;
  /** Put last in every text ([SEP] for BERT). */
  sep?: number;
  /** Maximum ids per text, [CLS] and [SEP] included: the encoder's position limit. */
  maxLength: number;
}

export interface PreparedSample {
  id: string;
  /** Frozen ViT features of the study's first image, [1 + P, Dv] flattened. */
  features: Float32Array;
  /** Cleaned ground-truth report. */
  report: string;
  /** Report word ids, truncated, without <bos>/<eos>. */
  reportIds: number[];
  /**
   * The report in the text encoder's ids, when its tokenizer differs from the decoder's
   * (otherwise reportIds serve both).
   */
  textIds?: number[];
  /** Reference-report ids for the text encoder (another training study's report). */
  referenceIds: number[];
  /** Text-encoder ids of each key phrase extracted from the report. */
  phraseIds: number[][];
}

export interface DecoderBatch {
  features: Tensor; // f32 [B, 1 + P, Dv]
  inputIds: Tensor; // i32 [B, L]
  targets: Tensor; // i32 [B, L]
  reference: TokenBatch;
  phrases: TokenBatch;
}

/** Builds a batch; `rng` samples up to `phraseCount` key phrases per sample. */
export function decoderBatch(samples: PreparedSample[], featureShape: [number, number], ids: SpecialIds, rng: Random, phraseCount: number, maxPhraseTokens: number): DecoderBatch {
  const [tokens, width] = featureShape;
  const features = new Float32Array(samples.length * tokens * width);
  samples.forEach((sample, row) => features.set(sample.features, row * tokens * width));

  const length = Math.max(...samples.map((s) => s.reportIds.length)) + 1;
  const inputIds = new Int32Array(samples.length * length).fill(ids.pad);
  const targets = new Int32Array(samples.length * length).fill(IGNORE_INDEX);
  samples.forEach((sample, row) => {
    const input = [ids.bos, ...sample.reportIds];
    const target = [...sample.reportIds, ids.eos];
    inputIds.set(input, row * length);
    targets.set(target, row * length);
  });

  const phraseLists = samples.map((sample) => samplePhrases(sample.phraseIds, rng, phraseCount).slice(0, maxPhraseTokens));
  return {
    features: fromHost(features, [samples.length, tokens, width]),
    inputIds: fromHost(inputIds, [samples.length, length]),
    targets: fromHost(targets, [samples.length, length]),
    reference: textBatch(samples.map((s) => s.referenceIds), ids.text),
    phrases: textBatch(phraseLists, ids.text),
  };
}

/** Frames each list as [CLS] … [SEP] within the encoder's position limit, then pads. */
function textBatch(lists: number[][], text: TextEncoderIds | undefined): TokenBatch {
  if (!text) return tokenBatch(lists);
  const { cls, sep, pad, maxLength } = text;
  const specials = Number(cls !== undefined) + Number(sep !== undefined);
  const framed = lists.map((list) => {
    const out = list.slice(0, maxLength - specials);
    if (cls !== undefined) out.unshift(cls);
    if (sep !== undefined) out.push(sep);
    return out;
  });
  return tokenBatch(framed, pad);
}

/** Joins up to `count` phrases drawn without replacement, in report order. */
function samplePhrases(phrases: number[][], rng: Random, count: number): number[] {
  if (phrases.length <= count) return phrases.flat();
  const chosen = rng.shuffle(phrases.map((_, i) => i)).slice(0, count).sort((a, b) => a - b);
  return chosen.flatMap((i) => phrases[i]);
}

/** Splits `items` into batches of `size`, shuffled by `rng` when given. */
export function batchesOf<T>(items: T[], size: number, rng?: Random): T[][] {
  const order = rng ? rng.shuffle([...items]) : items;
  const out: T[][] = [];
  for (let i = 0; i < order.length; i += size) out.push(order.slice(i, i + size));
  return out;
}
