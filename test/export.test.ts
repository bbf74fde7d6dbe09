// `s2d export` and the inference-only loader: the exported folder keeps only the inference
// parameters (F16 when asked), loads back with values within F16 rounding, and loading
// reports missing or unknown tensors by name.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { setDevice } from '../engine/devices.ts';
import { encodeSafetensors, openSafetensors } from '../weights/safetensors.ts';
import { bytesSource } from '../weights/source.ts';
import { encodeModel, type SavedConfig } from '../s2d/checkpoint.ts';
import { exportCommand } from '../s2d/commands/export.ts';
import { TINY, type S2DConfig } from '../s2d/config.ts';
import { Vocabulary } from '../s2d/data/vocab.ts';
import { isInferenceParameter, loadInferenceModel, openInferenceModel } from '../s2d/inference-model.ts';
import { S2DAlign } from '../s2d/model.ts';
import { cpu } from './helpers.ts';

const MICRO: S2DConfig = {
  ...TINY,
  preset: 'micro',
  vision: { ...TINY.vision, imageSize: 32, hiddenSize: 32, layers: 1, heads: 2 },
  text: { ...TINY.text, hiddenSize: 32, layers: 1, heads: 2, intermediateSize: 64 },
  decoder: { ...TINY.decoder, hiddenSize: 48, intermediateSize: 96, layers: 1, heads: 2 },
  memory: { queries: 4, heads: 2, mlpWidth: 32 },
};

const vocab = Vocabulary.build(['left lung clear', 'right lung opacity', 'no effusion seen'], 1);

function savedConfig(loraEnabled: boolean): SavedConfig {
  return { format: 's2d-align', version: 1, config: MICRO, vocabSize: vocab.size, loraEnabled };
}

/** Writes a model folder as `s2d train` does and returns its path with the model. */
async function trainedFolder(loraEnabled: boolean): Promise<{ dir: string; model: S2DAlign }> {
  setDevice(cpu);
  const dir = await mkdtemp(join(tmpdir(), 's2d-export-'));
  const model = new S2DAlign(MICRO, vocab.size, 21);
  const saved = savedConfig(loraEnabled);
  const chunks = await encodeModel(model, saved);
  await writeFile(join(dir, 'model.safetensors'), Buffer.concat(chunks));
  await writeFile(join(dir, 'config.json'), JSON.stringify(saved));
  await writeFile(join(dir, 'vocab.json'), JSON.stringify(vocab.toJSON()));
  return { dir, model };
}

test('export --f16 keeps the inference parameters only', async () => {
  const { dir, model } = await trainedFolder(true);
  const out = join(dir, 'web');
  assert.is(await exportCommand(['--model', dir, '--out', out, '--f16']), 0);

  const bytes = new Uint8Array(await readFile(join(out, 'model.safetensors')));
  const index = await openSafetensors(bytesSource(bytes, 'exported'));
  const names = [...index.tensors.keys()];
  const expected = model.namedParameters().map(([name]) => name).filter(isInferenceParameter);
  assert.equal(names.sort(), [...expected].sort());
  assert.ok(!names.some((name) => /^(text|text_mlm_head|sma_t|sma_p)\./.test(name)), 'no training-only tensors');
  assert.ok(names.some((name) => name.includes('lora_A')), 'LoRA tensors are kept');
  assert.equal([...new Set([...index.tensors.values()].map((entry) => entry.dtype))], ['F16']);

  const loaded = await openInferenceModel({
    configText: await readFile(join(out, 'config.json'), 'utf8'),
    vocabText: await readFile(join(out, 'vocab.json'), 'utf8'),
    weights: bytesSource(bytes, 'exported'),
  });
  assert.ok(loaded.saved.loraEnabled, 'loraEnabled is kept from the saved config');
  assert.is(loaded.vocab.size, vocab.size);
  const original = new Map(model.namedParameters());
  for (const [name, param] of loaded.model.namedParameters()) {
    if (!isInferenceParameter(name)) {
      assert.ok(param.disposed, `${name} is training-only and absent, so it is disposed`);
      continue;
    }
    const ours = (await param.data()) as Float32Array;
    const reference = (await original.get(name)!.data()) as Float32Array;
    let worst = 0;
    for (let i = 0; i < ours.length; i++) worst = Math.max(worst, Math.abs(ours[i] - reference[i]) / Math.max(Math.abs(reference[i]), 6.1e-5));
    assert.ok(worst <= 2 ** -11, `${name}: relative error ours=${worst} | F16 rounding bound=${2 ** -11}`);
  }
  loaded.model.dispose();
  model.dispose();
  await rm(dir, { recursive: true, force: true });
});

test('export without --f16 writes F32 that loads exactly', async () => {
  const { dir, model } = await trainedFolder(false);
  const out = join(dir, 'web');
  assert.is(await exportCommand(['--model', dir, '--out', out]), 0);
  const bytes = new Uint8Array(await readFile(join(out, 'model.safetensors')));
  const loaded = await loadInferenceModel(savedConfig(false), bytesSource(bytes, 'exported'));
  const ours = await loaded.decoder.namedParameters()[0][1].data();
  const reference = await model.decoder.namedParameters()[0][1].data();
  assert.equal(Array.from(ours), Array.from(reference));
  loaded.dispose();
  model.dispose();
  await rm(dir, { recursive: true, force: true });
});

test('inference loader accepts a full checkpoint', async () => {
  const { dir, model } = await trainedFolder(false);
  const bytes = new Uint8Array(await readFile(join(dir, 'model.safetensors')));
  const loaded = await loadInferenceModel(savedConfig(false), bytesSource(bytes, 'full'));
  assert.not.ok(loaded.textEncoder.namedParameters()[0][1].disposed, 'present training-only tensors are loaded');
  loaded.dispose();
  model.dispose();
  await rm(dir, { recursive: true, force: true });
});

test('inference loader names missing and unknown tensors', async () => {
  setDevice(cpu);
  const model = new S2DAlign(MICRO, vocab.size, 22);
  const tensors = [];
  for (const [name, value] of model.namedParameters()) {
    if (name.startsWith('decoder.model.layers.0.mlp.')) continue;
    if (!isInferenceParameter(name)) continue;
    tensors.push({ name, dtype: 'F32' as const, shape: value.shape, data: (await value.data()) as Float32Array });
  }
  tensors.push({ name: 'decoder.extra_head.weight', dtype: 'F32' as const, shape: [2], data: new Float32Array(2) });
  const bytes = new Uint8Array(Buffer.concat(encodeSafetensors(tensors)));
  try {
    await loadInferenceModel(savedConfig(false), bytesSource(bytes, 'partial.safetensors'));
    assert.unreachable('expected an error for missing tensors');
  } catch (error) {
    const message = (error as Error).message;
    assert.match(message, /^partial\.safetensors: checkpoint does not match the config/);
    assert.match(message, /missing inference parameters: decoder\.model\.layers\.0\.mlp\.gate_proj\.lora_A, .*\(9 in all\)/, message);
    assert.match(message, /unexpected tensors: decoder\.extra_head\.weight/);
  }
  model.dispose();
});

test('export rejects a missing model folder', async () => {
  const dir = await mkdtemp(join(tmpdir(), 's2d-export-'));
  try {
    await exportCommand(['--model', join(dir, 'absent'), '--out', join(dir, 'out')]);
    assert.unreachable('expected an error for a missing folder');
  } catch (error) {
    assert.match((error as Error).message, /config\.json: file not found; point --model at a folder written by "s2d train"/);
  }
  await rm(dir, { recursive: true, force: true });
});

test.run();
