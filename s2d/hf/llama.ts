// HF `LlamaForCausalLM` checkpoints (Vicuna-7B v1.5 is one) as our LlamaDecoder: config.json
// fields, the name map, and loading. Each HF projection `…q_proj.weight` fills the frozen base
// of our LoRALinear `…q_proj.base.weight`; the LoRA factors start fresh (A uniform in
// ±1/√in as PEFT initialises it, B = 0) and stay off until enabled.
import { getDevice } from '../../engine/devices.ts';
import type { LoraOptions } from '../../engine/nn/layers.ts';
import { Random } from '../../engine/random.ts';
import { LlamaDecoder, type LlamaConfig } from '../models/llama.ts';
import { assertWeightsFitDevice, buildAndLoad, ConfigFields, readHfConfig, ZeroRandom, type CheckpointFolder, type WeightDtype, type WeightMapEntry } from './checkpoint.ts';

/** LoRA settings of S2D-Align (Gao, Liu, Li): rank 16, alpha 16, dropout 0.1, on all linear layers of the blocks. */
export const PAPER_LORA: LoraOptions = { rank: 16, alpha: 16, dropout: 0.1 };

/** Parses a LLaMA config.json; absent fields take LlamaConfig's defaults. */
export function parseLlamaConfig(config: Record<string, unknown>, where = 'config.json'): LlamaConfig {
  const fields = new ConfigFields(config, where);
  fields.expect('model_type', ['llama'], undefined, 'expected "llama" (a LlamaForCausalLM checkpoint such as Vicuna)');
  fields.expect('hidden_act', ['silu'], 'silu', 'only the SiLU-gated MLP of LLaMA is implemented');
  fields.expect('attention_bias', [false], false, 'attention projections with biases are not implemented');
  fields.expect('mlp_bias', [false], false, 'MLP projections with biases are not implemented');
  if (config.rope_scaling !== undefined && config.rope_scaling !== null) {
    throw new Error(`${where}: "rope_scaling" is ${JSON.stringify(config.rope_scaling)}; only unscaled RoPE is implemented (Vicuna-7B v1.5 has null)`);
  }

  const hiddenSize = fields.int('hidden_size', 4096);
  const heads = fields.int('num_attention_heads', 32);
  const kvHeads = fields.int('num_key_value_heads', heads);
  if (hiddenSize % heads !== 0) throw new Error(`${where}: hidden_size ${hiddenSize} is not divisible by num_attention_heads ${heads}`);
  if (heads % kvHeads !== 0) throw new Error(`${where}: num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kvHeads}`);
  const headDim = hiddenSize / heads;
  if (fields.has('head_dim') && config.head_dim !== headDim) {
    throw new Error(`${where}: "head_dim" ${config.head_dim} differs from hidden_size / num_attention_heads = ${headDim}; such models are not supported`);
  }
  if (headDim % 2 !== 0) throw new Error(`${where}: head width ${headDim} is odd; rotary embeddings need an even head width`);

  // transformers 5 moves rope_theta into "rope_parameters".
  const ropeParameters = config.rope_parameters as Record<string, unknown> | undefined;
  if (ropeParameters && ropeParameters.rope_type !== undefined && ropeParameters.rope_type !== 'default') {
    throw new Error(`${where}: rope_parameters.rope_type is ${JSON.stringify(ropeParameters.rope_type)}; only "default" RoPE is implemented`);
  }
  const ropeTheta = ropeParameters?.rope_theta !== undefined ? new ConfigFields(ropeParameters, `${where} rope_parameters`).number('rope_theta') : fields.number('rope_theta', 10000);

  return {
    vocabSize: fields.int('vocab_size', 32000),
    hiddenSize,
    intermediateSize: fields.int('intermediate_size', 11008),
    layers: fields.int('num_hidden_layers', 32),
    heads,
    kvHeads,
    ropeTheta,
    rmsNormEps: fields.number('rms_norm_eps', 1e-6),
    maxPositions: fields.int('max_position_embeddings', 2048),
    tieWordEmbeddings: fields.boolean('tie_word_embeddings', false),
    ropeFloat32Angles: true,
  };
}

/** Checkpoint name → parameter name for every tensor of a LlamaForCausalLM. */
export function llamaWeightMap(config: LlamaConfig): WeightMapEntry[] {
  const { vocabSize: V, hiddenSize: D, intermediateSize: I, layers, heads } = config;
  const kvWidth = (D / heads) * (config.kvHeads ?? heads);
  const entries: WeightMapEntry[] = [{ hf: 'model.embed_tokens.weight', ours: 'model.embed_tokens.weight', shape: [V, D] }];
  for (let i = 0; i < layers; i++) {
    const projection = (name: string, outFeatures: number, inFeatures: number) =>
      entries.push({ hf: `model.layers.${i}.${name}.weight`, ours: `model.layers.${i}.${name}.base.weight`, shape: [outFeatures, inFeatures] });
    entries.push({ hf: `model.layers.${i}.input_layernorm.weight`, ours: `model.layers.${i}.input_layernorm.weight`, shape: [D] });
    projection('self_attn.q_proj', D, D);
    projection('self_attn.k_proj', kvWidth, D);
    projection('self_attn.v_proj', kvWidth, D);
    projection('self_attn.o_proj', D, D);
    entries.push({ hf: `model.layers.${i}.post_attention_layernorm.weight`, ours: `model.layers.${i}.post_attention_layernorm.weight`, shape: [D] });
    projection('mlp.gate_proj', I, D);
    projection('mlp.up_proj', I, D);
    projection('mlp.down_proj', D, I);
  }
  entries.push({ hf: 'model.norm.weight', ours: 'model.norm.weight', shape: [D] });
  if (!config.tieWordEmbeddings) entries.push({ hf: 'lm_head.weight', ours: 'lm_head.weight', shape: [V, D] });
  return entries;
}

/** Tensors a LLaMA checkpoint may carry that the decoder does not load. */
function isIgnoredLlamaTensor(name: string, config: LlamaConfig): boolean {
  // Older transformers versions saved the rotary inverse frequencies as a buffer; a tied
  // checkpoint may still store lm_head.weight as a copy of the embedding.
  return /^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/.test(name) || (config.tieWordEmbeddings === true && name === 'lm_head.weight');
}

/** Sets every lora_A to uniform values in ±1/√in (PEFT's default) and every lora_B to 0. */
export function resetLora(decoder: LlamaDecoder, seed: number): void {
  const rng = new Random(seed);
  for (const layer of decoder.loraLayers()) {
    const [rank, inFeatures] = layer.loraA.shape;
    layer.loraA.assign(rng.uniformArray(rank * inFeatures, 1 / Math.sqrt(inFeatures)));
    layer.loraB.assign(new Float32Array(layer.loraB.size));
  }
}

export interface LoadedLlama {
  model: LlamaDecoder;
  config: LlamaConfig;
}

export interface LlamaLoadOptions {
  /** LoRA settings of the decoder's LoRALinear layers (default: rank 16, alpha 16, dropout 0.1). */
  lora?: LoraOptions;
  /** Seed of the LoRA A initialisation. */
  seed?: number;
  /**
   * Storage of the frozen projection weights, the token embedding and lm_head (default f32);
   * norms and LoRA factors stay f32. A tied token embedding stays f32 too (see llamaHalfWeights).
   */
  weightDtype?: WeightDtype;
  /** Sets checkpointBlocks in the decoder's config (see LlamaConfig). */
  checkpointBlocks?: boolean;
}

/** Our LLaMA parameters that may be stored as f16: projections, token embedding, lm_head. */
export function isLlamaHalfWeight(ours: string): boolean {
  return ours.endsWith('.base.weight') || ours === 'model.embed_tokens.weight' || ours === 'lm_head.weight';
}

/**
 * Returns the f16 predicate for a decoder of `config`: isLlamaHalfWeight, less the token
 * embedding when it is tied to the output layer, because the tied logits multiply the table
 * with `matmul`, which reads f32 only.
 */
function llamaHalfWeights(config: LlamaConfig): (ours: string) => boolean {
  if (!config.tieWordEmbeddings) return isLlamaHalfWeight;
  return (ours) => ours !== 'model.embed_tokens.weight' && isLlamaHalfWeight(ours);
}

/**
 * Builds a LlamaDecoder from an HF LLaMA folder and loads its weights. Base weights are frozen
 * (requiresGrad false); the LoRA factors require gradients and are switched off.
 */
export async function loadLlama(folder: CheckpointFolder, options: LlamaLoadOptions = {}): Promise<LoadedLlama> {
  const config: LlamaConfig = {
    ...parseLlamaConfig(await readHfConfig(folder), `${folder.name}/config.json`),
    ...(options.checkpointBlocks ? { checkpointBlocks: true } : {}),
  };
  const storage = { weightDtype: options.weightDtype ?? 'f32', storesF16: llamaHalfWeights(config) };
  assertWeightsFitDevice(llamaWeightMap(config), getDevice(), 'LLaMA', storage);
  // TODO: every parameter is allocated in f32 here before loadWeightMap swaps in the f16 copies,
  // so loading with weightDtype 'f16' still peaks at the f32 size (about 25 GiB for Vicuna-7B).
  const model = await buildAndLoad(folder, () => new LlamaDecoder(config, new ZeroRandom(), options.lora ?? PAPER_LORA), () => ({
    entries: llamaWeightMap(config),
    options: {
      model: 'LLaMA',
      ignored: (name) => isIgnoredLlamaTensor(name, config),
      notInCheckpoint: (name) => name.endsWith('.lora_A') || name.endsWith('.lora_B'),
      ...storage,
    },
  }));
  resetLora(model, options.seed ?? 1234);
  model.setRequiresGrad(false);
  for (const parameter of model.loraParameters()) parameter.requiresGrad = true;
  model.setLoraEnabled(false);
  model.eval();
  return { model, config };
}
