// Memory plan of the paper-size model: parameter counts, per-tensor binding checks, the memory
// budget, and the `s2d plan` command.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { setDevice } from '../engine/devices.ts';
import { Random } from '../engine/random.ts';
import { parseSize } from '../s2d/commands/hf.ts';
import { MemoryAdapter } from '../s2d/models/sma.ts';
import { assertPlanFits, formatMemoryPlan, planMemory, planModelsFromPreset, smaParameterShapes, WEBGPU_DEFAULT_LIMITS } from '../s2d/hf/memory-plan.ts';
import { PAPER_PRESET, PAPER_VOCAB } from '../s2d/hf/paper.ts';
import { GOLDEN_ROOT } from './golden/compare.ts';
import { cpu } from './helpers.ts';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const paper = () => planModelsFromPreset(PAPER_PRESET, PAPER_VOCAB);
const LARGE_ADAPTER = { maxStorageBufferBindingSize: 2 * GiB - 4, maxBufferSize: 2 * GiB };

// Parameter counts derived by hand from the architectures (checkpoint heads not counted):
// Vicuna-7B (LLaMA-2-7B layout) 6,738,415,616; Rad-DINO ViT-B/14 at 518 px 86,579,712 (without
// mask_token); CXR-BERT's BERT-base trunk 108,891,648 (without the pooler).
const VICUNA_7B = 6_738_415_616;
const RAD_DINO = 86_579_712;
const CXR_BERT = 108_891_648;
// LoRA rank 16 on the 7 linear layers of 32 blocks: 32 · 16 · (4·(4096 + 4096) + 3·(4096 + 11008)).
const LORA_R16 = 39_976_960;

test('paper plan counts the checkpoint parameters', () => {
  const plan = planMemory(paper(), LARGE_ADAPTER, { weightDtype: 'f16' });
  assert.is(plan.totals.frozenParameters, VICUNA_7B + RAD_DINO + CXR_BERT);
  const loraParameters = plan.groups.filter((g) => g.part === 'lora').reduce((total, g) => total + g.count * g.shape[0] * g.shape[1], 0);
  assert.is(loraParameters, LORA_R16);
});

test('paper plan in f32 rejects the embedding for a 256 MiB buffer', () => {
  const plan = planMemory(paper(), WEBGPU_DEFAULT_LIMITS, { weightDtype: 'f32' });
  const embedding = plan.problems.find((p) => p.includes('model.embed_tokens.weight [32000, 4096]'));
  assert.ok(embedding, `no problem names the embedding; problems:\n${plan.problems.join('\n')}`);
  assert.match(embedding!, '500.0 MiB in f32');
  assert.match(embedding!, "maxBufferSize of 256.0 MiB");
  const head = plan.problems.find((p) => p.includes('lm_head.weight [32000, 4096]'));
  assert.ok(head, `no problem names lm_head; problems:\n${plan.problems.join('\n')}`);
  assert.match(head!, 'maxBufferSize of 256.0 MiB');
  // The MLP weights (172 MiB in f32) are split over bindings like every linear weight; 4096 × 4096 (64 MiB) fits one.
  assert.not.ok(plan.problems.some((p) => p.includes('gate_proj')), `gate_proj in f32 fits one buffer:\n${plan.problems.join('\n')}`);
  assert.not.ok(plan.problems.some((p) => p.includes('q_proj')), 'q_proj [4096, 4096] f32 (64 MiB) should fit a 128 MiB binding');
  assert.throws(() => assertPlanFits(plan), /model\.embed_tokens\.weight \[32000, 4096\] needs 500\.0 MiB/);
});

test('paper plan in f16 splits the embedding and lm_head over 128 MiB bindings', () => {
  // 32000 × 4096 × 2 bytes = 250 MiB fits one 256 MiB buffer. The embedding is gathered in row
  // ranges and lm_head multiplied in row chunks. The MLP weights (86 MiB) fit one binding.
  const plan = planMemory(paper(), WEBGPU_DEFAULT_LIMITS, { weightDtype: 'f16' });
  assert.equal(plan.problems, [], `every tensor should fit:\n${plan.problems.join('\n')}`);
  const split = formatMemoryPlan(plan).split('\n').filter((line) => line.includes('fits (split)'));
  assert.ok(split.some((line) => line.includes('model.embed_tokens.weight')), `the embedding should be split:\n${split.join('\n')}`);
  assert.ok(split.some((line) => line.includes('lm_head.weight')), `lm_head should be split:\n${split.join('\n')}`);
});

test('paper plan fits a large adapter and a budget', () => {
  const plan = planMemory(paper(), { ...LARGE_ADAPTER, memoryBudget: 139 * GiB }, { weightDtype: 'f16' });
  assert.equal(plan.problems, []);
  assert.not.throws(() => assertPlanFits(plan));
  // The frozen weights are about 13.9 GiB in f16 (6.93 G parameters, rounded to buffer size classes).
  assert.ok(plan.totals.frozenWeights > 12.9 * GiB, `frozen weights ${plan.totals.frozenWeights / GiB} GiB, expected more than 12.9`);
  assert.ok(plan.totals.frozenWeights < 15 * GiB, `frozen weights ${plan.totals.frozenWeights / GiB} GiB, expected less than 15`);
  assert.ok(plan.microBatch >= 1, `micro-batch ${plan.microBatch}, expected at least 1`);
  assert.ok(plan.microBatch < 64, `micro-batch ${plan.microBatch}, expected below the paper's batch of 64`);
  assert.is(plan.sequenceLength, 3 * 64 + 100 + 1);
});

test('memory budget smaller than the weights is rejected', () => {
  const plan = planMemory(paper(), { ...LARGE_ADAPTER, memoryBudget: 8 * GiB }, { weightDtype: 'f16' });
  assert.ok(plan.problems.some((p) => p.startsWith('weights and optimizer state need') && p.includes('more than the memory budget of 8.00 GiB')), plan.problems.join('\n'));
  assert.is(plan.microBatch, 0);
});

test('stage 1 plans no LoRA and a shorter context', () => {
  const plan = planMemory(paper(), LARGE_ADAPTER, { weightDtype: 'f16', stage: 1 });
  assert.not.ok(plan.groups.some((g) => g.part === 'lora'));
  assert.not.ok(plan.groups.some((g) => g.name.startsWith('sma_t.')));
  assert.is(plan.sequenceLength, 64 + 100 + 1);
});

test('ViT batch is limited by its attention scores', () => {
  // 12 heads × 1370² × 4 bytes ≈ 85.9 MiB per image at 518 px: one image per 128 MiB binding.
  const plan = planMemory(paper(), WEBGPU_DEFAULT_LIMITS, { weightDtype: 'f16' });
  assert.is(plan.visionBatch, 1);
  assert.is(plan.visionScoresPerImage, 12 * 1370 * 1370 * 4);
});

test('sma shapes match an instantiated adapter', () => {
  setDevice(cpu);
  const config = { inputWidth: 7, memoryWidth: 12, heads: 3, mlpWidth: 10, outputWidth: 9 };
  const adapter = new MemoryAdapter(config, new Random(1));
  const actual = adapter.namedParameters().map(([name, t]) => `${name} [${t.shape.join(', ')}]`);
  const planned = smaParameterShapes(config).map(({ name, shape }) => `${name} [${shape.join(', ')}]`);
  assert.equal(planned.sort(), actual.sort());
  adapter.dispose();
});

test('size options accept units', () => {
  assert.is(parseSize('128MiB', '--max-binding'), 128 * MiB);
  assert.is(parseSize('2GiB', '--max-binding'), 2 * GiB);
  assert.is(parseSize('4e9', '--memory'), 4e9);
  assert.throws(() => parseSize('lots', '--memory'), /--memory lots is invalid/);
});

test('s2d plan rejects the paper model for default limits', () => {
  const result = spawnSync(process.execPath, ['scripts/s2d.mjs', 'plan', '--preset', 'paper', '--weights', 'f32'], { encoding: 'utf8' });
  assert.is(result.status, 1, `exit code ${result.status}; stderr: ${result.stderr}`);
  assert.match(result.stdout, 'does not fit');
  assert.match(result.stdout, 'model.embed_tokens.weight [32000, 4096] needs 500.0 MiB in f32');
});

test('s2d plan reads config.json folders', () => {
  const llm = join(GOLDEN_ROOT, 'llama');
  const result = spawnSync(process.execPath, ['scripts/s2d.mjs', 'plan', '--preset', 'paper', '--llm', llm, '--max-binding', '2GiB', '--max-buffer', '2GiB'], { encoding: 'utf8' });
  assert.is(result.status, 0, `exit code ${result.status}; stdout: ${result.stdout}; stderr: ${result.stderr}`);
  assert.match(result.stdout, `llm ${llm}`);
  assert.match(result.stdout, 'fits: every tensor fits one binding');
});

test.run();
