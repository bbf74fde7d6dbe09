// Paper mode: S2D-Align around three Hugging Face checkpoints (a Dinov2Model such as Rad-DINO,
// a BERT such as CXR-BERT, a LlamaForCausalLM such as Vicuna) and their tokenizers.
//
// The setup runs in this order, so that nothing is allocated for a model that cannot run:
//   1. read the three config.json files (and the vision folder's preprocessor_config.json);
//   2. read the tokenizers and check that their ids fit the checkpoints' vocabularies;
//   3. check the decoder's position limit and run the memory plan against the adapter's limits;
//   4. load the weights and wrap them with a new memory bank and SMA adapters.
// openPaperModel reloads a trained model: the same checkpoints, then the saved memory bank,
// SMA adapters and PEFT adapter.
import type { Device } from '../../engine/device.ts';
import type { WebGpuDevice } from '../../engine/webgpu-device.ts';
import type { ByteSource } from '../../weights/source.ts';
import { loadTrainedParts, type SavedConfig } from '../checkpoint.ts';
import { withoutVocabSize, type S2DConfig } from '../config.ts';
import type { BertConfig } from '../models/bert.ts';
import type { LlamaConfig } from '../models/llama.ts';
import type { VitConfig } from '../models/vit.ts';
import { S2DAlign } from '../model.ts';
import { parseReportTokenizer, type ReportTokenizer } from '../tokenizers.ts';
import { loadBert, parseBertConfig } from './bert.ts';
import { readHfConfig, type CheckpointFolder } from './checkpoint.ts';
import { loadDinov2, parseDinov2Config } from './dinov2.ts';
import { loadLlama, parseLlamaConfig } from './llama.ts';
import { assertPlanFits, planMemory, planModelsFromPreset, type AdapterLimits, type MemoryPlan } from './memory-plan.ts';
import { loadPeftAdapter } from './peft.ts';

export const PREPROCESSOR_CONFIG_FILE = 'preprocessor_config.json';
export const TOKENIZER_JSON_FILE = 'tokenizer.json';
export const VOCAB_TXT_FILE = 'vocab.txt';

/** The three checkpoint folders of paper mode. */
export interface PaperFolders {
  vision: CheckpointFolder;
  text: CheckpointFolder;
  llm: CheckpointFolder;
}

/** A tokenizer file's text and name (path), read by the caller. */
export interface TokenizerFile {
  name: string;
  text: string;
}

export interface PaperConfigs {
  vision: VitConfig;
  text: BertConfig;
  decoder: LlamaConfig;
  /** image_mean and image_std of preprocessor_config.json, when the vision folder has one. */
  imageMean?: number[];
  imageStd?: number[];
}

/** Reads the three config.json files and the vision folder's image normalisation. */
export async function readPaperConfigs(folders: PaperFolders): Promise<PaperConfigs> {
  const vision = { ...parseDinov2Config(await readHfConfig(folders.vision), `${folders.vision.name}/config.json`), positionInterpolation: 'size' as const };
  const text = parseBertConfig(await readHfConfig(folders.text), `${folders.text.name}/config.json`);
  const decoder = parseLlamaConfig(await readHfConfig(folders.llm), `${folders.llm.name}/config.json`);
  return { vision, text, decoder, ...(await readImageNormalisation(folders.vision)) };
}

/** image_mean and image_std from preprocessor_config.json (three numbers each), or nothing when the file is absent. */
async function readImageNormalisation(folder: CheckpointFolder): Promise<{ imageMean?: number[]; imageStd?: number[] }> {
  const where = `${folder.name}/${PREPROCESSOR_CONFIG_FILE}`;
  const text = await folder.readText(PREPROCESSOR_CONFIG_FILE);
  if (text === null) return {};
  let parsed: Record<string, unknown>;
  try {
    parsed = JSON.parse(text) as Record<string, unknown>;
  } catch (error) {
    throw new Error(`${where}: invalid JSON (${(error as Error).message})`);
  }
  const read = (key: string, positive: boolean): number[] | undefined => {
    const value = parsed[key];
    if (value === undefined || value === null) return undefined;
    const values = typeof value === 'number' ? [value, value, value] : value;
    const valid = Array.isArray(values) && values.length === 3 && values.every((v) => typeof v === 'number' && Number.isFinite(v) && (!positive || v > 0));
    if (!valid) throw new Error(`${where}: "${key}" is ${JSON.stringify(value)}; expected three ${positive ? 'positive ' : ''}numbers (R, G, B)`);
    return values as number[];
  };
  // NOTE: only the normalisation is read. Images are resized straight to the model's square
  // input, where Rad-DINO's processor resizes the shortest edge and then crops the centre.
  return { imageMean: read('image_mean', false), imageStd: read('image_std', true) };
}

/**
 * Returns the preset with the checkpoints' model sections and image normalisation in place of
 * its own. Each section keeps the preset's checkpointBlocks. The SMA MLP keeps the preset's
 * ratio to the memory width (3072 / 768 = 4 in the `paper` preset), so it is 3072 wide for
 * Rad-DINO and scales with a ViT of another width.
 */
export function paperModelConfig(preset: S2DConfig, configs: PaperConfigs): S2DConfig {
  const data = { ...preset.data };
  if (configs.imageMean) data.imageMean = configs.imageMean;
  if (configs.imageStd) data.imageStd = configs.imageStd;
  const mlpWidth = Math.round((preset.memory.mlpWidth / preset.vision.hiddenSize) * configs.vision.hiddenSize);
  // Set only when true, so a section compares equal to one saved without the field.
  const checkpointing = (section: { checkpointBlocks?: boolean }) => (section.checkpointBlocks ? { checkpointBlocks: true } : {});
  return {
    ...preset,
    vision: { ...configs.vision, ...checkpointing(preset.vision) },
    text: { ...withoutVocabSize(configs.text), ...checkpointing(preset.text) },
    decoder: { ...withoutVocabSize(configs.decoder), ...checkpointing(preset.decoder) },
    memory: { ...preset.memory, mlpWidth },
    data,
  };
}

export interface PaperTokenizers {
  decoder: ReportTokenizer;
  text: ReportTokenizer;
}

/**
 * Reads the decoder tokenizer (`llm` override, else the LLM folder's tokenizer.json) and the
 * text-encoder tokenizer (`text` override, else the text folder's tokenizer.json, else its
 * vocab.txt). A vocab.txt is lower-cased unless the text folder's tokenizer_config.json sets
 * do_lower_case to false. Both tokenizers' ids must fit the checkpoints' vocabularies.
 */
export async function readPaperTokenizers(folders: PaperFolders, configs: PaperConfigs, overrides: { llm?: TokenizerFile; text?: TokenizerFile } = {}): Promise<PaperTokenizers> {
  const llmFile = overrides.llm ?? (await readFolderFile(folders.llm, TOKENIZER_JSON_FILE));
  if (!llmFile) throw new Error(`${folders.llm.name}: no ${TOKENIZER_JSON_FILE} found; give the LLaMA tokenizer file explicitly (s2d train --llm-tokenizer FILE)`);
  const decoder = parseReportTokenizer(llmFile.text, llmFile.name, 'decoder');

  let textFile = overrides.text ?? (await readFolderFile(folders.text, TOKENIZER_JSON_FILE));
  textFile ??= await readFolderFile(folders.text, VOCAB_TXT_FILE);
  if (!textFile) throw new Error(`${folders.text.name}: no ${TOKENIZER_JSON_FILE} or ${VOCAB_TXT_FILE} found; give the BERT tokenizer file explicitly (s2d train --text-tokenizer FILE)`);
  const text = parseReportTokenizer(textFile.text, textFile.name, 'text encoder', { lowercase: await readLowercase(folders.text) });

  const checks: Array<[ReportTokenizer, number, string]> = [
    [decoder, configs.decoder.vocabSize, `${folders.llm.name}/config.json`],
    [text, configs.text.vocabSize, `${folders.text.name}/config.json`],
  ];
  for (const [tokenizer, vocabSize, where] of checks) {
    if (tokenizer.vocabSize > vocabSize) {
      throw new Error(`${tokenizer.name} has ${tokenizer.vocabSize} token ids but ${where} has vocab_size ${vocabSize}, so some ids have no embedding row; use the tokenizer that belongs to the checkpoint`);
    }
  }
  return { decoder, text };
}

async function readFolderFile(folder: CheckpointFolder, file: string): Promise<TokenizerFile | null> {
  const text = await folder.readText(file);
  return text === null ? null : { name: `${folder.name}/${file}`, text };
}

/** do_lower_case of the text folder's tokenizer_config.json; BERT's default (true) when absent. */
async function readLowercase(folder: CheckpointFolder): Promise<boolean> {
  const text = await folder.readText('tokenizer_config.json');
  if (text === null) return true;
  try {
    const value = (JSON.parse(text) as Record<string, unknown>).do_lower_case;
    return typeof value === 'boolean' ? value : true;
  } catch (error) {
    throw new Error(`${folder.name}/tokenizer_config.json: invalid JSON (${(error as Error).message})`);
  }
}

/** Returns the adapter limits of `device`, or null for the CPU device, which has no binding limits. */
export function deviceLimits(device: Device): AdapterLimits | null {
  if (device.kind !== 'webgpu') return null;
  const { limits } = (device as WebGpuDevice).device;
  return { maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize, maxBufferSize: limits.maxBufferSize };
}

/**
 * Throws when the model cannot train under `limits`, which are null when there are none to
 * check. The causes: a decoder sequence longer than the checkpoint's positions, a tensor larger
 * than one binding, or a batch larger than the plan's micro-batch, because the trainer has no
 * gradient accumulation. Returns the plan, whose visionBatch sizes feature extraction.
 */
export function checkPaperFits(config: S2DConfig, vocab: { text: number; decoder: number }, limits: AdapterLimits | null): MemoryPlan | null {
  const lastStage = Math.max(...config.training.stages.map((s) => s.stage)) as 1 | 2 | 3;
  const sequence = lastStage * config.memory.queries + config.data.maxReportTokens + 1;
  if (sequence > config.decoder.maxPositions) {
    throw new Error(
      `stage ${lastStage} feeds the decoder ${lastStage} × ${config.memory.queries} memory tokens and up to ${config.data.maxReportTokens + 1} report tokens (${sequence} positions), ` +
        `more than the LLaMA checkpoint's max_position_embeddings of ${config.decoder.maxPositions}; lower memory.queries or data.maxReportTokens in the preset (s2d/hf/paper.ts)`,
    );
  }
  if (!limits) return null;

  const weightDtype = config.weightDtype ?? 'f32';
  const plan = planMemory(planModelsFromPreset(config, vocab), limits, { weightDtype, stage: lastStage });
  try {
    assertPlanFits(plan);
  } catch (error) {
    throw new Error(`${(error as Error).message}\n"s2d plan --preset paper --vision DIR --text DIR --llm DIR --weights ${weightDtype} --adapter" prints the whole plan`);
  }
  const { batchSize } = config.training;
  if (plan.microBatch < batchSize) {
    throw new Error(
      `memory plan: a batch of ${batchSize} does not fit this adapter; at most ${plan.microBatch} samples per step fit (estimate), ` +
        `and the trainer has no gradient accumulation; lower the batch size (s2d train --batch-size ${plan.microBatch})`,
    );
  }
  return plan;
}

/**
 * Loads the three checkpoints and wraps them in S2DAlign.fromParts (frozen ViT and BERT,
 * LLaMA with fresh LoRA factors from the training seed). `config` comes from paperModelConfig.
 * The frozen weights are stored in config.weightDtype (f32 when absent), and each model gets
 * its section's checkpointBlocks.
 */
export async function loadPaperModel(folders: PaperFolders, config: S2DConfig): Promise<S2DAlign> {
  const weightDtype = config.weightDtype ?? 'f32';
  const loaded: Array<{ dispose(): void }> = [];
  try {
    const vision = (
      await loadDinov2(folders.vision, { positionInterpolation: config.vision.positionInterpolation, weightDtype, checkpointBlocks: config.vision.checkpointBlocks })
    ).model;
    loaded.push(vision);
    const textEncoder = (await loadBert(folders.text, { weightDtype, checkpointBlocks: config.text.checkpointBlocks })).model;
    loaded.push(textEncoder);
    const decoder = (await loadLlama(folders.llm, { lora: config.lora, seed: config.training.seed, weightDtype, checkpointBlocks: config.decoder.checkpointBlocks })).model;
    loaded.push(decoder);
    const model = S2DAlign.fromParts({ config, vision, textEncoder, decoder });
    model.eval();
    return model;
  } catch (error) {
    for (const module of loaded) module.dispose();
    throw error;
  }
}

export interface PaperSetup {
  model: S2DAlign;
  decoderTokenizer: ReportTokenizer;
  textTokenizer: ReportTokenizer;
  /** Images per ViT batch in feature extraction (the plan's visionBatch), when a plan ran. */
  imageBatchSize?: number;
}

export interface PaperSetupOptions {
  /** Tokenizer files that replace the folders' own. */
  tokenizers?: { llm?: TokenizerFile; text?: TokenizerFile };
  /** Adapter limits to plan against; default the current device's (none for the CPU device). */
  limits?: AdapterLimits | null;
  device: Device;
}

/** Runs the four setup steps in order: configs, tokenizers, fit checks, weights. */
export async function openPaperSetup(folders: PaperFolders, preset: S2DConfig, options: PaperSetupOptions): Promise<PaperSetup> {
  const configs = await readPaperConfigs(folders);
  const config = paperModelConfig(preset, configs);
  const tokenizers = await readPaperTokenizers(folders, configs, options.tokenizers);
  const limits = options.limits !== undefined ? options.limits : deviceLimits(options.device);
  const plan = checkPaperFits(config, { text: configs.text.vocabSize, decoder: configs.decoder.vocabSize }, limits);
  const model = await loadPaperModel(folders, config);
  return { model, decoderTokenizer: tokenizers.decoder, textTokenizer: tokenizers.text, imageBatchSize: plan ? Math.min(plan.visionBatch, config.training.batchSize) : undefined };
}

/** Serialises a flat config section with its keys sorted and undefined fields left out, for comparison. */
function sortedJson(section: object): string {
  const entries = Object.entries(section).filter(([, value]) => value !== undefined);
  entries.sort(([x], [y]) => x.localeCompare(y));
  return JSON.stringify(entries);
}

/**
 * Rebuilds a paper-mode model saved by `s2d train`. It loads the checkpoints from `folders` in
 * the saved weightDtype (f32 when the config has none), then the memory bank and SMA adapters
 * from `trainedParts`. When the saved model has LoRA on, the LoRA factors come from the PEFT
 * `adapter` folder. The folders' config.json files must still describe the models that `saved`
 * was trained with.
 */
export async function openPaperModel(saved: SavedConfig, folders: PaperFolders, trainedParts: ByteSource, adapter: CheckpointFolder | null): Promise<S2DAlign> {
  const { weightDtype } = saved.config;
  if (weightDtype !== undefined && weightDtype !== 'f16' && weightDtype !== 'f32') {
    throw new Error(`the saved config's weightDtype is ${JSON.stringify(weightDtype)}; set it to "f16" or "f32" (the storage of the frozen checkpoint weights)`);
  }
  const current = paperModelConfig(saved.config, await readPaperConfigs(folders));
  const sources = { vision: folders.vision.name, text: folders.text.name, decoder: folders.llm.name };
  for (const section of ['vision', 'text', 'decoder'] as const) {
    if (sortedJson(current[section]) !== sortedJson(saved.config[section])) {
      throw new Error(`${sources[section]}/config.json no longer matches the ${section} model this S2D-Align model was trained with; point config.json's "hf" at the original checkpoint`);
    }
  }

  // NOTE: report generation reads neither the text encoder nor SMA_t/SMA_p, but the model is
  // built whole, so the BERT checkpoint is loaded too.
  const model = await loadPaperModel(folders, saved.config);
  try {
    await loadTrainedParts(model, trainedParts);
    if (saved.loraEnabled) {
      if (!adapter) throw new Error(`${trainedParts.name}: the model was saved with LoRA on, but no PEFT adapter folder was given`);
      await loadPeftAdapter(model.decoder, adapter);
    } else {
      model.decoder.setLoraEnabled(false);
    }
  } catch (error) {
    model.dispose();
    throw error;
  }
  model.eval();
  return model;
}
