// Vision Transformer in the DINOv2 layout: patch embedding, CLS token, learned positions,
// pre-norm blocks with LayerScale and erf GELU, final LayerNorm. Images whose patch grid
// differs from the position table's grid get bicubically interpolated position embeddings,
// as HF transformers' Dinov2Model does.
//
// Shapes: B images, S image size, p patch size, P = (S/p)² patches, D width.
import { Embedding, LayerNorm, LayerScale, Linear } from '../../engine/nn/layers.ts';
import { MultiHeadAttention } from '../../engine/nn/attention.ts';
import { Module, ModuleList } from '../../engine/nn/module.ts';
import { add, broadcastTo, gelu, matmul, reshape } from '../../engine/ops/index.ts';
import { concat, slice } from '../../engine/ops/shape.ts';
import type { Random } from '../../engine/random.ts';
import { checkpoint } from '../../engine/checkpoint.ts';
import { fromHost, parameter, type Tensor } from '../../engine/tensor.ts';
import { bicubicMatrix, type InterpolationConvention } from './position-interpolation.ts';

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
  /**
   * Resize rule for position embeddings on another patch grid: 'size' (the default, as in
   * current HF transformers) or 'scale-factor' (earlier transformers releases, which pass
   * (grid + 0.1) / n as the scale factor). See position-interpolation.ts.
   */
  positionInterpolation?: InterpolationConvention;
  /**
   * Recomputes each block's activations in the backward pass instead of keeping them
   * (activation checkpointing): less memory for one extra forward per block when training.
   */
  checkpointBlocks?: boolean;
}

/** Patch rows and columns of one image. */
export interface PatchGrid {
  rows: number;
  columns: number;
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
    // int(hidden_size · mlp_ratio), as HF Dinov2MLP sizes it; mlp_ratio need not be an integer.
    const mlpWidth = Math.trunc(width * mlpRatio);
    this.norm1 = this.addModule('norm1', new LayerNorm(width, layerNormEps));
    this.attention = this.addModule('attention', new MultiHeadAttention(width, heads, rng));
    this.layerScale1 = this.addModule('layer_scale1', new LayerScale(width, layerScaleInit));
    this.norm2 = this.addModule('norm2', new LayerNorm(width, layerNormEps));
    this.fc1 = this.addModule('mlp.fc1', new Linear(width, mlpWidth, rng));
    this.fc2 = this.addModule('mlp.fc2', new Linear(mlpWidth, width, rng));
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
  /** Checkpoints every block while recording gradients; starts as config.checkpointBlocks. */
  checkpointBlocks: boolean;

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
    this.checkpointBlocks = config.checkpointBlocks ?? false;
  }

  get patchCount(): number {
    return (this.config.imageSize / this.config.patchSize) ** 2;
  }

  /** Patches per side of the position table (the checkpoint's grid). */
  get positionGridSide(): number {
    return this.config.imageSize / this.config.patchSize;
  }

  /**
   * Position embeddings [1, 1 + P, D] for a rows × columns patch grid: the table itself for
   * the table's own square grid, otherwise the CLS row followed by the patch rows resized
   * bicubically (align_corners=False) to the new grid.
   */
  positionEmbeddings(grid: PatchGrid): Tensor {
    const { rows, columns } = grid;
    const width = this.config.hiddenSize;
    const side = this.positionGridSide;
    const count = rows * columns;
    if (rows === side && columns === side) {
      const ids = new Int32Array(count + 1).map((_, i) => i);
      return reshape(this.positions.forward(fromHost(ids, [count + 1])), [1, count + 1, width]);
    }

    // Bicubic resizing is separable: first mix table rows into output rows, then columns.
    const convention = this.config.positionInterpolation ?? 'size';
    const rowWeights = fromHost(bicubicMatrix(side, rows, convention), [rows, side]);
    const columnWeights = fromHost(bicubicMatrix(side, columns, convention), [columns, side]);
    const table = this.positions.weight;
    const cls = slice(table, 0, 0, 1);
    const patchTable = reshape(slice(table, 0, 1, side * side + 1), [side, side * width]);
    const mixedRows = reshape(matmul(rowWeights, patchTable), [rows, side, width]);
    const mixed = matmul(columnWeights, mixedRows); // [rows, columns, D]
    return reshape(concat([cls, reshape(mixed, [count, width])], 0), [1, count + 1, width]);
  }

  /**
   * patches [B, P, C·p·p] (from `patchify`) → features [B, 1 + P, D], CLS first. `grid` gives
   * the patch rows and columns; without it the patches form a square grid.
   */
  forward(patches: Tensor, grid?: PatchGrid): Tensor {
    const [batch, count] = patches.shape;
    const width = this.config.hiddenSize;
    const side = Math.round(Math.sqrt(count));
    const { rows, columns } = grid ?? { rows: side, columns: side };
    if (rows * columns !== count) {
      throw new Error(`vit: ${count} patches do not form a ${rows} × ${columns} grid; pass the grid of the image that was patchified`);
    }
    const embedded = this.patchEmbed.forward(patches);
    const cls = broadcastTo(this.clsToken, [batch, 1, width]);
    const positions = this.positionEmbeddings({ rows, columns });
    let x = add(concat([cls, embedded], 1), positions);
    for (const block of this.blocks.items) {
      x = this.checkpointBlocks ? checkpoint((input) => block.forward(input), [x], block.parameters()) : block.forward(x);
    }
    return this.norm.forward(x);
  }
}

/**
 * Cuts a channel-first image [C, H, W] (H = `size`, W = `imageWidth`, square by default) into
 * patches [P, C·p·p] in row-major grid order, each flattened in (channel, row, column) order:
 * the order of a Conv2d patch-embedding weight [D, C, p, p].
 */
export function patchify(image: Float32Array, channels: number, size: number, patchSize: number, imageWidth = size): Float32Array {
  const height = size;
  if (height % patchSize !== 0 || imageWidth % patchSize !== 0) {
    throw new Error(`patchify: image ${height} × ${imageWidth} is not a multiple of the patch size ${patchSize}; resize or crop it first`);
  }
  const rows = height / patchSize;
  const columns = imageWidth / patchSize;
  const patchLength = channels * patchSize * patchSize;
  const out = new Float32Array(rows * columns * patchLength);
  for (let py = 0; py < rows; py++) {
    for (let px = 0; px < columns; px++) {
      const base = (py * columns + px) * patchLength;
      let offset = 0;
      for (let c = 0; c < channels; c++) {
        for (let y = 0; y < patchSize; y++) {
          const row = (c * height + py * patchSize + y) * imageWidth + px * patchSize;
          for (let x = 0; x < patchSize; x++) out[base + offset++] = image[row + x];
        }
      }
    }
  }
  return out;
}
