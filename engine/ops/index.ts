// All autograd ops.
export * from './elementwise.ts';
export * from './matmul.ts';
export * from './linear.ts';
export { runKernel, record } from './run.ts';
export * from './softmax.ts';
export * from './norm.ts';
export * from './loss.ts';
export * from './shape.ts';
export * from './embedding.ts';
export * from './dropout.ts';
export * from './mask.ts';
export * from './attention.ts';
export * from './rope.ts';
export * from './select.ts';
export * from './gather.ts';
export * from './cast.ts';
export * from './row-chunks.ts';
