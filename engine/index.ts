// Public entry point of the engine.
export * from './dtype.ts';
export * from './tensor.ts';
export * from './devices.ts';
export type { Device, Storage, MemoryStats, StorageLimits } from './device.ts';
export type { Kernel, TensorSpec } from './kernel.ts';
export { defineKernel } from './kernel.ts';
export * from './ops/index.ts';
export * from './optim.ts';
export * from './schedule.ts';
export * from './checkpoint.ts';
export * from './autotune.ts';
export { Random } from './random.ts';
export { CpuDevice } from './cpu-device.ts';
export { WebGpuDevice } from './webgpu-device.ts';
export * from './nn/module.ts';
export * from './nn/layers.ts';
export * from './nn/attention.ts';
