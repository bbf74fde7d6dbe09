// The paper-mode side of `s2d train --preset paper` and `s2d generate` (Node only): checkpoint
// folders and tokenizer files from the command line, and the output folder of a model trained
// around Hugging Face checkpoints:
//   config.json         the S2D config, with `hf` naming the three folders and tokenizer files
//   model.safetensors   memory bank and SMA adapters (the trained parts), f32
//   adapter/            the decoder's LoRA as a PEFT adapter (after a stage ≥ 2 has run)
//   tokenizer.json      a copy of the decoder tokenizer used in training
// The frozen base is not saved again: `s2d generate` loads it from the recorded folders, in the
// dtype that config.weightDtype records.
import { mkdir, readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Device } from '../../engine/device.ts';
import { fromHost, noGrad } from '../../engine/tensor.ts';
import { fileSource, writeFileAtomic, writeTextAtomic } from '../../weights/node-files.ts';
import { CONFIG_FILE, encodeModel, isTrainedPart, WEIGHTS_FILE, type HfBase, type SavedConfig } from '../checkpoint.ts';
import type { S2DConfig } from '../config.ts';
import { loadImage } from '../data/image.ts';
import { nodeFiles } from '../data/node-files.ts';
import { extractImageFeatures, generateGreedy } from '../generate.ts';
import { nodeFolder } from '../hf/node-folder.ts';
import { openPaperModel, openPaperSetup, TOKENIZER_JSON_FILE, VOCAB_TXT_FILE, type PaperFolders, type PaperSetup, type TokenizerFile } from '../hf/paper-model.ts';
import { encodePeftAdapter, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE } from '../hf/peft.ts';
import type { MainJobResult } from '../pipeline.ts';
import { parseReportTokenizer } from '../tokenizers.ts';

export const ADAPTER_DIR = 'adapter';

/** The command-line values of paper mode; every path as given. */
export interface PaperArgs {
  vision?: string;
  text?: string;
  llm?: string;
  llmTokenizer?: string;
  textTokenizer?: string;
}

/**
 * Returns an error message when a checkpoint folder is missing or not a folder, or when a
 * tokenizer override does not exist. Returns null when all are in place.
 */
export async function checkPaperArgs(args: PaperArgs): Promise<string | null> {
  const folders: Array<[string, string | undefined, string]> = [
    ['--vision', args.vision, 'a Dinov2Model folder such as Rad-DINO'],
    ['--text', args.text, 'a BERT folder such as CXR-BERT'],
    ['--llm', args.llm, 'a LlamaForCausalLM folder such as Vicuna-7B v1.5'],
  ];
  const missing = folders.filter(([, value]) => !value);
  if (missing.length > 0) {
    return `train --preset paper needs ${missing.map(([option, , what]) => `${option} DIR (${what})`).join(', ')}`;
  }
  for (const [option, value] of folders) {
    const info = await stat(value!).catch(() => null);
    if (!info) return `${option} ${value}: folder not found`;
    if (!info.isDirectory()) return `${option} ${value} is a file; pass the checkpoint folder that contains config.json`;
  }
  for (const [option, value] of [['--llm-tokenizer', args.llmTokenizer], ['--text-tokenizer', args.textTokenizer]] as const) {
    if (value !== undefined && !(await stat(value).catch(() => null))) return `${option} ${value}: file or folder not found`;
  }
  return null;
}

/** Reads a tokenizer override: a file, or the first of `names` inside a folder. */
async function readTokenizerFile(path: string, names: string[], option: string): Promise<TokenizerFile> {
  let file = resolve(path);
  if ((await stat(file)).isDirectory()) {
    let found: string | undefined;
    for (const name of names) {
      if ((await stat(join(file, name)).catch(() => null))?.isFile()) {
        found = join(file, name);
        break;
      }
    }
    if (!found) throw new Error(`${option} ${path}: the folder contains neither ${names.join(' nor ')}`);
    file = found;
  }
  return { name: file, text: await readFile(file, 'utf8') };
}

function foldersOf(args: PaperArgs): PaperFolders {
  return { vision: nodeFolder(args.vision!), text: nodeFolder(args.text!), llm: nodeFolder(args.llm!) };
}

/** A paper-mode model and its tokenizers, with the sources to record in config.json. */
export interface OpenedPaper {
  setup: PaperSetup;
  base: HfBase;
  /** Text of the decoder tokenizer file, copied into the output folder. */
  llmTokenizerText: string;
}

/** Reads the folders and tokenizers, checks that the model fits the device, and loads it. */
export async function openPaperFromArgs(args: PaperArgs, preset: S2DConfig, device: Device): Promise<OpenedPaper> {
  const folders = foldersOf(args);
  const llm = args.llmTokenizer ? await readTokenizerFile(args.llmTokenizer, [TOKENIZER_JSON_FILE], '--llm-tokenizer') : undefined;
  const text = args.textTokenizer ? await readTokenizerFile(args.textTokenizer, [TOKENIZER_JSON_FILE, VOCAB_TXT_FILE], '--text-tokenizer') : undefined;
  const setup = await openPaperSetup(folders, preset, { device, tokenizers: { llm, text } });

  // The folders' own tokenizer files when no override was given.
  const llmTokenizer = llm?.name ?? join(folders.llm.name, TOKENIZER_JSON_FILE);
  const llmTokenizerText = llm?.text ?? (await readFile(llmTokenizer, 'utf8'));
  const textTokenizer = text?.name ?? setup.textTokenizer.name;
  const base: HfBase = { vision: folders.vision.name, text: folders.text.name, llm: folders.llm.name, llmTokenizer, textTokenizer };
  return { setup, base, llmTokenizerText };
}

/** Writes config.json, the trained parts, the PEFT adapter and the tokenizer copy to `outDir`. */
export async function savePaperModel(outDir: string, result: MainJobResult, opened: OpenedPaper): Promise<string[]> {
  const { model } = result;
  const saved: SavedConfig = { format: 's2d-align', version: 1, config: model.config, vocabSize: model.vocabSize, loraEnabled: result.loraEnabled, hf: opened.base };
  await mkdir(outDir, { recursive: true });
  await writeFileAtomic(join(outDir, WEIGHTS_FILE), await encodeModel(model, saved, isTrainedPart));
  const written = [WEIGHTS_FILE];
  if (result.loraEnabled) {
    const adapter = await encodePeftAdapter(model.decoder, { baseModel: opened.base.llm });
    await mkdir(join(outDir, ADAPTER_DIR), { recursive: true });
    await writeFileAtomic(join(outDir, ADAPTER_DIR, PEFT_WEIGHTS_FILE), adapter.weights);
    await writeTextAtomic(join(outDir, ADAPTER_DIR, PEFT_CONFIG_FILE), adapter.config);
    written.push(`${ADAPTER_DIR}/`);
  }
  await writeTextAtomic(join(outDir, TOKENIZER_JSON_FILE), opened.llmTokenizerText);
  // config.json last: a folder without it is not mistaken for a finished model.
  await writeTextAtomic(join(outDir, CONFIG_FILE), `${JSON.stringify(saved, null, 2)}\n`);
  written.push(TOKENIZER_JSON_FILE, CONFIG_FILE);
  return written;
}

/**
 * Generates a report for one image with a paper-mode model: loads the frozen base from the
 * folders recorded in config.json, then the trained parts and the PEFT adapter from `modelDir`.
 */
export async function generatePaperReport(saved: SavedConfig, modelDir: string, imagePath: string, maxTokens: number): Promise<string> {
  const base = saved.hf!;
  for (const [what, path] of [['vision', base.vision], ['text', base.text], ['llm', base.llm]] as const) {
    if (!(await stat(path).catch(() => null))?.isDirectory()) {
      throw new Error(`${join(modelDir, CONFIG_FILE)} names the ${what} checkpoint folder ${path}, which is not found; the frozen base is loaded from there, so restore the folder or edit "hf" in config.json`);
    }
  }
  const tokenizerPath = join(modelDir, TOKENIZER_JSON_FILE);
  const tokenizer = parseReportTokenizer(await readFile(tokenizerPath, 'utf8'), tokenizerPath, 'decoder');

  const folders: PaperFolders = { vision: nodeFolder(base.vision), text: nodeFolder(base.text), llm: nodeFolder(base.llm) };
  const weights = await fileSource(join(modelDir, WEIGHTS_FILE));
  const adapter = saved.loraEnabled ? nodeFolder(join(modelDir, ADAPTER_DIR)) : null;
  const model = await openPaperModel(saved, folders, weights, adapter).finally(() => weights.close?.());
  try {
    const { config } = model;
    const image = await loadImage(nodeFiles, resolve(imagePath), { size: config.vision.imageSize, mean: config.data.imageMean, std: config.data.imageStd });
    const [features] = await extractImageFeatures(model, [image], 1);
    const width = config.vision.hiddenSize;
    const featureTensor = noGrad(() => fromHost(features, [1, features.length / width, width]));
    const ids = { pad: tokenizer.padId, bos: tokenizer.bosId, eos: tokenizer.eosId, unk: tokenizer.unkId };
    const [tokens] = await generateGreedy(model, featureTensor, { maxTokens, ids });
    featureTensor.dispose();
    return tokenizer.decode(tokens);
  } finally {
    model.dispose();
  }
}
