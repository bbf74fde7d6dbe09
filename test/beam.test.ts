// Beam search: the search rules on a hand-made next-token distribution where greedy decoding
// is not optimal, then the S2D-Align decoder, where beam size 1 must give exactly the greedy
// tokens and the cached decoder must match rerunning every prefix.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { setDevice } from '../engine/devices.ts';
import { broadcastTo } from '../engine/ops/index.ts';
import { fromHost, noGrad, tidy } from '../engine/tensor.ts';
import type { SpecialIds } from '../s2d/batches.ts';
import { beamSearch, generateBeam, type NextTokenScorer } from '../s2d/beam.ts';
import { TINY, type S2DConfig } from '../s2d/config.ts';
import { generateGreedy } from '../s2d/generate.ts';
import { S2DAlign } from '../s2d/model.ts';
import { cpu, randomArray, webgpu } from './helpers.ts';

const IDS: SpecialIds = { pad: 0, bos: 1, eos: 2, unk: 3 };
const [EOS, X, Y, Z] = [2, 4, 5, 6];
const TOY_VOCAB = 7;

/**
 * Next-token probabilities by prefix. Greedy ends at once (<eos> 0.5), but "X Y <eos>" has a
 * higher mean log-probability. <unk> gets the largest logit everywhere and must never be chosen.
 */
const TOY: Record<string, Record<number, number>> = {
  '': { [EOS]: 0.5, [X]: 0.45, [Y]: 0.03, [Z]: 0.02 },
  [`${X}`]: { [Y]: 0.95, [EOS]: 0.001, [X]: 0.029, [Z]: 0.02 },
  [`${X},${Y}`]: { [EOS]: 0.99, [X]: 0.004, [Y]: 0.003, [Z]: 0.003 },
};
const UNIFORM = { [EOS]: 0.25, [X]: 0.25, [Y]: 0.25, [Z]: 0.25 };

const toyScorer: NextTokenScorer = async (prefixes) => {
  const logits = new Float32Array(prefixes.length * TOY_VOCAB).fill(-30);
  prefixes.forEach((prefix, row) => {
    const probabilities = TOY[prefix.join(',')] ?? UNIFORM;
    for (const [token, p] of Object.entries(probabilities)) logits[row * TOY_VOCAB + Number(token)] = Math.log(p);
    logits[row * TOY_VOCAB + IDS.unk!] = 10;
  });
  return logits;
};

test('beam search finds the longer hypothesis with length normalisation', async () => {
  const result = await beamSearch(toyScorer, { beamSize: 2, maxTokens: 10, ids: IDS, lengthPenalty: 1 });
  const expectedLogProb = Math.log(0.45) + Math.log(0.95) + Math.log(0.99);
  assert.equal(result.tokens, [X, Y]);
  assert.ok(result.finished, 'the hypothesis should end with <eos>');
  assert.ok(Math.abs(result.logProb - expectedLogProb) < 1e-5, `logProb ours=${result.logProb} | expected=${expectedLogProb} (tolerance 1e-5)`);
  assert.ok(Math.abs(result.score - expectedLogProb / 3) < 1e-5, `score ours=${result.score} | expected=${expectedLogProb / 3} (3 tokens with <eos>)`);
});

test('beam search without length normalisation keeps the short one', async () => {
  const result = await beamSearch(toyScorer, { beamSize: 2, maxTokens: 10, ids: IDS, lengthPenalty: 0 });
  assert.equal(result.tokens, []);
  assert.ok(Math.abs(result.logProb - Math.log(0.5)) < 1e-5, `logProb ours=${result.logProb} | expected=${Math.log(0.5)}`);
});

test('beam size 1 on the toy is greedy', async () => {
  const result = await beamSearch(toyScorer, { beamSize: 1, maxTokens: 10, ids: IDS });
  assert.equal(result.tokens, [], 'greedy takes <eos> (p = 0.5) first');
  assert.ok(result.finished);
});

test('beam search stops at maxTokens and streams the best beam', async () => {
  const streamed: number[][] = [];
  const result = await beamSearch(async (prefixes) => {
    // <eos> is never likely: the hypotheses run to maxTokens.
    const logits = new Float32Array(prefixes.length * TOY_VOCAB).fill(-30);
    prefixes.forEach((_, row) => {
      logits[row * TOY_VOCAB + X] = 0;
      logits[row * TOY_VOCAB + Y] = -1;
    });
    return logits;
  }, { beamSize: 3, maxTokens: 4, ids: IDS, onStep: (tokens) => streamed.push(tokens) });
  assert.equal(result.tokens, [X, X, X, X]);
  assert.not.ok(result.finished, 'no hypothesis ended with <eos>');
  assert.equal(streamed.map((tokens) => tokens.length), [1, 2, 3, 4]);
  assert.equal(streamed[3], [X, X, X, X]);
});

test('beam search rejects invalid options', async () => {
  for (const [options, pattern] of [
    [{ beamSize: 0, maxTokens: 5 }, /beamSize must be an integer ≥ 1, got 0/],
    [{ beamSize: 2, maxTokens: 0 }, /maxTokens must be an integer ≥ 1, got 0/],
    [{ beamSize: 2, maxTokens: 5, lengthPenalty: -1 }, /lengthPenalty must be ≥ 0, got -1/],
  ] as const) {
    try {
      await beamSearch(toyScorer, { ...options, ids: IDS });
      assert.unreachable(`expected an error for ${JSON.stringify(options)}`);
    } catch (error) {
      assert.match((error as Error).message, pattern);
    }
  }
});

// ---- On the S2D-Align decoder (CPU device) ----

/** A small random-weight model: 2×2 patches, 2 decoder layers. */
const MICRO: S2DConfig = {
  ...TINY,
  preset: 'micro',
  vision: { ...TINY.vision, imageSize: 32, hiddenSize: 32, layers: 1, heads: 2 },
  text: { ...TINY.text, hiddenSize: 32, layers: 1, heads: 2, intermediateSize: 64 },
  decoder: { ...TINY.decoder, hiddenSize: 48, intermediateSize: 96, layers: 2, heads: 2 },
  memory: { queries: 4, heads: 2, mlpWidth: 32 },
};
const VOCAB_SIZE = 24;
const FEATURE_TOKENS = 1 + (MICRO.vision.imageSize / MICRO.vision.patchSize) ** 2;

function randomFeatures(seed: number) {
  const width = MICRO.vision.hiddenSize;
  return noGrad(() => fromHost(randomArray(FEATURE_TOKENS * width, 2, seed), [1, FEATURE_TOKENS, width]));
}

/** Teacher-forced log-probability of `tokens` (plus <eos> when finished), softmax over allowed tokens. */
async function sequenceLogProb(model: S2DAlign, features: ReturnType<typeof randomFeatures>, tokens: number[], finished: boolean): Promise<number> {
  const targets = finished ? [...tokens, IDS.eos] : tokens;
  const banned = new Set([IDS.pad, IDS.bos, IDS.unk]);
  let total = 0;
  for (let i = 0; i < targets.length; i++) {
    const prefix = [IDS.bos, ...targets.slice(0, i)];
    const logits = noGrad(() => tidy(() => model.nextTokenLogits(model.visualContext(features), fromHost(new Int32Array(prefix), [1, prefix.length]))));
    const values = await logits.data();
    logits.dispose();
    let logSum = 0;
    const max = Math.max(...Array.from(values).filter((_, v) => !banned.has(v)));
    for (let v = 0; v < values.length; v++) if (!banned.has(v)) logSum += Math.exp(values[v] - max);
    total += values[targets[i]] - max - Math.log(logSum);
  }
  return total;
}

test('beam size 1 equals greedy on the decoder (cpu)', async () => {
  setDevice(cpu);
  const model = new S2DAlign(MICRO, VOCAB_SIZE, 11);
  for (const seed of [1, 2, 3]) {
    const features = randomFeatures(seed);
    const [greedy] = await generateGreedy(model, features, { maxTokens: 12, ids: IDS });
    const beam = await generateBeam(model, features, { beamSize: 1, maxTokens: 12, ids: IDS });
    assert.equal(beam.tokens, greedy, `seed ${seed}: beam ours=${beam.tokens.join(' ')} | greedy=${greedy.join(' ')}`);
    features.dispose();
  }
  model.dispose();
});

test('beam log-probability matches teacher forcing (cpu)', async () => {
  setDevice(cpu);
  const model = new S2DAlign(MICRO, VOCAB_SIZE, 12);
  const features = randomFeatures(4);
  const beam = await generateBeam(model, features, { beamSize: 3, maxTokens: 10, ids: IDS });
  const reference = await sequenceLogProb(model, features, beam.tokens, beam.finished);
  assert.ok(Math.abs(beam.logProb - reference) < 1e-4, `logProb ours=${beam.logProb} | teacher-forced=${reference} (tolerance 1e-4)`);
  const [greedy] = await generateGreedy(model, features, { maxTokens: 10, ids: IDS });
  const greedyFinished = greedy.length < 10;
  const greedyScore = (await sequenceLogProb(model, features, greedy, greedyFinished)) / (greedy.length + Number(greedyFinished));
  // Not a theorem for beam search in general, but on this seed the wider search must not lose.
  assert.ok(beam.score >= greedyScore - 1e-6, `normalised score beam=${beam.score} | greedy=${greedyScore}`);
  features.dispose();
  model.dispose();
});

/** Beam search that reruns every prefix in full: the reference for the cached decoder. */
async function uncachedBeam(model: S2DAlign, features: ReturnType<typeof randomFeatures>, beamSize: number, maxTokens: number) {
  const context = noGrad(() => tidy(() => model.visualContext(features)));
  const [, queries, width] = context.shape;
  const result = await beamSearch(async (prefixes) => {
    const length = prefixes[0].length + 1;
    const inputIds = new Int32Array(prefixes.length * length);
    prefixes.forEach((prefix, row) => inputIds.set([IDS.bos, ...prefix], row * length));
    const logits = noGrad(() =>
      tidy(() => model.nextTokenLogits(broadcastTo(context, [prefixes.length, queries, width]), fromHost(inputIds, [prefixes.length, length]))),
    );
    const values = await logits.data();
    logits.dispose();
    return values;
  }, { beamSize, maxTokens, ids: IDS });
  context.dispose();
  return result;
}

for (const [name, getDevice] of [['cpu', async () => cpu], ['webgpu', webgpu]] as const) {
  test(`beam search with the key/value cache equals rerunning the prefixes (${name})`, async () => {
    setDevice(await getDevice());
    const model = new S2DAlign(MICRO, VOCAB_SIZE, 14);
    for (const seed of [5, 6]) {
      const features = randomFeatures(seed);
      const cached = await generateBeam(model, features, { beamSize: 3, maxTokens: 9, ids: IDS });
      const reference = await uncachedBeam(model, features, 3, 9);
      assert.equal(cached.tokens, reference.tokens, `seed ${seed}: cached ${cached.tokens.join(' ')} | uncached ${reference.tokens.join(' ')}`);
      assert.is(cached.finished, reference.finished);
      assert.ok(Math.abs(cached.logProb - reference.logProb) < 1e-4, `seed ${seed}: logProb cached=${cached.logProb} | uncached=${reference.logProb}`);
      features.dispose();
    }
    model.dispose();
  });
}

test('generateBeam rejects a batch of images', async () => {
  setDevice(cpu);
  const model = new S2DAlign(MICRO, VOCAB_SIZE, 13);
  const width = MICRO.vision.hiddenSize;
  const features = fromHost(new Float32Array(2 * FEATURE_TOKENS * width), [2, FEATURE_TOKENS, width]);
  try {
    await generateBeam(model, features, { beamSize: 2, maxTokens: 3, ids: IDS });
    assert.unreachable('expected an error for batch 2');
  } catch (error) {
    assert.match((error as Error).message, /expected features for one image/);
  }
  features.dispose();
  model.dispose();
});

test.run();
