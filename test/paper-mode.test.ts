// Paper mode end to end: `s2d train --preset paper` on Hugging Face folders, then
// `s2d generate` from the saved parts, plus the checks that run before anything is allocated.
//
// The checkpoints are the small random models of test/golden/ (Dinov2, BERT, LLaMA), with the
// real tokenizers of test/fixtures/tokenizers (LLaMA-2 BPE, bert-base-uncased WordPiece). The
// golden BERT and LLaMA have 53 and 61 vocabulary rows, so this test writes copies whose word
// embeddings (and LLaMA's lm_head) are enlarged to the tokenizers' 30,522 and 32,000 ids: the
// golden rows first, seeded random rows after them, every other tensor unchanged. The LLaMA
// copy also declares 512 positions in place of 64, because the `paper` preset's stage 3 feeds
// 3 × 64 memory tokens and 101 report tokens (RoPE has no position table, so only the
// declared limit changes).
import { spawn } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { setDevice } from '../engine/devices.ts';
import { Random } from '../engine/random.ts';
import { encodeSafetensors, openSafetensors, readTensor, readTensorBytes, type TensorToWrite } from '../weights/safetensors.ts';
import { bytesSource } from '../weights/source.ts';
import { decoderBatch, type PreparedSample } from '../s2d/batches.ts';
import type { SavedConfig } from '../s2d/checkpoint.ts';
import { PRESETS } from '../s2d/config.ts';
import { WEBGPU_DEFAULT_LIMITS } from '../s2d/hf/memory-plan.ts';
import { nodeFolder } from '../s2d/hf/node-folder.ts';
import { PAPER_PRESET, PAPER_VOCAB } from '../s2d/hf/paper.ts';
import { checkPaperFits, loadPaperModel, paperModelConfig, readPaperConfigs, readPaperTokenizers } from '../s2d/hf/paper-model.ts';
import { pipelineIds } from '../s2d/tokenizers.ts';
import { cpu } from './helpers.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const GOLDEN = join(root, 'test/golden');
const TOKENIZERS = join(root, 'test/fixtures/tokenizers');
const SAMPLE = join(root, 'examples/data/covid-cxr-sample');
const LLAMA_TOKENIZER = join(TOKENIZERS, 'llama2/tokenizer.json');
const BERT_VOCAB = join(TOKENIZERS, 'bert-base-uncased/vocab.txt');
const IMAGE_MEAN = [0.53, 0.53, 0.53];
const IMAGE_STD = [0.26, 0.26, 0.26];

/** Runs `node scripts/s2d.mjs ARGS` from the repository root. */
function s2d(args: string[], timeoutMs = 120_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done) => {
    const child = spawn(process.execPath, ['scripts/s2d.mjs', ...args], { cwd: root, env: { ...process.env, FORCE_COLOR: '0' }, timeout: timeoutMs });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    child.on('close', (code) => done({ code, stdout, stderr }));
  });
}

/**
 * Copies a golden HF folder to `out`, with `config` merged into its config.json and the
 * tensors named in `rows` grown to that many rows (golden rows first, then N(0, 0.02) rows).
 */
async function copyWithRows(name: string, out: string, config: Record<string, unknown>, rows: Record<string, number>): Promise<void> {
  const source = join(GOLDEN, name);
  await mkdir(out, { recursive: true });
  const goldenConfig = JSON.parse(await readFile(join(source, 'config.json'), 'utf8')) as Record<string, unknown>;
  await writeFile(join(out, 'config.json'), JSON.stringify({ ...goldenConfig, ...config }, null, 2));

  const index = await openSafetensors(bytesSource(new Uint8Array(await readFile(join(source, 'model.safetensors'))), `${name}/model.safetensors`));
  const rng = new Random(17);
  const tensors: TensorToWrite[] = [];
  for (const entry of index.tensors.values()) {
    const wanted = rows[entry.name];
    if (wanted === undefined) {
      // Copied byte for byte in its own dtype (the BERT file also contains an integer position_ids buffer).
      tensors.push({ name: entry.name, dtype: entry.dtype, shape: entry.shape, data: await readTensorBytes(index, entry.name) });
      continue;
    }
    const data = (await readTensor(index, entry.name)) as Float32Array;
    const [goldenRows, width] = entry.shape;
    const grown = new Float32Array(wanted * width);
    grown.set(data);
    grown.set(rng.normalArray((wanted - goldenRows) * width, 0.02), goldenRows * width);
    tensors.push({ name: entry.name, dtype: 'F32', shape: [wanted, width], data: grown });
  }
  await writeFile(join(out, 'model.safetensors'), Buffer.concat(encodeSafetensors(tensors, { format: 'pt' })));
}

interface Fixture {
  dir: string;
  vision: string;
  text: string;
  llm: string;
  data: string;
  testImage: string;
  testIds: string[];
}

let fixture: Promise<Fixture> | null = null;

/** Writes the three checkpoint folders and an 8 / 2 / 2 study subset of the COVID-CXR sample. */
function paperFixture(): Promise<Fixture> {
  fixture ??= (async () => {
    const dir = await mkdtemp(join(tmpdir(), 's2d-paper-'));
    const vision = join(dir, 'dinov2');
    await mkdir(vision);
    for (const file of ['config.json', 'model.safetensors']) await copyFile(join(GOLDEN, 'dinov2', file), join(vision, file));
    await writeFile(join(vision, 'preprocessor_config.json'), JSON.stringify({ image_mean: IMAGE_MEAN, image_std: IMAGE_STD }));

    const text = join(dir, 'bert');
    await copyWithRows('bert', text, { vocab_size: 30522 }, { 'bert.embeddings.word_embeddings.weight': 30522 });
    const llm = join(dir, 'llama');
    await copyWithRows('llama', llm, { vocab_size: 32000, max_position_embeddings: 512 }, { 'model.embed_tokens.weight': 32000, 'lm_head.weight': 32000 });

    // Image paths are absolute, so the subset's annotation.json reads the sample's images.
    const annotation = JSON.parse(await readFile(join(SAMPLE, 'annotation.json'), 'utf8')) as Record<string, Array<{ id: string; image_path: string[] }>>;
    const pick = (split: string, count: number) =>
      annotation[split].slice(0, count).map((entry) => ({ ...entry, image_path: entry.image_path.map((path) => resolve(SAMPLE, 'images', path)) }));
    const subset = { train: pick('train', 8), val: pick('val', 2), test: pick('test', 2) };
    const data = join(dir, 'data');
    await mkdir(data);
    await writeFile(join(data, 'annotation.json'), JSON.stringify(subset));
    return { dir, vision, text, llm, data, testImage: subset.test[0].image_path[0], testIds: subset.test.map((entry) => entry.id) };
  })();
  return fixture;
}

test('paper preset is registered', () => {
  assert.is(PRESETS.paper, PAPER_PRESET);
  assert.is(PRESETS.paper.training.pretrainDecoderEpochs, 0);
  assert.is(PRESETS.paper.training.pretrainTextEpochs, 0);
});

test('fromParts sizes adapters from loaded widths (cpu)', async () => {
  setDevice(cpu);
  const { vision, text, llm } = await paperFixture();
  const folders = { vision: nodeFolder(vision), text: nodeFolder(text), llm: nodeFolder(llm) };
  const configs = await readPaperConfigs(folders);
  assert.equal(configs.imageMean, IMAGE_MEAN);
  assert.equal(configs.imageStd, IMAGE_STD);
  const config = paperModelConfig(PAPER_PRESET, configs);
  assert.is(config.vision.imageSize, 28, 'image size from the Dinov2 config');
  assert.equal(config.data.imageMean, IMAGE_MEAN);

  const model = await loadPaperModel(folders, config);
  const names = model.namedParameters().map(([name]) => name);
  assert.not.ok(model.mlmHead, 'no masked-LM head');
  assert.not.ok(names.some((name) => name.startsWith('text_mlm_head.')), 'no masked-LM head parameters');
  assert.equal([...model.textEncoder.wordEmbeddings.weight.shape], [30522, 36], 'no extra [MASK] row');
  assert.is(model.vocabSize, 32000);
  // Memory width = ViT width (40), text input = BERT width (36), output = LLaMA width (48), and
  // the SMA MLP 4 × the memory width, as 3072 is for Rad-DINO.
  assert.equal([...model.memoryBank.shape], [64, 40]);
  assert.equal(model.smaV.config, { inputWidth: 40, memoryWidth: 40, heads: 8, mlpWidth: 160, outputWidth: 48 });
  assert.is(model.smaT.config.inputWidth, 36);
  assert.is(model.smaP.config.inputWidth, 36);
  // The tiny preset's parameter names stay: vision., text., decoder., memory_bank, sma_*.
  assert.ok(names.includes('decoder.model.layers.0.self_attn.q_proj.lora_A'), 'decoder LoRA names');
  assert.ok(names.includes('vision.cls_token'), 'vision names');
  assert.ok(names.includes('text.embeddings.word_embeddings.weight'), 'text encoder names');
  model.dispose();
});

test('tokenizers frame BERT text and omit <s> (cpu)', async () => {
  setDevice(cpu);
  const { vision, text, llm } = await paperFixture();
  const folders = { vision: nodeFolder(vision), text: nodeFolder(text), llm: nodeFolder(llm) };
  const configs = await readPaperConfigs(folders);
  const tokenizers = await readPaperTokenizers(folders, configs, {
    llm: { name: LLAMA_TOKENIZER, text: await readFile(LLAMA_TOKENIZER, 'utf8') },
    text: { name: BERT_VOCAB, text: await readFile(BERT_VOCAB, 'utf8') },
  });
  const report = 'no pleural effusion .';
  const reportIds = tokenizers.decoder.encode(report);
  assert.ok(reportIds.length > 0, 'the report has ids');
  assert.is.not(reportIds[0], tokenizers.decoder.bosId, `decoder ids start without <s>: ${JSON.stringify(reportIds)}`);
  assert.is(tokenizers.decoder.decode([...reportIds, tokenizers.decoder.eosId, 500]), report);
  assert.is(tokenizers.decoder.padId, 0, 'LLaMA-2 pads with <unk>');

  // [CLS] = 101, [SEP] = 102, [PAD] = 0 in bert-base-uncased.
  const textIds = tokenizers.text.encode(report);
  assert.not.ok(textIds.includes(101) || textIds.includes(102), 'encode leaves the frame to the batch');
  const ids = pipelineIds(tokenizers.decoder, tokenizers.text, 24);
  assert.equal(ids.text, { pad: 0, cls: 101, sep: 102, maxLength: 24 });
  const long = Array.from({ length: 40 }, (_, i) => 1000 + i);
  const sample: PreparedSample = { id: 'a', features: new Float32Array(2), report, reportIds, referenceIds: long, phraseIds: [textIds] };
  const other: PreparedSample = { ...sample, id: 'b', referenceIds: textIds };
  const batch = decoderBatch([sample, other], [1, 2], ids, new Random(1), 3, 60);
  const reference = (await batch.reference.ids.data()) as Int32Array;
  const lengths = (await batch.reference.lengths.data()) as Int32Array;
  assert.equal([...lengths], [24, textIds.length + 2], 'framed lengths within the 24 positions');
  assert.equal([reference[0], reference[23]], [101, 102]);
  assert.equal([...reference.slice(24, 24 + textIds.length + 3)], [101, ...textIds, 102, 0]);
  for (const tensor of [batch.features, batch.inputIds, batch.targets, batch.reference.ids, batch.reference.lengths, batch.phrases.ids, batch.phrases.lengths]) tensor.dispose();
});

test('memory plan rejects Vicuna-7B on a 128 MiB binding', () => {
  assert.throws(() => checkPaperFits(PAPER_PRESET, PAPER_VOCAB, WEBGPU_DEFAULT_LIMITS), /model\.embed_tokens\.weight \[32000, 4096\] needs 500\.0 MiB/);
});

test('memory plan rejects a batch with no room', async () => {
  const { vision, text, llm } = await paperFixture();
  const folders = { vision: nodeFolder(vision), text: nodeFolder(text), llm: nodeFolder(llm) };
  const configs = await readPaperConfigs(folders);
  const config = paperModelConfig(PAPER_PRESET, configs);
  const vocab = { text: 30522, decoder: 32000 };
  // Report logits [64, 101, 32000] in f32 are 827 MB; about 9 samples fit 128 MiB.
  assert.throws(() => checkPaperFits(config, vocab, WEBGPU_DEFAULT_LIMITS), /a batch of 64 does not fit this adapter; at most \d+ samples per step fit .* --batch-size \d+/);
  assert.not.throws(() => checkPaperFits({ ...config, training: { ...config.training, batchSize: 4 } }, vocab, WEBGPU_DEFAULT_LIMITS));
  const short = { ...config, decoder: { ...config.decoder, maxPositions: 64 } };
  assert.throws(() => checkPaperFits(short, vocab, null), /293 positions\), more than the LLaMA checkpoint's max_position_embeddings of 64/);
});

test('train --preset paper without --llm fails clearly', async () => {
  const { vision, text, data, dir } = await paperFixture();
  const { code, stderr } = await s2d(['train', '--preset', 'paper', '--vision', vision, '--text', text, '--data', data, '--out', join(dir, 'never')]);
  assert.is(code, 2, stderr);
  assert.match(stderr, 'train --preset paper needs --llm DIR (a LlamaForCausalLM folder such as Vicuna-7B v1.5)');
});

test('tokenizer larger than the LLaMA vocabulary fails clearly', async () => {
  const { vision, text, data, dir } = await paperFixture();
  const args = ['train', '--preset', 'paper', '--vision', vision, '--text', text, '--llm', join(GOLDEN, 'llama'), '--llm-tokenizer', LLAMA_TOKENIZER, '--text-tokenizer', BERT_VOCAB];
  const { code, stderr } = await s2d([...args, '--data', data, '--out', join(dir, 'never'), '--device', 'cpu']);
  assert.is(code, 1, stderr);
  assert.match(stderr, /has 32000 token ids but .*llama\/config\.json has vocab_size 61/);
});

test('paper mode trains, saves and generates (webgpu)', async () => {
  const { vision, text, llm, data, dir, testImage, testIds } = await paperFixture();
  const out = join(dir, 'run');
  const trained = await s2d([
    'train', '--preset', 'paper', '--vision', vision, '--text', text, '--llm', llm,
    '--llm-tokenizer', LLAMA_TOKENIZER, '--text-tokenizer', BERT_VOCAB,
    '--data', data, '--out', out, '--epoch-scale', '0.01', '--batch-size', '4', '--device', 'webgpu',
  ]);
  assert.is(trained.code, 0, `train failed:\n${trained.stderr}\n${trained.stdout}`);

  // One epoch of two steps per stage; each stage logs its losses.
  const stages = [...trained.stdout.matchAll(/PAG stage (\d): (\d+) steps in [\d.]+ s, train loss (\S+), val loss (\S+)/g)];
  assert.equal(stages.map((m) => [Number(m[1]), Number(m[2])]), [[1, 2], [2, 2], [3, 2]], trained.stdout);
  for (const [line, , , trainLoss, valLoss] of stages) {
    assert.ok(Number.isFinite(Number(trainLoss)), `train loss must be finite: ${line}`);
    assert.ok(Number.isFinite(Number(valLoss)), `val loss must be finite: ${line}`);
  }

  const saved = JSON.parse(await readFile(join(out, 'config.json'), 'utf8')) as SavedConfig;
  assert.equal(saved.hf, { vision, text, llm, llmTokenizer: LLAMA_TOKENIZER, textTokenizer: BERT_VOCAB });
  assert.is(saved.loraEnabled, true);
  assert.is(saved.vocabSize, 32000);
  assert.equal(saved.config.data.imageMean, IMAGE_MEAN);
  const parts = await openSafetensors(bytesSource(new Uint8Array(await readFile(join(out, 'model.safetensors'))), 'model.safetensors'));
  const names = [...parts.tensors.keys()];
  assert.ok(names.includes('memory_bank') && names.some((n) => n.startsWith('sma_p.')), 'memory bank and SMA adapters are saved');
  assert.equal(names.filter((n) => !/^(memory_bank|sma_[vtp]\.)/.test(n)), [], 'the frozen base is not saved again');
  const adapter = JSON.parse(await readFile(join(out, 'adapter/adapter_config.json'), 'utf8')) as Record<string, unknown>;
  assert.equal([adapter.r, adapter.lora_alpha, adapter.base_model_name_or_path], [16, 16, llm]);

  // Greedy generation after reloading must repeat the report the trained model wrote.
  const generated = await s2d(['generate', '--model', out, '--image', testImage, '--device', 'webgpu']);
  assert.is(generated.code, 0, generated.stderr);
  // The text may hold newlines (byte tokens), so it runs up to the reference line.
  const during = new RegExp(`\\[${testIds[0]}\\]\\n  generated: ([\\s\\S]*?)\\n  reference: `).exec(trained.stdout);
  assert.ok(during, `train printed no report for ${testIds[0]}:\n${trained.stdout}`);
  assert.is(generated.stdout, `${during![1]}\n`, `reloaded=${JSON.stringify(generated.stdout)} | trained=${JSON.stringify(during![1])}`);
});

test('cleanup', async () => {
  if (fixture) await rm((await fixture).dir, { recursive: true, force: true });
});

test.run();
