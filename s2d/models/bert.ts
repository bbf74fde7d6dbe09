// BERT-style text encoder: word (+ token type) + position embeddings, post-norm blocks
// (LayerNorm after each residual add), erf GELU; plus a masked-LM head used to pretrain it.
//
// Shapes: B texts, T tokens, D width, V vocabulary.
import { Embedding, LayerNorm, Linear } from '../../engine/nn/layers.ts';
import { MultiHeadAttention } from '../../engine/nn/attention.ts';
import { Module, ModuleList } from '../../engine/nn/module.ts';
import { add, gelu, reshape } from '../../engine/ops/index.ts';
import { slice } from '../../engine/ops/shape.ts';
import type { Random } from '../../engine/random.ts';
import { checkpoint } from '../../engine/checkpoint.ts';
import { fromHost, type Tensor } from '../../engine/tensor.ts';

export interface BertConfig {
  vocabSize: number;
  hiddenSize: number;
  layers: number;
  heads: number;
  intermediateSize: number;
  maxPositions: number;
  layerNormEps: number;
  /**
   * Rows of the token type (segment) table that HF BERT checkpoints carry; 0 or absent for
   * none. Text without type ids uses type 0, as a single-segment HF input does.
   */
  typeVocabSize?: number;
  /**
   * Recomputes each block's activations in the backward pass instead of keeping them
   * (activation checkpointing): less memory for one extra forward per block when training.
   */
  checkpointBlocks?: boolean;
}

export class BertLayer extends Module {
  readonly attention: MultiHeadAttention;
  readonly attentionNorm: LayerNorm;
  readonly intermediate: Linear;
  readonly output: Linear;
  readonly outputNorm: LayerNorm;

  constructor(config: BertConfig, rng: Random) {
    super();
    const { hiddenSize: width, heads, intermediateSize, layerNormEps } = config;
    this.attention = this.addModule('attention', new MultiHeadAttention(width, heads, rng));
    this.attentionNorm = this.addModule('attention_norm', new LayerNorm(width, layerNormEps));
    this.intermediate = this.addModule('intermediate', new Linear(width, intermediateSize, rng));
    this.output = this.addModule('output', new Linear(intermediateSize, width, rng));
    this.outputNorm = this.addModule('output_norm', new LayerNorm(width, layerNormEps));
  }

  forward(x: Tensor, keyLengths: Tensor): Tensor {
    const attended = this.attentionNorm.forward(add(x, this.attention.forward(x, x, { keyLengths })));
    const hidden = this.output.forward(gelu(this.intermediate.forward(attended)));
    return this.outputNorm.forward(add(attended, hidden));
  }
}

export class TextEncoder extends Module {
  readonly wordEmbeddings: Embedding;
  readonly positionEmbeddings: Embedding;
  readonly tokenTypeEmbeddings: Embedding | null;
  readonly embeddingNorm: LayerNorm;
  readonly layers: ModuleList<BertLayer>;
  /** Checkpoints every block while recording gradients; starts as config.checkpointBlocks. */
  checkpointBlocks: boolean;

  constructor(readonly config: BertConfig, rng: Random) {
    super();
    const { vocabSize, hiddenSize: width, maxPositions, layerNormEps, layers } = config;
    this.wordEmbeddings = this.addModule('embeddings.word_embeddings', new Embedding(vocabSize, width, rng));
    this.positionEmbeddings = this.addModule('embeddings.position_embeddings', new Embedding(maxPositions, width, rng));
    const typeVocabSize = config.typeVocabSize ?? 0;
    this.tokenTypeEmbeddings = typeVocabSize > 0 ? this.addModule('embeddings.token_type_embeddings', new Embedding(typeVocabSize, width, rng)) : null;
    this.embeddingNorm = this.addModule('embeddings.LayerNorm', new LayerNorm(width, layerNormEps));
    this.layers = this.addModule('encoder.layer', new ModuleList(Array.from({ length: layers }, () => new BertLayer(config, rng))));
    this.checkpointBlocks = config.checkpointBlocks ?? false;
  }

  /**
   * ids i32 [B, T] (right-padded), lengths i32 [B] → hidden states [B, T, D]. `tokenTypeIds`
   * i32 [B, T] selects token type rows; without it every token has type 0.
   */
  forward(ids: Tensor, lengths: Tensor, tokenTypeIds?: Tensor): Tensor {
    const seqLen = ids.shape[1];
    const width = this.config.hiddenSize;
    if (seqLen > this.config.maxPositions) {
      throw new Error(`text encoder: ${seqLen} tokens exceed maxPositions ${this.config.maxPositions}; truncate the text`);
    }
    const positionIds = fromHost(new Int32Array(seqLen).map((_, i) => i), [seqLen]);
    const positions = reshape(this.positionEmbeddings.forward(positionIds), [1, seqLen, width]);

    // HF BertEmbeddings order: (word + token type) + position, then LayerNorm.
    let embedded = this.wordEmbeddings.forward(ids);
    if (this.tokenTypeEmbeddings) {
      const types = tokenTypeIds
        ? this.tokenTypeEmbeddings.forward(tokenTypeIds)
        : reshape(slice(this.tokenTypeEmbeddings.weight, 0, 0, 1), [1, 1, width]);
      embedded = add(embedded, types);
    } else if (tokenTypeIds) {
      throw new Error('text encoder: token type ids were given, but the encoder has no token type table (typeVocabSize is 0)');
    }
    let x = this.embeddingNorm.forward(add(embedded, positions));
    for (const layer of this.layers.items) {
      x = this.checkpointBlocks ? checkpoint((input) => layer.forward(input, lengths), [x], layer.parameters()) : layer.forward(x, lengths);
    }
    return x;
  }
}

/** Masked-LM head: dense → GELU → LayerNorm → vocabulary logits. */
export class MaskedLmHead extends Module {
  readonly dense: Linear;
  readonly norm: LayerNorm;
  readonly decoder: Linear;

  constructor(config: BertConfig, rng: Random) {
    super();
    this.dense = this.addModule('transform.dense', new Linear(config.hiddenSize, config.hiddenSize, rng));
    this.norm = this.addModule('transform.LayerNorm', new LayerNorm(config.hiddenSize, config.layerNormEps));
    this.decoder = this.addModule('decoder', new Linear(config.hiddenSize, config.vocabSize, rng));
  }

  forward(hidden: Tensor): Tensor {
    return this.decoder.forward(this.norm.forward(gelu(this.dense.forward(hidden))));
  }
}
