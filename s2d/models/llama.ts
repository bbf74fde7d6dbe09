// LLaMA-style causal decoder: RMSNorm, rotate-half RoPE, SwiGLU MLP, untied LM head. Every
// linear layer of the blocks is a LoRALinear whose update is off until `enableLora()`.
//
// Shapes: B sequences, T positions, D width, H heads, Dh = D / H, V vocabulary.
import { applyRope, mergeHeads, ropeTables, scaledDotProductAttention, splitHeads } from '../../engine/nn/attention.ts';
import { Embedding, Linear, LoRALinear, RMSNorm, type LoraOptions } from '../../engine/nn/layers.ts';
import { Module, ModuleList } from '../../engine/nn/module.ts';
import { add, mul, silu } from '../../engine/ops/index.ts';
import type { Random } from '../../engine/random.ts';
import { noGrad, type Tensor } from '../../engine/tensor.ts';

export interface LlamaConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  layers: number;
  heads: number;
  ropeTheta: number;
  rmsNormEps: number;
  maxPositions: number;
}

export class LlamaAttention extends Module {
  readonly qProj: LoRALinear;
  readonly kProj: LoRALinear;
  readonly vProj: LoRALinear;
  readonly oProj: LoRALinear;

  constructor(readonly config: LlamaConfig, rng: Random, lora: LoraOptions) {
    super();
    const width = config.hiddenSize;
    this.qProj = this.addModule('q_proj', new LoRALinear(width, width, rng, lora, { bias: false }));
    this.kProj = this.addModule('k_proj', new LoRALinear(width, width, rng, lora, { bias: false }));
    this.vProj = this.addModule('v_proj', new LoRALinear(width, width, rng, lora, { bias: false }));
    this.oProj = this.addModule('o_proj', new LoRALinear(width, width, rng, lora, { bias: false }));
  }

  forward(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
    const heads = this.config.heads;
    const q = applyRope(splitHeads(this.qProj.forward(x), heads), cos, sin);
    const k = applyRope(splitHeads(this.kProj.forward(x), heads), cos, sin);
    const v = splitHeads(this.vProj.forward(x), heads);
    return this.oProj.forward(mergeHeads(scaledDotProductAttention(q, k, v, { causal: true })));
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

  forward(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
    const attended = add(x, this.attention.forward(this.inputNorm.forward(x), cos, sin));
    return add(attended, this.mlp.forward(this.postAttentionNorm.forward(attended)));
  }
}

export class LlamaDecoder extends Module {
  readonly embedTokens: Embedding;
  readonly layers: ModuleList<LlamaLayer>;
  readonly norm: RMSNorm;
  readonly lmHead: Linear;

  constructor(readonly config: LlamaConfig, rng: Random, readonly lora: LoraOptions) {
    super();
    const { vocabSize, hiddenSize: width, layers } = config;
    this.embedTokens = this.addModule('model.embed_tokens', new Embedding(vocabSize, width, rng));
    this.layers = this.addModule('model.layers', new ModuleList(Array.from({ length: layers }, () => new LlamaLayer(config, rng, lora))));
    this.norm = this.addModule('model.norm', new RMSNorm(width, config.rmsNormEps));
    this.lmHead = this.addModule('lm_head', new Linear(width, vocabSize, rng, { bias: false }));
  }

  /** All LoRALinear layers of the blocks. */
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

  /** Switches the LoRA update on or off in every block. */
  setLoraEnabled(enabled: boolean): void {
    for (const layer of this.loraLayers()) layer.loraEnabled = enabled;
  }

  embed(ids: Tensor): Tensor {
    return this.embedTokens.forward(ids);
  }

  /** inputs [B, T, D] (embedded tokens, possibly after a soft-token prefix) → hidden [B, T, D]. */
  forwardHidden(inputs: Tensor): Tensor {
    const seqLen = inputs.shape[1];
    if (seqLen > this.config.maxPositions) {
      throw new Error(`decoder: sequence of ${seqLen} positions exceeds maxPositions ${this.config.maxPositions}; shorten the report or the context`);
    }
    const headDim = this.config.hiddenSize / this.config.heads;
    const { cos, sin } = noGrad(() => ropeTables(seqLen, headDim, this.config.ropeTheta));
    let x = inputs;
    for (const layer of this.layers.items) x = layer.forward(x, cos, sin);
    return this.norm.forward(x);
  }

  logits(hidden: Tensor): Tensor {
    return this.lmHead.forward(hidden);
  }
}
