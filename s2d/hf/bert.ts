// HF BERT checkpoints (BertModel, or the `bert.` trunk of BertForMaskedLM and CXR-BERT) as our
// TextEncoder: config.json fields, the name map, and loading. Heads on top of the trunk
// (pooler, masked-LM, CXR-BERT's projection) are not loaded.
import { getDevice } from '../../engine/devices.ts';
import { TextEncoder, type BertConfig } from '../models/bert.ts';
import { assertWeightsFitDevice, buildAndLoad, ConfigFields, readHfConfig, ZeroRandom, type CheckpointFolder, type WeightDtype, type WeightMapEntry } from './checkpoint.ts';

/** Parses a BERT config.json; absent fields take BertConfig's defaults. */
export function parseBertConfig(config: Record<string, unknown>, where = 'config.json'): BertConfig {
  const fields = new ConfigFields(config, where);
  // BiomedVLP-CXR-BERT-specialized declares model_type "cxr-bert" over a plain BERT trunk.
  fields.expect('model_type', ['bert', 'cxr-bert'], undefined, 'expected "bert" or "cxr-bert" (a BERT encoder checkpoint)');
  fields.expect('hidden_act', ['gelu'], 'gelu', 'only "gelu" (the exact erf form) is implemented');
  fields.expect('position_embedding_type', ['absolute'], 'absolute', 'only absolute position embeddings are implemented');
  if (config.is_decoder === true) throw new Error(`${where}: "is_decoder" is true; only BERT encoders are supported`);

  const hiddenSize = fields.int('hidden_size', 768);
  const heads = fields.int('num_attention_heads', 12);
  if (hiddenSize % heads !== 0) throw new Error(`${where}: hidden_size ${hiddenSize} is not divisible by num_attention_heads ${heads}`);
  return {
    vocabSize: fields.int('vocab_size', 30522),
    hiddenSize,
    layers: fields.int('num_hidden_layers', 12),
    heads,
    intermediateSize: fields.int('intermediate_size', 3072),
    maxPositions: fields.int('max_position_embeddings', 512),
    layerNormEps: fields.number('layer_norm_eps', 1e-12),
    // type_vocab_size 0 would mean no table; HF requires at least 1, default 2.
    typeVocabSize: fields.int('type_vocab_size', 2),
  };
}

/** Checkpoint name → parameter name for every tensor of the BERT trunk. `prefix` is '' or 'bert.'. */
export function bertWeightMap(config: BertConfig, prefix = ''): WeightMapEntry[] {
  const { vocabSize, hiddenSize: D, layers, intermediateSize: I, maxPositions } = config;
  const entries: WeightMapEntry[] = [
    { hf: `${prefix}embeddings.word_embeddings.weight`, ours: 'embeddings.word_embeddings.weight', shape: [vocabSize, D] },
    { hf: `${prefix}embeddings.position_embeddings.weight`, ours: 'embeddings.position_embeddings.weight', shape: [maxPositions, D] },
  ];
  if ((config.typeVocabSize ?? 0) > 0) {
    entries.push({ hf: `${prefix}embeddings.token_type_embeddings.weight`, ours: 'embeddings.token_type_embeddings.weight', shape: [config.typeVocabSize!, D] });
  }
  const linear = (hf: string, ours: string, outFeatures: number, inFeatures: number) => {
    entries.push({ hf: `${prefix}${hf}.weight`, ours: `${ours}.weight`, shape: [outFeatures, inFeatures] });
    entries.push({ hf: `${prefix}${hf}.bias`, ours: `${ours}.bias`, shape: [outFeatures] });
  };
  const norm = (hf: string, ours: string) => {
    entries.push({ hf: `${prefix}${hf}.weight`, ours: `${ours}.weight`, shape: [D] });
    entries.push({ hf: `${prefix}${hf}.bias`, ours: `${ours}.bias`, shape: [D] });
  };
  norm('embeddings.LayerNorm', 'embeddings.LayerNorm');
  for (let i = 0; i < layers; i++) {
    linear(`encoder.layer.${i}.attention.self.query`, `encoder.layer.${i}.attention.q_proj`, D, D);
    linear(`encoder.layer.${i}.attention.self.key`, `encoder.layer.${i}.attention.k_proj`, D, D);
    linear(`encoder.layer.${i}.attention.self.value`, `encoder.layer.${i}.attention.v_proj`, D, D);
    linear(`encoder.layer.${i}.attention.output.dense`, `encoder.layer.${i}.attention.out_proj`, D, D);
    norm(`encoder.layer.${i}.attention.output.LayerNorm`, `encoder.layer.${i}.attention_norm`);
    linear(`encoder.layer.${i}.intermediate.dense`, `encoder.layer.${i}.intermediate`, I, D);
    linear(`encoder.layer.${i}.output.dense`, `encoder.layer.${i}.output`, D, I);
    norm(`encoder.layer.${i}.output.LayerNorm`, `encoder.layer.${i}.output_norm`);
  }
  return entries;
}

/** Tensors a BERT checkpoint may carry that the encoder does not use. */
function isIgnoredBertTensor(name: string, prefix: string): boolean {
  // Older transformers versions saved the position_ids buffer. The pooler and the heads (cls.*
  // for masked LM, cls_projection_head.* in CXR-BERT) sit on top of the trunk.
  return (
    name === `${prefix}embeddings.position_ids` ||
    name.startsWith(`${prefix}pooler.`) ||
    name.startsWith('cls.') ||
    name.startsWith('cls_projection_head.')
  );
}

export interface LoadedBert {
  model: TextEncoder;
  config: BertConfig;
}

export interface BertLoadOptions {
  /**
   * Storage of the frozen linear weights and the word embeddings (default f32). Norms, biases,
   * position and token type embeddings stay f32.
   */
  weightDtype?: WeightDtype;
  /** Sets checkpointBlocks in the encoder's config (see BertConfig). */
  checkpointBlocks?: boolean;
}

const BERT_HALF_LINEAR = /^encoder\.layer\.\d+\.(attention\.(q_proj|k_proj|v_proj|out_proj)|intermediate|output)\.weight$/;

/** Our BERT parameters that may be stored as f16: the word embeddings and the linear weights. */
export function isBertHalfWeight(ours: string): boolean {
  return ours === 'embeddings.word_embeddings.weight' || BERT_HALF_LINEAR.test(ours);
}

/** Builds a TextEncoder from an HF BERT folder and loads its weights (frozen, eval mode). */
export async function loadBert(folder: CheckpointFolder, options: BertLoadOptions = {}): Promise<LoadedBert> {
  const config: BertConfig = {
    ...parseBertConfig(await readHfConfig(folder), `${folder.name}/config.json`),
    ...(options.checkpointBlocks ? { checkpointBlocks: true } : {}),
  };
  const storage = { weightDtype: options.weightDtype ?? 'f32', storesF16: isBertHalfWeight };
  assertWeightsFitDevice(bertWeightMap(config), getDevice(), 'BERT', storage);
  const model = await buildAndLoad(folder, () => new TextEncoder(config, new ZeroRandom()), (weights) => {
    const prefix = weights.names().includes('bert.embeddings.word_embeddings.weight') ? 'bert.' : '';
    return { entries: bertWeightMap(config, prefix), options: { model: 'BERT', ignored: (name) => isIgnoredBertTensor(name, prefix), ...storage } };
  });
  model.setRequiresGrad(false);
  model.eval();
  return { model, config };
}
