// Shallow-to-Deep Memory Adapter (SMA): learnable memory queries read input features by
// multi-head cross-attention, then a 3-layer MLP and LayerNorm, projected to the decoder width.
// The memory bank is owned by the S2D-Align model and shared by all adapters.
//
// Shapes: B batch, N memory queries, T input features, Dm memory width, Dl decoder width.
import { MultiHeadAttention, type AttentionMask } from '../../engine/nn/attention.ts';
import { LayerNorm, Linear } from '../../engine/nn/layers.ts';
import { Module } from '../../engine/nn/module.ts';
import { add, broadcastTo, gelu } from '../../engine/ops/index.ts';
import type { Random } from '../../engine/random.ts';
import type { Tensor } from '../../engine/tensor.ts';

export interface SmaConfig {
  inputWidth: number;
  memoryWidth: number;
  heads: number;
  mlpWidth: number;
  outputWidth: number;
}

export class MemoryAdapter extends Module {
  readonly inputProj: Linear;
  readonly crossAttention: MultiHeadAttention;
  readonly attentionNorm: LayerNorm;
  readonly mlp1: Linear;
  readonly mlp2: Linear;
  readonly mlp3: Linear;
  readonly norm: LayerNorm;
  readonly outputProj: Linear;

  constructor(readonly config: SmaConfig, rng: Random) {
    super();
    const { inputWidth, memoryWidth, heads, mlpWidth, outputWidth } = config;
    this.inputProj = this.addModule('input_proj', new Linear(inputWidth, memoryWidth, rng));
    this.crossAttention = this.addModule('cross_attention', new MultiHeadAttention(memoryWidth, heads, rng));
    this.attentionNorm = this.addModule('attention_norm', new LayerNorm(memoryWidth));
    this.mlp1 = this.addModule('mlp.0', new Linear(memoryWidth, mlpWidth, rng));
    this.mlp2 = this.addModule('mlp.1', new Linear(mlpWidth, mlpWidth, rng));
    this.mlp3 = this.addModule('mlp.2', new Linear(mlpWidth, memoryWidth, rng));
    this.norm = this.addModule('norm', new LayerNorm(memoryWidth));
    this.outputProj = this.addModule('output_proj', new Linear(memoryWidth, outputWidth, rng));
  }

  /** Cross-attention probabilities [B, H, N, T] of the memory queries over the features. */
  attentionWeights(memory: Tensor, features: Tensor, mask: AttentionMask = {}): Tensor {
    const batch = features.shape[0];
    const [count, width] = memory.shape;
    const queries = broadcastTo(memory, [batch, count, width]);
    return this.crossAttention.attentionWeights(queries, this.inputProj.forward(features), mask);
  }

  /** memory [N, Dm], features [B, T, inputWidth] → soft tokens [B, N, Dl]. */
  forward(memory: Tensor, features: Tensor, mask: AttentionMask = {}): Tensor {
    const batch = features.shape[0];
    const [count, width] = memory.shape;
    const queries = broadcastTo(memory, [batch, count, width]);
    const context = this.inputProj.forward(features);
    const attended = this.attentionNorm.forward(add(queries, this.crossAttention.forward(queries, context, mask)));
    const hidden = this.mlp3.forward(gelu(this.mlp2.forward(gelu(this.mlp1.forward(attended)))));
    return this.outputProj.forward(this.norm.forward(add(attended, hidden)));
  }
}
