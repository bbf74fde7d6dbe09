// Report generation from the image context C1 alone, and frozen image-feature extraction.
import { reshape } from '../engine/ops/index.ts';
import { concat, slice } from '../engine/ops/shape.ts';
import { fromHost, noGrad, tidy, type Tensor } from '../engine/tensor.ts';
import type { SpecialIds } from './batches.ts';
import type { S2DAlign } from './model.ts';
import { patchify } from './models/vit.ts';
import type { Progress } from './progress.ts';

/**
 * Runs the frozen ViT over preprocessed images ([3, S, S] each) and returns the features
 * [1 + P, Dv] of each image as host arrays.
 */
export async function extractImageFeatures(model: S2DAlign, images: Float32Array[], batchSize: number, progress?: Progress): Promise<Float32Array[]> {
  const { channels, imageSize, patchSize } = model.config.vision;
  const patchCount = model.vision.patchCount;
  const patchLength = channels * patchSize * patchSize;
  const tokens = patchCount + 1;
  const width = model.config.vision.hiddenSize;
  const out: Float32Array[] = [];
  progress?.start('image features (frozen ViT)', Math.ceil(images.length / batchSize));
  for (let start = 0; start < images.length; start += batchSize) {
    const group = images.slice(start, start + batchSize);
    const patches = new Float32Array(group.length * patchCount * patchLength);
    group.forEach((image, row) => patches.set(patchify(image, channels, imageSize, patchSize), row * patchCount * patchLength));
    const features = noGrad(() => tidy(() => model.vision.forward(fromHost(patches, [group.length, patchCount, patchLength]))));
    const values = (await features.data()) as Float32Array;
    features.dispose();
    for (let row = 0; row < group.length; row++) out.push(values.slice(row * tokens * width, (row + 1) * tokens * width));
    progress?.tick();
  }
  progress?.stop();
  return out;
}

/**
 * Tokens never generated: <pad> and <bos>, and <unk> when the vocabulary has one, because a
 * word-level vocabulary maps every rare word to <unk>, which then dominates greedy decoding
 * while carrying no text.
 */
export function bannedTokens(ids: SpecialIds): Set<number> {
  const banned = new Set([ids.pad, ids.bos]);
  if (ids.unk !== undefined) banned.add(ids.unk);
  return banned;
}

/** Index of the largest of values[offset .. offset+count) outside `banned`. */
export function argmaxAllowed(values: ArrayLike<number>, offset: number, count: number, banned: Set<number>): number {
  let best = -1;
  for (let v = 0; v < count; v++) {
    if (banned.has(v)) continue;
    if (best < 0 || values[offset + v] > values[offset + best]) best = v;
  }
  return best;
}

export interface GenerateOptions {
  maxTokens: number;
  ids: SpecialIds;
  /** Called after each decoding step with the tokens so far (for streaming); may return a promise. */
  onStep?: (tokens: number[][]) => void | Promise<void>;
}

/**
 * Greedy decoding for a batch of images given their features [B, 1 + P, Dv], from the image
 * context C1 alone. The decoder keeps a key/value cache, so each step runs one position.
 */
export async function generateGreedy(model: S2DAlign, features: Tensor, options: GenerateOptions): Promise<number[][]> {
  const { maxTokens, ids } = options;
  const batch = features.shape[0];
  const tokens: number[][] = Array.from({ length: batch }, () => []);
  const finished = new Array<boolean>(batch).fill(false);
  const banned = bannedTokens(ids);
  const cache = model.decoder.createCache();
  try {
    // The first step reads [C1 ; <bos>]; later steps read only the newest token.
    let logits = noGrad(() =>
      tidy(() => {
        const context = model.visualContext(features);
        const bos = model.decoder.embed(fromHost(new Int32Array(batch).fill(ids.bos), [batch, 1]));
        return lastPositionLogits(model, model.decoder.forwardHidden(concat([context, bos], 1), cache));
      }),
    );
    for (let step = 0; step < maxTokens && finished.some((f) => !f); step++) {
      const values = await logits.data();
      logits.dispose();
      const vocab = values.length / batch;
      const next = new Int32Array(batch);
      for (let row = 0; row < batch; row++) {
        const best = finished[row] ? ids.pad : argmaxAllowed(values, row * vocab, vocab, banned);
        if (best === ids.eos) finished[row] = true;
        next[row] = best;
        if (!finished[row]) tokens[row].push(best);
      }
      await options.onStep?.(tokens);
      if (step + 1 >= maxTokens || finished.every((f) => f)) break;
      logits = noGrad(() => tidy(() => lastPositionLogits(model, model.decoder.forwardHidden(model.decoder.embed(fromHost(next, [batch, 1])), cache))));
    }
    if (!logits.disposed) logits.dispose();
  } finally {
    cache.dispose();
  }
  return tokens;
}

/** hidden [B, T, Dl] → logits of the last position [B, V]. */
function lastPositionLogits(model: S2DAlign, hidden: Tensor): Tensor {
  const [batch, length] = hidden.shape;
  const last = slice(hidden, 1, length - 1, length);
  return reshape(model.decoder.logits(last), [batch, model.vocabSize]);
}
