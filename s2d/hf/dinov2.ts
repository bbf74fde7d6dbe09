// HF `Dinov2Model` checkpoints (Rad-DINO is one) as our VisionTransformer: config.json fields,
// the name map, and loading.
//
// Layout differences handled here: the Conv2d patch projection [D, C, p, p] is our patch
// Linear [D, C·p·p], with the same element order (see `patchify`). The position table
// [1, 1 + n², D] is our Embedding [1 + n², D]. `embeddings.mask_token` is used only in
// masked-image pretraining, so it is not loaded.
import { getDevice } from '../../engine/devices.ts';
import type { InterpolationConvention } from '../models/position-interpolation.ts';
import { VisionTransformer, type VitConfig } from '../models/vit.ts';
import { assertWeightsFitDevice, buildAndLoad, ConfigFields, readHfConfig, ZeroRandom, type CheckpointFolder, type WeightDtype, type WeightMapEntry } from './checkpoint.ts';

/** Parses a Dinov2 config.json; absent fields take Dinov2Config's defaults. */
export function parseDinov2Config(config: Record<string, unknown>, where = 'config.json'): VitConfig {
  const fields = new ConfigFields(config, where);
  fields.expect('model_type', ['dinov2'], undefined, 'expected "dinov2" (an HF Dinov2Model checkpoint such as Rad-DINO)');
  fields.expect('hidden_act', ['gelu'], 'gelu', 'only "gelu" (the exact erf form) is implemented');
  fields.expect('use_swiglu_ffn', [false], false, 'the SwiGLU MLP variant of DINOv2 (ViT-g) is not implemented');
  fields.expect('qkv_bias', [true], true, 'attention without query/key/value biases is not implemented');

  const imageSize = config.image_size ?? 224;
  const side = Array.isArray(imageSize) ? imageSize : [imageSize, imageSize];
  if (side.length !== 2 || side[0] !== side[1] || typeof side[0] !== 'number') {
    throw new Error(`${where}: "image_size" is ${JSON.stringify(imageSize)}; expected one number (the position table of Dinov2 is square)`);
  }
  const patchSize = fields.int('patch_size', 14);
  if (side[0] % patchSize !== 0) throw new Error(`${where}: image_size ${side[0]} is not a multiple of patch_size ${patchSize}`);

  return {
    imageSize: side[0],
    patchSize,
    channels: fields.int('num_channels', 3),
    hiddenSize: fields.int('hidden_size', 768),
    layers: fields.int('num_hidden_layers', 12),
    heads: fields.int('num_attention_heads', 12),
    mlpRatio: fields.number('mlp_ratio', 4),
    layerNormEps: fields.number('layer_norm_eps', 1e-6),
    layerScaleInit: fields.number('layerscale_value', 1),
  };
}

/** Checkpoint name → parameter name for every tensor of a Dinov2Model. `prefix` is '' or 'dinov2.'. */
export function dinov2WeightMap(config: VitConfig, prefix = ''): WeightMapEntry[] {
  const { hiddenSize: D, channels: C, patchSize: p, imageSize, layers, mlpRatio } = config;
  const positions = (imageSize / p) ** 2 + 1;
  const mlpWidth = Math.trunc(D * mlpRatio);
  const entries: WeightMapEntry[] = [
    { hf: `${prefix}embeddings.cls_token`, ours: 'cls_token', shape: [1, 1, D] },
    { hf: `${prefix}embeddings.position_embeddings`, ours: 'position_embeddings.weight', shape: [1, positions, D] },
    { hf: `${prefix}embeddings.patch_embeddings.projection.weight`, ours: 'patch_embed.weight', shape: [D, C, p, p] },
    { hf: `${prefix}embeddings.patch_embeddings.projection.bias`, ours: 'patch_embed.bias', shape: [D] },
  ];
  const linear = (hf: string, ours: string, outFeatures: number, inFeatures: number) => {
    entries.push({ hf: `${prefix}${hf}.weight`, ours: `${ours}.weight`, shape: [outFeatures, inFeatures] });
    entries.push({ hf: `${prefix}${hf}.bias`, ours: `${ours}.bias`, shape: [outFeatures] });
  };
  const norm = (hf: string, ours: string) => {
    entries.push({ hf: `${prefix}${hf}.weight`, ours: `${ours}.weight`, shape: [D] });
    entries.push({ hf: `${prefix}${hf}.bias`, ours: `${ours}.bias`, shape: [D] });
  };
  for (let i = 0; i < layers; i++) {
    norm(`encoder.layer.${i}.norm1`, `layers.${i}.norm1`);
    linear(`encoder.layer.${i}.attention.attention.query`, `layers.${i}.attention.q_proj`, D, D);
    linear(`encoder.layer.${i}.attention.attention.key`, `layers.${i}.attention.k_proj`, D, D);
    linear(`encoder.layer.${i}.attention.attention.value`, `layers.${i}.attention.v_proj`, D, D);
    linear(`encoder.layer.${i}.attention.output.dense`, `layers.${i}.attention.out_proj`, D, D);
    entries.push({ hf: `${prefix}encoder.layer.${i}.layer_scale1.lambda1`, ours: `layers.${i}.layer_scale1.lambda1`, shape: [D] });
    norm(`encoder.layer.${i}.norm2`, `layers.${i}.norm2`);
    linear(`encoder.layer.${i}.mlp.fc1`, `layers.${i}.mlp.fc1`, mlpWidth, D);
    linear(`encoder.layer.${i}.mlp.fc2`, `layers.${i}.mlp.fc2`, D, mlpWidth);
    entries.push({ hf: `${prefix}encoder.layer.${i}.layer_scale2.lambda1`, ours: `layers.${i}.layer_scale2.lambda1`, shape: [D] });
  }
  norm('layernorm', 'layernorm');
  return entries;
}

/** Tensors a Dinov2 checkpoint may carry that inference does not use. */
function isIgnoredDinov2Tensor(name: string, prefix: string): boolean {
  // mask_token replaces masked patches in masked-image pretraining; a classifier head belongs
  // to Dinov2ForImageClassification.
  return name === `${prefix}embeddings.mask_token` || name.startsWith('classifier.');
}

export interface LoadedDinov2 {
  model: VisionTransformer;
  config: VitConfig;
}

export interface Dinov2Options {
  /** Position-embedding resize rule for other image sizes (default 'size', current HF). */
  positionInterpolation?: InterpolationConvention;
  /**
   * Storage of the frozen linear weights, the patch projection included (default f32). Norms,
   * biases, LayerScale factors, position embeddings and the CLS token stay f32.
   */
  weightDtype?: WeightDtype;
  /** Sets checkpointBlocks in the ViT's config (see VitConfig). */
  checkpointBlocks?: boolean;
}

const DINOV2_HALF_LINEAR = /^layers\.\d+\.(attention\.(q_proj|k_proj|v_proj|out_proj)|mlp\.fc1|mlp\.fc2)\.weight$/;

/** Our Dinov2 parameters that may be stored as f16: the patch projection and the linear weights of the blocks. */
export function isDinov2HalfWeight(ours: string): boolean {
  return ours === 'patch_embed.weight' || DINOV2_HALF_LINEAR.test(ours);
}

/** Builds a VisionTransformer from an HF Dinov2 folder and loads its weights (frozen, eval mode). */
export async function loadDinov2(folder: CheckpointFolder, options: Dinov2Options = {}): Promise<LoadedDinov2> {
  const config: VitConfig = {
    ...parseDinov2Config(await readHfConfig(folder), `${folder.name}/config.json`),
    positionInterpolation: options.positionInterpolation ?? 'size',
    ...(options.checkpointBlocks ? { checkpointBlocks: true } : {}),
  };
  const storage = { weightDtype: options.weightDtype ?? 'f32', storesF16: isDinov2HalfWeight };
  assertWeightsFitDevice(dinov2WeightMap(config), getDevice(), 'Dinov2', storage);
  const model = await buildAndLoad(folder, () => new VisionTransformer(config, new ZeroRandom()), (weights) => {
    const prefix = weights.names().includes('dinov2.embeddings.cls_token') ? 'dinov2.' : '';
    return { entries: dinov2WeightMap(config, prefix), options: { model: 'Dinov2', ignored: (name) => isIgnoredDinov2Tensor(name, prefix), ...storage } };
  });
  model.setRequiresGrad(false);
  model.eval();
  return { model, config };
}
