// The `paper` configuration: the model sizes and training settings of S2D-Align (Gao, Liu, Li),
// built from pretrained HF checkpoints:
//   vision   Rad-DINO (microsoft/rad-dino): HF Dinov2Model, ViT-B/14 at 518 px (37 × 37 patches)
//   text     BiomedVLP-CXR-BERT-specialized: a BERT-base encoder, 30,522-token vocabulary
//   decoder  Vicuna-7B v1.5 (lmsys/vicuna-7b-v1.5): LLaMA, 32 layers, width 4096, MLP 11008,
//            32 heads, vocabulary 32,000, rms_norm_eps 1e-5, 4096 positions, untied LM head
// The fields below copy those checkpoints' config.json values; `s2d plan --vision/--text/--llm`
// reads the real files instead when they are at hand.
import type { S2DConfig } from '../config.ts';

/** Vocabulary sizes of the checkpoints' tokenizers (LLaMA-2 BPE and CXR-BERT WordPiece). */
export const PAPER_VOCAB = { decoder: 32000, text: 30522 };

export const PAPER_PRESET: S2DConfig = {
  preset: 'paper',
  // Vicuna-7B v1.5 ships its weights in fp16. In f32 the frozen weights of the three
  // checkpoints take 25.9 GiB instead of 13.9 GiB (s2d plan --weights f32 and f16).
  weightDtype: 'f16',
  vision: { imageSize: 518, patchSize: 14, channels: 3, hiddenSize: 768, layers: 12, heads: 12, mlpRatio: 4, layerNormEps: 1e-6, layerScaleInit: 1, positionInterpolation: 'size' },
  text: { hiddenSize: 768, layers: 12, heads: 12, intermediateSize: 3072, maxPositions: 512, layerNormEps: 1e-12, typeVocabSize: 2 },
  decoder: {
    hiddenSize: 4096,
    intermediateSize: 11008,
    layers: 32,
    heads: 32,
    kvHeads: 32,
    ropeTheta: 10000,
    rmsNormEps: 1e-5,
    maxPositions: 4096,
    tieWordEmbeddings: false,
    ropeFloat32Angles: true,
  },
  // 64 memory queries read by 8-head cross-attention. NOTE: the S2D-Align paper does not give
  // the width of the 3-layer MLP, so 3072 (4 × 768, the ViT-B MLP ratio) is our choice.
  memory: { queries: 64, heads: 8, mlpWidth: 3072 },
  lora: { rank: 16, alpha: 16, dropout: 0.1 },
  // NOTE: the S2D-Align paper does not state token limits or the number l of sampled key
  // phrases, so these are our choices.
  data: { maxReportTokens: 100, maxReferenceTokens: 100, maxPhraseTokens: 60, keyPhrases: 3, minWordCount: 3 },
  training: {
    batchSize: 64,
    warmupSteps: 1000,
    betas: [0.9, 0.98],
    weightDecay: 0.05,
    stages: [
      { stage: 1, epochs: 8, peakLr: 3e-4 },
      { stage: 2, epochs: 5, peakLr: 1e-4 },
      { stage: 3, epochs: 3, peakLr: 5e-5 },
    ],
    // The checkpoints are pretrained, so the tiny preset's from-scratch pretraining is skipped.
    pretrainDecoderEpochs: 0,
    pretrainTextEpochs: 0,
    pretrainLr: 0,
    seed: 1234,
  },
};
