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
//
// The frozen weights are stored as f16 by default (`--weights f16`), so the loaders are also
// checked here against their f32 outputs on the golden folders.
import { spawn } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { Device } from '../engine/device.ts';
import { setDevice } from '../engine/devices.ts';
import type { Module } from '../engine/nn/module.ts';
import { Random } from '../engine/random.ts';
import { fromHost, noGrad, tidy, type Tensor } from '../engine/tensor.ts';
import { fileSource } from '../weights/node-files.ts';
import { encodeSafetensors, openSafetensors, readTensor, readTensorBytes, type TensorToWrite } from '../weights/safetensors.ts';
import { bytesSource } from '../weights/source.ts';
import { decoderBatch, type PreparedSample } from '../s2d/batches.ts';
import type { SavedConfig } from '../s2d/checkpoint.ts';
import { PRESETS, TINY, withCheckpointBlocks } from '../s2d/config.ts';
import { loadBert } from '../s2d/hf/bert.ts';
import type { WeightDtype } from '../s2d/hf/checkpoint.ts';
import { loadDinov2 } from '../s2d/hf/dinov2.ts';
import { loadLlama } from '../s2d/hf/llama.ts';
import { WEBGPU_DEFAULT_LIMITS } from '../s2d/hf/memory-plan.ts';
import { nodeFolder } from '../s2d/hf/node-folder.ts';
import { PAPER_PRESET, PAPER_VOCAB } from '../s2d/hf/paper.ts';
import { checkPaperFits, loadPaperModel, openPaperModel, paperModelConfig, readPaperConfigs, readPaperTokenizers, type PaperFolders } from '../s2d/hf/paper-model.ts';
import { S2DAlign } from '../s2d/model.ts';
import { patchify } from '../s2d/models/vit.ts';
import { pipelineIds } from '../s2d/tokenizers.ts';
import { goldenTensor, readGolden, relativeError } from './golden/compare.ts';
import { cpu, webgpu } from './helpers.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const GOLDEN = join(root, 'test/golden');
const TOKENIZERS = join(root, 'test/fixtures/tokenizers');
const SAMPLE = join(root, 'examples/data/covid-cxr-sample');
const LLAMA_TOKENIZER = join(TOKENIZERS, 'llama2/tokenizer.json');
const BERT_VOCAB = join(TOKENIZERS, 'bert-base-uncased/vocab.txt');
const IMAGE_MEAN = [0.53, 0.53, 0.53];
const IMAGE_STD = [0.26, 0.26, 0.26];
/** Relative error (max |f16 − f32| / max |f32|) allowed between outputs of f16 and f32 weights. */
const F16_TOLERANCE = 1e-2;

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

test('withCheckpointBlocks reaches the tiny models (cpu)', () => {
  setDevice(cpu);
  const model = new S2DAlign(withCheckpointBlocks(TINY), 40);
  assert.ok(model.decoder.checkpointBlocks, 'decoder');
  assert.ok(model.textEncoder.checkpointBlocks, 'text encoder');
  assert.ok(model.vision.checkpointBlocks, 'vision');
  assert.is(TINY.decoder.checkpointBlocks, undefined, 'the preset itself is unchanged');
  model.dispose();
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

test('memory plan rejects f32 Vicuna-7B on default limits', () => {
  const f32 = { ...PAPER_PRESET, weightDtype: 'f32' as const };
  assert.throws(() => checkPaperFits(f32, PAPER_VOCAB, WEBGPU_DEFAULT_LIMITS), /model\.embed_tokens\.weight \[32000, 4096\] needs 500\.0 MiB in f32/);
  assert.throws(() => checkPaperFits(f32, PAPER_VOCAB, WEBGPU_DEFAULT_LIMITS), /--weights f32 --adapter" prints the whole plan/);
});

test('memory plan fits f16 Vicuna-7B on default limits', () => {
  assert.is(PAPER_PRESET.weightDtype, 'f16', 'the paper preset stores frozen weights as f16');
  // The 250 MiB f16 embedding and lm_head fit the 256 MiB buffer, split across bindings. The
  // batch of 64 is still rejected, because its logits do not fit one binding.
  assert.throws(() => checkPaperFits(PAPER_PRESET, PAPER_VOCAB, WEBGPU_DEFAULT_LIMITS), /a batch of 64 does not fit this adapter/);
  const plan = checkPaperFits({ ...PAPER_PRESET, training: { ...PAPER_PRESET.training, batchSize: 8 } }, PAPER_VOCAB, WEBGPU_DEFAULT_LIMITS);
  assert.is(plan?.weightDtype, 'f16');
  const embedding = plan?.groups.find((group) => group.name === 'model.embed_tokens.weight');
  assert.is(embedding?.dtype, 'f16');
  assert.is(embedding?.bytes, 32000 * 4096 * 2);
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

test('train --weights rejects bad values and the tiny preset', async () => {
  const { vision, text, llm, data, dir } = await paperFixture();
  const paper = ['train', '--preset', 'paper', '--vision', vision, '--text', text, '--llm', llm, '--data', data, '--out', join(dir, 'never')];
  const bf16 = await s2d([...paper, '--weights', 'bf16']);
  assert.is(bf16.code, 2, bf16.stderr);
  assert.match(bf16.stderr, '--weights bf16 is invalid; use f16 or f32');
  const tiny = await s2d(['train', '--data', data, '--out', join(dir, 'never'), '--weights', 'f16']);
  assert.is(tiny.code, 2, tiny.stderr);
  assert.match(tiny.stderr, '--weights: only valid with --preset paper');
});

/** Rows [B, C, H, W] of golden pixel values as patches [B, P, C·p·p]. */
function goldenPatches(pixels: { shape: number[]; data: Float32Array | Int32Array }, patchSize: number): Tensor {
  const [batch, channels, height, width] = pixels.shape;
  const imageLength = channels * height * width;
  const perImage = (height / patchSize) * (width / patchSize) * channels * patchSize * patchSize;
  const patches = new Float32Array(batch * perImage);
  for (let b = 0; b < batch; b++) {
    const image = (pixels.data as Float32Array).subarray(b * imageLength, (b + 1) * imageLength);
    patches.set(patchify(image, channels, height, patchSize, width), b * perImage);
  }
  return fromHost(patches, [batch, perImage / (channels * patchSize * patchSize), channels * patchSize * patchSize]);
}

/** Runs `forward` without a graph and returns its output on the host. */
async function evaluate(forward: () => Tensor): Promise<Float32Array> {
  const out = noGrad(() => tidy(forward));
  const values = (await out.data()) as Float32Array;
  out.dispose();
  return values;
}

/** Asserts that `half` is within F16_TOLERANCE of `full` and prints both sides at the worst element. */
function assertNearF32(label: string, half: Float32Array, full: Float32Array): void {
  assert.is(half.length, full.length, `${label}: f16 gives ${half.length} values, f32 ${full.length}`);
  const { relative, maxDiff, maxRef, worst } = relativeError(half, full);
  const line = `${label}: relative error ${relative.toExponential(2)} (max |f16 − f32| ${maxDiff.toExponential(2)} / max |f32| ${maxRef.toPrecision(4)}, tolerance ${F16_TOLERANCE}); worst element ${worst}: f16=${half[worst]} | f32=${full[worst]}`;
  console.log(`  ${line}`);
  assert.ok(relative <= F16_TOLERANCE, line);
  // f16 storage must change something, or the weights were not rounded at all.
  assert.ok(maxDiff > 0, `${label}: f16 and f32 outputs are identical, so the weights were not stored as f16`);
}

/**
 * Whether a parameter of the ViT, BERT or LLaMA is one that `--weights f16` stores as f16: a
 * linear weight, a word embedding, lm_head (and the ViT patch projection).
 */
const HALF_NAME = /(^|\.)(q_proj|k_proj|v_proj|o_proj|out_proj|gate_proj|up_proj|down_proj|fc1|fc2|intermediate|output|patch_embed)(\.base)?\.weight$|(^|\.)(embed_tokens|word_embeddings)\.weight$|^lm_head\.weight$/;

/** Asserts each parameter's dtype: `dtype` for HALF_NAME weights, f32 for the rest. */
function assertStorage(label: string, module: Module, dtype: WeightDtype): void {
  let halves = 0;
  for (const [name, parameter] of module.namedParameters()) {
    const expected = HALF_NAME.test(name) ? dtype : 'f32';
    assert.is(parameter.dtype, expected, `${label}: ${name} is ${parameter.dtype}, expected ${expected}`);
    if (parameter.dtype === 'f16') halves += 1;
  }
  if (dtype === 'f16') assert.ok(halves > 0, `${label}: no f16 parameters`);
}

for (const kind of ['cpu', 'webgpu'] as const) {
  test(`hf loaders in f16 match f32 outputs (${kind})`, async () => {
    const device: Device = kind === 'cpu' ? cpu : await webgpu();
    setDevice(device);
    const folder = (name: string) => nodeFolder(join(GOLDEN, name));

    const dinov2Golden = await readGolden('dinov2');
    const pixels = goldenTensor(dinov2Golden, 'native.pixel_values');
    const vision = { f32: await loadDinov2(folder('dinov2')), f16: await loadDinov2(folder('dinov2'), { weightDtype: 'f16' }) };
    assertStorage(`dinov2 (${kind})`, vision.f16.model, 'f16');
    const visionOut = async (dtype: WeightDtype) => evaluate(() => vision[dtype].model.forward(goldenPatches(pixels, vision[dtype].config.patchSize)));
    assertNearF32(`dinov2 last_hidden_state (${kind})`, await visionOut('f16'), await visionOut('f32'));

    const bertGolden = await readGolden('bert');
    const ids = goldenTensor(bertGolden, 'pair.input_ids');
    const lengths = goldenTensor(bertGolden, 'pair.lengths');
    const types = goldenTensor(bertGolden, 'pair.token_type_ids');
    const text = { f32: await loadBert(folder('bert')), f16: await loadBert(folder('bert'), { weightDtype: 'f16' }) };
    assertStorage(`bert (${kind})`, text.f16.model, 'f16');
    const textOut = async (dtype: WeightDtype) =>
      evaluate(() => text[dtype].model.forward(fromHost(ids.data, ids.shape, 'i32'), fromHost(lengths.data, lengths.shape, 'i32'), fromHost(types.data, types.shape, 'i32')));
    assertNearF32(`bert last_hidden_state (${kind})`, await textOut('f16'), await textOut('f32'));

    // A tied LLaMA keeps its token embedding in f32, because the tied logits read it with matmul.
    for (const fixture of ['llama', 'llama-tied']) {
      const llamaIds = goldenTensor(await readGolden(fixture), 'input_ids');
      const decoder = { f32: await loadLlama(folder(fixture)), f16: await loadLlama(folder(fixture), { weightDtype: 'f16' }) };
      const tied = decoder.f16.config.tieWordEmbeddings === true;
      assert.is(decoder.f16.model.embedTokens.weight.dtype, tied ? 'f32' : 'f16', `${fixture} (${kind}): token embedding dtype`);
      const logits = async (dtype: WeightDtype) => {
        const model = decoder[dtype].model;
        return evaluate(() => model.logits(model.forwardHidden(model.embed(fromHost(llamaIds.data, llamaIds.shape, 'i32')))));
      };
      assertNearF32(`${fixture} logits (${kind})`, await logits('f16'), await logits('f32'));
      decoder.f32.model.dispose();
      decoder.f16.model.dispose();
    }

    for (const loaded of [vision.f32, vision.f16, text.f32, text.f16]) loaded.model.dispose();
    setDevice(cpu);
  });
}

/** Trains with `options` on the WebGPU device (one epoch of two steps per stage) into `out`. */
function trainPaper(fixture: Fixture, out: string, options: string[]) {
  const { vision, text, llm, data } = fixture;
  return s2d([
    'train', '--preset', 'paper', '--vision', vision, '--text', text, '--llm', llm,
    '--llm-tokenizer', LLAMA_TOKENIZER, '--text-tokenizer', BERT_VOCAB,
    '--data', data, '--out', out, '--epoch-scale', '0.01', '--batch-size', '4', '--device', 'webgpu', ...options,
  ]);
}

/** Asserts that `generate` on the saved model writes the report that training printed for the first test study. */
async function assertGenerateRepeats(fixture: Fixture, out: string, trainedStdout: string): Promise<void> {
  const generated = await s2d(['generate', '--model', out, '--image', fixture.testImage, '--device', 'webgpu']);
  assert.is(generated.code, 0, generated.stderr);
  // The text may hold newlines (byte tokens), so it runs up to the reference line.
  const during = new RegExp(`\\[${fixture.testIds[0]}\\]\\n  generated: ([\\s\\S]*?)\\n  reference: `).exec(trainedStdout);
  assert.ok(during, `train printed no report for ${fixture.testIds[0]}:\n${trainedStdout}`);
  assert.is(generated.stdout, `${during![1]}\n`, `reloaded=${JSON.stringify(generated.stdout)} | trained=${JSON.stringify(during![1])}`);
}

test('paper mode trains, saves and generates (webgpu)', async () => {
  const paper = await paperFixture();
  const { vision, text, llm, dir } = paper;
  const out = join(dir, 'run');
  const trained = await trainPaper(paper, out, ['--weights', 'f32']);
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
  assert.is(saved.config.weightDtype, 'f32');
  assert.is(saved.config.decoder.checkpointBlocks, undefined, 'no checkpointing unless requested');
  assert.equal(saved.config.data.imageMean, IMAGE_MEAN);
  const parts = await openSafetensors(bytesSource(new Uint8Array(await readFile(join(out, 'model.safetensors'))), 'model.safetensors'));
  const names = [...parts.tensors.keys()];
  assert.ok(names.includes('memory_bank') && names.some((n) => n.startsWith('sma_p.')), 'memory bank and SMA adapters are saved');
  assert.equal(names.filter((n) => !/^(memory_bank|sma_[vtp]\.)/.test(n)), [], 'the frozen base is not saved again');
  const adapter = JSON.parse(await readFile(join(out, 'adapter/adapter_config.json'), 'utf8')) as Record<string, unknown>;
  assert.equal([adapter.r, adapter.lora_alpha, adapter.base_model_name_or_path], [16, 16, llm]);

  // Greedy generation after reloading must repeat the report the trained model wrote.
  await assertGenerateRepeats(paper, out, trained.stdout);
});

/** Reopens a model saved by `trainPaper` on the CPU device, as `generate` does. */
async function reopen(saved: SavedConfig, out: string): Promise<ReturnType<typeof openPaperModel>> {
  setDevice(cpu);
  const folders: PaperFolders = { vision: nodeFolder(saved.hf!.vision), text: nodeFolder(saved.hf!.text), llm: nodeFolder(saved.hf!.llm) };
  const parts = await fileSource(join(out, 'model.safetensors'));
  return openPaperModel(saved, folders, parts, nodeFolder(join(out, 'adapter'))).finally(() => parts.close?.());
}

test('paper mode trains in f16 with checkpointed blocks (webgpu)', async () => {
  const paper = await paperFixture();
  const out = join(paper.dir, 'run-f16');
  const trained = await trainPaper(paper, out, ['--weights', 'f16', '--checkpoint-blocks', '--stages', '1,2']);
  assert.is(trained.code, 0, `train failed:\n${trained.stderr}\n${trained.stdout}`);
  const stages = [...trained.stdout.matchAll(/PAG stage (\d): (\d+) steps in [\d.]+ s, train loss (\S+), val loss (\S+)/g)];
  assert.equal(stages.map((m) => Number(m[1])), [1, 2], trained.stdout);
  for (const [line, , , trainLoss, valLoss] of stages) {
    assert.ok(Number.isFinite(Number(trainLoss)), `train loss must be finite: ${line}`);
    assert.ok(Number.isFinite(Number(valLoss)), `val loss must be finite: ${line}`);
  }

  const saved = JSON.parse(await readFile(join(out, 'config.json'), 'utf8')) as SavedConfig;
  assert.is(saved.config.weightDtype, 'f16');
  assert.is(saved.config.vision.checkpointBlocks, true);
  assert.is(saved.config.text.checkpointBlocks, true);
  assert.is(saved.config.decoder.checkpointBlocks, true);
  await assertGenerateRepeats(paper, out, trained.stdout);

  // Reloaded as generate reloads it: the frozen base in f16, checkpointing on again.
  const model = await reopen(saved, out);
  assertStorage('reloaded decoder', model.decoder, 'f16');
  assertStorage('reloaded ViT', model.vision, 'f16');
  assertStorage('reloaded text encoder', model.textEncoder, 'f16');
  assert.ok(model.decoder.checkpointBlocks, 'the reloaded decoder checkpoints its blocks');
  model.dispose();

  // A config.json without weightDtype loads the frozen base in f32.
  const { weightDtype, ...older } = saved.config;
  assert.is(weightDtype, 'f16');
  const f32 = await reopen({ ...saved, config: older }, out);
  assertStorage('decoder of a config without weightDtype', f32.decoder, 'f32');
  f32.dispose();

  const invalid = { ...saved, config: { ...saved.config, weightDtype: 'bf16' as WeightDtype } };
  await reopen(invalid, out).then(
    () => assert.unreachable('weightDtype bf16 must be rejected'),
    (error: Error) => assert.match(error.message, `the saved config's weightDtype is "bf16"; set it to "f16" or "f32"`),
  );
});

test('cleanup', async () => {
  if (fixture) await rm((await fixture).dir, { recursive: true, force: true });
});

test.run();
