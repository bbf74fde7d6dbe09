// `s2d export`: writes an inference-only model folder for the browser page. It keeps the
// parameters that report generation reads (vision, memory_bank, sma_v, decoder with its LoRA
// as saved) and drops the text encoder, its masked-LM head, SMA_t and SMA_p.
import { mkdir, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { fileSource, writeFileAtomic, writeTextAtomic } from '../../weights/node-files.ts';
import { encodeSafetensors, openSafetensors, readTensor, type TensorToWrite } from '../../weights/safetensors.ts';
import { CONFIG_FILE, parseSavedConfig, VOCAB_FILE, WEIGHTS_FILE } from '../checkpoint.ts';
import { Vocabulary, type VocabularyJSON } from '../data/vocab.ts';
import { INFERENCE_PREFIXES, isInferenceParameter } from '../inference-model.ts';

const USAGE = 'usage: s2d export --model DIR --out DIR [--f16]';

// Finite f32 values at or beyond this magnitude round to Infinity in binary16.
const F16_OVERFLOW = 65520;

/** Throws when a finite value would become ±Infinity in F16 (|value| ≥ 65520). */
function checkHalfRange(name: string, data: Float32Array): void {
  for (let i = 0; i < data.length; i++) {
    if (Math.abs(data[i]) >= F16_OVERFLOW && Number.isFinite(data[i])) {
      throw new Error(`tensor "${name}" element ${i} (${data[i]}) is outside the F16 range (±65504); export without --f16`);
    }
  }
}

function megabytes(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

/** Runs `s2d export`; returns the exit code. */
export async function exportCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string' },
      out: { type: 'string' },
      f16: { type: 'boolean', default: false },
    },
  });
  if (!values.model || !values.out) {
    process.stderr.write(`s2d: export needs --model DIR (a folder written by "s2d train") and --out DIR\n${USAGE}\n`);
    return 2;
  }
  const modelDir = resolve(values.model);
  const outDir = resolve(values.out);
  if (modelDir === outDir) {
    process.stderr.write('s2d: export --out must differ from --model, or the export would overwrite its own source\n');
    return 2;
  }

  const configPath = join(modelDir, CONFIG_FILE);
  const configText = await readFile(configPath, 'utf8').catch(() => {
    throw new Error(`${configPath}: file not found; point --model at a folder written by "s2d train"`);
  });
  const saved = parseSavedConfig(configText, configPath);
  const vocabPath = join(modelDir, VOCAB_FILE);
  const vocabText = await readFile(vocabPath, 'utf8').catch(() => {
    throw new Error(`${vocabPath}: file not found; point --model at a folder written by "s2d train"`);
  });
  const vocab = Vocabulary.fromJSON(JSON.parse(vocabText) as VocabularyJSON);
  if (vocab.size !== saved.vocabSize) throw new Error(`${vocabPath} has ${vocab.size} words but ${configPath} has vocabSize ${saved.vocabSize}; use the vocab.json saved with this model`);

  const weights = await fileSource(join(modelDir, WEIGHTS_FILE));
  const dtype = values.f16 ? 'F16' : 'F32';
  const inferenceTensors: TensorToWrite[] = [];
  let dropped = 0;
  try {
    const index = await openSafetensors(weights);
    for (const entry of index.tensors.values()) {
      if (!isInferenceParameter(entry.name)) {
        dropped += 1;
        continue;
      }
      const data = await readTensor(index, entry.name);
      if (!(data instanceof Float32Array)) throw new Error(`${weights.name}: tensor "${entry.name}" is ${entry.dtype}, expected a float tensor`);
      if (dtype === 'F16') checkHalfRange(entry.name, data);
      inferenceTensors.push({ name: entry.name, dtype, shape: entry.shape, data });
    }
  } finally {
    await weights.close?.();
  }
  // NOTE: only the groups are checked here; loading the exported folder checks every name.
  const emptyGroups = INFERENCE_PREFIXES.filter((prefix) => !inferenceTensors.some((t) => t.name.startsWith(prefix)));
  if (emptyGroups.length) throw new Error(`${weights.name}: no tensors for ${emptyGroups.join(', ')}; is this an S2D-Align checkpoint?`);

  const chunks = encodeSafetensors(inferenceTensors, { format: 's2d-align', contents: 'inference', config: JSON.stringify(saved) });
  const bytes = chunks.reduce((total, chunk) => total + chunk.byteLength, 0);

  await mkdir(outDir, { recursive: true });
  await writeFileAtomic(join(outDir, WEIGHTS_FILE), chunks);
  await writeTextAtomic(join(outDir, CONFIG_FILE), `${JSON.stringify(saved, null, 2)}\n`);
  await writeTextAtomic(join(outDir, VOCAB_FILE), `${JSON.stringify(vocab.toJSON())}\n`);
  process.stdout.write(
    `exported ${inferenceTensors.length} tensors as ${dtype} (${megabytes(bytes)}; dropped ${dropped} training-only tensors) to ${outDir}: ` +
      `${WEIGHTS_FILE}, ${CONFIG_FILE}, ${VOCAB_FILE}\n`,
  );
  return 0;
}
