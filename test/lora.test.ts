// LoRA linear: the update matches its definition, and merging it into the base weight gives
// the same outputs and can be undone.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { Device } from '../engine/device.ts';
import { setDevice } from '../engine/devices.ts';
import { LoRALinear } from '../engine/nn/layers.ts';
import { Random } from '../engine/random.ts';
import { fromHost, noGrad, tidy } from '../engine/tensor.ts';
import { compare, cpu, webgpu } from './helpers.ts';

async function checkMerge(device: Device): Promise<void> {
  setDevice(device);
  const rng = new Random(12);
  const layer = new LoRALinear(37, 29, rng, { rank: 5, alpha: 7, dropout: 0.1 });
  layer.loraB.assign(rng.normalArray(layer.loraB.size, 0.3));
  layer.loraEnabled = true;
  const x = fromHost(rng.normalArray(3 * 11 * 37, 1), [3, 11, 37]);
  const weightBefore = await layer.base.weight.data();

  const unmerged = await noGrad(() => tidy(() => layer.forward(x))).data();
  layer.merge();
  assert.ok(layer.merged);
  const merged = await noGrad(() => tidy(() => layer.forward(x))).data();
  const same = compare(merged, unmerged, 1e-4, 1e-4);
  assert.ok(same.ok, `merged vs unmerged output: ${same.message}`);

  // The merged weight is W + (alpha/rank)·B·A, computed here on the host.
  const a = await layer.loraA.data();
  const b = await layer.loraB.data();
  const expected = Float32Array.from(weightBefore);
  for (let o = 0; o < 29; o++) {
    for (let i = 0; i < 37; i++) {
      let total = 0;
      for (let r = 0; r < 5; r++) total += b[o * 5 + r] * a[r * 37 + i];
      expected[o * 37 + i] += (7 / 5) * total;
    }
  }
  const weightMerged = compare(await layer.base.weight.data(), expected, 1e-5, 1e-5);
  assert.ok(weightMerged.ok, `merged weight: ${weightMerged.message}`);

  layer.unmerge();
  const restored = compare(await layer.base.weight.data(), weightBefore, 1e-5, 1e-5);
  assert.ok(restored.ok, `unmerged weight: ${restored.message}`);
  layer.dispose();
  x.dispose();
}

test('LoRA merge and unmerge (cpu)', async () => {
  await checkMerge(cpu);
});

test('LoRA merge and unmerge (webgpu)', async () => {
  await checkMerge(await webgpu());
});

test('merged LoRA rejects training', () => {
  setDevice(cpu);
  const layer = new LoRALinear(4, 3, new Random(1), { rank: 2, alpha: 2, dropout: 0 });
  assert.throws(() => layer.merge(), /merge\(\) needs the LoRA update enabled/);
  layer.loraEnabled = true;
  layer.merge();
  layer.train(true);
  assert.throws(() => layer.forward(fromHost(new Float32Array(8), [2, 4])), /call unmerge\(\) before training/);
});

test.run();
