// Shared test helpers: the two devices, seeded random inputs, and comparisons that print both
// sides with the tolerance.
import { CpuDevice } from '../engine/cpu-device.ts';
import type { Device } from '../engine/device.ts';
import { initDevice } from '../engine/devices.ts';
import type { TypedArray } from '../engine/dtype.ts';
import type { Kernel, TensorSpec } from '../engine/kernel.ts';
import { WebGpuDevice } from '../engine/webgpu-device.ts';

let gpu: Promise<WebGpuDevice> | null = null;

/** Returns the WebGPU device (lavapipe in CI). Throws with install advice when there is no adapter. */
export function webgpu(): Promise<WebGpuDevice> {
  gpu ??= initDevice('webgpu').then((device) => device as WebGpuDevice);
  return gpu;
}

export const cpu = new CpuDevice();

/** Deterministic pseudo-random numbers (mulberry32), so failures reproduce from the seed. */
export function randomGenerator(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Uniform values in [-scale, scale). A fresh seed per call unless one is given. */
export function randomArray(size: number, scale = 1, seed = (Math.random() * 2 ** 32) >>> 0): Float32Array {
  const next = randomGenerator(seed);
  const out = new Float32Array(size);
  for (let i = 0; i < size; i++) out[i] = (next() * 2 - 1) * scale;
  return out;
}

export interface Closeness {
  maxAbs: number;
  maxRel: number;
  worst: number;
}

/** Largest difference, judged per element as |a−b| ≤ atol + rtol·|b|. */
export function compare(actual: ArrayLike<number>, expected: ArrayLike<number>, atol: number, rtol: number): { ok: boolean; message: string } {
  if (actual.length !== expected.length) {
    return { ok: false, message: `length differs: ours=${actual.length} | reference=${expected.length}` };
  }
  let worst = -1;
  let worstExcess = 0;
  let maxAbs = 0;
  for (let i = 0; i < actual.length; i++) {
    const diff = Math.abs(actual[i] - expected[i]);
    if (!(diff <= maxAbs) || Number.isNaN(diff)) maxAbs = Number.isNaN(diff) ? Infinity : Math.max(maxAbs, diff);
    const excess = Number.isNaN(diff) ? Infinity : diff - (atol + rtol * Math.abs(expected[i]));
    if (excess > worstExcess || (worst < 0 && excess > 0)) {
      worstExcess = excess;
      worst = i;
    }
  }
  if (worst < 0) return { ok: true, message: `max |diff| ${maxAbs.toExponential(2)}` };
  return {
    ok: false,
    message: `element ${worst}: ours=${actual[worst]} | reference=${expected[worst]} (max |diff| ${maxAbs.toExponential(2)}, atol ${atol}, rtol ${rtol})`,
  };
}

/** Runs `kernel` on `device` with host inputs and returns host outputs. */
export async function runOn<P>(device: Device, kernel: Kernel<P>, inputs: TypedArray[], specs: TensorSpec[], params: P): Promise<TypedArray[]> {
  const storages = inputs.map((data) => device.upload(data));
  const { storages: outs, specs: outSpecs } = device.run(kernel, storages, specs, params);
  const results: TypedArray[] = [];
  for (let i = 0; i < outs.length; i++) {
    const size = outSpecs[i].shape.reduce((p, d) => p * d, 1);
    results.push(await device.read(outs[i], outSpecs[i].dtype, size));
  }
  // In-place kernels write their inputs: read those back too.
  if (outs.length === 0) {
    for (let i = 0; i < storages.length; i++) {
      const size = specs[i].shape.reduce((p, d) => p * d, 1);
      results.push(await device.read(storages[i], specs[i].dtype, size));
    }
  }
  for (const storage of [...storages, ...outs]) device.release(storage);
  return results;
}
