// Public entry point of the engine.
export * from './dtype.ts';
export * from './tensor.ts';
export * from './devices.ts';
export type { Device, Storage, MemoryStats } from './device.ts';
export type { Kernel, TensorSpec } from './kernel.ts';
export * from './ops/index.ts';
export * from './optim.ts';
export * from './schedule.ts';
