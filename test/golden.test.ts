// Golden tests: HF checkpoints of tiny random Dinov2, BERT and LLaMA models, loaded with our
// s2d/hf loaders, must reproduce PyTorch's outputs and gradients (test/golden/make_golden.py
// writes the fixtures) on the CPU and WebGPU devices. Relative error is
// max |ours − ref| / (max |ref| + 1e-30) over a whole tensor, and must be ≤ 1e-4.
import { spawnSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { Device } from '../engine/device.ts';
import { setDevice } from '../engine/devices.ts';
import type { Module } from '../engine/nn/module.ts';
import { mul, sum } from '../engine/ops/index.ts';
import { fromHost, noGrad, tidy, type Tensor } from '../engine/tensor.ts';
import { encodeSafetensors, openSafetensors, readTensor, type TensorToWrite } from '../weights/safetensors.ts';
import { bytesSource } from '../weights/source.ts';
import { bertWeightMap, loadBert, parseBertConfig } from '../s2d/hf/bert.ts';
import { assertWeightsFitDevice, memoryFolder, type WeightMapEntry } from '../s2d/hf/checkpoint.ts';
import { dinov2WeightMap, loadDinov2, parseDinov2Config } from '../s2d/hf/dinov2.ts';
import { llamaWeightMap, loadLlama, parseLlamaConfig } from '../s2d/hf/llama.ts';
import { nodeFolder } from '../s2d/hf/node-folder.ts';
import { bicubicMatrix } from '../s2d/models/position-interpolation.ts';
import { patchify, type VisionTransformer } from '../s2d/models/vit.ts';
import { assertGolden, GOLDEN_ROOT, goldenTensor, readGolden, worstErrors, type GoldenTensor } from './golden/compare.ts';
import { cpu, webgpu } from './helpers.ts';

const folderOf = (fixture: string) => nodeFolder(join(GOLDEN_ROOT, fixture));
const DEVICE_KINDS = ['cpu', 'webgpu'] as const;

async function useDevice(kind: 'cpu' | 'webgpu'): Promise<Device> {
  const device = kind === 'cpu' ? cpu : await webgpu();
  setDevice(device);
  return device;
}

/** Runs `forward` with no autograd graph and returns its output on the host. */
async function evaluate(forward: () => Tensor): Promise<Float32Array> {
  const out = noGrad(() => tidy(forward));
  const values = (await out.data()) as Float32Array;
  out.dispose();
  return values;
}

/**
 * Checks every `<prefix>grad.<HF name>` tensor of the golden file: the gradient of
 * L = Σ forward() · w (w = `<prefix>loss_weights`) with respect to the parameter that the HF
 * name maps to.
 */
async function assertGoldenGradients(label: string, module: Module, weightMap: WeightMapEntry[], golden: Map<string, GoldenTensor>, prefix: string, forward: () => Tensor): Promise<void> {
  const parameters = new Map(module.namedParameters());
  const byHfName = new Map(weightMap.map((entry) => [entry.hf, entry.ours]));
  const gradNames = [...golden.keys()].filter((name) => name.startsWith(`${prefix}grad.`));
  assert.ok(gradNames.length > 0, `${label}: no gradients in the golden file`);

  for (const parameter of module.parameters()) parameter.requiresGrad = false;
  const checked: Array<[string, Tensor]> = gradNames.map((name) => {
    const hfName = name.slice(`${prefix}grad.`.length);
    const parameter = parameters.get(byHfName.get(hfName) ?? '');
    assert.ok(parameter, `${label}: "${hfName}" has no parameter in the name map`);
    parameter!.requiresGrad = true;
    return [name, parameter!];
  });

  const weights = goldenTensor(golden, `${prefix}loss_weights`);
  tidy(() => {
    const out = forward();
    sum(mul(out, fromHost(weights.data as Float32Array, out.shape))).backward();
  });
  for (const [name, parameter] of checked) {
    assert.ok(parameter.grad, `${label}: ${name} received no gradient`);
    assertGolden(`${label} ${name}`, await parameter.grad!.data(), goldenTensor(golden, name));
    parameter.grad!.dispose();
    parameter.grad = null;
    parameter.requiresGrad = false;
  }
}

// ---------- Dinov2 ----------

/** pixel values [B, C, H, W] → patches [B, P, C·p·p] and the grid. */
function patchBatch(pixels: GoldenTensor, patchSize: number): { patches: Tensor; grid: { rows: number; columns: number } } {
  const [batch, channels, height, width] = pixels.shape;
  const imageLength = channels * height * width;
  const perImage = (height / patchSize) * (width / patchSize) * channels * patchSize * patchSize;
  const patches = new Float32Array(batch * perImage);
  for (let b = 0; b < batch; b++) {
    const image = (pixels.data as Float32Array).subarray(b * imageLength, (b + 1) * imageLength);
    patches.set(patchify(image, channels, height, patchSize, width), b * perImage);
  }
  const grid = { rows: height / patchSize, columns: width / patchSize };
  return { patches: fromHost(patches, [batch, grid.rows * grid.columns, channels * patchSize * patchSize]), grid };
}

function dinov2Forward(model: VisionTransformer, pixels: GoldenTensor): () => Tensor {
  return () => {
    const { patches, grid } = patchBatch(pixels, model.config.patchSize);
    return model.forward(patches, grid);
  };
}

for (const kind of DEVICE_KINDS) {
  test(`dinov2 outputs match PyTorch (${kind})`, async () => {
    await useDevice(kind);
    const golden = await readGolden('dinov2');
    const current = await loadDinov2(folderOf('dinov2'));
    const legacy = await loadDinov2(folderOf('dinov2'), { positionInterpolation: 'scale-factor' });
    const cases: Array<[string, VisionTransformer]> = [
      ['native', current.model],
      ['up', current.model],
      ['rect', current.model],
      ['up_scale_factor', legacy.model],
    ];
    for (const [name, model] of cases) {
      const ours = await evaluate(dinov2Forward(model, goldenTensor(golden, `${name}.pixel_values`)));
      assertGolden(`dinov2 ${name} last_hidden_state (${kind})`, ours, goldenTensor(golden, `${name}.last_hidden_state`));
    }
    current.model.dispose();
    legacy.model.dispose();
  });

  test(`dinov2 gradients match PyTorch (${kind})`, async () => {
    await useDevice(kind);
    const golden = await readGolden('dinov2');
    const { model, config } = await loadDinov2(folderOf('dinov2'));
    await assertGoldenGradients(`dinov2 up (${kind})`, model, dinov2WeightMap(config), golden, 'up.', dinov2Forward(model, goldenTensor(golden, 'up.pixel_values')));
    model.dispose();
  });
}

// ---------- BERT ----------

for (const kind of DEVICE_KINDS) {
  test(`bert outputs match PyTorch (${kind})`, async () => {
    await useDevice(kind);
    const golden = await readGolden('bert');
    const { model } = await loadBert(folderOf('bert'));
    for (const name of ['single', 'pair']) {
      const ids = goldenTensor(golden, `${name}.input_ids`);
      const lengths = goldenTensor(golden, `${name}.lengths`);
      const types = goldenTensor(golden, `${name}.token_type_ids`);
      const ours = await evaluate(() => {
        // "single" leaves the type ids out, so the default type 0 path is what is checked.
        const typeIds = name === 'pair' ? fromHost(types.data, types.shape, 'i32') : undefined;
        return model.forward(fromHost(ids.data, ids.shape, 'i32'), fromHost(lengths.data, lengths.shape, 'i32'), typeIds);
      });
      assertGolden(`bert ${name} last_hidden_state (${kind})`, ours, goldenTensor(golden, `${name}.last_hidden_state`));
    }
    model.dispose();
  });

  test(`bert gradients match PyTorch (${kind})`, async () => {
    await useDevice(kind);
    const golden = await readGolden('bert');
    const { model, config } = await loadBert(folderOf('bert'));
    const ids = goldenTensor(golden, 'pair.input_ids');
    const lengths = goldenTensor(golden, 'pair.lengths');
    const types = goldenTensor(golden, 'pair.token_type_ids');
    await assertGoldenGradients(`bert pair (${kind})`, model, bertWeightMap(config), golden, 'pair.', () =>
      model.forward(fromHost(ids.data, ids.shape, 'i32'), fromHost(lengths.data, lengths.shape, 'i32'), fromHost(types.data, types.shape, 'i32')),
    );
    model.dispose();
  });
}

// ---------- LLaMA ----------

for (const fixture of ['llama', 'llama-tied']) {
  for (const kind of DEVICE_KINDS) {
    test(`${fixture} outputs and gradients match PyTorch (${kind})`, async () => {
      await useDevice(kind);
      const golden = await readGolden(fixture);
      const { model, config } = await loadLlama(folderOf(fixture));
      const ids = goldenTensor(golden, 'input_ids');
      const idsTensor = () => fromHost(ids.data, ids.shape, 'i32');

      const hidden = await evaluate(() => model.forwardHidden(model.embed(idsTensor())));
      assertGolden(`${fixture} last_hidden_state (${kind})`, hidden, goldenTensor(golden, 'last_hidden_state'));
      const logits = await evaluate(() => model.logits(model.forwardHidden(model.embed(idsTensor()))));
      assertGolden(`${fixture} logits (${kind})`, logits, goldenTensor(golden, 'logits'));

      await assertGoldenGradients(`${fixture} (${kind})`, model, llamaWeightMap(config), golden, '', () => model.logits(model.forwardHidden(model.embed(idsTensor()))));
      model.dispose();
    });
  }
}

// ---------- checkpoint layouts and errors (CPU) ----------

/** Reads every tensor of a fixture's model.safetensors, as tensors to write. */
async function fixtureTensors(fixture: string): Promise<TensorToWrite[]> {
  const bytes = new Uint8Array(await readFile(join(GOLDEN_ROOT, fixture, 'model.safetensors')));
  const index = await openSafetensors(bytesSource(bytes, fixture));
  const out: TensorToWrite[] = [];
  for (const [name, entry] of index.tensors) {
    const data = await readTensor(index, name);
    out.push({ name, dtype: data instanceof Float32Array ? 'F32' : 'I32', shape: entry.shape, data });
  }
  return out;
}

const concatBytes = (chunks: Uint8Array[]) => {
  const out = new Uint8Array(chunks.reduce((total, chunk) => total + chunk.byteLength, 0));
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
};

async function fixtureConfig(fixture: string): Promise<string> {
  return readFile(join(GOLDEN_ROOT, fixture, 'config.json'), 'utf8');
}

test('bert checkpoint without the bert. prefix loads', async () => {
  setDevice(cpu);
  const golden = await readGolden('bert');
  // A BertModel checkpoint: the trunk's names without "bert.", no masked-LM head.
  const tensors = (await fixtureTensors('bert'))
    .filter((t) => t.name.startsWith('bert.') && t.name !== 'bert.embeddings.position_ids')
    .map((t) => ({ ...t, name: t.name.slice('bert.'.length) }));
  const folder = memoryFolder('bert-model', { 'config.json': await fixtureConfig('bert'), 'model.safetensors': concatBytes(encodeSafetensors(tensors)) });
  const { model } = await loadBert(folder);
  const ids = goldenTensor(golden, 'single.input_ids');
  const lengths = goldenTensor(golden, 'single.lengths');
  const ours = await evaluate(() => model.forward(fromHost(ids.data, ids.shape, 'i32'), fromHost(lengths.data, lengths.shape, 'i32')));
  assertGolden('bert without prefix single last_hidden_state (cpu)', ours, goldenTensor(golden, 'single.last_hidden_state'));
  model.dispose();
});

test('sharded llama checkpoint loads', async () => {
  setDevice(cpu);
  const golden = await readGolden('llama');
  const tensors = await fixtureTensors('llama');
  const half = Math.ceil(tensors.length / 2);
  const shards = [tensors.slice(0, half), tensors.slice(half)];
  const files: Record<string, string | Uint8Array> = { 'config.json': await fixtureConfig('llama') };
  const weightMap: Record<string, string> = {};
  shards.forEach((shard, i) => {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    files[file] = concatBytes(encodeSafetensors(shard));
    for (const { name } of shard) weightMap[name] = file;
  });
  files['model.safetensors.index.json'] = JSON.stringify({ metadata: {}, weight_map: weightMap });

  const { model } = await loadLlama(memoryFolder('llama-sharded', files));
  const ids = goldenTensor(golden, 'input_ids');
  const logits = await evaluate(() => model.logits(model.forwardHidden(model.embed(fromHost(ids.data, ids.shape, 'i32')))));
  assertGolden('llama sharded logits (cpu)', logits, goldenTensor(golden, 'logits'));
  model.dispose();
});

test('loader lists missing and unexpected tensors', async () => {
  setDevice(cpu);
  const tensors = (await fixtureTensors('llama'))
    .filter((t) => t.name !== 'model.layers.1.mlp.up_proj.weight')
    .concat([{ name: 'model.layers.1.mlp.extra_proj.weight', dtype: 'F32', shape: [2], data: new Float32Array(2) }]);
  const folder = memoryFolder('llama-broken', { 'config.json': await fixtureConfig('llama'), 'model.safetensors': concatBytes(encodeSafetensors(tensors)) });
  try {
    await loadLlama(folder);
    assert.unreachable('a checkpoint with a missing tensor loaded');
  } catch (error) {
    const message = (error as Error).message;
    assert.match(message, '1 missing tensors: model.layers.1.mlp.up_proj.weight');
    assert.match(message, '1 unexpected tensors: model.layers.1.mlp.extra_proj.weight');
  }
});

test('loader rejects a tensor of another shape', async () => {
  setDevice(cpu);
  const tensors = (await fixtureTensors('llama')).map((t) =>
    t.name === 'model.norm.weight' ? { ...t, shape: [t.data.length / 2, 2] } : t,
  );
  const folder = memoryFolder('llama-reshaped', { 'config.json': await fixtureConfig('llama'), 'model.safetensors': concatBytes(encodeSafetensors(tensors)) });
  try {
    await loadLlama(folder);
    assert.unreachable('a tensor of another shape loaded');
  } catch (error) {
    assert.match((error as Error).message, 'model.norm.weight is [24, 2], expected [48]');
  }
});

test('loader reports a folder without weights', async () => {
  const folder = memoryFolder('llama-config-only', { 'config.json': await fixtureConfig('llama') });
  try {
    await loadLlama(folder);
    assert.unreachable('a folder without weights loaded');
  } catch (error) {
    assert.match((error as Error).message, 'no model.safetensors or model.safetensors.index.json found');
  }
});

test('weights larger than a buffer are rejected, larger than a binding split', async () => {
  const config = parseLlamaConfig(JSON.parse(await fixtureConfig('llama')));
  const adapter = (maxStorageBufferBindingSize: number, maxBufferSize: number) =>
    ({ kind: 'webgpu', device: { limits: { maxStorageBufferBindingSize, maxBufferSize } } }) as unknown as Device;
  // With 12 KiB bindings the MLP weights [88, 48] (16.5 KiB, a 20 KiB size class) are split
  // by rows, so a 1 MiB buffer limit lets every weight through.
  assert.not.throws(() => assertWeightsFitDevice(llamaWeightMap(config), adapter(12288, 1 << 20), 'LLaMA'));
  // A 16 KiB buffer limit has room for the [61, 48] tables (11.4 KiB) but not the MLP weights.
  try {
    assertWeightsFitDevice(llamaWeightMap(config), adapter(12288, 16384), 'LLaMA');
    assert.unreachable('weights larger than the buffer limit passed');
  } catch (error) {
    const message = (error as Error).message;
    assert.match(message, "LLaMA: 6 embedding tables or linear weights exceed this adapter's maxBufferSize of 16.0 KiB in f32");
    assert.match(message, 'model.layers.0.mlp.gate_proj.weight [88, 48] (16.5 KiB)');
    assert.match(message, '(2 more)');
    assert.not.match(message, 'embed_tokens');
  }
  assert.not.throws(() => assertWeightsFitDevice(llamaWeightMap(config), cpu, 'LLaMA'));
});

test('configs reject unsupported settings', () => {
  const llama = { model_type: 'llama', hidden_size: 8, num_attention_heads: 2 };
  assert.throws(() => parseLlamaConfig({ ...llama, rope_scaling: { type: 'linear', factor: 2 } }), /rope_scaling/);
  assert.throws(() => parseLlamaConfig({ ...llama, num_key_value_heads: 3 }), /not a multiple of num_key_value_heads 3/);
  assert.throws(() => parseLlamaConfig({ ...llama, attention_bias: true }), /attention_bias/);
  assert.throws(() => parseLlamaConfig({ ...llama, model_type: 'mistral' }), /model_type/);
  assert.throws(() => parseDinov2Config({ model_type: 'dinov2', use_swiglu_ffn: true }), /use_swiglu_ffn/);
  assert.throws(() => parseDinov2Config({ model_type: 'dinov2', hidden_act: 'quick_gelu' }), /hidden_act/);
  assert.throws(() => parseBertConfig({ model_type: 'bert', position_embedding_type: 'relative_key' }), /position_embedding_type/);
  assert.throws(() => parseBertConfig({ model_type: 'bert', hidden_size: 'wide' }), /"hidden_size" is "wide", expected a positive integer/);
});

test('configs read HF defaults and transformers 5 rope_parameters', () => {
  const dinov2 = parseDinov2Config({ model_type: 'dinov2', image_size: 518 });
  assert.equal([dinov2.patchSize, dinov2.hiddenSize, dinov2.layers, dinov2.layerNormEps], [14, 768, 12, 1e-6]);
  const bert = parseBertConfig({ model_type: 'cxr-bert' });
  assert.equal([bert.vocabSize, bert.typeVocabSize, bert.layerNormEps], [30522, 2, 1e-12]);
  const llama = parseLlamaConfig({ model_type: 'llama', rope_parameters: { rope_type: 'default', rope_theta: 500000 } });
  assert.is(llama.ropeTheta, 500000);
  assert.is(llama.kvHeads, 32);
});

test('bicubic resize rows sum to 1', () => {
  for (const [from, to] of [[7, 9], [7, 5], [37, 16], [4, 4]]) {
    for (const convention of ['size', 'scale-factor'] as const) {
      const matrix = bicubicMatrix(from, to, convention);
      for (let row = 0; row < to; row++) {
        const total = matrix.subarray(row * from, (row + 1) * from).reduce((a, b) => a + b, 0);
        assert.ok(Math.abs(total - 1) < 1e-6, `${from} → ${to} ${convention}: row ${row} sums to ${total}`);
      }
    }
  }
});

// ---------- s2d check-hf ----------

for (const [flag, fixture, shape] of [
  ['--vision', 'dinov2', '[1, 50, 40]'],
  ['--text', 'bert', '[1, 8, 36]'],
  ['--llm', 'llama', '[1, 8, 61]'],
]) {
  test(`s2d check-hf ${flag} prints the output shape`, () => {
    const result = spawnSync(process.execPath, ['scripts/s2d.mjs', 'check-hf', flag, join(GOLDEN_ROOT, fixture), '--device', 'cpu'], { encoding: 'utf8' });
    assert.is(result.status, 0, `exit code ${result.status}; stderr: ${result.stderr}`);
    assert.match(result.stdout, `output shape ${shape}`);
  });
}

test('golden summary', () => {
  const lines = [...worstErrors].map(([label, error]) => `  ${label}: ${error.toExponential(2)}`);
  console.log(`largest relative errors (tolerance 1e-4):\n${lines.join('\n')}`);
});

test.run();
