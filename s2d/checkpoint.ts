// Saving and loading a trained S2D-Align model: `model.safetensors` (every parameter, f32,
// with the config in `__metadata__`), `config.json` and `vocab.json`.
//
// A paper-mode model (built around Hugging Face checkpoints) saves only what training
// changed. `model.safetensors` contains the memory bank and the SMA adapters, the LoRA factors
// go to a PEFT adapter folder, and config.json records the checkpoint folders (`hf`), from
// which the frozen base is loaded again.
import { shapeString } from '../engine/dtype.ts';
import { encodeSafetensors, openSafetensors, readTensor, type TensorToWrite } from '../weights/safetensors.ts';
import type { ByteSource } from '../weights/source.ts';
import type { S2DConfig } from './config.ts';
import { S2DAlign } from './model.ts';

export const WEIGHTS_FILE = 'model.safetensors';
export const CONFIG_FILE = 'config.json';
export const VOCAB_FILE = 'vocab.json';

export interface SavedConfig {
  format: 's2d-align';
  version: 1;
  config: S2DConfig;
  vocabSize: number;
  /** Whether the decoder's LoRA update is active (true once a stage ≥ 2 has run). */
  loraEnabled: boolean;
  /** Paper mode: the checkpoint folders and tokenizer files of the frozen base. */
  hf?: HfBase;
}

/** The Hugging Face sources of a paper-mode model, as absolute paths. */
export interface HfBase {
  vision: string;
  text: string;
  llm: string;
  llmTokenizer: string;
  textTokenizer: string;
}

/** Names of the parameters that PAG trains besides LoRA: the memory bank and the three SMA adapters. */
export function isTrainedPart(name: string): boolean {
  return name === 'memory_bank' || name.startsWith('sma_v.') || name.startsWith('sma_t.') || name.startsWith('sma_p.');
}

/**
 * Reads every parameter back from the device and serialises them; with `include`, only the
 * parameters it accepts (isTrainedPart for a paper-mode model).
 */
export async function encodeModel(model: S2DAlign, saved: SavedConfig, include: (name: string) => boolean = () => true): Promise<Uint8Array[]> {
  const tensors: TensorToWrite[] = [];
  for (const [name, value] of model.namedParameters()) {
    if (!include(name)) continue;
    tensors.push({ name, dtype: 'F32', shape: value.shape, data: (await value.data()) as Float32Array });
  }
  return encodeSafetensors(tensors, { format: 's2d-align', config: JSON.stringify(saved) });
}

export function parseSavedConfig(text: string, name: string): SavedConfig {
  let parsed: SavedConfig;
  try {
    parsed = JSON.parse(text) as SavedConfig;
  } catch (error) {
    throw new Error(`${name}: invalid JSON (${(error as Error).message})`);
  }
  if (parsed.format !== 's2d-align' || !parsed.config || typeof parsed.vocabSize !== 'number') {
    throw new Error(`${name}: not an S2D-Align config (expected "format": "s2d-align" with config and vocabSize); point --model at a folder written by "s2d train"`);
  }
  return parsed;
}

/** Builds the model from `saved` and loads every parameter from the safetensors source. */
export async function loadModel(saved: SavedConfig, weights: ByteSource): Promise<S2DAlign> {
  if (saved.hf) {
    throw new Error(`${weights.name}: this model was trained around Hugging Face checkpoints (${saved.hf.llm}); load it with openPaperModel, as "s2d generate" does`);
  }
  const model = new S2DAlign(saved.config, saved.vocabSize);
  const index = await openSafetensors(weights);
  const expected = new Map(model.namedParameters());
  const missing = [...expected.keys()].filter((name) => !index.tensors.has(name));
  const unexpected = [...index.tensors.keys()].filter((name) => !expected.has(name));
  if (missing.length || unexpected.length) {
    model.dispose();
    throw new Error(
      `${weights.name}: checkpoint does not match the config (missing: ${missing.slice(0, 8).join(', ') || 'none'}${missing.length > 8 ? ', …' : ''}; ` +
        `unexpected: ${unexpected.slice(0, 8).join(', ') || 'none'}${unexpected.length > 8 ? ', …' : ''}); save and load with the same version`,
    );
  }
  for (const [name, param] of expected) {
    const entry = index.tensors.get(name)!;
    if (entry.shape.length !== param.shape.length || entry.shape.some((d, i) => d !== param.shape[i])) {
      model.dispose();
      throw new Error(`${weights.name}: tensor "${name}" has shape ${shapeString(entry.shape)}, the model expects ${shapeString(param.shape)}`);
    }
  }
  for (const [name, param] of expected) param.assign(await readTensor(index, name));
  model.decoder.setLoraEnabled(saved.loraEnabled);
  model.eval();
  return model;
}

/**
 * Copies the memory bank and SMA adapters saved by encodeModel(…, isTrainedPart) into `model`.
 * The file must contain exactly those tensors, each of the model's shape.
 */
export async function loadTrainedParts(model: S2DAlign, weights: ByteSource): Promise<void> {
  const index = await openSafetensors(weights);
  const expected = new Map(model.namedParameters().filter(([name]) => isTrainedPart(name)));
  const missing = [...expected.keys()].filter((name) => !index.tensors.has(name));
  const unexpected = [...index.tensors.keys()].filter((name) => !expected.has(name));
  if (missing.length || unexpected.length) {
    throw new Error(
      `${weights.name}: the trained parts do not match the model (missing: ${missing.slice(0, 8).join(', ') || 'none'}; unexpected: ${unexpected.slice(0, 8).join(', ') || 'none'}); ` +
        'use the model.safetensors written with this config.json',
    );
  }
  for (const [name, param] of expected) {
    const entry = index.tensors.get(name)!;
    if (entry.shape.length !== param.shape.length || entry.shape.some((d, i) => d !== param.shape[i])) {
      throw new Error(`${weights.name}: tensor "${name}" has shape ${shapeString(entry.shape)}, the model expects ${shapeString(param.shape)}`);
    }
  }
  for (const [name, param] of expected) param.assign(await readTensor(index, name));
}
