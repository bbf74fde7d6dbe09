import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  attentionBackwardKeyKernel,
  attentionBackwardQueryKernel,
  attentionForwardKernel,
  flashAttention,
  type FlashAttentionParams,
} from '../engine/ops/attention.ts';
import { mul, sum } from '../engine/ops/index.ts';
import { scaledDotProductAttention } from '../engine/nn/attention.ts';
import { fromHost, tidy, type Tensor } from '../engine/tensor.ts';
import type { TensorSpec } from '../engine/kernel.ts';
import { assertGradients } from './gradcheck.ts';
import { compare, cpu, randomArray, runOn, webgpu } from './helpers.ts';

interface AttentionCase {
  B: number;
  H: number;
  Tq: number;
  Tk: number;
  Dh: number;
  causal: boolean;
  queryOffset?: number;
  keyLengths?: number[];
  scale?: number;
}

// Head widths 1, 24, 64 and 128 (the maximum), and lengths 1, 37 and 130, which are not
// multiples of the 16-key block or the 64-row workgroup. The cases also cover
// cross-attention (Tq ≠ Tk), causal masks with a positive and a negative queryOffset, and key
// lengths that include 0 (a fully masked row).
const cases: AttentionCase[] = [
  { B: 1, H: 1, Tq: 1, Tk: 1, Dh: 1, causal: false },
  { B: 2, H: 3, Tq: 37, Tk: 130, Dh: 24, causal: false },
  { B: 2, H: 2, Tq: 37, Tk: 37, Dh: 64, causal: true },
  { B: 1, H: 2, Tq: 13, Tk: 130, Dh: 128, causal: true, queryOffset: 117 },
  { B: 1, H: 2, Tq: 37, Tk: 37, Dh: 24, causal: true, queryOffset: -3, scale: 0.3 },
  { B: 3, H: 2, Tq: 37, Tk: 37, Dh: 1, causal: true, keyLengths: [37, 0, 11] },
  { B: 2, H: 1, Tq: 130, Tk: 37, Dh: 64, causal: false, keyLengths: [5, 40] },
];

const f32 = (shape: number[]): TensorSpec => ({ shape, dtype: 'f32' });
const i32 = (shape: number[]): TensorSpec => ({ shape, dtype: 'i32' });

function label(c: AttentionCase): string {
  const mask = c.causal ? ` causal offset ${c.queryOffset ?? 0}` : '';
  const lengths = c.keyLengths ? ` keyLengths ${JSON.stringify(c.keyLengths)}` : '';
  return `B${c.B} H${c.H} Tq${c.Tq} Tk${c.Tk} Dh${c.Dh}${mask}${lengths}`;
}

function paramsOf(c: AttentionCase): FlashAttentionParams {
  return { causal: c.causal, queryOffset: c.queryOffset ?? 0, scale: c.scale ?? 1 / Math.sqrt(c.Dh) };
}

/** Random q, k, v, dOut (from `seed`) and the key lengths (if any) for one case. */
function caseInputs(c: AttentionCase, seed: number) {
  const querySize = c.B * c.H * c.Tq * c.Dh;
  const keySize = c.B * c.H * c.Tk * c.Dh;
  return {
    q: randomArray(querySize, 1, seed),
    k: randomArray(keySize, 1, seed + 1),
    v: randomArray(keySize, 1, seed + 2),
    dOut: randomArray(querySize, 1, seed + 3),
    lengths: c.keyLengths ? new Int32Array(c.keyLengths) : undefined,
  };
}

cases.forEach((c, index) => {
  test(`flash attention webgpu ${label(c)}`, async () => {
    const device = await webgpu();
    const { q, k, v, dOut, lengths } = caseInputs(c, 100 * index);
    const params = paramsOf(c);
    const querySpec = f32([c.B, c.H, c.Tq, c.Dh]);
    const keySpec = f32([c.B, c.H, c.Tk, c.Dh]);
    const rowSpec = f32([c.B, c.H, c.Tq]);
    const lengthInputs = lengths ? [lengths] : [];
    const lengthSpecs = lengths ? [i32([c.B])] : [];

    // Forward: out and the saved logsumexp.
    const forwardInputs = [q, k, v, ...lengthInputs];
    const forwardSpecs = [querySpec, keySpec, keySpec, ...lengthSpecs];
    const [out, lse] = await runOn(cpu, attentionForwardKernel, forwardInputs, forwardSpecs, params);
    const [gpuOut, gpuLse] = await runOn(device, attentionForwardKernel, forwardInputs, forwardSpecs, params);
    const outResult = compare(gpuOut, out, 1e-5, 1e-4);
    assert.ok(outResult.ok, `out: ${outResult.message}`);
    const lseResult = compare(gpuLse, lse, 1e-5, 1e-5);
    assert.ok(lseResult.ok, `lse: ${lseResult.message}`);

    // Backward over query rows: dq and delta, from the CPU forward's out and lse.
    const queryInputs = [q, k, v, out, dOut, lse, ...lengthInputs];
    const querySpecs = [querySpec, keySpec, keySpec, querySpec, querySpec, rowSpec, ...lengthSpecs];
    const [dq, delta] = await runOn(cpu, attentionBackwardQueryKernel, queryInputs, querySpecs, params);
    const [gpuDq, gpuDelta] = await runOn(device, attentionBackwardQueryKernel, queryInputs, querySpecs, params);
    const dqResult = compare(gpuDq, dq, 1e-5, 1e-3);
    assert.ok(dqResult.ok, `dq: ${dqResult.message}`);
    const deltaResult = compare(gpuDelta, delta, 1e-5, 1e-4);
    assert.ok(deltaResult.ok, `delta: ${deltaResult.message}`);

    // Backward over key rows: dk and dv.
    const keyInputs = [q, k, v, dOut, lse, delta, ...lengthInputs];
    const keySpecs = [querySpec, keySpec, keySpec, querySpec, rowSpec, rowSpec, ...lengthSpecs];
    const [dk, dv] = await runOn(cpu, attentionBackwardKeyKernel, keyInputs, keySpecs, params);
    const [gpuDk, gpuDv] = await runOn(device, attentionBackwardKeyKernel, keyInputs, keySpecs, params);
    const dkResult = compare(gpuDk, dk, 1e-5, 1e-3);
    assert.ok(dkResult.ok, `dk: ${dkResult.message}`);
    const dvResult = compare(gpuDv, dv, 1e-5, 1e-3);
    assert.ok(dvResult.ok, `dv: ${dvResult.message}`);
  });
});

/** Output and q, k, v gradients of L = Σ attention(q, k, v) · dOut on the CPU device. */
async function outputAndGradients(attention: (q: Tensor, k: Tensor, v: Tensor, keyLengths?: Tensor) => Tensor, c: AttentionCase, seed: number) {
  const { q, k, v, dOut, lengths } = caseInputs(c, seed);
  const leaves = [q, k, v].map((data, i) => {
    const leaf = fromHost(data, i === 0 ? [c.B, c.H, c.Tq, c.Dh] : [c.B, c.H, c.Tk, c.Dh], 'f32', cpu);
    leaf.requiresGrad = true;
    return leaf;
  });
  const keyLengths = lengths ? fromHost(lengths, [c.B], 'i32', cpu) : undefined;
  const result = tidy(() => {
    const output = attention(leaves[0], leaves[1], leaves[2], keyLengths);
    sum(mul(output, fromHost(dOut, output.shape, 'f32', cpu))).backward();
    return output;
  });
  const out = (await result.data()) as Float32Array;
  const grads: Float32Array[] = [];
  for (const leaf of leaves) grads.push((await leaf.grad!.data()) as Float32Array);
  for (const tensor of [result, ...leaves, ...(keyLengths ? [keyLengths] : [])]) tensor.dispose();
  return { out, grads };
}

for (const c of [cases[1], cases[4], cases[5]]) {
  test(`flash attention matches unfused ${label(c)}`, async () => {
    // Both use the default scale 1/√Dh: scaledDotProductAttention takes no scale.
    const mask = { causal: c.causal, queryOffset: c.queryOffset ?? 0 };
    const fused = await outputAndGradients((q, k, v, keyLengths) => flashAttention(q, k, v, { ...mask, keyLengths }), c, 7);
    const unfused = await outputAndGradients((q, k, v, keyLengths) => scaledDotProductAttention(q, k, v, { ...mask, keyLengths }), c, 7);
    const outResult = compare(fused.out, unfused.out, 1e-5, 1e-4);
    assert.ok(outResult.ok, `out: ${outResult.message}`);
    ['dq', 'dk', 'dv'].forEach((name, i) => {
      const result = compare(fused.grads[i], unfused.grads[i], 1e-5, 1e-3);
      assert.ok(result.ok, `${name}: ${result.message}`);
    });
  });
}

test('flash attention gradcheck', async () => {
  const [B, H, Tq, Tk, Dh] = [2, 2, 3, 5, 3];
  const keyLengths = fromHost(new Int32Array([5, 2]), [B], 'i32', cpu);
  await assertGradients(
    'flashAttention causal offset 1 keyLengths [5, 2]',
    (q, k, v) => flashAttention(q, k, v, { causal: true, queryOffset: 1, keyLengths }),
    [
      { name: 'q', data: randomArray(B * H * Tq * Dh, 1, 11), shape: [B, H, Tq, Dh] },
      { name: 'k', data: randomArray(B * H * Tk * Dh, 1, 12), shape: [B, H, Tk, Dh] },
      { name: 'v', data: randomArray(B * H * Tk * Dh, 1, 13), shape: [B, H, Tk, Dh] },
    ],
  );
  keyLengths.dispose();
});

test('flash attention rejects Dh mismatch', () => {
  const q = fromHost(new Float32Array(2 * 4 * 8), [1, 2, 4, 8], 'f32', cpu);
  const k = fromHost(new Float32Array(2 * 4 * 6), [1, 2, 4, 6], 'f32', cpu);
  assert.throws(() => flashAttention(q, k, k), /flash_attention: k has shape \[1, 2, 4, 6\], but q \[1, 2, 4, 8\] needs k \[1, 2, Tk, 8\]/);
  q.dispose();
  k.dispose();
});

test('flash attention rejects Dh over 128', () => {
  const q = fromHost(new Float32Array(129), [1, 1, 1, 129], 'f32', cpu);
  assert.throws(() => flashAttention(q, q, q), /flash_attention: head width Dh = 129 exceeds the maximum of 128/);
  q.dispose();
});

test.run();
