// Dropout with a counter-based RNG: element i keeps its value when a hash of (seed, i) is at
// least the threshold ⌈p·2³²⌉, so the mask needs no stored state and the backward recomputes
// it. The hash is the PCG hash (Jarzynski and Olano, "Hash Functions for GPU Rendering",
// JCGT 2020) in u32 arithmetic. engine/ops/dropout.ts has the same function in TypeScript,
// because the CPU and GPU masks must agree bit for bit.
import { entry1d, flatIndex, grid1d, storageBinding, uniformBinding } from './common.ts';
import type { WgslProgram } from './types.ts';

const WORKGROUP = 64;

export const WGSL_PCG_HASH = `
fn pcg_hash(input: u32) -> u32 {
  let state = input * 747796405u + 2891336453u;
  let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
  return (word >> 22u) ^ word;
}
`;

/**
 * out[i] = keep(i) ? x[i]·scale : 0, with keep(i) = pcg_hash(pcg_hash(i) + key) >= threshold
 * and key = pcg_hash(seed), computed on the host.
 */
export function dropoutProgram(size: number, key: number, threshold: number, scale: number): WgslProgram {
  const params: WgslProgram['params'] = [
    ['size', 'u32', size],
    ['key', 'u32', key],
    ['threshold', 'u32', threshold],
    ['scale', 'f32', scale],
  ];
  const code = `${storageBinding(0, 'input', 'f32', 'read')}${storageBinding(1, 'output', 'f32', 'read_write')}${uniformBinding(2, params)}${WGSL_PCG_HASH}
${entry1d(WORKGROUP)} {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.size) { return; }
  let bits = pcg_hash(pcg_hash(i) + params.key);
  output[i] = select(0.0, input[i] * params.scale, bits >= params.threshold);
}`;
  return { key: 'dropout', code, workgroups: grid1d(size, WORKGROUP), params };
}
