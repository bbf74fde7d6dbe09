// PEFT LoRA adapters: an adapter written by PyTorch (test/golden/make_golden.py) must give the
// logits of the merged weights W + (alpha/r)·B·A, and our own adapters must survive a save and
// load unchanged.
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { setDevice } from '../engine/devices.ts';
import { Random } from '../engine/random.ts';
import { fromHost, noGrad, tidy, type Tensor } from '../engine/tensor.ts';
import { encodeSafetensors, openSafetensors, readTensor } from '../weights/safetensors.ts';
import { bytesSource } from '../weights/source.ts';
import { memoryFolder } from '../s2d/hf/checkpoint.ts';
import { loadLlama } from '../s2d/hf/llama.ts';
import { nodeFolder } from '../s2d/hf/node-folder.ts';
import {
  encodePeftAdapter,
  isTargetModule,
  loadPeftAdapter,
  loraOptionsFromPeft,
  namedLoraLayers,
  parsePeftConfig,
  PEFT_CONFIG_FILE,
  PEFT_WEIGHTS_FILE,
} from '../s2d/hf/peft.ts';
import type { LlamaDecoder } from '../s2d/models/llama.ts';
import { assertGolden, GOLDEN_ROOT, goldenTensor, readGolden } from './golden/compare.ts';
import { cpu, webgpu } from './helpers.ts';

const llamaFolder = nodeFolder(join(GOLDEN_ROOT, 'llama'));
const adapterFolder = nodeFolder(join(GOLDEN_ROOT, 'llama-peft'));

async function logitsOf(decoder: LlamaDecoder, ids: { data: Float32Array | Int32Array; shape: number[] }): Promise<Float32Array> {
  const out = noGrad(() => tidy((): Tensor => decoder.logits(decoder.forwardHidden(decoder.embed(fromHost(ids.data, ids.shape, 'i32'))))));
  const values = (await out.data()) as Float32Array;
  out.dispose();
  return values;
}

/** Gives every LoRA factor random values (B too, so the update is not zero) and enables LoRA. */
function randomizeLora(decoder: LlamaDecoder, seed: number): void {
  const rng = new Random(seed);
  for (const layer of decoder.loraLayers()) {
    layer.loraA.assign(rng.normalArray(layer.loraA.size, 0.3));
    layer.loraB.assign(rng.normalArray(layer.loraB.size, 0.3));
  }
  decoder.setLoraEnabled(true);
}

const joinChunks = (chunks: Uint8Array[]) => {
  const out = new Uint8Array(chunks.reduce((total, chunk) => total + chunk.byteLength, 0));
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
};

for (const kind of ['cpu', 'webgpu'] as const) {
  test(`pytorch peft adapter matches merged logits (${kind})`, async () => {
    setDevice(kind === 'cpu' ? cpu : await webgpu());
    const golden = await readGolden('llama-peft');
    const config = parsePeftConfig(await readFile(join(GOLDEN_ROOT, 'llama-peft', PEFT_CONFIG_FILE), 'utf8'));
    const { model } = await loadLlama(llamaFolder, { lora: loraOptionsFromPeft(config) });
    await loadPeftAdapter(model, adapterFolder);

    const enabled = namedLoraLayers(model).filter(([, layer]) => layer.loraEnabled).map(([name]) => name);
    assert.is(enabled.length, 2 * 4, `LoRA should be on in q_proj, v_proj, gate_proj and down_proj of 2 layers; on in ${enabled.join(', ')}`);
    assertGolden(`llama-peft logits (${kind})`, await logitsOf(model, goldenTensor(golden, 'input_ids')), goldenTensor(golden, 'logits'));
    model.dispose();
  });
}

test('peft adapter round trip keeps tensors and logits', async () => {
  setDevice(cpu);
  const golden = await readGolden('llama');
  const ids = goldenTensor(golden, 'input_ids');
  const lora = { rank: 3, alpha: 6, dropout: 0.1 };
  const source = (await loadLlama(llamaFolder, { lora })).model;
  randomizeLora(source, 7);
  const expectedLogits = await logitsOf(source, ids);

  const { config, weights } = await encodePeftAdapter(source, { baseModel: 'test/golden/llama' });
  const folder = memoryFolder('saved-adapter', { [PEFT_CONFIG_FILE]: config, [PEFT_WEIGHTS_FILE]: joinChunks(weights) });
  const target = (await loadLlama(llamaFolder, { lora, seed: 99 })).model;
  await loadPeftAdapter(target, folder);

  const sourceLayers = namedLoraLayers(source);
  const targetLayers = namedLoraLayers(target);
  for (let i = 0; i < sourceLayers.length; i++) {
    const [name, saved] = sourceLayers[i];
    const loaded = targetLayers[i][1];
    assert.equal(Array.from(await loaded.loraA.data()), Array.from(await saved.loraA.data()), `${name} lora_A differs after the round trip`);
    assert.equal(Array.from(await loaded.loraB.data()), Array.from(await saved.loraB.data()), `${name} lora_B differs after the round trip`);
    assert.ok(loaded.loraEnabled, `${name}: LoRA is off after loading`);
  }
  assert.equal(Array.from(await logitsOf(target, ids)), Array.from(expectedLogits), 'logits differ after the adapter round trip');
  source.dispose();
  target.dispose();
});

test('peft adapter files use the PEFT layout', async () => {
  setDevice(cpu);
  const { model } = await loadLlama(llamaFolder, { lora: { rank: 2, alpha: 4, dropout: 0 } });
  const { config, weights } = await encodePeftAdapter(model, { baseModel: 'lmsys/vicuna-7b-v1.5', targetModules: ['q_proj', 'down_proj'] });
  const parsed = JSON.parse(config);
  assert.equal(
    { peft_type: parsed.peft_type, r: parsed.r, lora_alpha: parsed.lora_alpha, lora_dropout: parsed.lora_dropout, target_modules: parsed.target_modules, base_model_name_or_path: parsed.base_model_name_or_path, bias: parsed.bias, task_type: parsed.task_type },
    { peft_type: 'LORA', r: 2, lora_alpha: 4, lora_dropout: 0, target_modules: ['q_proj', 'down_proj'], base_model_name_or_path: 'lmsys/vicuna-7b-v1.5', bias: 'none', task_type: 'CAUSAL_LM' },
  );
  const index = await openSafetensors(bytesSource(joinChunks(weights), PEFT_WEIGHTS_FILE));
  assert.equal(index.metadata, { format: 'pt' });
  assert.equal(index.tensors.get('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight')?.shape, [2, 48]);
  assert.equal(index.tensors.get('base_model.model.model.layers.1.mlp.down_proj.lora_B.weight')?.shape, [48, 2]);
  assert.is(index.tensors.size, 2 * 2 * 2, 'expected lora_A and lora_B of q_proj and down_proj in 2 layers');
  model.dispose();
});

test('peft subset adapter switches LoRA on only in its targets', async () => {
  setDevice(cpu);
  const golden = await readGolden('llama');
  const ids = goldenTensor(golden, 'input_ids');
  const lora = { rank: 2, alpha: 2, dropout: 0 };
  const source = (await loadLlama(llamaFolder, { lora })).model;
  randomizeLora(source, 3);
  for (const [name, layer] of namedLoraLayers(source)) layer.loraEnabled = name.endsWith('v_proj');
  const expected = await logitsOf(source, ids);

  const { config, weights } = await encodePeftAdapter(source, { baseModel: null, targetModules: ['v_proj'] });
  const target = (await loadLlama(llamaFolder, { lora })).model;
  target.setLoraEnabled(true);
  await loadPeftAdapter(target, memoryFolder('v-only', { [PEFT_CONFIG_FILE]: config, [PEFT_WEIGHTS_FILE]: joinChunks(weights) }));
  for (const [name, layer] of namedLoraLayers(target)) assert.is(layer.loraEnabled, name.endsWith('v_proj'), `${name}: loraEnabled`);
  assert.equal(Array.from(await logitsOf(target, ids)), Array.from(expected), 'logits differ from the source with LoRA on in v_proj only');
  source.dispose();
  target.dispose();
});

test('peft loader rejects mismatched adapters', async () => {
  setDevice(cpu);
  const configText = await readFile(join(GOLDEN_ROOT, 'llama-peft', PEFT_CONFIG_FILE), 'utf8');
  const weightsBytes = new Uint8Array(await readFile(join(GOLDEN_ROOT, 'llama-peft', PEFT_WEIGHTS_FILE)));
  const { model } = await loadLlama(llamaFolder, { lora: { rank: 4, alpha: 8, dropout: 0 } });

  // Another rank than the decoder's.
  const otherRank = (await loadLlama(llamaFolder, { lora: { rank: 16, alpha: 16, dropout: 0.1 } })).model;
  try {
    await loadPeftAdapter(otherRank, adapterFolder);
    assert.unreachable('an adapter of another rank loaded');
  } catch (error) {
    assert.match((error as Error).message, 'adapter has r=4, lora_alpha=8, but the decoder was built with rank 16, alpha 16');
  }
  otherRank.dispose();

  // A missing factor and an extra tensor.
  const index = await openSafetensors(bytesSource(weightsBytes, PEFT_WEIGHTS_FILE));
  const tensors = [];
  for (const [name, entry] of index.tensors) {
    if (name === 'base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight') continue;
    tensors.push({ name, dtype: 'F32' as const, shape: entry.shape, data: (await readTensor(index, name)) as Float32Array });
  }
  tensors.push({ name: 'base_model.model.lm_head.lora_A.weight', dtype: 'F32' as const, shape: [4, 48], data: new Float32Array(4 * 48) });
  const broken = memoryFolder('broken-adapter', { [PEFT_CONFIG_FILE]: configText, [PEFT_WEIGHTS_FILE]: joinChunks(encodeSafetensors(tensors)) });
  try {
    await loadPeftAdapter(model, broken);
    assert.unreachable('an adapter with a missing factor loaded');
  } catch (error) {
    const message = (error as Error).message;
    assert.match(message, 'missing: base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight');
    assert.match(message, 'unexpected: base_model.model.lm_head.lora_A.weight');
  }
  model.dispose();
});

test('peft config rejects unsupported options', () => {
  const base = { peft_type: 'LORA', r: 4, lora_alpha: 8, lora_dropout: 0.05, target_modules: ['q_proj'], bias: 'none', task_type: 'CAUSAL_LM' };
  const parse = (extra: Record<string, unknown>) => () => parsePeftConfig(JSON.stringify({ ...base, ...extra }));
  assert.not.throws(parse({ use_rslora: false, rank_pattern: {}, modules_to_save: null }));
  assert.throws(parse({ use_rslora: true }), /use_rslora/);
  assert.throws(parse({ use_dora: true }), /use_dora/);
  assert.throws(parse({ bias: 'lora_only' }), /"bias" is "lora_only"/);
  assert.throws(parse({ peft_type: 'IA3' }), /only "LORA"/);
  assert.throws(parse({ r: 0 }), /"r" is 0/);
  assert.throws(parse({ rank_pattern: { q_proj: 8 } }), /rank_pattern/);
  assert.throws(parse({ target_modules: [] }), /target_modules/);
});

test('peft target module matching', () => {
  assert.ok(isTargetModule(['q_proj'], 'model.layers.0.self_attn.q_proj'));
  assert.not.ok(isTargetModule(['proj'], 'model.layers.0.self_attn.q_proj'), 'a list entry must match whole dotted segments');
  assert.ok(isTargetModule('.*\\.(q_proj|v_proj)', 'model.layers.3.self_attn.v_proj'));
  assert.not.ok(isTargetModule('q_proj', 'model.layers.3.self_attn.q_proj'), 'a string target must match the whole name');
});

test.run();
