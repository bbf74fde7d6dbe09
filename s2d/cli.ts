// The `s2d` command line (Node only).
import { mkdir, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { initDevice, type DeviceKind } from '../engine/devices.ts';
import { fromHost, noGrad } from '../engine/tensor.ts';
import { fileSource, writeFileAtomic, writeTextAtomic } from '../weights/node-files.ts';
import { CONFIG_FILE, encodeModel, loadModel, parseSavedConfig, VOCAB_FILE, WEIGHTS_FILE, type SavedConfig } from './checkpoint.ts';
import { PRESETS } from './config.ts';
import { loadImage } from './data/image.ts';
import { nodeFiles } from './data/node-files.ts';
import { Vocabulary } from './data/vocab.ts';
import { extractImageFeatures, generateGreedy } from './generate.ts';
import { runMainJob, specialIds } from './pipeline.ts';
import { TerminalProgress } from './terminal-progress.ts';

const USAGE = `s2d: S2D-Align radiology report generation on a WebGPU engine

Usage:
  s2d train --data DIR --out DIR [--preset tiny] [--device auto|webgpu|cpu] [--epoch-scale F]
      Pretrains the decoder and text encoder, runs PAG stages 1 → 2 → 3, generates reports
      for the test split, prints BLEU-1..4 and ROUGE-L, and saves the model to --out.
      --data         folder with annotation.json (R2Gen layout) and images/
      --out          output folder for model.safetensors, config.json, vocab.json
      --preset       model size (default tiny)
      --device       auto tries WebGPU, then falls back to the CPU device (default auto)
      --epoch-scale  multiplies every epoch count, e.g. 0.25 for a quick run (default 1)
  s2d generate --model DIR --image FILE [--max-tokens N] [--device auto|webgpu|cpu]
      Writes a report for one PNG or JPEG chest X-ray with a model saved by "s2d train".
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
      Prints the memory plan of the paper-size model for an adapter's limits (--help: all options).
  s2d check-hf (--vision DIR | --text DIR | --llm DIR) [--device auto|webgpu|cpu]
      Loads a Hugging Face Dinov2, BERT or LLaMA folder and runs one forward pass on a dummy input.
  s2d help
`;

function fail(message: string): number {
  process.stderr.write(`s2d: ${message}\n`);
  return 2;
}

function deviceKind(value: string | undefined): DeviceKind {
  const kind = value ?? 'auto';
  if (kind !== 'auto' && kind !== 'webgpu' && kind !== 'cpu') throw new Error(`--device ${kind} is invalid; use auto, webgpu or cpu`);
  return kind;
}

async function train(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      data: { type: 'string' },
      out: { type: 'string' },
      preset: { type: 'string', default: 'tiny' },
      device: { type: 'string' },
      'epoch-scale': { type: 'string', default: '1' },
    },
  });
  if (!values.data) return fail('train needs --data DIR (a folder with annotation.json and images/)');
  if (!values.out) return fail('train needs --out DIR (where the trained model is saved)');
  const config = PRESETS[values.preset!];
  if (!config) return fail(`unknown --preset ${values.preset}; available: ${Object.keys(PRESETS).join(', ')}`);
  const epochScale = Number(values['epoch-scale']);
  if (!(epochScale > 0)) return fail(`--epoch-scale ${values['epoch-scale']} is invalid; use a positive number`);

  const started = performance.now();
  const progress = new TerminalProgress();
  const device = await initDevice(deviceKind(values.device), { warn: (m) => process.stderr.write(`${m}\n`) });
  const result = await runMainJob({ dataDir: resolve(values.data), files: nodeFiles, config, device, progress, epochScale });

  const { scores } = result;
  progress.log('');
  progress.log(`test split (${result.counts.test} studies), reports generated from the image context alone:`);
  progress.log(`  BLEU-1 ${scores.bleu1.toFixed(4)}  BLEU-2 ${scores.bleu2.toFixed(4)}  BLEU-3 ${scores.bleu3.toFixed(4)}  BLEU-4 ${scores.bleu4.toFixed(4)}  ROUGE-L ${scores.rougeL.toFixed(4)}`);
  for (const example of result.examples) {
    progress.log(`\n[${example.id}]\n  generated: ${example.generated}\n  reference: ${example.reference}`);
  }

  const outDir = resolve(values.out);
  await mkdir(outDir, { recursive: true });
  const saved: SavedConfig = { format: 's2d-align', version: 1, config, vocabSize: result.vocab.size, loraEnabled: result.loraEnabled };
  await writeFileAtomic(join(outDir, WEIGHTS_FILE), await encodeModel(result.model, saved));
  await writeTextAtomic(join(outDir, CONFIG_FILE), `${JSON.stringify(saved, null, 2)}\n`);
  await writeTextAtomic(join(outDir, VOCAB_FILE), `${JSON.stringify(result.vocab.toJSON())}\n`);
  const minutes = (performance.now() - started) / 60000;
  progress.log(`\nsaved the model to ${outDir} (${WEIGHTS_FILE}, ${CONFIG_FILE}, ${VOCAB_FILE}); total time ${minutes.toFixed(1)} min`);
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
    },
  });
  if (!values.model) return fail('generate needs --model DIR (a folder written by "s2d train")');
  if (!values.image) return fail('generate needs --image FILE (a PNG or JPEG chest X-ray)');
  const modelDir = resolve(values.model);
  await initDevice(deviceKind(values.device), { warn: (m) => process.stderr.write(`${m}\n`) });

  const configPath = join(modelDir, CONFIG_FILE);
  const saved = parseSavedConfig(await readFile(configPath, 'utf8').catch(() => {
    throw new Error(`${configPath}: file not found; point --model at a folder written by "s2d train"`);
  }), configPath);
  const vocabPath = join(modelDir, VOCAB_FILE);
  const vocab = Vocabulary.fromJSON(JSON.parse(await readFile(vocabPath, 'utf8')));
  const weights = await fileSource(join(modelDir, WEIGHTS_FILE));
  const model = await loadModel(saved, weights);
  await weights.close?.();

  const maxTokens = values['max-tokens'] ? Number(values['max-tokens']) : saved.config.data.maxReportTokens;
  if (!(Number.isInteger(maxTokens) && maxTokens > 0)) return fail(`--max-tokens ${values['max-tokens']} is invalid; use a positive integer`);
  const image = await loadImage(nodeFiles, resolve(values.image), { size: saved.config.vision.imageSize });
  const [features] = await extractImageFeatures(model, [image], 1);
  const width = saved.config.vision.hiddenSize;
  const featureTensor = noGrad(() => fromHost(features, [1, features.length / width, width]));
  const [tokens] = await generateGreedy(model, featureTensor, { maxTokens, ids: specialIds(vocab) });
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
    return await run(rest);
  } catch (error) {
    process.stderr.write(`s2d ${command}: ${(error as Error).message}\n`);
    if (process.env.S2D_DEBUG) process.stderr.write(`${(error as Error).stack}\n`);
    return 1;
  }
}
