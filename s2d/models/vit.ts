// Vision Transformer in the DINOv2 layout: patch embedding, CLS token, learned positions,
// pre-norm blocks with LayerScale and erf GELU, final LayerNorm.
//
// Shapes: B images, S image size, p patch size, P = (S/p)² patches, D width.
import { Embedding, LayerNorm, LayerScale, Linear } from '../../engine/nn/layers.ts';
import { MultiHeadAttention } from '../../engine/nn/attention.ts';
import { Module, ModuleList } from '../../engine/nn/module.ts';
import { add, broadcastTo, gelu, reshape } from '../../engine/ops/index.ts';
import { concat } from '../../engine/ops/shape.ts';
import type { Random } from '../../engine/random.ts';
import { fromHost, parameter, type Tensor } from '../../engine/tensor.ts';

export interface VitConfig {
  imageSize: number;
  patchSize: number;
  channels: number;
  hiddenSize: number;
  layers: number;
  heads: number;
  mlpRatio: number;
  layerNormEps: number;
  layerScaleInit: number;
}

export class VitBlock extends Module {
  readonly norm1: LayerNorm;
  readonly attention: MultiHeadAttention;
  readonly layerScale1: LayerScale;
  readonly norm2: LayerNorm;
  readonly fc1: Linear;
  readonly fc2: Linear;
  readonly layerScale2: LayerScale;

  constructor(config: VitConfig, rng: Random) {
    super();
    const { hiddenSize: width, heads, mlpRatio, layerNormEps, layerScaleInit } = config;
    this.norm1 = this.addModule('norm1', new LayerNorm(width, layerNormEps));
    this.attention = this.addModule('attention', new MultiHeadAttention(width, heads, rng));
    this.layerScale1 = this.addModule('layer_scale1', new LayerScale(width, layerScaleInit));
    this.norm2 = this.addModule('norm2', new LayerNorm(width, layerNormEps));
    this.fc1 = this.addModule('mlp.fc1', new Linear(width, width * mlpRatio, rng));
    this.fc2 = this.addModule('mlp.fc2', new Linear(width * mlpRatio, width, rng));
    this.layerScale2 = this.addModule('layer_scale2', new LayerScale(width, layerScaleInit));
  }

  forward(x: Tensor): Tensor {
    const attended = add(x, this.layerScale1.forward(this.attention.forward(this.norm1.forward(x))));
    const hidden = this.fc2.forward(gelu(this.fc1.forward(this.norm2.forward(attended))));
    return add(attended, this.layerScale2.forward(hidden));
  }
}

export class VisionTransformer extends Module {
  readonly patchEmbed: Linear;
  readonly clsToken: Tensor;
  readonly positions: Embedding;
  readonly blocks: ModuleList<VitBlock>;
  readonly norm: LayerNorm;

  constructor(readonly config: VitConfig, rng: Random) {
    super();
    const { imageSize, patchSize, channels, hiddenSize: width, layers } = config;
    if (imageSize % patchSize !== 0) {
      throw new Error(`vit: image size ${imageSize} is not a multiple of patch size ${patchSize}`);
    }
    const patches = (imageSize / patchSize) ** 2;
    this.patchEmbed = this.addModule('patch_embed', new Linear(channels * patchSize * patchSize, width, rng));
    this.clsToken = this.addParameter('cls_token', parameter(rng.normalArray(width, 0.02), [1, 1, width]));
    this.positions = this.addModule('position_embeddings', new Embedding(patches + 1, width, rng));
    this.blocks = this.addModule('layers', new ModuleList(Array.from({ length: layers }, () => new VitBlock(config, rng))));
    this.norm = this.addModule('layernorm', new LayerNorm(width, config.layerNormEps));
  }

  get patchCount(): number {
    return (this.config.imageSize / this.config.patchSize) ** 2;
  }

  /** patches [B, P, C·p·p] (from `patchify`) → features [B, 1 + P, D], CLS first. */
  forward(patches: Tensor): Tensor {
    const [batch, count] = patches.shape;
    const width = this.config.hiddenSize;
    const embedded = this.patchEmbed.forward(patches);
    const cls = broadcastTo(this.clsToken, [batch, 1, width]);
    const ids = new Int32Array(count + 1).map((_, i) => i);
    const positions = reshape(this.positions.forward(fromHost(ids, [count + 1])), [1, count + 1, width]);
    let x = add(concat([cls, embedded], 1), positions);
    for (const block of this.blocks.items) x = block.forward(x);
    return this.norm.forward(x);
  }
}

/**
 * Cuts a channel-first image [C, S, S] into patches [P, C·p·p], each flattened in (channel,
 * row, column) order: the order of a Conv2d patch-embedding weight [D, C, p, p].
 */
export function patchify(image: Float32Array, channels: number, size: number, patchSize: number): Float32Array {
  const perSide = size / patchSize;
  const patchLength = channels * patchSize * patchSize;
  const out = new Float32Array(perSide * perSide * patchLength);
  for (let py = 0; py < perSide; py++) {
    for (let px = 0; px < perSide; px++) {
      const base = (py * perSide + px) * patchLength;
      let offset = 0;
      for (let c = 0; c < channels; c++) {
        for (let y = 0; y < patchSize; y++) {
          const row = (c * size + py * patchSize + y) * size + px * patchSize;
          for (let x = 0; x < patchSize; x++) out[base + offset++] = image[row + x];
        }
      }
    }
  }
  return out;
}
