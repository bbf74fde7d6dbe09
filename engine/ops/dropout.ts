// Dropout: y = x·keep/(1 − p), where keep is 0 with probability p.
//
// Shapes: x [...] → y [...]. The mask comes from a counter-based hash of (seed, element
// index), so the CPU and WebGPU devices draw the same mask for the same seed and the
// backward recomputes it instead of storing it. The backward is the same op on the output
// gradient, because y is linear in x for a fixed mask.
import { dropoutProgram } from '../../kernels/dropout.ts';
import { defineKernel } from '../kernel.ts';
import type { Tensor } from '../tensor.ts';
import { accumulateGradInto } from './elementwise.ts';
import { assertDtype, record, runKernel } from './run.ts';

// ---------- CPU reference ----------

/** Hashes a u32 with the PCG hash, in the same arithmetic as `pcg_hash` in kernels/dropout.ts. */
export function pcgHash(input: number): number {
  const state = (Math.imul(input, 747796405) + 2891336453) >>> 0;
  const word = Math.imul((state >>> ((state >>> 28) + 4)) ^ state, 277803737) >>> 0;
  return ((word >>> 22) ^ word) >>> 0;
}

/** The u32 that element hashes must reach to be kept: ⌈p·2³²⌉, kept below 2³². */
export function dropoutThreshold(p: number): number {
  return Math.min(Math.ceil(p * 2 ** 32), 2 ** 32 - 1);
}

/** Decides whether element `index` is kept, given key = pcgHash(seed) and the threshold of p. */
export function dropoutKeeps(index: number, key: number, threshold: number): boolean {
  return pcgHash((pcgHash(index) + key) >>> 0) >= threshold;
}

interface DropoutParams {
  /** Drop probability in [0, 1). */
  p: number;
  /** Any u32; equal seeds give equal masks. */
  seed: number;
}

function scaleOf(p: number): number {
  return 1 / (1 - p);
}

// ---------- kernel ----------

export const dropoutKernel = defineKernel<DropoutParams>({
  name: 'dropout',
  outputs([x], { p, seed }) {
    if (!(p >= 0 && p < 1)) throw new Error(`dropout: p = ${p} is invalid; use a drop probability in [0, 1)`);
    if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32) {
      throw new Error(`dropout: seed ${seed} is invalid; use an integer in [0, 2^32)`);
    }
    return [{ shape: x.shape, dtype: 'f32' }];
  },
  cpu([x], [out], _specs, { p, seed }) {
    const key = pcgHash(seed);
    const threshold = dropoutThreshold(p);
    const scale = scaleOf(p);
    for (let i = 0; i < x.length; i++) out[i] = dropoutKeeps(i, key, threshold) ? x[i] * scale : 0;
  },
  wgsl([x], { p, seed }) {
    const size = x.shape.reduce((total, d) => total * d, 1);
    return dropoutProgram(size, pcgHash(seed), dropoutThreshold(p), scaleOf(p));
  },
});

// ---------- autograd op ----------

/**
 * Zeroes each element of `x` with probability `p` and scales the rest by 1/(1 − p). The
 * mask depends only on `seed` (an integer in [0, 2³²)) and the element index, so use a new
 * seed for every call that should draw a new mask. Returns `x` itself when p = 0.
 */
export function dropout(x: Tensor, p: number, seed: number): Tensor {
  assertDtype('dropout', x, 'f32');
  if (p === 0) return x;
  const params = { p, seed };
  const out = runKernel(dropoutKernel, [x], params)[0];
  return record(out, [x], (g) => accumulateGradInto(x, runKernel(dropoutKernel, [g], params)[0]));
}
