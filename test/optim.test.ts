import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { Device } from '../engine/device.ts';
import { AdamW, adamwGroupKernel, adamwKernel, clipGradNorm } from '../engine/optim.ts';
import { cosineSchedule } from '../engine/schedule.ts';
import { fromHost, type Tensor } from '../engine/tensor.ts';
import { compare, cpu, randomArray, runOn, webgpu } from './helpers.ts';

const f32 = (shape: number[]) => ({ shape, dtype: 'f32' as const });

function trainable(data: Float32Array, shape: number[], device: Device): Tensor {
  const param = fromHost(data, shape, 'f32', device);
  param.requiresGrad = true;
  return param;
}

function setGrad(param: Tensor, data: Float32Array): void {
  param.grad?.dispose();
  param.grad = fromHost(data, param.shape, 'f32', param.device);
}

// ---------- kernel: webgpu against the CPU reference ----------

test('adamw kernel webgpu matches cpu', async () => {
  const device = await webgpu();
  const size = 1003;
  const param = randomArray(size);
  const grad = randomArray(size, 0.1);
  const m = randomArray(size, 0.01);
  // v is a running mean of squares, so it is never negative.
  const v = randomArray(size, 1e-3).map(Math.abs);
  const uniforms = {
    lr: 3e-3,
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weightDecay: 0.1,
    biasCorrection1: 1 - 0.9 ** 3,
    biasCorrection2: 1 - 0.95 ** 3,
  };
  const specs = [f32([size]), f32([size]), f32([size]), f32([size])];
  const expected = await runOn(cpu, adamwKernel, [param, grad, m, v], specs, uniforms);
  const actual = await runOn(device, adamwKernel, [param, grad, m, v], specs, uniforms);
  ['param', 'grad', 'm', 'v'].forEach((name, i) => {
    const result = compare(actual[i], expected[i], 1e-6, 1e-5);
    assert.ok(result.ok, `${name}: ${result.message}`);
  });
});

test('adamw_group kernel matches cpu on both devices', async () => {
  // Three parameters of awkward sizes, each starting at a multiple of 64 elements.
  const sizes = [7, 33, 129];
  const offsets = [0, 64, 128];
  const total = 320;
  const ranges: number[] = [];
  sizes.forEach((size, i) => {
    for (let first = offsets[i]; first < offsets[i] + size; first += 64) ranges.push(first, Math.min(first + 64, offsets[i] + size));
  });
  const param = randomArray(total);
  const grad = randomArray(total, 0.1);
  const m = randomArray(total, 0.01);
  const v = randomArray(total, 1e-3).map(Math.abs);
  const uniforms = { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, biasCorrection1: 1 - 0.9 ** 4, biasCorrection2: 1 - 0.95 ** 4 };
  const specs = [f32([total]), f32([total]), f32([total]), f32([total]), { shape: [ranges.length / 2, 2], dtype: 'i32' as const }];
  const inputs = [param, grad, m, v, Int32Array.from(ranges)];

  // The per-parameter kernel on each parameter is the reference for the covered elements.
  const expected = [param.slice(), grad.slice(), m.slice(), v.slice()];
  for (let i = 0; i < sizes.length; i++) {
    const part = (data: Float32Array) => data.slice(offsets[i], offsets[i] + sizes[i]);
    const spec = f32([sizes[i]]);
    const updated = await runOn(cpu, adamwKernel, [part(param), part(grad), part(m), part(v)], [spec, spec, spec, spec], uniforms);
    updated.forEach((values, k) => expected[k].set(values, offsets[i]));
  }
  for (const device of [cpu, await webgpu()]) {
    const actual = await runOn(device, adamwGroupKernel, inputs, specs, uniforms);
    ['param', 'grad', 'm', 'v'].forEach((name, k) => {
      // Padding between parameters must stay as it was, so the comparison covers it too.
      const result = compare(actual[k], expected[k], 1e-6, 1e-5);
      assert.ok(result.ok, `${device.kind} ${name}: ${result.message}`);
    });
  }
});

test('adamw_group kernel rejects a bad range table', () => {
  const specs = [f32([64]), f32([64]), f32([64]), f32([64]), f32([1, 2])];
  assert.throws(() => adamwGroupKernel.outputs(specs, {} as never), /adamw_group: ranges is \[1, 2\] f32; pass i32 \[W, 2\]/);
});

// ---------- AdamW ----------

for (const deviceName of ['cpu', 'webgpu'] as const) {
  test(`AdamW first step equals hand computation on ${deviceName}`, async () => {
    const device = deviceName === 'cpu' ? cpu : await webgpu();
    const param = trainable(new Float32Array([1, -2, 0.5]), [3], device);
    setGrad(param, new Float32Array([0.5, 0.1, -3]));
    const optimizer = new AdamW([param], { lr: 0.1, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.01 });
    optimizer.step();

    // Step 1: p ← p·(1 − lr·wd); m̂ = g and v̂ = g², so p ← p − lr·g/(|g| + eps).
    // 1·0.999 − 0.1·0.5/(0.5 + 1e-8) = 0.899000002
    // −2·0.999 − 0.1·0.1/(0.1 + 1e-8) = −2.09799999
    // 0.5·0.999 + 0.1·3/(3 + 1e-8) = 0.5994999997
    const expectedParam = [0.899000002, -2.09799999, 0.5994999997];
    const expectedM = [0.05, 0.01, -0.3]; // (1 − β1)·g
    const expectedV = [0.00025, 0.00001, 0.009]; // (1 − β2)·g²
    const checks: Array<[string, Tensor, number[]]> = [
      ['param', param, expectedParam],
      ['m', optimizer.state[0].m, expectedM],
      ['v', optimizer.state[0].v, expectedV],
    ];
    for (const [name, tensor, expected] of checks) {
      const result = compare(await tensor.data(), expected, 1e-7, 1e-6);
      assert.ok(result.ok, `${name}: ${result.message}`);
    }
    assert.is(optimizer.state[0].step, 1);
  });
}

test('AdamW webgpu matches cpu over several steps', async () => {
  const device = await webgpu();
  const shapes = [[37, 11], [130], [3, 5, 7]];
  const initial = shapes.map((shape, i) => randomArray(shape.reduce((p, d) => p * d, 1), 1, 100 + i));
  const schedule = cosineSchedule({ peak: 1e-2, warmupSteps: 2, totalSteps: 6 });
  const run = async (on: Device) => {
    const params = initial.map((data, i) => trainable(data, shapes[i], on));
    const optimizer = new AdamW(params, { lr: 1e-2, weightDecay: 0.05 });
    for (let step = 0; step < 5; step++) {
      params.forEach((param, i) => setGrad(param, randomArray(param.size, 1, 1000 * step + i)));
      optimizer.step(schedule(step + 1));
    }
    return Promise.all([...params, ...optimizer.state.flatMap(({ m, v }) => [m, v])].map((t) => t.data()));
  };
  const expected = await run(cpu);
  const actual = await run(device);
  expected.forEach((values, i) => {
    const result = compare(actual[i], values, 1e-6, 1e-5);
    assert.ok(result.ok, `tensor ${i}: ${result.message}`);
  });
});

for (const deviceName of ['cpu', 'webgpu'] as const) {
  test(`AdamW grouped equals per-parameter on ${deviceName}`, async () => {
    const device = deviceName === 'cpu' ? cpu : await webgpu();
    const shapes = [[7], [33, 3], [129], [2, 5, 3]];
    const initial = shapes.map((shape, i) => randomArray(shape.reduce((p, d) => p * d, 1), 1, 200 + i));
    const run = async (groupedMaxSize: number) => {
      const params = initial.map((data, i) => trainable(data, shapes[i], device));
      const optimizer = new AdamW(params, { lr: 1e-2, weightDecay: 0.05, groupedMaxSize });
      for (let step = 0; step < 4; step++) {
        params.forEach((param, i) => {
          // Parameter 1 has no gradient in step 1, so its step count falls behind the others'.
          if (i === 1 && step === 1) return;
          setGrad(param, randomArray(param.size, 1, 1000 * step + i));
        });
        optimizer.step(1e-2 * (step + 1));
        optimizer.zeroGrad();
      }
      const values = await Promise.all([...params, ...optimizer.state.flatMap(({ m, v }) => [m, v])].map((t) => t.data()));
      const steps = optimizer.state.map((state) => state.step);
      optimizer.dispose();
      for (const param of params) param.dispose();
      return { values, steps };
    };
    const perParameter = await run(0);
    assert.equal(perParameter.steps, [4, 3, 4, 4]);
    // All parameters in the group, and only the two smallest (7 and 30 elements).
    for (const groupedMaxSize of [Infinity, 40]) {
      const grouped = await run(groupedMaxSize);
      assert.equal(grouped.steps, perParameter.steps);
      perParameter.values.forEach((expected, i) => {
        const result = compare(grouped.values[i], expected, 1e-6, 1e-6);
        assert.ok(result.ok, `groupedMaxSize ${groupedMaxSize}, tensor ${i}: ${result.message}`);
      });
    }
  });
}

test('AdamW grouped step dispatch counts', async () => {
  const device = await webgpu();
  const params = [[7], [33], [129], [64, 3]].map(([rows, cols = 1]) => trainable(randomArray(rows * cols), [rows, cols], device));
  const cases: Array<[number, Array<[string, number]>]> = [
    [Infinity, [['adamw_group', 1]]],
    [0, [['adamw', 4]]],
    // The [64, 3] parameter (192 elements) gets its own dispatch.
    [150, [['adamw_group', 1], ['adamw', 1]]],
  ];
  for (const [groupedMaxSize, expected] of cases) {
    const optimizer = new AdamW(params, { lr: 1e-3, groupedMaxSize });
    params.forEach((param) => setGrad(param, randomArray(param.size)));
    device.takeDispatchCounts();
    optimizer.step();
    const counts = [...device.takeDispatchCounts()].sort((a, b) => b[0].localeCompare(a[0]));
    assert.equal(counts, expected, `groupedMaxSize ${groupedMaxSize}`);
    optimizer.zeroGrad();
    optimizer.dispose();
  }
  for (const param of params) param.dispose();
});

test('AdamW grouped rejects parameters on two devices', async () => {
  const device = await webgpu();
  const a = trainable(randomArray(3), [3], cpu);
  const b = trainable(randomArray(3), [3], device);
  assert.throws(() => new AdamW([a, b], { lr: 0.1 }), /AdamW: parameter .* lives on webgpu and .* on cpu; move them to one device or pass groupedMaxSize: 0/);
  new AdamW([a, b], { lr: 0.1, groupedMaxSize: 0 }).dispose();
  a.dispose();
  b.dispose();
});

test('AdamW skips parameters without a gradient', async () => {
  const data = randomArray(5);
  const frozen = trainable(data, [5], cpu);
  const trained = trainable(randomArray(4), [4], cpu);
  setGrad(trained, randomArray(4));
  const optimizer = new AdamW([frozen, trained], { lr: 0.1 });
  optimizer.step();
  assert.equal(Array.from(await frozen.data()), Array.from(data), 'frozen parameter unchanged');
  assert.is(optimizer.state[0].step, 0);
  assert.is(optimizer.state[1].step, 1);
});

test('AdamW zeroGrad disposes and clears gradients', () => {
  const param = trainable(randomArray(4), [4], cpu);
  setGrad(param, randomArray(4));
  const grad = param.grad as Tensor;
  const optimizer = new AdamW([param], { lr: 0.1 });
  optimizer.zeroGrad();
  assert.is(param.grad, null);
  assert.ok(grad.disposed, 'old gradient disposed');
});

test('AdamW with zero gradient applies only weight decay', async () => {
  const param = trainable(new Float32Array([2, -4]), [2], cpu);
  setGrad(param, new Float32Array([0, 0]));
  new AdamW([param], { lr: 0.5, weightDecay: 0.1 }).step();
  // m = v = 0, so the Adam term is 0/(0 + eps) = 0 and p ← p·(1 − 0.05).
  assert.equal(Array.from(await param.data()), [1.899999976158142, -3.799999952316284]);
});

test('AdamW rejects invalid options', () => {
  const param = trainable(randomArray(2), [2], cpu);
  assert.throws(() => new AdamW([param], { lr: -1 }), /AdamW: lr = -1 is invalid; use a number of at least 0/);
  assert.throws(() => new AdamW([param], { lr: 0.1, betas: [0.9, 1] }), /AdamW: betas\[1\] = 1 is invalid; use a number of at least 0 and below 1/);
  assert.throws(() => new AdamW([param], { lr: 0.1, weightDecay: Number.NaN }), /AdamW: weightDecay = NaN is invalid/);
  assert.throws(() => new AdamW([param, param], { lr: 0.1 }), /AdamW: a parameter is listed twice/);
  assert.throws(() => new AdamW([param], { lr: 0.1, groupedMaxSize: -1 }), /AdamW: groupedMaxSize = -1 is invalid/);
  const ids = fromHost(new Int32Array(2), [2], 'i32', cpu);
  assert.throws(() => new AdamW([ids], { lr: 0.1 }), /AdamW: parameter .* is not f32/);
});

// ---------- gradient clipping ----------

for (const deviceName of ['cpu', 'webgpu'] as const) {
  test(`clipGradNorm scales to maxNorm on ${deviceName}`, async () => {
    const device = deviceName === 'cpu' ? cpu : await webgpu();
    const a = trainable(new Float32Array(2), [2], device);
    const b = trainable(new Float32Array(1), [1], device);
    const frozen = trainable(new Float32Array(1), [1], device);
    setGrad(a, new Float32Array([3, 4]));
    setGrad(b, new Float32Array([12]));
    // Global norm √(9 + 16 + 144) = 13.
    const norm = await clipGradNorm([a, b, frozen], 6.5);
    assert.ok(Math.abs(norm - 13) < 1e-5, `norm ${norm}, expected 13`);
    const factor = 6.5 / (13 + 1e-6);
    const result = compare([...(await (a.grad as Tensor).data()), ...(await (b.grad as Tensor).data())], [3 * factor, 4 * factor, 12 * factor], 1e-6, 1e-6);
    assert.ok(result.ok, result.message);
    assert.is(frozen.grad, null);
  });
}

test('clipGradNorm leaves small gradients and sums large ones', async () => {
  const device = await webgpu();
  const data = randomArray(1000, 0.01, 5);
  const param = trainable(new Float32Array(1000), [40, 25], device);
  setGrad(param, data);
  const expected = Math.sqrt(data.reduce((total, g) => total + g * g, 0));
  const norm = await clipGradNorm([param], 10);
  assert.ok(Math.abs(norm - expected) < 1e-5 * expected, `norm ${norm}, expected ${expected}`);
  assert.equal(Array.from(await (param.grad as Tensor).data()), Array.from(data), 'below maxNorm: unchanged');
});

// ---------- schedule ----------

test('cosineSchedule warms up then decays to min', () => {
  const lr = cosineSchedule({ peak: 1e-3, warmupSteps: 10, totalSteps: 110, min: 1e-4 });
  const cases: Array<[number, number]> = [
    [0, 0],
    [5, 5e-4],
    [10, 1e-3],
    [60, 5.5e-4], // halfway through the decay: (peak + min) / 2
    [110, 1e-4],
    [500, 1e-4],
  ];
  for (const [step, expected] of cases) {
    assert.ok(Math.abs(lr(step) - expected) < 1e-12, `lr(${step}) = ${lr(step)}, expected ${expected}`);
  }
  assert.ok(lr(30) > lr(31), 'decreasing after warm-up');
});

test('cosineSchedule without warm-up starts at peak', () => {
  const lr = cosineSchedule({ peak: 2, warmupSteps: 0, totalSteps: 4 });
  assert.equal([0, 1, 2, 3, 4].map(lr).map((v) => Number(v.toFixed(12))), [2, 1.707106781187, 1, 0.292893218813, 0]);
});

test('cosineSchedule rejects invalid options', () => {
  assert.throws(() => cosineSchedule({ peak: 1, warmupSteps: 5, totalSteps: 3 }), /cosineSchedule: warmupSteps = 5 and totalSteps = 3 are invalid/);
  assert.throws(() => cosineSchedule({ peak: 1, warmupSteps: 0, totalSteps: 3, min: 2 }), /cosineSchedule: peak = 1 and min = 2 are invalid; use 0 <= min <= peak/);
});

test.run();
