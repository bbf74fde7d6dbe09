// The WebGPU device layer: error reporting, write ordering, scopes and memory over a long run.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { boundsChecksEnabled, setDevice } from '../engine/devices.ts';
import { defineKernel } from '../engine/kernel.ts';
import { Linear } from '../engine/nn/layers.ts';
import { add, gelu, mean, square, sub } from '../engine/ops/index.ts';
import { runKernel } from '../engine/ops/run.ts';
import { AdamW } from '../engine/optim.ts';
import { Random } from '../engine/random.ts';
import { fromHost, keep, tidy } from '../engine/tensor.ts';
import { cpu, webgpu } from './helpers.ts';

test('shader compile error names the kernel', async () => {
  const device = await webgpu();
  setDevice(device);
  const broken = defineKernel<Record<string, never>>({
    name: 'broken_kernel',
    outputs: ([x]) => [x],
    cpu() {},
    wgsl: () => ({ key: 'v1', code: '@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }', workgroups: [1, 1, 1], params: [] }),
  });
  const x = fromHost(new Float32Array(4), [4]);
  const [y] = runKernel(broken, [x], {});
  let message = '';
  try {
    await y.data();
    // The error scope resolves asynchronously; the next call after it raises.
    await new Promise((resolve) => setTimeout(resolve, 50));
    await y.data();
  } catch (error) {
    message = (error as Error).message;
  }
  assert.match(message, /broken_kernel/);
  x.dispose();
  y.dispose();
});

test('S2D_BOUNDS_CHECKS decides whether Dawn keeps shader bounds checks', async () => {
  const device = await webgpu();
  setDevice(device);
  const expected = process.env.S2D_BOUNDS_CHECKS !== '0' && process.env.S2D_BOUNDS_CHECKS !== 'false';
  assert.is(boundsChecksEnabled(), expected);
});

test('backward after tidy disposed the graph raises instead of dropping gradients', () => {
  setDevice(cpu);
  const w = fromHost(new Float32Array([1, 2, 3]), [3]);
  w.requiresGrad = true;
  const loss = tidy(() => mean(square(gelu(w))));
  assert.throws(() => loss.backward(), /backward\(\): tensor \[\d*\] f32 in the graph of tensor \[\d*\] f32 was disposed.*call backward\(\) inside the tidy\(\) that ran the forward pass/);
  assert.is(w.grad, null);
  tidy(() => mean(square(gelu(w))).backward());
  assert.ok(w.grad, 'inside tidy the gradient reaches w');
  loss.dispose();
  w.dispose();
});

test('upload after release keeps earlier reads intact', async () => {
  const device = await webgpu();
  setDevice(device);
  const a = fromHost(new Float32Array(256).fill(1), [256]);
  const b = fromHost(new Float32Array(256).fill(10), [256]);
  const sum = add(a, b);
  b.dispose();
  // This upload may reuse b's buffer while the add above is still unsubmitted.
  const c = fromHost(new Float32Array(256).fill(1000), [256]);
  const values = await sum.data();
  assert.equal(values[0], 11, `sum read ${values[0]}; the upload overwrote a buffer still in use`);
  for (const t of [a, sum, c]) t.dispose();
});

test('tidy frees intermediates and keeps returned tensors', async () => {
  const device = await webgpu();
  setDevice(device);
  const before = device.memory().liveStorages;
  const x = fromHost(new Float32Array([1, 2, 3]), [3]);
  const kept = keep(fromHost(new Float32Array([4, 5, 6]), [3]));
  const out = tidy(() => add(gelu(add(x, x)), kept));
  assert.equal(device.memory().liveStorages, before + 3, 'only x, kept and the result should stay alive');
  assert.ok(!out.disposed);
  for (const t of [x, kept, out]) t.dispose();
  assert.equal(device.memory().liveStorages, before);
});

test('1000 training steps keep memory constant', async () => {
  const device = await webgpu();
  setDevice(device);
  const rng = new Random(11);
  const layer1 = new Linear(24, 48, rng);
  const layer2 = new Linear(48, 8, rng);
  layer1.setRequiresGrad(true);
  layer2.setRequiresGrad(true);
  const optimizer = new AdamW([...layer1.parameters(), ...layer2.parameters()], { lr: 1e-3 });
  const input = rng.normalArray(16 * 24, 1);
  const target = rng.normalArray(16 * 8, 1);
  let afterWarmup = { liveBytes: 0, liveStorages: 0, pooledBytes: 0 };
  let firstLoss = 0;
  let lastLoss = 0;
  for (let step = 0; step < 1000; step++) {
    const loss = tidy(() => {
      const x = fromHost(input, [16, 24]);
      const y = fromHost(target, [16, 8]);
      const prediction = layer2.forward(gelu(layer1.forward(x)));
      const value = mean(square(sub(prediction, y)));
      value.backward();
      optimizer.step();
      optimizer.zeroGrad();
      return value;
    });
    // Read the loss every 50 steps so the queue does not grow without bound.
    if (step % 50 === 0 || step === 999) {
      const value = await loss.item();
      if (step === 0) firstLoss = value;
      lastLoss = value;
    }
    loss.dispose();
    if (step === 10) afterWarmup = device.memory();
  }
  const end = device.memory();
  assert.equal(end.liveStorages, afterWarmup.liveStorages, `live storages after warm-up=${afterWarmup.liveStorages} | after 1000 steps=${end.liveStorages}`);
  assert.equal(end.liveBytes, afterWarmup.liveBytes, `live bytes after warm-up=${afterWarmup.liveBytes} | after 1000 steps=${end.liveBytes}`);
  assert.equal(end.liveBytes + end.pooledBytes, afterWarmup.liveBytes + afterWarmup.pooledBytes, 'pool grew');
  assert.ok(lastLoss < firstLoss * 0.5, `loss should fall: first=${firstLoss} last=${lastLoss}`);
  optimizer.dispose();
});

test.run();
