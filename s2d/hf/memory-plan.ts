// Memory plan for S2D-Align at full size, computed from the configs alone, so nothing is
// allocated. It counts frozen weights in their storage dtype, and trainable SMA and LoRA
// parameters with their gradients and AdamW moments in f32. It adds an estimate of the
// activations a training step keeps for the backward pass. Each tensor is checked against the
// adapter's binding and buffer limits, and the total against an optional memory budget. The
// plan names each tensor or total that does not fit, before any weight is read.
//
// Sizes of allocations are rounded as the WebGPU device rounds them (allocationSize): to a
// buffer size class (at most 25 % more) when that fits one binding, else to 256 bytes.
import type { LoraOptions } from '../../engine/nn/layers.ts';
import { allocationSize, sizeClassOf } from '../../engine/webgpu-device.ts';
import type { S2DConfig } from '../config.ts';
import type { BertConfig } from '../models/bert.ts';
import type { LlamaConfig } from '../models/llama.ts';
import type { SmaConfig } from '../models/sma.ts';
import type { VitConfig } from '../models/vit.ts';
import { bertWeightMap } from './bert.ts';
import { formatBytes, splitsByRows } from './checkpoint.ts';
import { dinov2WeightMap } from './dinov2.ts';
import { llamaWeightMap } from './llama.ts';

const MiB = 1024 * 1024;

/** The adapter limits the plan checks against (GPUSupportedLimits fields, in bytes). */
export interface AdapterLimits {
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
  /** Device memory the run may use; WebGPU does not report it, so the user gives it. */
  memoryBudget?: number;
}

/** The limits every WebGPU adapter guarantees (the specification's defaults). */
export const WEBGPU_DEFAULT_LIMITS: AdapterLimits = { maxStorageBufferBindingSize: 128 * MiB, maxBufferSize: 256 * MiB };

/** Everything the plan needs: the three models with their vocabularies, and the training setup. */
export interface PlanModels {
  vision: VitConfig;
  text: BertConfig;
  decoder: LlamaConfig;
  memory: S2DConfig['memory'];
  lora: LoraOptions;
  data: S2DConfig['data'];
  batchSize: number;
}

export function planModelsFromPreset(config: S2DConfig, vocab: { text: number; decoder: number }): PlanModels {
  return {
    vision: config.vision,
    text: { ...config.text, vocabSize: vocab.text },
    decoder: { ...config.decoder, vocabSize: vocab.decoder },
    memory: config.memory,
    lora: config.lora,
    data: config.data,
    batchSize: config.training.batchSize,
  };
}

export type StorageDtype = 'f16' | 'f32';

export interface PlanOptions {
  /** Storage of the frozen weights (the HF loaders' `weightDtype`). */
  weightDtype: StorageDtype;
  /** The PAG stage to plan for: its context length and trainable set (default 3, the largest). */
  stage?: 1 | 2 | 3;
}

/** One tensor shape that occurs `count` times (e.g. once per layer). */
export interface TensorGroup {
  part: 'vision' | 'text' | 'decoder' | 'adapters' | 'lora';
  /** The checkpoint name, or our parameter name, with `*` for the layer index. */
  name: string;
  shape: number[];
  count: number;
  dtype: StorageDtype;
  trainable: boolean;
  /** Bytes of one tensor. */
  bytes: number;
  /** Bytes of the buffer allocated for one tensor (its size class). */
  allocated: number;
}

/** One activation tensor whose size grows with the micro-batch. */
export interface ActivationTensor {
  name: string;
  /** Shape for one sample (batch row). */
  shapePerRow: number[];
  bytesPerRow: number;
}

export interface MemoryPlan {
  models: PlanModels;
  limits: AdapterLimits;
  weightDtype: StorageDtype;
  stage: 1 | 2 | 3;
  groups: TensorGroup[];
  /** Decoder sequence length planned for: context tokens + report tokens + <bos>. */
  sequenceLength: number;
  totals: {
    frozenWeights: number;
    frozenParameters: number;
    trainableParameters: number;
    /** Trainable parameters, their gradients and two AdamW moments, all f32. */
    trainableWithOptimizer: number;
    /** Estimate of the activations one training sample keeps until the backward pass. */
    activationsPerSample: number;
    /** Of which the decoder's share per token (all layers). */
    decoderActivationsPerToken: number;
  };
  /** Largest single activation tensors, which must each fit one binding. */
  largestActivations: ActivationTensor[];
  /** Image features are extracted before training; this is the ViT's largest tensor per image. */
  visionScoresPerImage: number;
  /** Largest micro-batch that fits the bindings (and the budget when one is given). */
  microBatch: number;
  /** Largest ViT feature-extraction batch whose attention scores fit one binding. */
  visionBatch: number;
  problems: string[];
}

// ---------- parameter shapes ----------

/** Groups entries by name with layer indices replaced by `*`. */
function groupShapes(part: TensorGroup['part'], entries: Array<{ name: string; shape: number[] }>, dtype: StorageDtype, trainable: boolean, maxBindingBytes: number): TensorGroup[] {
  const groups = new Map<string, TensorGroup>();
  for (const { name, shape } of entries) {
    const pattern = name.replace(/\.(layer|layers)\.\d+\./, '.$1.*.');
    const key = `${pattern} ${shape.join('x')}`;
    const existing = groups.get(key);
    if (existing) {
      existing.count += 1;
      continue;
    }
    const bytes = shape.reduce((p, d) => p * d, 1) * (dtype === 'f16' ? 2 : 4);
    groups.set(key, { part, name: pattern, shape, count: 1, dtype, trainable, bytes, allocated: allocationSize(bytes, { maxBindingBytes }) });
  }
  return [...groups.values()];
}

/**
 * Parameter shapes of one MemoryAdapter, named as in s2d/models/sma.ts (a test checks them
 * against an instantiated adapter).
 */
export function smaParameterShapes(config: SmaConfig, prefix = ''): Array<{ name: string; shape: number[] }> {
  const { inputWidth, memoryWidth: M, mlpWidth: P, outputWidth: O } = config;
  const linear = (name: string, outFeatures: number, inFeatures: number) => [
    { name: `${prefix}${name}.weight`, shape: [outFeatures, inFeatures] },
    { name: `${prefix}${name}.bias`, shape: [outFeatures] },
  ];
  const norm = (name: string) => [
    { name: `${prefix}${name}.weight`, shape: [M] },
    { name: `${prefix}${name}.bias`, shape: [M] },
  ];
  return [
    ...linear('input_proj', M, inputWidth),
    ...linear('cross_attention.q_proj', M, M),
    ...linear('cross_attention.k_proj', M, M),
    ...linear('cross_attention.v_proj', M, M),
    ...linear('cross_attention.out_proj', M, M),
    ...norm('attention_norm'),
    ...linear('mlp.0', P, M),
    ...linear('mlp.1', P, P),
    ...linear('mlp.2', M, P),
    ...norm('norm'),
    ...linear('output_proj', O, M),
  ];
}

/** lora_A [r, in] and lora_B [out, r] of every LoRA layer of the decoder. */
function loraShapes(decoder: LlamaConfig, rank: number): Array<{ name: string; shape: number[] }> {
  const { hiddenSize: D, intermediateSize: I, heads } = decoder;
  const kvWidth = (D / heads) * (decoder.kvHeads ?? heads);
  const modules: Array<[string, number, number]> = [
    ['self_attn.q_proj', D, D],
    ['self_attn.k_proj', kvWidth, D],
    ['self_attn.v_proj', kvWidth, D],
    ['self_attn.o_proj', D, D],
    ['mlp.gate_proj', I, D],
    ['mlp.up_proj', I, D],
    ['mlp.down_proj', D, I],
  ];
  const out: Array<{ name: string; shape: number[] }> = [];
  for (let i = 0; i < decoder.layers; i++) {
    for (const [name, outFeatures, inFeatures] of modules) {
      out.push({ name: `model.layers.${i}.${name}.lora_A`, shape: [rank, inFeatures] });
      out.push({ name: `model.layers.${i}.${name}.lora_B`, shape: [outFeatures, rank] });
    }
  }
  return out;
}

/** Lists the adapter parameters that train in `stage`: SMA_v from stage 1, SMA_t from 2, SMA_p in 3. */
function adapterShapes(models: PlanModels, stage: 1 | 2 | 3): Array<{ name: string; shape: number[] }> {
  const { vision, text, decoder, memory } = models;
  const sma = (inputWidth: number): SmaConfig => ({ inputWidth, memoryWidth: vision.hiddenSize, heads: memory.heads, mlpWidth: memory.mlpWidth, outputWidth: decoder.hiddenSize });
  const shapes = [{ name: 'memory_bank', shape: [memory.queries, vision.hiddenSize] }, ...smaParameterShapes(sma(vision.hiddenSize), 'sma_v.')];
  if (stage >= 2) shapes.push(...smaParameterShapes(sma(text.hiddenSize), 'sma_t.'));
  if (stage >= 3) shapes.push(...smaParameterShapes(sma(text.hiddenSize), 'sma_p.'));
  return shapes;
}

// ---------- activation estimates ----------

/**
 * Estimates the f32 values one decoder layer keeps per token for the backward pass. The count
 * follows the ops our LLaMA layer records with LoRA (dropout on) in all seven projections:
 * 46·D + 11·I for the projections, RoPE, norms and MLP, plus 4·H·T for the attention scores
 * (matmul, scale, mask, softmax). It ignores row statistics and the rank-sized LoRA tensors.
 */
function decoderValuesPerToken(decoder: LlamaConfig, sequenceLength: number): number {
  return 46 * decoder.hiddenSize + 11 * decoder.intermediateSize + 4 * decoder.heads * sequenceLength;
}

/**
 * Estimates the f32 values one frozen text-encoder layer keeps per token until the training step
 * ends, because its forward runs inside the step's scope: 14·D + 2·I + 3·H·T.
 */
function encoderValuesPerToken(width: number, mlpWidth: number, heads: number, tokens: number): number {
  return 14 * width + 2 * mlpWidth + 3 * heads * tokens;
}

/** Largest b ≤ limitRows whose b·bytesPerRow, rounded to a size class, fits `maxBytes`; 0 if none. */
function rowsThatFit(bytesPerRow: number, maxBytes: number, limitRows: number): number {
  let rows = Math.min(limitRows, Math.floor(maxBytes / bytesPerRow));
  while (rows > 0 && sizeClassOf(rows * bytesPerRow) > maxBytes) rows -= 1;
  return rows;
}

// ---------- the plan ----------

const elements = (shape: number[]) => shape.reduce((p, d) => p * d, 1);

export function planMemory(models: PlanModels, limits: AdapterLimits, options: PlanOptions): MemoryPlan {
  const stage = options.stage ?? 3;
  const { weightDtype } = options;
  const { vision, text, decoder, memory, lora, data } = models;
  const problems: string[] = [];

  // Parameters.
  const toShapes = (entries: Array<{ hf: string; shape: number[] }>) => entries.map(({ hf, shape }) => ({ name: hf, shape }));
  const binding = limits.maxStorageBufferBindingSize;
  const groups = [
    ...groupShapes('vision', toShapes(dinov2WeightMap(vision)), weightDtype, false, binding),
    ...groupShapes('text', toShapes(bertWeightMap(text)), weightDtype, false, binding),
    ...groupShapes('decoder', toShapes(llamaWeightMap(decoder)), weightDtype, false, binding),
    ...groupShapes('adapters', adapterShapes(models, stage), 'f32', true, binding),
    ...(stage >= 2 ? groupShapes('lora', loraShapes(decoder, lora.rank), 'f32', true, binding) : []),
  ];
  let frozenWeights = 0;
  let frozenParameters = 0;
  let trainableParameters = 0;
  let trainableAllocated = 0;
  for (const group of groups) {
    const count = elements(group.shape) * group.count;
    if (group.trainable) {
      trainableParameters += count;
      trainableAllocated += group.allocated * group.count;
    } else {
      frozenParameters += count;
      frozenWeights += group.allocated * group.count;
    }
    const splits = splitsAcrossBindings(group);
    const limit = tensorLimit(group, limits);
    if (group.allocated > limit) {
      const limitName = splits || limits.maxStorageBufferBindingSize > limits.maxBufferSize ? 'maxBufferSize' : 'maxStorageBufferBindingSize';
      problems.push(
        `${group.part} tensor ${group.name} [${group.shape.join(', ')}] needs ${formatBytes(group.bytes)} in ${group.dtype} ` +
          `(a ${formatBytes(group.allocated)} buffer after rounding), more than the adapter's ${limitName} of ${formatBytes(limit)}; ` +
          (splits ? 'use an adapter that grants a larger buffer' : 'the engine splits only frozen embedding tables and linear weights across bindings, so use an adapter that grants a larger limit') +
          (group.dtype === 'f32' && !group.trainable ? ' or f16 weights' : ''),
      );
    }
  }
  // A gradient and two AdamW moments per trainable parameter, each as large as the parameter.
  const trainableWithOptimizer = 4 * trainableAllocated;

  // Activations of one training sample.
  const contextTokens = memory.queries * stage;
  const sequenceLength = contextTokens + data.maxReportTokens + 1;
  const decoderPerToken = decoderValuesPerToken(decoder, sequenceLength) * decoder.layers * 4;
  const logitsPerSample = 3 * decoder.vocabSize * (data.maxReportTokens + 1) * 4; // logits, their gradient, the loss backward's output
  const visionTokens = (vision.imageSize / vision.patchSize) ** 2 + 1;
  const smaScores = (tokens: number) => 4 * memory.heads * memory.queries * tokens * 4;
  const textTokens = stage >= 2 ? data.maxReferenceTokens : 0;
  const phraseTokens = stage >= 3 ? data.maxPhraseTokens * data.keyPhrases : 0;
  const textPerToken = encoderValuesPerToken(text.hiddenSize, text.intermediateSize, text.heads, Math.max(textTokens, data.maxPhraseTokens)) * text.layers * 4;
  const activationsPerSample =
    decoderPerToken * sequenceLength + logitsPerSample + smaScores(visionTokens) + smaScores(textTokens) + smaScores(phraseTokens) + textPerToken * (textTokens + phraseTokens);

  // Single activation tensors per sample that must fit one binding.
  const largestActivations: ActivationTensor[] = [
    { name: 'decoder attention scores [B, H, T, T]', shapePerRow: [decoder.heads, sequenceLength, sequenceLength], bytesPerRow: decoder.heads * sequenceLength ** 2 * 4 },
    { name: 'decoder MLP activations [B, T, I]', shapePerRow: [sequenceLength, decoder.intermediateSize], bytesPerRow: sequenceLength * decoder.intermediateSize * 4 },
    { name: 'report logits [B, L, V]', shapePerRow: [data.maxReportTokens + 1, decoder.vocabSize], bytesPerRow: (data.maxReportTokens + 1) * decoder.vocabSize * 4 },
    { name: 'SMA_v cross-attention scores [B, H, N, P + 1]', shapePerRow: [memory.heads, memory.queries, visionTokens], bytesPerRow: memory.heads * memory.queries * visionTokens * 4 },
  ];
  if (stage >= 2) {
    const tokens = Math.max(textTokens, data.maxPhraseTokens);
    largestActivations.push({ name: 'text encoder attention scores [B, H, T, T]', shapePerRow: [text.heads, tokens, tokens], bytesPerRow: text.heads * tokens ** 2 * 4 });
  }
  largestActivations.sort((a, b) => b.bytesPerRow - a.bytesPerRow);

  const bindingLimit = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
  let microBatch = models.batchSize;
  for (const activation of largestActivations) {
    const rows = rowsThatFit(activation.bytesPerRow, bindingLimit, models.batchSize);
    if (rows === 0) {
      problems.push(
        `activation ${activation.name} needs ${formatBytes(activation.bytesPerRow)} for one sample (shape per sample [${activation.shapePerRow.join(', ')}]), ` +
          `more than the adapter's binding limit of ${formatBytes(bindingLimit)}; shorten the sequences or use an adapter that grants a larger limit`,
      );
    }
    microBatch = Math.min(microBatch, rows);
  }

  // Feature extraction runs the frozen ViT alone before training; its attention scores are
  // its largest tensor.
  const visionScoresPerImage = vision.heads * visionTokens ** 2 * 4;
  const visionBatch = rowsThatFit(visionScoresPerImage, bindingLimit, models.batchSize);
  if (visionBatch === 0) {
    problems.push(
      `ViT attention scores [1, ${vision.heads}, ${visionTokens}, ${visionTokens}] need ${formatBytes(visionScoresPerImage)} for one image, ` +
        `more than the adapter's binding limit of ${formatBytes(bindingLimit)}; use a smaller image size or an adapter that grants a larger limit`,
    );
  }

  const fixed = frozenWeights + trainableWithOptimizer;
  if (limits.memoryBudget !== undefined) {
    const byBudget = Math.floor((limits.memoryBudget - fixed) / activationsPerSample);
    if (fixed > limits.memoryBudget) {
      problems.push(
        `weights and optimizer state need ${formatBytes(fixed)} (frozen weights ${formatBytes(frozenWeights)} in ${weightDtype}, trainable with gradients and AdamW ${formatBytes(trainableWithOptimizer)}), ` +
          `more than the memory budget of ${formatBytes(limits.memoryBudget)}`,
      );
    } else if (byBudget < 1) {
      problems.push(
        `one training sample's activations (estimate ${formatBytes(activationsPerSample)}) do not fit the ${formatBytes(limits.memoryBudget - fixed)} ` +
          `left of the memory budget after weights and optimizer state; shorten the sequences or raise the budget`,
      );
    }
    microBatch = Math.min(microBatch, Math.max(byBudget, 0));
  }

  return {
    models,
    limits,
    weightDtype,
    stage,
    groups,
    sequenceLength,
    totals: {
      frozenWeights,
      frozenParameters,
      trainableParameters,
      trainableWithOptimizer,
      activationsPerSample,
      decoderActivationsPerToken: decoderPerToken,
    },
    largestActivations,
    visionScoresPerImage,
    microBatch: Math.max(microBatch, 0),
    visionBatch,
    problems,
  };
}

/**
 * Returns whether the group's tensors are used in row ranges (frozen embedding tables and
 * linear weights), so they need one buffer, not one binding.
 */
function splitsAcrossBindings(group: TensorGroup): boolean {
  return !group.trainable && splitsByRows(group.name, group.shape);
}

/** Returns the largest allocation the tensors of `group` may have. */
function tensorLimit(group: TensorGroup, limits: AdapterLimits): number {
  return splitsAcrossBindings(group) ? limits.maxBufferSize : Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
}

/** Throws one error listing every tensor or total that does not fit. */
export function assertPlanFits(plan: MemoryPlan): void {
  if (plan.problems.length > 0) {
    throw new Error(`memory plan: the ${plan.models.decoder.layers}-layer configuration does not fit this adapter:\n  ${plan.problems.join('\n  ')}`);
  }
}

/** Formats the plan for the terminal: largest tensors, totals, batch sizes, problems. */
export function formatMemoryPlan(plan: MemoryPlan, largest = 8): string {
  const { totals, limits } = plan;
  const lines: string[] = [];
  lines.push(`memory plan for PAG stage ${plan.stage} (frozen weights in ${plan.weightDtype}; trainable parameters, gradients and AdamW moments in f32)`);
  lines.push(
    `adapter limits: maxStorageBufferBindingSize ${formatBytes(limits.maxStorageBufferBindingSize)}, maxBufferSize ${formatBytes(limits.maxBufferSize)}` +
      (limits.memoryBudget !== undefined ? `, memory budget ${formatBytes(limits.memoryBudget)}` : ', no memory budget given'),
  );
  lines.push('');
  lines.push('largest tensors (one tensor; × count):');
  const sorted = [...plan.groups].sort((a, b) => b.allocated - a.allocated).slice(0, largest);
  for (const group of sorted) {
    const fits = group.allocated > tensorLimit(group, limits) ? 'TOO LARGE' : splitsAcrossBindings(group) && group.allocated > limits.maxStorageBufferBindingSize ? 'fits (split)' : 'fits';
    lines.push(`  ${group.part.padEnd(8)} ${`${group.name} [${group.shape.join(', ')}]`.padEnd(58)} ${group.dtype} ${formatBytes(group.bytes).padStart(10)} × ${String(group.count).padStart(2)}  ${fits}`);
  }
  lines.push('');
  lines.push(`frozen weights      ${formatBytes(totals.frozenWeights).padStart(11)}  (${(totals.frozenParameters / 1e6).toFixed(1)} M parameters)`);
  lines.push(`trainable + AdamW   ${formatBytes(totals.trainableWithOptimizer).padStart(11)}  (${(totals.trainableParameters / 1e6).toFixed(2)} M parameters, each with a gradient and 2 moments)`);
  lines.push(
    `activations         ${formatBytes(totals.activationsPerSample).padStart(11)}  per training sample (estimate; decoder ${formatBytes(totals.decoderActivationsPerToken)} per token × ${plan.sequenceLength} tokens)`,
  );
  lines.push('');
  lines.push(`largest activation per sample: ${plan.largestActivations[0].name} ${formatBytes(plan.largestActivations[0].bytesPerRow)}`);
  const batch = plan.models.batchSize;
  // The trainer has no gradient accumulation, so a batch above the micro-batch is rejected.
  lines.push(
    plan.microBatch >= batch
      ? `micro-batch: the batch of ${batch} fits`
      : plan.microBatch > 0
        ? `micro-batch: ${plan.microBatch} samples fit (estimate), so "s2d train" rejects the batch of ${batch} (no gradient accumulation); use --batch-size ${plan.microBatch}`
        : `micro-batch: not even one sample fits (estimate); use an adapter or machine with more memory`,
  );
  lines.push(`ViT feature extraction: at most ${plan.visionBatch} per batch (attention scores ${formatBytes(plan.visionScoresPerImage)} per image)`);
  lines.push('');
  if (plan.problems.length === 0) lines.push('fits: every tensor fits one binding or is split by rows' + (limits.memoryBudget !== undefined ? ' and the total fits the budget' : ''));
  else lines.push(`does not fit:\n  ${plan.problems.join('\n  ')}`);
  return lines.join('\n');
}
