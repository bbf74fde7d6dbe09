// Fused flash-style attention against the unfused composition (matmul, mask, softmax, matmul):
// wall-clock time and tokens per second for the forward pass and forward plus backward, and the
// bytes of the largest intermediate (the unfused path keeps the [B, H, T, T] score matrix).
// Usage: npm run bench:attention [-- --causal] [-- --seq 256] [-- --no-bounds-checks]
import { boundsChecksEnabled, initDevice } from '../engine/devices.ts';
import { scaledDotProductAttention } from '../engine/nn/attention.ts';
import { flashAttention, mul, sum } from '../engine/ops/index.ts';
import { Random } from '../engine/random.ts';
import { fromHost, noGrad, tidy, type Tensor } from '../engine/tensor.ts';

const args = process.argv.slice(2);
const causal = args.includes('--causal');
const seqIndex = args.indexOf('--seq');
const [batch, heads, seqLen, headDim] = [8, 4, seqIndex >= 0 ? Number(args[seqIndex + 1]) : 128, 64];
const device = await initDevice('webgpu', { boundsChecks: args.includes('--no-bounds-checks') ? false : undefined });
const rng = new Random(3);
const size = batch * heads * seqLen * headDim;
const shape = [batch, heads, seqLen, headDim];
const [q, k, v] = [0, 1, 2].map(() => {
  const t = fromHost(rng.normalArray(size, 1), shape);
  t.requiresGrad = true;
  return t;
});
const weights = fromHost(rng.normalArray(size, 1), shape);

type Attention = (q: Tensor, k: Tensor, v: Tensor) => Tensor;
const implementations: Record<string, Attention> = {
  fused: (a, b, c) => flashAttention(a, b, c, { causal }),
  unfused: (a, b, c) => scaledDotProductAttention(a, b, c, { causal }),
};

async function forward(fn: Attention): Promise<void> {
  const out = noGrad(() => tidy(() => fn(q, k, v)));
  await out.data();
  out.dispose();
}

async function forwardBackward(fn: Attention): Promise<void> {
  for (const leaf of [q, k, v]) {
    leaf.grad?.dispose();
    leaf.grad = null;
  }
  tidy(() => sum(mul(fn(q, k, v), weights)).backward());
  for (const leaf of [q, k, v]) await leaf.grad!.data();
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
console.log(`device: ${device.description}; shader bounds checks ${boundsChecksEnabled() ? 'on' : 'off'}`);
console.log(`B=${batch} H=${heads} T=${seqLen} Dh=${headDim}${causal ? ', causal' : ''}; median of 5 runs after 2 warm-up runs`);
console.log(`unfused score matrix: ${((batch * heads * seqLen * seqLen * 4) / 2 ** 20).toFixed(1)} MiB; fused keeps ${((batch * heads * seqLen * 4) / 2 ** 10).toFixed(1)} KiB of row statistics`);
for (const [name, fn] of Object.entries(implementations)) {
  for (const [label, step] of [['forward', forward], ['forward+backward', forwardBackward]] as const) {
    await step(fn);
    await step(fn);
    const times: number[] = [];
    for (let run = 0; run < 5; run++) {
      const started = performance.now();
      await step(fn);
      times.push(performance.now() - started);
    }
    const ms = median(times);
    const tokens = (batch * seqLen) / (ms / 1000);
    console.log(`${name.padEnd(8)} ${label.padEnd(17)} ${ms.toFixed(1).padStart(8)} ms  ${tokens.toFixed(0).padStart(8)} tokens/s`);
  }
}
process.exit(0);
