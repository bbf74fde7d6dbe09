// Device loss and validation errors on the WebGPU device surface as exceptions that name the
// last kernel recorded, instead of a hang or silent zeros.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { getDawnGpu } from '../engine/devices.ts';
import { defineKernel } from '../engine/kernel.ts';
import { runKernel } from '../engine/ops/run.ts';
import { fromHost } from '../engine/tensor.ts';
import { createWebGpuDevice, WebGpuDevice, WebGpuError } from '../engine/webgpu-device.ts';
import { webgpu } from './helpers.ts';

/** y = 2·x, with an optional workgroup count that overrides the correct one. */
function doublingKernel(name: string, workgroups?: number) {
  return defineKernel<Record<string, never>>({
    name,
    outputs: ([x]) => [x],
    cpu([x], [y]) {
      for (let i = 0; i < x.length; i++) y[i] = 2 * x[i];
    },
    wgsl: ([x]) => {
      const size = x.shape.reduce((p, d) => p * d, 1);
      return {
        key: `v1-${workgroups ?? 'fit'}`,
        code: `@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  if (gid.x < ${size}u) { y[gid.x] = 2.0 * x[gid.x]; }
}`,
        workgroups: [workgroups ?? Math.ceil(size / 64), 1, 1],
        params: [],
      };
    },
  });
}

/** Creates a second device on the same adapter, so destroying it leaves the shared test device alone. */
async function freshDevice(): Promise<WebGpuDevice> {
  await webgpu();
  const gpu = getDawnGpu();
  if (!gpu) throw new Error('no Dawn GPU object; initDevice("webgpu") must run first');
  const device = await createWebGpuDevice(gpu, gpu);
  if (!device) throw new Error('no WebGPU adapter for a second device');
  return device;
}

async function messageOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    assert.instance(error, WebGpuError);
    return (error as Error).message;
  }
  return 'no error';
}

test('invalid dispatch raises on read, not zeros', async () => {
  const device = await webgpu();
  const x = fromHost(new Float32Array(64).fill(1), [64], 'f32', device);
  // 70,000 workgroups exceed every adapter's limit of 65,535 per dimension.
  const [y] = runKernel(doublingKernel('oversized_dispatch', 70000), [x], {});
  const message = await messageOf(y.data());
  assert.match(message, /validation error/);
  assert.match(message, /oversized_dispatch/);
  y.dispose();

  // The device stays usable after the error was raised once.
  const [z] = runKernel(doublingKernel('doubling'), [x], {});
  assert.equal(Array.from(await z.data()).slice(0, 3), [2, 2, 2]);
  x.dispose();
  z.dispose();
});

test('lost device raises on read naming the kernel', async () => {
  const device = await freshDevice();
  const x = fromHost(new Float32Array(100).fill(3), [100], 'f32', device);
  const [y] = runKernel(doublingKernel('doubling_before_loss'), [x], {});
  assert.equal((await y.data())[99], 6);

  const [z] = runKernel(doublingKernel('doubling_at_loss'), [x], {});
  device.device.destroy();
  const readMessage = await messageOf(z.data());
  assert.match(readMessage, /doubling_at_loss/);

  // Once the lost promise has resolved, every later call raises the loss.
  await device.device.lost;
  assert.throws(() => runKernel(doublingKernel('doubling_after_loss'), [x], {}), /device lost \(destroyed\).*doubling_at_loss/);
  assert.match(await messageOf(device.sync()), /device lost/);
  assert.match(await messageOf(y.data()), /device lost/);
});

test('destroy() makes later calls raise', async () => {
  const device = await freshDevice();
  const x = fromHost(new Float32Array(4), [4], 'f32', device);
  device.destroy();
  assert.throws(() => runKernel(doublingKernel('doubling_after_destroy'), [x], {}), /the device was destroyed by destroy\(\)/);
  assert.throws(() => device.flush(), /the device was destroyed/);
  assert.match(await messageOf(device.sync()), /the device was destroyed/);
});

test.run();
