// Greedy decoding with the key/value cache against decoding that reruns the whole prefix.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { setDevice } from '../engine/devices.ts';
import type { Device } from '../engine/device.ts';
import { Random } from '../engine/random.ts';
import { fromHost, noGrad, tidy } from '../engine/tensor.ts';
import { TINY, type S2DConfig } from '../s2d/config.ts';
import { argmaxAllowed, bannedTokens, generateGreedy } from '../s2d/generate.ts';
import { S2DAlign } from '../s2d/model.ts';
import { cpu, webgpu } from './helpers.ts';

const SMALL: S2DConfig = {
  ...TINY,
  vision: { ...TINY.vision, hiddenSize: 32, layers: 1, heads: 2 },
  text: { ...TINY.text, hiddenSize: 32, layers: 1, heads: 2, intermediateSize: 64 },
  decoder: { ...TINY.decoder, hiddenSize: 48, intermediateSize: 80, layers: 2, heads: 3 },
  memory: { queries: 5, heads: 2, mlpWidth: 32 },
};
const VOCAB = 37;
const IDS = { pad: 0, bos: 1, eos: 2, unk: 3 };

/** Greedy decoding that reruns [C1 ; <bos> ; tokens] at every step (no cache). */
async function greedyWithoutCache(model: S2DAlign, features: Float32Array, batch: number, maxTokens: number): Promise<number[][]> {
  const tokens: number[][] = Array.from({ length: batch }, () => []);
  const finished = new Array<boolean>(batch).fill(false);
  const banned = bannedTokens(IDS);
  const tokensPerImage = features.length / batch / SMALL.vision.hiddenSize;
  for (let step = 0; step < maxTokens && finished.some((f) => !f); step++) {
    const inputIds = new Int32Array(batch * (step + 1));
    for (let row = 0; row < batch; row++) {
      const padded = [...tokens[row]];
      while (padded.length < step) padded.push(IDS.pad);
      inputIds.set([IDS.bos, ...padded], row * (step + 1));
    }
    const logits = noGrad(() =>
      tidy(() => {
        const context = model.visualContext(fromHost(features, [batch, tokensPerImage, SMALL.vision.hiddenSize]));
        return model.nextTokenLogits(context, fromHost(inputIds, [batch, step + 1]));
      }),
    );
    const values = await logits.data();
    logits.dispose();
    for (let row = 0; row < batch; row++) {
      if (finished[row]) continue;
      const best = argmaxAllowed(values, row * VOCAB, VOCAB, banned);
      if (best === IDS.eos) finished[row] = true;
      else tokens[row].push(best);
    }
  }
  return tokens;
}

async function checkOn(device: Device): Promise<void> {
  setDevice(device);
  const model = new S2DAlign(SMALL, VOCAB, 21);
  model.decoder.setLoraEnabled(true);
  for (const layer of model.decoder.loraLayers()) layer.loraB.assign(new Random(5).normalArray(layer.loraB.size, 0.1));
  const batch = 3;
  const tokensPerImage = model.vision.patchCount + 1;
  const features = new Random(8).normalArray(batch * tokensPerImage * SMALL.vision.hiddenSize, 1);
  const expected = await greedyWithoutCache(model, features, batch, 12);
  const featureTensor = fromHost(features, [batch, tokensPerImage, SMALL.vision.hiddenSize]);
  const actual = await generateGreedy(model, featureTensor, { maxTokens: 12, ids: IDS });
  featureTensor.dispose();
  assert.equal(actual, expected, `cached=${JSON.stringify(actual)} | uncached=${JSON.stringify(expected)}`);
  assert.ok(actual.some((row) => row.length >= 5), 'expected at least one row with 5 or more tokens');
  model.dispose();
}

test('cached greedy equals uncached greedy (cpu)', async () => {
  await checkOn(cpu);
});

test('cached greedy equals uncached greedy (webgpu)', async () => {
  await checkOn(await webgpu());
});

test('cache frees its tensors', async () => {
  const device = await webgpu();
  setDevice(device);
  const model = new S2DAlign(SMALL, VOCAB, 22);
  const before = device.memory().liveStorages;
  const tokensPerImage = model.vision.patchCount + 1;
  const features = fromHost(new Random(9).normalArray(2 * tokensPerImage * SMALL.vision.hiddenSize, 1), [2, tokensPerImage, SMALL.vision.hiddenSize]);
  await generateGreedy(model, features, { maxTokens: 6, ids: IDS });
  features.dispose();
  assert.equal(device.memory().liveStorages, before, 'generation left tensors alive');
  model.dispose();
});

test.run();
