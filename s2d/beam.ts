// Beam search over the decoder, from the image context C1 alone (one image at a time).
//
// Scores: a hypothesis's log-probability is the sum of log p(token | prefix) over its tokens,
// including <eos> when it ended; each step's distribution is a softmax over the allowed tokens
// (<pad>, <bos> and <unk> are never generated, as in greedy decoding). Finished hypotheses
// are ranked by logProb / length^lengthPenalty, where length counts the tokens including <eos>.
//
// Each step expands every live beam by its best tokens and ranks the 2K best candidates (K =
// beam size) by log-probability. An <eos> candidate ranked among the first K ends a hypothesis,
// and the best K ended ones are kept. The best K other candidates become the next beams.
// The search stops when K hypotheses have ended and no live beam, scored as if it ended at its
// current length, would rank above them. That is the rule of Hugging Face transformers' default
// `early_stopping=False`. Otherwise it stops after maxTokens steps and ranks the live beams with
// the ended ones. With K = 1 this is greedy decoding.
import { reshape } from '../engine/ops/index.ts';
import { concat, slice } from '../engine/ops/shape.ts';
import { fromHost, noGrad, tidy, type Tensor } from '../engine/tensor.ts';
import type { SpecialIds } from './batches.ts';
import { bannedTokens } from './generate.ts';
import type { S2DAlign } from './model.ts';

export interface BeamOptions {
  /** Number of beams K (1 gives greedy decoding). */
  beamSize: number;
  /** Maximum number of generated tokens, <eos> not counted. */
  maxTokens: number;
  ids: SpecialIds;
  /** Exponent of the length in the ranking score; 0 ranks by the raw log-probability. Default 1. */
  lengthPenalty?: number;
  /** Called after each step with the tokens of the most probable live beam (for streaming). */
  onStep?: (tokens: number[]) => void;
}

export interface BeamResult {
  /** Generated token ids, without <bos>, <eos> or padding. */
  tokens: number[];
  /** Sum of the natural-log probabilities of the tokens, including <eos> when `finished`. */
  logProb: number;
  /** logProb / length^lengthPenalty, the value hypotheses were ranked by. */
  score: number;
  /** Whether the hypothesis ended with <eos> (false when maxTokens cut it). */
  finished: boolean;
}

/**
 * Returns logits [K, V] (row-major) for the next token after each prefix. A prefix contains the
 * generated tokens without <bos>; all prefixes of one call have the same length. Prefix i
 * extends prefix parents[i] of the previous call by its last token (on the first call, every
 * prefix is empty and parents are 0), so a scorer with a key/value cache can reorder it.
 */
export type NextTokenScorer = (prefixes: number[][], parents: number[]) => Promise<ArrayLike<number>>;

interface Beam {
  tokens: number[];
  logProb: number;
  /** Row of this beam's prefix in the previous scorer call. */
  parent: number;
}

interface Candidate {
  beam: Beam;
  /** Row of `beam` in this step's scorer call. */
  row: number;
  token: number;
  logProb: number;
}

/** Natural-log softmax of values[offset .. offset+count) over the tokens not in `banned`. */
function logSoftmax(values: ArrayLike<number>, offset: number, count: number, banned: Set<number>): Float64Array {
  let max = -Infinity;
  for (let v = 0; v < count; v++) if (!banned.has(v) && values[offset + v] > max) max = values[offset + v];
  let total = 0;
  for (let v = 0; v < count; v++) if (!banned.has(v)) total += Math.exp(values[offset + v] - max);
  const logTotal = max + Math.log(total);
  const out = new Float64Array(count);
  for (let v = 0; v < count; v++) out[v] = banned.has(v) ? -Infinity : values[offset + v] - logTotal;
  return out;
}

/** Returns the indices of the `count` largest entries above -Infinity, highest first, ties by lower index. */
function topIndices(values: Float64Array, count: number): number[] {
  const order: number[] = [];
  for (let v = 0; v < values.length; v++) {
    if (values[v] === -Infinity) continue;
    let at = order.length;
    while (at > 0 && values[order[at - 1]] < values[v]) at--;
    if (at < count) {
      order.splice(at, 0, v);
      if (order.length > count) order.pop();
    }
  }
  return order;
}

/** Runs beam search with any next-token scorer; `generateBeam` plugs in the S2D-Align decoder. */
export async function beamSearch(scoreNext: NextTokenScorer, options: BeamOptions): Promise<BeamResult> {
  const { beamSize, maxTokens, ids, lengthPenalty = 1 } = options;
  if (!(Number.isInteger(beamSize) && beamSize >= 1)) throw new Error(`beam search: beamSize must be an integer ≥ 1, got ${beamSize}`);
  if (!(Number.isInteger(maxTokens) && maxTokens >= 1)) throw new Error(`beam search: maxTokens must be an integer ≥ 1, got ${maxTokens}`);
  if (!(lengthPenalty >= 0)) throw new Error(`beam search: lengthPenalty must be ≥ 0, got ${lengthPenalty}`);

  const banned = bannedTokens(ids);
  const rank = (logProb: number, length: number) => logProb / Math.max(1, length) ** lengthPenalty;
  let finished: BeamResult[] = [];
  let beams: Beam[] = [{ tokens: [], logProb: 0, parent: 0 }];

  for (let step = 0; step < maxTokens && beams.length > 0; step++) {
    const logits = await scoreNext(
      beams.map((beam) => beam.tokens),
      beams.map((beam) => beam.parent),
    );
    const vocab = logits.length / beams.length;

    // Each beam's best 2K tokens are enough to fill the 2K best candidates overall.
    const candidates: Candidate[] = [];
    beams.forEach((beam, row) => {
      const logProbs = logSoftmax(logits, row * vocab, vocab, banned);
      for (const token of topIndices(logProbs, 2 * beamSize)) {
        candidates.push({ beam, row, token, logProb: beam.logProb + logProbs[token] });
      }
    });
    // Array.prototype.sort is stable, so equal scores keep beam order, then token order.
    candidates.sort((a, b) => b.logProb - a.logProb);

    const next: Beam[] = [];
    for (const [position, candidate] of candidates.slice(0, 2 * beamSize).entries()) {
      if (candidate.token === ids.eos) {
        // An <eos> outside the first K would end a hypothesis that no beam would have kept.
        if (position < beamSize) {
          const length = candidate.beam.tokens.length + 1;
          finished.push({ tokens: candidate.beam.tokens, logProb: candidate.logProb, score: rank(candidate.logProb, length), finished: true });
        }
      } else if (next.length < beamSize) {
        next.push({ tokens: [...candidate.beam.tokens, candidate.token], logProb: candidate.logProb, parent: candidate.row });
      }
    }
    finished = finished.sort((a, b) => b.score - a.score).slice(0, beamSize);
    beams = next;
    if (beams.length > 0) options.onStep?.(beams[0].tokens);

    // Done when K hypotheses have ended and the best live beam, scored as if it ended now,
    // ranks no higher than the worst of them.
    if (finished.length === beamSize && beams.length > 0 && finished[beamSize - 1].score >= rank(beams[0].logProb, beams[0].tokens.length)) break;
  }

  const live = beams.map(({ tokens, logProb }) => ({ tokens, logProb, score: rank(logProb, tokens.length), finished: false }));
  const ranked = [...finished, ...live].sort((a, b) => b.score - a.score);
  if (ranked.length === 0) throw new Error('beam search: no hypothesis survived; every token is banned');
  return ranked[0];
}

/**
 * Beam search for one image given its features [1, 1 + P, Dv]. The decoder keeps a key/value
 * cache: the first step reads [C1 ; <bos>] for one row, and each later step reorders the cache
 * to the parents of the live beams and reads only their newest tokens as one batch [K, 1].
 */
export async function generateBeam(model: S2DAlign, features: Tensor, options: BeamOptions): Promise<BeamResult> {
  const [batch] = features.shape;
  if (batch !== 1) throw new Error(`generateBeam: expected features for one image [1, 1 + P, Dv], got batch ${batch}; call it once per image`);
  const { bos } = options.ids;
  const cache = model.decoder.createCache();
  const scoreNext: NextTokenScorer = async (prefixes, parents) => {
    const logits = noGrad(() =>
      tidy(() => {
        let inputs: Tensor;
        if (cache.length === 0) {
          const context = model.visualContext(features);
          inputs = concat([context, model.decoder.embed(fromHost(Int32Array.of(bos), [1, 1]))], 1);
        } else {
          cache.selectRows(parents);
          const newest = Int32Array.from(prefixes, (prefix) => prefix[prefix.length - 1]);
          inputs = model.decoder.embed(fromHost(newest, [prefixes.length, 1]));
        }
        const hidden = model.decoder.forwardHidden(inputs, cache);
        const length = hidden.shape[1];
        return reshape(model.decoder.logits(slice(hidden, 1, length - 1, length)), [prefixes.length, model.vocabSize]);
      }),
    );
    try {
      return await logits.data();
    } finally {
      logits.dispose();
    }
  };
  try {
    return await beamSearch(scoreNext, options);
  } finally {
    cache.dispose();
  }
}
