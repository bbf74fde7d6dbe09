// The S2D-Align model: a frozen ViT, a frozen text encoder, three memory adapters (SMA_v,
// SMA_t, SMA_p) that share one memory bank, and a LLaMA-style decoder with LoRA.
//
// The decoder reads [context ; embedded report tokens]: context is C1 = SMA_v(E_v(I)), plus
// SMA_t(E_text(reference report)) in stage 2, plus SMA_p(E_text(key phrases)) in stage 3.
// Inference uses C1 only.
import { Module } from '../engine/nn/module.ts';
import { reshape, scale, sum } from '../engine/ops/index.ts';
import { crossEntropy } from '../engine/ops/loss.ts';
import { concat, slice } from '../engine/ops/shape.ts';
import { Random } from '../engine/random.ts';
import { fromHost, parameter, type Tensor } from '../engine/tensor.ts';
import { withoutVocabSize, type S2DConfig } from './config.ts';
import { MaskedLmHead, TextEncoder } from './models/bert.ts';
import { LlamaDecoder } from './models/llama.ts';
import { MemoryAdapter } from './models/sma.ts';
import { VisionTransformer } from './models/vit.ts';

export const IGNORE_INDEX = -100;

/** Token ids for one batch of texts, right-padded. */
export interface TokenBatch {
  ids: Tensor; // i32 [B, T]
  lengths: Tensor; // i32 [B]
}

/** Pretrained modules that S2DAlign.fromParts wraps in place of randomly initialised ones. */
export interface S2DParts {
  /** A frozen ViT, e.g. loadDinov2's (Rad-DINO). */
  vision: VisionTransformer;
  /** A frozen BERT encoder, e.g. loadBert's (CXR-BERT). */
  textEncoder: TextEncoder;
  /** A LLaMA decoder with LoRA layers, e.g. loadLlama's (Vicuna). */
  decoder: LlamaDecoder;
}

export class S2DAlign extends Module {
  readonly vision: VisionTransformer;
  readonly textEncoder: TextEncoder;
  /** The tiny text encoder's masked-LM pretraining head; null for a pretrained encoder. */
  readonly mlmHead: MaskedLmHead | null;
  readonly memoryBank: Tensor;
  readonly smaV: MemoryAdapter;
  readonly smaT: MemoryAdapter;
  readonly smaP: MemoryAdapter;
  readonly decoder: LlamaDecoder;

  /**
   * Builds the model with random weights from `config` (the tiny preset), or around the
   * pretrained `parts` (see fromParts). `vocabSize` is the decoder's vocabulary.
   */
  constructor(readonly config: S2DConfig, readonly vocabSize: number, seed = config.training.seed, parts?: S2DParts) {
    super();
    const rng = new Random(seed);
    const { vision, text, decoder, memory, lora } = config;
    if (parts) {
      const widths = [parts.vision.config.hiddenSize, parts.textEncoder.config.hiddenSize, parts.decoder.config.hiddenSize, parts.decoder.config.vocabSize];
      const expected = [vision.hiddenSize, text.hiddenSize, decoder.hiddenSize, vocabSize];
      if (widths.some((width, i) => width !== expected[i])) {
        throw new Error(`S2DAlign: the parts' widths (vision, text, decoder, vocabulary) are ${widths.join(', ')} but the config has ${expected.join(', ')}; build it with S2DAlign.fromParts`);
      }
      // Pretrained encoders: no masked-LM head and no extra [MASK] row.
      this.vision = this.addModule('vision', parts.vision);
      this.textEncoder = this.addModule('text', parts.textEncoder);
      this.mlmHead = null;
    } else {
      // The text encoder has one extra row: the [MASK] token of masked-LM pretraining.
      const textConfig = { ...text, vocabSize: vocabSize + 1 };
      this.vision = this.addModule('vision', new VisionTransformer(vision, rng));
      this.textEncoder = this.addModule('text', new TextEncoder(textConfig, rng));
      this.mlmHead = this.addModule('text_mlm_head', new MaskedLmHead(textConfig, rng));
    }
    this.memoryBank = this.addParameter('memory_bank', parameter(rng.normalArray(memory.queries * vision.hiddenSize, 0.02), [memory.queries, vision.hiddenSize]));
    const adapter = (inputWidth: number) =>
      new MemoryAdapter({ inputWidth, memoryWidth: vision.hiddenSize, heads: memory.heads, mlpWidth: memory.mlpWidth, outputWidth: decoder.hiddenSize }, rng);
    this.smaV = this.addModule('sma_v', adapter(vision.hiddenSize));
    this.smaT = this.addModule('sma_t', adapter(text.hiddenSize));
    this.smaP = this.addModule('sma_p', adapter(text.hiddenSize));
    this.decoder = this.addModule('decoder', parts ? parts.decoder : new LlamaDecoder({ ...decoder, vocabSize }, rng, lora));
  }

  /**
   * Wraps pretrained modules (built by the s2d/hf loaders) with a new memory bank and SMA
   * adapters drawn from `seed`. The config's vision, text, decoder and LoRA sections are
   * replaced by the modules' own. So the memory width is the ViT width, SMA_t and SMA_p read
   * the BERT width, and every adapter outputs the LLaMA width. `memory`, `data` and `training`
   * come from `config`.
   */
  static fromParts(options: S2DParts & { config: S2DConfig; seed?: number }): S2DAlign {
    const { vision, textEncoder, decoder } = options;
    const config: S2DConfig = {
      ...options.config,
      vision: vision.config,
      text: withoutVocabSize(textEncoder.config),
      decoder: withoutVocabSize(decoder.config),
      lora: decoder.lora,
    };
    return new S2DAlign(config, decoder.config.vocabSize, options.seed ?? config.training.seed, { vision, textEncoder, decoder });
  }

  /** The [MASK] id of masked-LM pretraining: the row after the vocabulary (tiny preset only). */
  get maskTokenId(): number {
    return this.vocabSize;
  }

  /** C1 = SMA_v(image features [B, 1 + P, Dv]) → [B, N, Dl]. */
  visualContext(imageFeatures: Tensor): Tensor {
    return this.smaV.forward(this.memoryBank, imageFeatures);
  }

  /**
   * Computes where SMA_v looks: its cross-attention averaged over heads and memory queries, for each
   * image patch (the CLS token dropped), as [B, P] with rows summing to at most 1. The patches
   * form a (S/p)×(S/p) grid in row-major order.
   */
  groundingMap(imageFeatures: Tensor): Tensor {
    const weights = this.smaV.attentionWeights(this.memoryBank, imageFeatures);
    const [batch, heads, queries, tokens] = weights.shape;
    const patches = slice(weights, 3, 1, tokens);
    return reshape(scale(sum(patches, [1, 2]), 1 / (heads * queries)), [batch, tokens - 1]);
  }

  /** SMA over text features of `tokens` with adapter `sma` → [B, N, Dl]. */
  textContext(sma: MemoryAdapter, tokens: TokenBatch): Tensor {
    const features = this.textEncoder.forward(tokens.ids, tokens.lengths);
    return sma.forward(this.memoryBank, features, { keyLengths: tokens.lengths });
  }

  /** Builds the stage's context: C1, C2 = [C1 ; text] or C3 = [C2 ; phrases]. */
  context(stage: 1 | 2 | 3, imageFeatures: Tensor, reference?: TokenBatch, phrases?: TokenBatch): Tensor {
    const parts = [this.visualContext(imageFeatures)];
    if (stage >= 2) {
      if (!reference) throw new Error('s2d: stage 2 and 3 need reference-report tokens');
      parts.push(this.textContext(this.smaT, reference));
    }
    if (stage >= 3) {
      if (!phrases) throw new Error('s2d: stage 3 needs key-phrase tokens');
      parts.push(this.textContext(this.smaP, phrases));
    }
    return parts.length === 1 ? parts[0] : concat(parts, 1);
  }

  /**
   * Mean cross-entropy over report tokens only. context [B, Tc, Dl] (or null for plain LM);
   * inputIds i32 [B, L] start with <bos>; targets i32 [B, L] hold the next token or IGNORE_INDEX.
   */
  reportLoss(context: Tensor | null, inputIds: Tensor, targets: Tensor): Tensor {
    const [batch, length] = inputIds.shape;
    const embedded = this.decoder.embed(inputIds);
    const inputs = context ? concat([context, embedded], 1) : embedded;
    const contextLength = context ? context.shape[1] : 0;
    const hidden = this.decoder.forwardHidden(inputs);
    const reportHidden = contextLength > 0 ? slice(hidden, 1, contextLength, contextLength + length) : hidden;
    const logits = this.decoder.logits(reportHidden);
    return crossEntropy(reshape(logits, [batch * length, this.vocabSize]), reshape(targets, [batch * length]), IGNORE_INDEX);
  }

  /** Logits [B, V] for the next token after `inputIds` [B, L], given context [B, Tc, Dl]. */
  nextTokenLogits(context: Tensor, inputIds: Tensor): Tensor {
    const embedded = this.decoder.embed(inputIds);
    const hidden = this.decoder.forwardHidden(concat([context, embedded], 1));
    const last = slice(hidden, 1, hidden.shape[1] - 1, hidden.shape[1]);
    const [batch] = inputIds.shape;
    return reshape(this.decoder.logits(last), [batch, this.vocabSize]);
  }
}

/** Right-pads token lists into a TokenBatch (pad id 0; empty lists become one pad token). */
export function tokenBatch(lists: number[][], padId = 0): TokenBatch {
  const length = Math.max(1, ...lists.map((l) => l.length));
  const ids = new Int32Array(lists.length * length).fill(padId);
  const lengths = new Int32Array(lists.length);
  lists.forEach((list, row) => {
    ids.set(list, row * length);
    lengths[row] = Math.max(1, list.length);
  });
  return { ids: fromHost(ids, [lists.length, length]), lengths: fromHost(lengths, [lists.length]) };
}
