// Loading S2D-Align for report generation only: the frozen ViT, the memory bank, SMA_v and the
// decoder. Accepts the inference-only folders written by `s2d export` (F16 or F32 weights)
// and the full checkpoints written by `s2d train`. Runs in Node and in the browser.
import { shapeString } from '../engine/dtype.ts';
import { openSafetensors, readTensor } from '../weights/safetensors.ts';
import type { ByteSource } from '../weights/source.ts';
import type { SpecialIds } from './batches.ts';
import { parseSavedConfig, type SavedConfig } from './checkpoint.ts';
import { Vocabulary, type VocabularyJSON } from './data/vocab.ts';
import { S2DAlign } from './model.ts';

/**
 * Checkpoint-name prefixes of the parameters that report generation reads. The text encoder,
 * its masked-LM head, SMA_t and SMA_p are used only in training.
 */
export const INFERENCE_PREFIXES = ['vision.', 'memory_bank', 'sma_v.', 'decoder.'] as const;

export function isInferenceParameter(name: string): boolean {
  return INFERENCE_PREFIXES.some((prefix) => (prefix.endsWith('.') ? name.startsWith(prefix) : name === prefix));
}

export interface LoadProgress {
  /** Tensor bytes read from the file so far, and in all. */
  loadedBytes: number;
  totalBytes: number;
}

export interface LoadInferenceOptions {
  /** Called after each tensor is on the device. */
  onProgress?: (progress: LoadProgress) => void;
}

function listNames(names: string[], limit = 8): string {
  if (names.length === 0) return 'none';
  return names.slice(0, limit).join(', ') + (names.length > limit ? `, … (${names.length} in all)` : '');
}

/**
 * Builds the model from `saved` and loads the tensors present in `weights`. Every inference
 * parameter must be present. Training-only parameters may be absent: those are disposed, so
 * calling the text encoder, SMA_t or SMA_p of such a model throws a use-after-dispose error.
 * A tensor name the model does not have is an error.
 */
export async function loadInferenceModel(saved: SavedConfig, weights: ByteSource, options: LoadInferenceOptions = {}): Promise<S2DAlign> {
  const index = await openSafetensors(weights);
  const model = new S2DAlign(saved.config, saved.vocabSize);
  try {
    const parameters = new Map(model.namedParameters());
    const missing = [...parameters.keys()].filter((name) => isInferenceParameter(name) && !index.tensors.has(name));
    const unexpected = [...index.tensors.keys()].filter((name) => !parameters.has(name));
    if (missing.length || unexpected.length) {
      throw new Error(
        `${weights.name}: checkpoint does not match the config (missing inference parameters: ${listNames(missing)}; ` +
          `unexpected tensors: ${listNames(unexpected)}); export it again with "s2d export" from a model saved by the same version`,
      );
    }
    for (const [name, entry] of index.tensors) {
      const param = parameters.get(name)!;
      if (entry.shape.length !== param.shape.length || entry.shape.some((d, i) => d !== param.shape[i])) {
        throw new Error(`${weights.name}: tensor "${name}" has shape ${shapeString(entry.shape)}, the model expects ${shapeString(param.shape)}`);
      }
    }

    const entries = [...index.tensors.values()];
    const totalBytes = entries.reduce((total, entry) => total + (entry.end - entry.begin), 0);
    let loadedBytes = 0;
    for (const entry of entries) {
      parameters.get(entry.name)!.assign(await readTensor(index, entry.name));
      loadedBytes += entry.end - entry.begin;
      options.onProgress?.({ loadedBytes, totalBytes });
    }
    for (const [name, param] of parameters) if (!index.tensors.has(name)) param.dispose();
  } catch (error) {
    model.dispose();
    throw error;
  }
  model.decoder.setLoraEnabled(saved.loraEnabled);
  model.eval();
  return model;
}

/** The three files of a model folder: config.json and vocab.json as text, the weights as bytes. */
export interface ModelFiles {
  configText: string;
  vocabText: string;
  weights: ByteSource;
  /** Names the files in errors; default "config.json" and "vocab.json". */
  configName?: string;
  vocabName?: string;
}

export interface InferenceModel {
  model: S2DAlign;
  saved: SavedConfig;
  vocab: Vocabulary;
  ids: SpecialIds;
}

/** Parses config.json and vocab.json, checks that they agree, and loads the weights. */
export async function openInferenceModel(files: ModelFiles, options: LoadInferenceOptions = {}): Promise<InferenceModel> {
  const configName = files.configName ?? 'config.json';
  const vocabName = files.vocabName ?? 'vocab.json';
  const saved = parseSavedConfig(files.configText, configName);

  let vocabJson: VocabularyJSON;
  try {
    vocabJson = JSON.parse(files.vocabText) as VocabularyJSON;
  } catch (error) {
    throw new Error(`${vocabName}: invalid JSON (${(error as Error).message})`);
  }
  const vocab = Vocabulary.fromJSON(vocabJson);
  if (vocab.size !== saved.vocabSize) {
    throw new Error(`${vocabName} has ${vocab.size} words but ${configName} has vocabSize ${saved.vocabSize}; use the vocab.json saved with this model`);
  }

  const model = await loadInferenceModel(saved, files.weights, options);
  return { model, saved, vocab, ids: { pad: vocab.padId, bos: vocab.bosId, eos: vocab.eosId, unk: vocab.unkId } };
}
