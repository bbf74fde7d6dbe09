// LLaMA-style causal decoder: RMSNorm, rotate-half RoPE, SwiGLU MLP, an LM head of its own or
// tied to the token embedding, and grouped-query attention when there are fewer key/value
// heads than query heads. Every linear layer of the blocks is a LoRALinear whose update is
// off until `setLoraEnabled(true)`.
//
// Shapes: B sequences, T positions, D width, H heads, Hkv key/value heads, Dh = D / H,
// V vocabulary.
import { applyRope, mergeHeads, ropeTables, scaledDotProductAttention, splitHeads } from '../../engine/nn/attention.ts';
import { Embedding, Linear, LoRALinear, RMSNorm, type LoraOptions } from '../../engine/nn/layers.ts';
import { Module, ModuleList } from '../../engine/nn/module.ts';
import { add, affine, broadcastTo, gather, matmul, mul, reshape, silu } from '../../engine/ops/index.ts';
import { concat } from '../../engine/ops/shape.ts';
import type { Random } from '../../engine/random.ts';
import { checkpoint } from '../../engine/checkpoint.ts';
import { fromHost, keep, noGrad, tidy, type Tensor } from '../../engine/tensor.ts';

export interface LlamaConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  layers: number;
  heads: number;
  ropeTheta: number;
  rmsNormEps: number;
  maxPositions: number;
  /** Key/value heads (HF num_key_value_heads); defaults to `heads`. Must divide `heads`. */
  kvHeads?: number;
  /** The LM head reuses the token embedding [V, D] (HF tie_word_embeddings). */
  tieWordEmbeddings?: boolean;
  /**
   * Computes RoPE angles in f32 arithmetic as HF LlamaRotaryEmbedding does, instead of f64.
   * The two differ by up to one f32 rounding of the angle, which grows with the position.
   */
  ropeFloat32Angles?: boolean;
  /**
   * Recomputes each block's activations in the backward pass instead of keeping them
   * (activation checkpointing): less memory for one extra forward per block when training.
   */
  checkpointBlocks?: boolean;
}

/**
 * cos and sin tables [T, Dh] for positions offset..offset+T-1, rounded to f32 at each step
 * the way HF LlamaRotaryEmbedding computes them: inv_freq = 1 / theta^(2i/Dh) and
 * angle = inv_freq · position in f32, then cos and sin of that f32 angle.
 */
export function float32RopeTables(seqLen: number, headDim: number, theta: number, offset = 0): { cos: Tensor; sin: Tensor } {
  const half = headDim / 2;
  const f32 = Math.fround;
  const inverseFrequencies = Array.from({ length: half }, (_, i) => f32(1 / f32(f32(theta) ** f32((2 * i) / headDim))));
  const cos = new Float32Array(seqLen * headDim);
  const sin = new Float32Array(seqLen * headDim);
  for (let t = 0; t < seqLen; t++) {
    for (let i = 0; i < half; i++) {
      const angle = f32(inverseFrequencies[i] * (t + offset));
      for (const column of [i, i + half]) {
        cos[t * headDim + column] = Math.cos(angle);
        sin[t * headDim + column] = Math.sin(angle);
      }
    }
  }
  return { cos: fromHost(cos, [seqLen, headDim]), sin: fromHost(sin, [seqLen, headDim]) };
}

/** Repeats each of Hkv heads H / Hkv times: [B, Hkv, T, Dh] → [B, H, T, Dh] (HF repeat_kv). */
export function repeatKeyValueHeads(x: Tensor, heads: number): Tensor {
  const [batch, kvHeads, seqLen, headDim] = x.shape;
  if (kvHeads === heads) return x;
  const groups = heads / kvHeads;
  const expanded = broadcastTo(reshape(x, [batch, kvHeads, 1, seqLen, headDim]), [batch, kvHeads, groups, seqLen, headDim]);
  return reshape(expanded, [batch, heads, seqLen, headDim]);
}

export class LlamaAttention extends Module {
  readonly qProj: LoRALinear;
  readonly kProj: LoRALinear;
  readonly vProj: LoRALinear;
  readonly oProj: LoRALinear;

  constructor(readonly config: LlamaConfig, rng: Random, lora: LoraOptions) {
    super();
    const { hiddenSize: width, heads } = config;
    const kvHeads = config.kvHeads ?? heads;
    if (width % heads !== 0 || heads % kvHeads !== 0) {
      throw new Error(`decoder: width ${width}, ${heads} heads and ${kvHeads} key/value heads do not fit; the width must divide by the heads and the heads by the key/value heads`);
    }
    const kvWidth = (width / heads) * kvHeads;
    this.qProj = this.addModule('q_proj', new LoRALinear(width, width, rng, lora, { bias: false }));
    this.kProj = this.addModule('k_proj', new LoRALinear(width, kvWidth, rng, lora, { bias: false }));
    this.vProj = this.addModule('v_proj', new LoRALinear(width, kvWidth, rng, lora, { bias: false }));
    this.oProj = this.addModule('o_proj', new LoRALinear(width, width, rng, lora, { bias: false }));
  }

  /**
   * x [B, T, D] → [B, T, D]. With `cache`, x contains the positions after the cached ones, and their
   * keys and values are appended to layer `layer` of the cache.
   */
  forward(x: Tensor, cos: Tensor, sin: Tensor, cache?: KvCache, layer = 0): Tensor {
    const heads = this.config.heads;
    const kvHeads = this.config.kvHeads ?? heads;
    const q = applyRope(splitHeads(this.qProj.forward(x), heads), cos, sin);
    let k = applyRope(splitHeads(this.kProj.forward(x), kvHeads), cos, sin);
    let v = splitHeads(this.vProj.forward(x), kvHeads);
    const queryOffset = cache ? cache.length : 0;
    if (cache) [k, v] = cache.append(layer, k, v);
    const attended = scaledDotProductAttention(q, repeatKeyValueHeads(k, heads), repeatKeyValueHeads(v, heads), { causal: true, queryOffset });
    return this.oProj.forward(mergeHeads(attended));
  }
}

export class LlamaMlp extends Module {
  readonly gateProj: LoRALinear;
  readonly upProj: LoRALinear;
  readonly downProj: LoRALinear;

  constructor(config: LlamaConfig, rng: Random, lora: LoraOptions) {
    super();
    const { hiddenSize: width, intermediateSize } = config;
    this.gateProj = this.addModule('gate_proj', new LoRALinear(width, intermediateSize, rng, lora, { bias: false }));
    this.upProj = this.addModule('up_proj', new LoRALinear(width, intermediateSize, rng, lora, { bias: false }));
    this.downProj = this.addModule('down_proj', new LoRALinear(intermediateSize, width, rng, lora, { bias: false }));
  }

  /** down(silu(gate(x)) · up(x)). */
  forward(x: Tensor): Tensor {
    return this.downProj.forward(mul(silu(this.gateProj.forward(x)), this.upProj.forward(x)));
  }
}

export class LlamaLayer extends Module {
  readonly inputNorm: RMSNorm;
  readonly attention: LlamaAttention;
  readonly postAttentionNorm: RMSNorm;
  readonly mlp: LlamaMlp;

  constructor(config: LlamaConfig, rng: Random, lora: LoraOptions) {
    super();
    this.inputNorm = this.addModule('input_layernorm', new RMSNorm(config.hiddenSize, config.rmsNormEps));
    this.attention = this.addModule('self_attn', new LlamaAttention(config, rng, lora));
    this.postAttentionNorm = this.addModule('post_attention_layernorm', new RMSNorm(config.hiddenSize, config.rmsNormEps));
    this.mlp = this.addModule('mlp', new LlamaMlp(config, rng, lora));
  }

  forward(x: Tensor, cos: Tensor, sin: Tensor, cache?: KvCache, layer = 0): Tensor {
    const attended = add(x, this.attention.forward(this.inputNorm.forward(x), cos, sin, cache, layer));
    return add(attended, this.mlp.forward(this.postAttentionNorm.forward(attended)));
  }
}

export class LlamaDecoder extends Module {
  readonly embedTokens: Embedding;
  readonly layers: ModuleList<LlamaLayer>;
  readonly norm: RMSNorm;
  /** Null when the LM head is tied to the token embedding. */
  readonly lmHead: Linear | null;
  /** Checkpoints every block while recording gradients without a cache; starts as config.checkpointBlocks. */
  checkpointBlocks: boolean;

  constructor(readonly config: LlamaConfig, rng: Random, readonly lora: LoraOptions) {
    super();
    const { vocabSize, hiddenSize: width, layers } = config;
    this.embedTokens = this.addModule('model.embed_tokens', new Embedding(vocabSize, width, rng));
    this.layers = this.addModule('model.layers', new ModuleList(Array.from({ length: layers }, () => new LlamaLayer(config, rng, lora))));
    this.norm = this.addModule('model.norm', new RMSNorm(width, config.rmsNormEps));
    this.lmHead = config.tieWordEmbeddings ? null : this.addModule('lm_head', new Linear(width, vocabSize, rng, { bias: false }));
    this.checkpointBlocks = config.checkpointBlocks ?? false;
  }

  /** Returns every LoRALinear layer of the blocks. */
  loraLayers(): LoRALinear[] {
    const out: LoRALinear[] = [];
    for (const layer of this.layers.items) {
      const { qProj, kProj, vProj, oProj } = layer.attention;
      const { gateProj, upProj, downProj } = layer.mlp;
      out.push(qProj, kProj, vProj, oProj, gateProj, upProj, downProj);
    }
    return out;
  }

  loraParameters(): Tensor[] {
    return this.loraLayers().flatMap((layer) => [layer.loraA, layer.loraB]);
  }

  /** Folds every block's LoRA update into its base weight (for inference), or takes it out again. */
  setLoraMerged(merged: boolean): void {
    for (const layer of this.loraLayers()) {
      if (merged) layer.merge();
      else layer.unmerge();
    }
  }

  /** Switches the LoRA update on or off in every block. */
  setLoraEnabled(enabled: boolean): void {
    for (const layer of this.loraLayers()) layer.loraEnabled = enabled;
  }

  embed(ids: Tensor): Tensor {
    return this.embedTokens.forward(ids);
  }

  /**
   * inputs [B, T, D] (embedded tokens, possibly after a soft-token prefix) → hidden [B, T, D].
   * With `cache`, inputs continue the cached positions, and the cache grows by T.
   */
  forwardHidden(inputs: Tensor, cache?: KvCache): Tensor {
    const seqLen = inputs.shape[1];
    const offset = cache ? cache.length : 0;
    if (offset + seqLen > this.config.maxPositions) {
      throw new Error(`decoder: sequence of ${offset + seqLen} positions exceeds maxPositions ${this.config.maxPositions}; shorten the report or the context`);
    }
    const headDim = this.config.hiddenSize / this.config.heads;
    const tables = this.config.ropeFloat32Angles ? float32RopeTables : ropeTables;
    const { cos, sin } = noGrad(() => tables(seqLen, headDim, this.config.ropeTheta, offset));
    let x = inputs;
    this.layers.items.forEach((layer, i) => {
      if (this.checkpointBlocks && !cache) x = checkpoint((input) => layer.forward(input, cos, sin), [x], layer.parameters());
      else x = layer.forward(x, cos, sin, cache, i);
    });
    if (cache) cache.length += seqLen;
    return this.norm.forward(x);
  }

  /** Creates an empty key/value cache for incremental decoding with `forwardHidden`. */
  createCache(): KvCache {
    return new KvCache(this.config.layers);
  }

  /** hidden [..., D] → logits [..., V]. */
  logits(hidden: Tensor): Tensor {
    if (this.lmHead) return this.lmHead.forward(hidden);
    const leading = hidden.shape.slice(0, -1);
    const rows = leading.reduce((p, d) => p * d, 1);
    const flat = reshape(hidden, [rows, this.config.hiddenSize]);
    return reshape(matmul(flat, this.embedTokens.weight, { transB: true }), [...leading, this.config.vocabSize]);
  }
}

/**
 * Keys and values of the positions decoded so far, per layer, each [B, Hkv, T, Dh] after RoPE.
 * The tensors are kept out of tidy scopes; `dispose()` frees them.
 */
export class KvCache {
  /** Positions cached so far. */
  length = 0;
  private readonly keys: Array<Tensor | null>;
  private readonly values: Array<Tensor | null>;

  constructor(layers: number) {
    this.keys = new Array(layers).fill(null);
    this.values = new Array(layers).fill(null);
  }

  /** Appends new keys and values [B, Hkv, T, Dh] to `layer`; returns the full ones. */
  append(layer: number, k: Tensor, v: Tensor): [Tensor, Tensor] {
    const oldKeys = this.keys[layer];
    const oldValues = this.values[layer];
    const keys = keep(oldKeys ? concat([oldKeys, k], 2) : copyOf(k));
    const values = keep(oldValues ? concat([oldValues, v], 2) : copyOf(v));
    oldKeys?.dispose();
    oldValues?.dispose();
    this.keys[layer] = keys;
    this.values[layer] = values;
    return [keys, values];
  }

  /**
   * Keeps the batch rows `rows` of every layer's keys and values, in that order (rows may
   * repeat), e.g. the parent of each beam after a beam-search step.
   */
  selectRows(rows: readonly number[]): void {
    for (const store of [this.keys, this.values]) {
      store.forEach((tensor, layer) => {
        if (!tensor) return;
        store[layer] = keep(noGrad(() => tidy(() => gather(tensor, 0, rows))));
        tensor.dispose();
      });
    }
  }

  dispose(): void {
    for (const t of [...this.keys, ...this.values]) t?.dispose();
    this.keys.fill(null);
    this.values.fill(null);
    this.length = 0;
  }
}

/** Copies `x` into its own storage, so disposing the original leaves the copy intact. */
function copyOf(x: Tensor): Tensor {
  return affine(x, 1);
}
