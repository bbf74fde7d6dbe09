// All autograd ops.
export * from './elementwise.ts';
export * from './matmul.ts';
export { runKernel, record } from './run.ts';
