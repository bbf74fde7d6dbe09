// The `s2d` command line (Node only).
import { constants } from 'node:fs';
import { access, mkdir, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { initDevice, type DeviceKind, type InitDeviceOptions } from '../engine/devices.ts';
import { fromHost, noGrad } from '../engine/tensor.ts';
import { WebGpuDevice } from '../engine/webgpu-device.ts';
import { fileSource, writeFileAtomic, writeTextAtomic } from '../weights/node-files.ts';
import { CONFIG_FILE, encodeModel, parseSavedConfig, VOCAB_FILE, WEIGHTS_FILE, type SavedConfig } from './checkpoint.ts';
import { parseStages, PRESETS, withCheckpointBlocks, type S2DConfig } from './config.ts';
import { loadImage } from './data/image.ts';
import { nodeFiles } from './data/node-files.ts';
import { Vocabulary } from './data/vocab.ts';
import { extractImageFeatures, generateGreedy } from './generate.ts';
import { loadInferenceModel } from './inference-model.ts';
import { runMainJob, specialIds } from './pipeline.ts';
import { TerminalProgress } from './terminal-progress.ts';

const USAGE = `s2d: S2D-Align radiology report generation on a WebGPU engine

Usage:
  s2d train --data DIR --out DIR [--preset tiny|paper] [--device auto|webgpu|cpu] [--epoch-scale F] [--batch-size N]
      Pretrains the decoder and text encoder (tiny preset only), runs PAG stages 1 → 2 → 3,
      generates reports for the test split, prints BLEU-1..4 and ROUGE-L, and saves the model.
      --data         folder with annotation.json (R2Gen layout) and images/
      --out          output folder for model.safetensors, config.json, vocab.json
      --preset       tiny (random models, word-level vocabulary; the default) or paper
      --device       auto tries WebGPU, then falls back to the CPU device (default auto)
      --epoch-scale  multiplies every epoch count, e.g. 0.25 for a quick run (default 1)
      --batch-size   samples per training step (default: the preset's, 8 tiny, 64 paper)
      --stages       PAG stage schedule, e.g. 1,2,3 (default), 1,3 or 1,3,2; each stage keeps
                     its preset epochs and learning rate. "+" joins stages into one joint stage
                     (1+2+3, or 1,2+3): each step's loss is the mean of the members' losses on
                     one batch, and it trains for the sum of the members' epochs at the smallest
                     of their peak learning rates. A stage may appear at most once
      --no-bounds-checks  drops Dawn's per-access buffer bounds checks from shaders (Node only;
                     faster on CPU Vulkan drivers, but a kernel bug can corrupt memory)
      --checkpoint-blocks  recomputes each transformer block's activations in the backward pass
                     instead of keeping them (activation checkpointing): less memory for about
                     one more forward pass of those blocks per step. It applies where gradients
                     flow through the blocks: the decoder, and the text encoder in the tiny
                     preset's pretraining. The ViT runs without gradients, so it is unchanged.
                     Saved in config.json
  s2d train --preset paper --vision DIR --text DIR --llm DIR --data DIR --out DIR [--weights f16|f32] [--llm-tokenizer PATH] [--text-tokenizer PATH]
      Trains around Hugging Face checkpoints, after checking the memory plan against the adapter;
      --device, --epoch-scale, --batch-size, --stages and --checkpoint-blocks work as above.
      --vision          Dinov2Model folder (Rad-DINO); its image size and preprocessor_config.json
                        image_mean/image_std set the image input
      --text            BERT folder (CXR-BERT); its tokenizer.json or vocab.txt encodes the text
      --llm             LlamaForCausalLM folder (Vicuna-7B v1.5); its tokenizer.json encodes reports
      --weights         storage of the frozen linear weights, word embeddings and lm_head of the
                        three checkpoints: f16 (the default, as Vicuna ships) or f32; norms,
                        biases, position embeddings and everything trained stay f32. Saved in
                        config.json, so "s2d generate" loads the base the same way
      --llm-tokenizer   tokenizer.json (or a folder with one) in place of the --llm folder's
      --text-tokenizer  tokenizer.json or vocab.txt (or a folder) in place of the --text folder's
      --out then contains the trained parts only: model.safetensors (memory bank, SMA adapters),
      adapter/ (LoRA in PEFT's layout), tokenizer.json and config.json naming the three folders.
  s2d generate --model DIR --image FILE [--max-tokens N] [--device auto|webgpu|cpu] [--no-bounds-checks]
      Writes a report for one PNG or JPEG chest X-ray with a model saved by "s2d train". For a
      paper-mode model the frozen base is loaded from the folders named in its config.json, in
      the weight dtype recorded there (f32 when config.json has none).
  s2d export --model DIR --out DIR [--f16]
      Writes the inference-only model folder that the browser page loads (--f16: F16 weights).
  s2d tokenize --tokenizer PATH (--text STRING [--bos] | --decode --ids JSON)
      Prints token ids as one JSON array, or decoded text (--help: all options).
  s2d inspect FILE
      Lists the tensors (dtype, shape, bytes) of a .safetensors file, a sharded index or a
      PyTorch .bin/.pt; exit code 1 and one error line for a malformed file.
  s2d convert --in FILE.bin --out FILE.safetensors
      Converts a PyTorch checkpoint to safetensors without running code from it.
  s2d plan --preset paper [--vision DIR --text DIR --llm DIR] [--weights f16|f32] [--max-binding SIZE] [--memory SIZE]
      Prints the memory plan of the paper-size model for an adapter's limits, with the frozen
      weights stored as "s2d train --weights" stores them (default f16; --help: all options).
  s2d check-hf (--vision DIR | --text DIR | --llm DIR) [--device auto|webgpu|cpu]
      Loads a Hugging Face Dinov2, BERT or LLaMA folder and runs one forward pass on a dummy input.
  s2d help
`;

function fail(message: string): number {
  process.stderr.write(`s2d: ${message}\n`);
  return 2;
}

/** A command-line mistake: reported in one line with exit code 2. */
class UsageError extends Error {}

function deviceKind(value: string | undefined): DeviceKind {
  const kind = value ?? 'auto';
  if (kind !== 'auto' && kind !== 'webgpu' && kind !== 'cpu') throw new UsageError(`--device ${kind} is invalid; use auto, webgpu or cpu`);
  return kind;
}

/** Creates `dir` and checks that it can be written, so a bad --out fails before training. */
async function prepareOutputFolder(dir: string): Promise<string | null> {
  try {
    await mkdir(dir, { recursive: true });
    await access(dir, constants.W_OK);
    return null;
  } catch (error) {
    return `--out ${dir} is not a writable folder (${(error as NodeJS.ErrnoException).code ?? (error as Error).message}); choose another path`;
  }
}

function deviceOptions(noBoundsChecks: boolean | undefined): InitDeviceOptions {
  return { warn: (m) => process.stderr.write(`${m}\n`), boundsChecks: noBoundsChecks ? false : undefined };
}

async function train(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      data: { type: 'string' },
      out: { type: 'string' },
      preset: { type: 'string', default: 'tiny' },
      device: { type: 'string' },
      'no-bounds-checks': { type: 'boolean' },
      'epoch-scale': { type: 'string', default: '1' },
      'batch-size': { type: 'string' },
      stages: { type: 'string' },
      vision: { type: 'string' },
      text: { type: 'string' },
      llm: { type: 'string' },
      'llm-tokenizer': { type: 'string' },
      'text-tokenizer': { type: 'string' },
      weights: { type: 'string' },
      'checkpoint-blocks': { type: 'boolean' },
    },
  });
  if (!values.data) return fail('train needs --data DIR (a folder with annotation.json and images/)');
  if (!values.out) return fail('train needs --out DIR (where the trained model is saved)');
  const preset = PRESETS[values.preset!];
  if (!preset) return fail(`unknown --preset ${values.preset}; available: ${Object.keys(PRESETS).join(', ')}`);
  const epochScale = Number(values['epoch-scale']);
  if (!(epochScale > 0)) return fail(`--epoch-scale ${values['epoch-scale']} is invalid; use a positive number`);
  const batchSize = values['batch-size'] === undefined ? preset.training.batchSize : Number(values['batch-size']);
  if (!(Number.isInteger(batchSize) && batchSize > 0)) return fail(`--batch-size ${values['batch-size']} is invalid; use a positive integer`);
  let stages = preset.training.stages;
  if (values.stages !== undefined) {
    try {
      stages = parseStages(values.stages, preset.training.stages);
    } catch (error) {
      return fail((error as Error).message);
    }
  }
  if (values.weights !== undefined && values.weights !== 'f16' && values.weights !== 'f32') return fail(`--weights ${values.weights} is invalid; use f16 or f32`);
  let config: S2DConfig = { ...preset, training: { ...preset.training, batchSize, stages } };
  if (values.weights !== undefined) config.weightDtype = values.weights;
  if (values['checkpoint-blocks']) config = withCheckpointBlocks(config);

  const paper = { vision: values.vision, text: values.text, llm: values.llm, llmTokenizer: values['llm-tokenizer'], textTokenizer: values['text-tokenizer'] };
  const paperMode = values.preset === 'paper';
  const paperCommands = await import('./commands/paper.ts');
  if (paperMode) {
    const problem = await paperCommands.checkPaperArgs(paper);
    if (problem) return fail(problem);
  } else {
    const paperOptions: Record<string, string | undefined> = {
      '--vision': paper.vision,
      '--text': paper.text,
      '--llm': paper.llm,
      '--llm-tokenizer': paper.llmTokenizer,
      '--text-tokenizer': paper.textTokenizer,
      '--weights': values.weights,
    };
    const given = Object.keys(paperOptions).filter((option) => paperOptions[option] !== undefined);
    if (given.length > 0) return fail(`${given.join(', ')}: only valid with --preset paper`);
  }

  const outProblem = await prepareOutputFolder(resolve(values.out));
  if (outProblem) return fail(outProblem);

  const started = performance.now();
  const progress = new TerminalProgress();
  const device = await initDevice(deviceKind(values.device), deviceOptions(values['no-bounds-checks']));
  const opened = paperMode ? await paperCommands.openPaperFromArgs(paper, config, device) : undefined;
  const result = await runMainJob({ dataDir: resolve(values.data), files: nodeFiles, config, device, progress, epochScale, pretrained: opened?.setup });

  const { scores } = result;
  progress.log('');
  progress.log(`test split (${result.counts.test} studies), reports generated from the image context alone:`);
  progress.log(`  BLEU-1 ${scores.bleu1.toFixed(4)}  BLEU-2 ${scores.bleu2.toFixed(4)}  BLEU-3 ${scores.bleu3.toFixed(4)}  BLEU-4 ${scores.bleu4.toFixed(4)}  ROUGE-L ${scores.rougeL.toFixed(4)}`);
  for (const example of result.examples) {
    progress.log(`\n[${example.id}]\n  generated: ${example.generated}\n  reference: ${example.reference}`);
  }

  const outDir = resolve(values.out);
  let written: string[];
  if (opened) {
    written = await paperCommands.savePaperModel(outDir, result, opened);
  } else {
    const vocab = result.vocab!;
    await mkdir(outDir, { recursive: true });
    const saved: SavedConfig = { format: 's2d-align', version: 1, config, vocabSize: vocab.size, loraEnabled: result.loraEnabled };
    await writeFileAtomic(join(outDir, WEIGHTS_FILE), await encodeModel(result.model, saved));
    await writeTextAtomic(join(outDir, CONFIG_FILE), `${JSON.stringify(saved, null, 2)}\n`);
    await writeTextAtomic(join(outDir, VOCAB_FILE), `${JSON.stringify(vocab.toJSON())}\n`);
    written = [WEIGHTS_FILE, CONFIG_FILE, VOCAB_FILE];
  }
  const minutes = (performance.now() - started) / 60000;
  progress.log(`\nsaved the model to ${outDir} (${written.join(', ')}); total time ${minutes.toFixed(1)} min`);
  if (device instanceof WebGpuDevice) {
    const compiled = device.compileStats();
    progress.log(`shader pipelines: ${compiled.pipelines} compiled, ${(compiled.milliseconds / 1000).toFixed(1)} s of the total`);
  }
  progress.log(`next: node scripts/s2d.mjs generate --model ${values.out} --image FILE`);
  return 0;
}

async function generate(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string' },
      image: { type: 'string' },
      'max-tokens': { type: 'string' },
      device: { type: 'string' },
      'no-bounds-checks': { type: 'boolean' },
    },
  });
  if (!values.model) return fail('generate needs --model DIR (a folder written by "s2d train")');
  if (!values.image) return fail('generate needs --image FILE (a PNG or JPEG chest X-ray)');
  const modelDir = resolve(values.model);
  await initDevice(deviceKind(values.device), deviceOptions(values['no-bounds-checks']));

  const configPath = join(modelDir, CONFIG_FILE);
  const saved = parseSavedConfig(await readFile(configPath, 'utf8').catch(() => {
    throw new Error(`${configPath}: file not found; point --model at a folder written by "s2d train"`);
  }), configPath);
  const maxTokens = values['max-tokens'] ? Number(values['max-tokens']) : saved.config.data.maxReportTokens;
  if (!(Number.isInteger(maxTokens) && maxTokens > 0)) return fail(`--max-tokens ${values['max-tokens']} is invalid; use a positive integer`);
  if (saved.hf) {
    const report = await (await import('./commands/paper.ts')).generatePaperReport(saved, modelDir, values.image, maxTokens);
    process.stdout.write(`${report}\n`);
    return 0;
  }

  // Accepts both a full checkpoint from "s2d train" and an inference-only one from "s2d export".
  const vocabPath = join(modelDir, VOCAB_FILE);
  const vocab = Vocabulary.fromJSON(JSON.parse(await readFile(vocabPath, 'utf8')));
  const weights = await fileSource(join(modelDir, WEIGHTS_FILE));
  const model = await loadInferenceModel(saved, weights);
  await weights.close?.();
  // One matmul per linear layer instead of three; equal outputs up to f32 rounding.
  if (saved.loraEnabled) model.decoder.setLoraMerged(true);

  const { imageMean, imageStd } = saved.config.data;
  const image = await loadImage(nodeFiles, resolve(values.image), { size: saved.config.vision.imageSize, mean: imageMean, std: imageStd });
  const [features] = await extractImageFeatures(model, [image], 1);
  const width = saved.config.vision.hiddenSize;
  const featureTensor = noGrad(() => fromHost(features, [1, features.length / width, width]));
  const [tokens] = await generateGreedy(model, featureTensor, { maxTokens, ids: specialIds(vocab) });
  featureTensor.dispose();
  model.dispose();
  process.stdout.write(`${vocab.decode(tokens)}\n`);
  return 0;
}

/** Subcommands: each takes its own arguments and returns the exit code. */
const COMMANDS: Record<string, (args: string[]) => Promise<number>> = {
  train,
  generate,
  export: async (args) => (await import('./commands/export.ts')).exportCommand(args),
  tokenize: async (args) => (await import('./commands/tokenize.ts')).tokenizeCommand(args),
  inspect: async (args) => (await import('./commands/inspect.ts')).inspectCommand(args),
  convert: async (args) => (await import('./commands/convert.ts')).convertCommand(args),
  plan: async (args) => (await import('./commands/hf.ts')).planCommand(args),
  'check-hf': async (args) => (await import('./commands/hf.ts')).checkHfCommand(args),
};

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    if (command === undefined || command === 'help' || command === '--help' || command === '-h') {
      process.stdout.write(USAGE);
      return command === undefined ? 2 : 0;
    }
    const run = COMMANDS[command];
    if (!run) return fail(`unknown command "${command}"\n\n${USAGE}`);
    if ((command === 'train' || command === 'generate') && (rest.includes('--help') || rest.includes('-h'))) {
      process.stdout.write(USAGE);
      return 0;
    }
    return await run(rest);
  } catch (error) {
    if (error instanceof UsageError) return fail(error.message);
    if ((error as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS')) return fail(`${(error as Error).message}; run "s2d help" for the options`);
    process.stderr.write(`s2d ${command}: ${(error as Error).message}\n`);
    if (process.env.S2D_DEBUG) process.stderr.write(`${(error as Error).stack}\n`);
    return 1;
  }
}
