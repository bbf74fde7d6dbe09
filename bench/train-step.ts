// Times one training step of the tiny preset's decoder (causal LM, then LoRA only) and of PAG
// stage 1, and counts the kernel dispatches each records.
// Usage: npm run bench:step [-- --device cpu] [-- --no-bounds-checks]
import { boundsChecksEnabled, initDevice } from '../engine/devices.ts';
import { AdamW } from '../engine/optim.ts';
import { Random } from '../engine/random.ts';
import { fromHost, tidy } from '../engine/tensor.ts';
import { WebGpuDevice } from '../engine/webgpu-device.ts';
import { TINY } from '../s2d/config.ts';
import { S2DAlign } from '../s2d/model.ts';
import { stageParameters } from '../s2d/train.ts';

const deviceArg = process.argv.includes('--device') ? process.argv[process.argv.indexOf('--device') + 1] : 'webgpu';
const device = await initDevice(deviceArg as 'webgpu' | 'cpu', {
  boundsChecks: process.argv.includes('--no-bounds-checks') ? false : undefined,
});
const config = TINY;
const vocabSize = 415;
const batch = config.training.batchSize;
const length = config.data.maxReportTokens + 1;
const model = new S2DAlign(config, vocabSize);
const rng = new Random(7);

const ids = new Int32Array(batch * length).map(() => 4 + rng.int(vocabSize - 4));
const targets = new Int32Array(batch * length).map(() => 4 + rng.int(vocabSize - 4));
const tokens = model.vision.patchCount + 1;
const features = rng.normalArray(batch * tokens * config.vision.hiddenSize, 1);

async function timeSteps(label: string, parameters: ReturnType<typeof model.parameters>, makeLoss: () => ReturnType<typeof model.reportLoss>): Promise<void> {
  for (const p of model.parameters()) p.requiresGrad = false;
  for (const p of parameters) p.requiresGrad = true;
  const optimizer = new AdamW(parameters, { lr: 1e-4 });
  const times: number[] = [];
  const recordTimes: number[] = [];
  let counts = new Map<string, number>();
  // Records one forward, backward and optimizer step; returns the loss tensor.
  const recordStep = () =>
    tidy(() => {
      const value = makeLoss();
      value.backward();
      optimizer.step();
      optimizer.zeroGrad();
      return value;
    });
  for (let step = 0; step < 6; step++) {
    const started = performance.now();
    const loss = recordStep();
    recordTimes.push(performance.now() - started);
    await loss.item();
    loss.dispose();
    times.push(performance.now() - started);
    if (device instanceof WebGpuDevice) counts = device.takeDispatchCounts();
  }
  if (device instanceof WebGpuDevice && device.startProfile()) {
    const loss = recordStep();
    await loss.item();
    loss.dispose();
    const profile = await device.stopProfile();
    const rows = [...profile].sort((a, b) => b[1].ms - a[1].ms);
    const total = rows.reduce((sum, [, entry]) => sum + entry.ms, 0);
    console.log(`  GPU time by kernel (timestamp queries, one step, ${total.toFixed(0)} ms in all):`);
    for (const [label, entry] of rows.slice(0, 12)) console.log(`    ${entry.ms.toFixed(1).padStart(7)} ms  ${String(entry.count).padStart(4)}×  ${label}`);
  }
  optimizer.dispose();
  const warm = times.slice(2).sort((a, b) => a - b);
  const median = warm[Math.floor(warm.length / 2)];
  const dispatches = [...counts.values()].reduce((a, b) => a + b, 0);
  const recording = recordTimes.slice(2).sort((a, b) => a - b)[Math.floor(warm.length / 2)];
  console.log(`${label}: median ${median.toFixed(0)} ms/step over ${warm.length} warm steps (first ${times[0].toFixed(0)} ms), ${dispatches} dispatches/step, ${recording.toFixed(0)} ms of it recording on the CPU`);
  console.log(`  ${[...counts].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(', ')}`);
}

console.log(`device: ${device.description}; shader bounds checks ${boundsChecksEnabled() ? 'on' : 'off'}; batch ${batch}, report length ${length}`);
const decoderBase = model.decoder.parameters().filter((p) => !model.decoder.loraParameters().includes(p));
await timeSteps('decoder causal-LM step', decoderBase, () =>
  model.reportLoss(null, fromHost(ids, [batch, length]), fromHost(targets, [batch, length])),
);
model.decoder.setLoraEnabled(true);
model.decoder.train();
await timeSteps('decoder LoRA step (LoRA factors trained, dropout on)', model.decoder.loraParameters(), () =>
  model.reportLoss(null, fromHost(ids, [batch, length]), fromHost(targets, [batch, length])),
);
model.decoder.eval();
model.decoder.setLoraEnabled(false);
await timeSteps('PAG stage 1 step', stageParameters(model, 1), () => {
  const context = model.context(1, fromHost(features, [batch, tokens, config.vision.hiddenSize]));
  return model.reportLoss(context, fromHost(ids, [batch, length]), fromHost(targets, [batch, length]));
});
if (device instanceof WebGpuDevice) {
  const compiled = device.compileStats();
  console.log(`shader pipelines: ${compiled.pipelines} compiled in ${compiled.milliseconds.toFixed(0)} ms (JavaScript-side time)`);
}
process.exit(0);
