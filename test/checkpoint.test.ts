// Activation checkpointing: gradients equal those of the plain graph (dropout included), match
// finite differences, and a checkpointed stack has fewer bytes live at its peak.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { checkpoint } from '../engine/checkpoint.ts';
import { CpuDevice } from '../engine/cpu-device.ts';
import type { Device, Storage } from '../engine/device.ts';
import { setDevice } from '../engine/devices.ts';
import { dropoutSeedState, setDropoutSeedState } from '../engine/nn/layers.ts';
import { gelu, matmul, mul, reshape } from '../engine/ops/index.ts';
import { crossEntropy } from '../engine/ops/loss.ts';
import { Random } from '../engine/random.ts';
import { fromHost, noGrad, tidy, type Tensor } from '../engine/tensor.ts';
import { LlamaDecoder, type LlamaConfig } from '../s2d/models/llama.ts';
import { assertGradients } from './gradcheck.ts';
import { compare, cpu, randomArray, webgpu } from './helpers.ts';

const LORA = { rank: 4, alpha: 8, dropout: 0.3 };

function tinyDecoder(layers: number, hiddenSize = 16, seed = 3): LlamaDecoder {
  const config: LlamaConfig = { vocabSize: 29, hiddenSize, intermediateSize: 2 * hiddenSize + 5, layers, heads: 2, ropeTheta: 10000, rmsNormEps: 1e-6, maxPositions: 64 };
  const decoder = new LlamaDecoder(config, new Random(seed), LORA);
  decoder.setLoraEnabled(true);
  // Non-zero B, so the LoRA path (and its dropout) changes the output and A gets a gradient.
  const rng = new Random(seed + 1);
  for (const layer of decoder.loraLayers()) layer.loraB.assign(rng.normalArray(layer.loraB.size, 0.1));
  decoder.setRequiresGrad(true);
  decoder.train(true);
  return decoder;
}

/** Mean next-token cross-entropy of random tokens [B, T]. */
function decoderLoss(decoder: LlamaDecoder, batch: number, seqLen: number): Tensor {
  const rng = new Random(17);
  const ids = fromHost(new Int32Array(batch * seqLen).map(() => rng.int(29)), [batch, seqLen]);
  const targets = fromHost(new Int32Array(batch * seqLen).map(() => rng.int(29)), [batch * seqLen]);
  const logits = decoder.logits(decoder.forwardHidden(decoder.embed(ids)));
  return crossEntropy(reshape(logits, [batch * seqLen, 29]), targets);
}

/** Runs forward and backward from a fixed dropout seed state; returns the loss and every gradient. */
async function lossAndGradients(decoder: LlamaDecoder, seedState: number): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
  setDropoutSeedState(seedState);
  const loss = tidy(() => {
    const value = decoderLoss(decoder, 2, 7);
    value.backward();
    return value;
  });
  const grads = new Map<string, Float32Array>();
  for (const [name, param] of decoder.namedParameters()) {
    assert.ok(param.grad, `${name} has no gradient`);
    grads.set(name, (await (param.grad as Tensor).data()) as Float32Array);
    param.grad?.dispose();
    param.grad = null;
  }
  const value = await loss.item();
  loss.dispose();
  return { loss: value, grads };
}

for (const deviceName of ['cpu', 'webgpu'] as const) {
  test(`checkpointed decoder gradients equal plain ones with dropout on ${deviceName}`, async () => {
    const device = deviceName === 'cpu' ? cpu : await webgpu();
    setDevice(device);
    const decoder = tinyDecoder(3);
    const seedState = dropoutSeedState();

    const plain = await lossAndGradients(decoder, seedState);
    decoder.checkpointBlocks = true;
    const checkpointed = await lossAndGradients(decoder, seedState);
    // Another dropout draw changes the loss, so equal losses above mean equal masks.
    decoder.checkpointBlocks = false;
    const otherMasks = await lossAndGradients(decoder, (seedState + 12345) >>> 0);

    assert.ok(Math.abs(checkpointed.loss - plain.loss) <= 1e-6 * Math.abs(plain.loss), `loss: ours=${checkpointed.loss} | reference=${plain.loss}`);
    assert.ok(otherMasks.loss !== plain.loss, `dropout is not active: the loss ${plain.loss} does not depend on the seeds`);
    assert.is(checkpointed.grads.size, plain.grads.size);
    for (const [name, expected] of plain.grads) {
      const result = compare(checkpointed.grads.get(name) as Float32Array, expected, 1e-7, 1e-5);
      assert.ok(result.ok, `${name}: ${result.message}`);
    }
    decoder.dispose();
  });
}

test('checkpoint gradients match finite differences', async () => {
  setDevice(cpu);
  const block = (x: Tensor, w1: Tensor, w2: Tensor) => mul(gelu(matmul(x, w1)), matmul(x, w2));
  // w1 and w2 reach the block as captured leaves (parameters), x as a checkpoint input.
  await assertGradients('checkpoint(gelu(x·w1) · (x·w2))', (x, w1, w2) => checkpoint((input) => block(input, w1, w2), [x], [w1, w2]), [
    { name: 'x', data: randomArray(7 * 5, 1, 1), shape: [7, 5] },
    { name: 'w1', data: randomArray(5 * 3, 1, 2), shape: [5, 3] },
    { name: 'w2', data: randomArray(5 * 3, 1, 3), shape: [5, 3] },
  ]);
});

test('checkpoint reaches parameters when the input needs no gradient', async () => {
  setDevice(cpu);
  const x = fromHost(randomArray(12, 1, 4), [3, 4]);
  const w = fromHost(randomArray(8, 1, 5), [4, 2]);
  w.requiresGrad = true;
  for (const parameters of [[w], undefined]) {
    const out = tidy(() => checkpoint((input) => gelu(matmul(input, w)), [x], parameters));
    assert.ok(out.requiresGrad, `output requires a gradient (parameters ${parameters ? 'given' : 'omitted'})`);
    tidy(() => reshape(out, [6]).backward(fromHost(new Float32Array(6).fill(1), [6])));
    assert.ok(w.grad, 'w has a gradient');
    assert.is(x.grad, null);
    w.grad?.dispose();
    w.grad = null;
    out.dispose();
  }
  w.requiresGrad = false;
  const frozen = tidy(() => checkpoint((input) => gelu(matmul(input, w)), [x], [w]));
  assert.not.ok(frozen.requiresGrad, 'nothing to train: the output needs no gradient');
  const direct = tidy(() => noGrad(() => checkpoint((input) => gelu(matmul(input, w)), [x])));
  assert.not.ok(direct.requiresGrad, 'under noGrad the block runs plainly');
  for (const t of [x, w, frozen, direct]) t.dispose();
});

test('checkpoint rejects a gradient of another shape', () => {
  setDevice(cpu);
  const x = fromHost(randomArray(4, 1, 6), [4]);
  x.requiresGrad = true;
  const out = checkpoint((input) => gelu(input), [x]);
  const wrongGradient = fromHost(new Float32Array(2), [2]);
  assert.throws(() => out.backward(wrongGradient), /backward\(\): gradient tensor \[2\] f32 does not match tensor \[4\] f32/);
  for (const t of [out, x, wrongGradient]) t.dispose();
});

/**
 * Wraps a device and records the largest number of bytes live at once: storages count from
 * allocation (upload, zeros, kernel outputs) until their last reference is released.
 */
function trackPeakMemory(inner: Device): { device: Device; liveBytes: () => number; resetPeak: () => void; peakBytes: () => number } {
  let live = 0;
  let peak = 0;
  const track = (storage: Storage) => {
    live += storage.byteSize;
    peak = Math.max(peak, live);
    return storage;
  };
  const device = new Proxy(inner, {
    get(target, property) {
      if (property === 'upload' || property === 'zeros') {
        return (...args: unknown[]) => track((target[property] as (...a: unknown[]) => Storage).apply(target, args));
      }
      if (property === 'run') {
        return (...args: Parameters<Device['run']>) => {
          const result = target.run(...args);
          for (const storage of result.storages) track(storage);
          return result;
        };
      }
      if (property === 'release') {
        return (storage: Storage) => {
          target.release(storage);
          if (storage.refs > 0) return;
          // A slice frees nothing itself; its parent is freed with its last reference.
          const parent = (storage as { parent?: Storage | null }).parent;
          if (!parent) live -= storage.byteSize;
          else if (parent.refs === 0) live -= parent.byteSize;
        };
      }
      const value = Reflect.get(target, property, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  return { device, liveBytes: () => live, resetPeak: () => (peak = live), peakBytes: () => peak };
}

test('checkpointed deep stack has a lower peak', async () => {
  const peaks: Record<string, number> = {};
  for (const checkpointBlocks of [false, true]) {
    const tracker = trackPeakMemory(new CpuDevice());
    setDevice(tracker.device);
    const decoder = tinyDecoder(6, 32);
    decoder.checkpointBlocks = checkpointBlocks;
    const before = tracker.liveBytes();
    tracker.resetPeak();
    tidy(() => decoderLoss(decoder, 4, 24).backward());
    peaks[String(checkpointBlocks)] = tracker.peakBytes() - before;
    decoder.dispose();
  }
  const plain = peaks.false;
  const checkpointed = peaks.true;
  assert.ok(checkpointed < 0.6 * plain, `peak bytes above the parameters: checkpointed=${checkpointed} | plain=${plain}; expected below 60 %`);
});

test.run();
