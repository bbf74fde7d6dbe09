// Cross-entropy loss of logits against integer class targets.
//
// Shapes: logits [..., V] (f32), targets [...] (i32, the same leading axes) → loss [1], the mean
// over rows whose target is not ignoreIndex (0 when every row is ignored). Internally rows are
// flattened to N = the product of the leading axes.
//
// Label smoothing ε (PyTorch's label_smoothing) mixes the one-hot target with the uniform
// distribution: row loss = (1 − ε)·(−log p[target]) + ε·mean over the V classes of (−log p).
import { crossEntropyBackwardProgram, crossEntropyMeanProgram, crossEntropyProgram } from '../../kernels/cross-entropy.ts';
import { shapeString, sizeOf, type TypedArray } from '../dtype.ts';
import { defineKernel, type TensorSpec } from '../kernel.ts';
import type { Tensor } from '../tensor.ts';
import { accumulateGradInto } from './elementwise.ts';
import { assertDtype, record, runKernel } from './run.ts';

interface CrossEntropyParams {
  ignoreIndex: number;
  /** ε in [0, 1). The default 0 is plain cross-entropy. */
  labelSmoothing?: number;
}

export interface CrossEntropyOptions {
  /** ε in [0, 1), as in PyTorch's label_smoothing. The default 0 is plain cross-entropy. */
  labelSmoothing?: number;
}

// ---------- shape checks ----------

/** Rows N and vocabulary size V, after checking logits against targets. */
function crossEntropyShape(logits: TensorSpec, targets: TensorSpec): { N: number; V: number } {
  if (logits.shape.length < 2) {
    throw new Error(`crossEntropy: logits ${shapeString(logits.shape)} need at least 2 axes, [N, V]; reshape a single row to [1, V]`);
  }
  const leading = logits.shape.slice(0, -1);
  const V = logits.shape[logits.shape.length - 1];
  if (targets.shape.length !== leading.length || targets.shape.some((d, i) => d !== leading[i])) {
    throw new Error(
      `crossEntropy: targets have shape ${shapeString(targets.shape)}, expected ${shapeString(leading)} ` +
        `(logits ${shapeString(logits.shape)} without the class axis); give one target per row of logits`,
    );
  }
  if (V === 0) throw new Error(`crossEntropy: logits ${shapeString(logits.shape)} have no classes (V = 0)`);
  if (logits.dtype !== 'f32') throw new Error(`crossEntropy: logits must be f32, got ${logits.dtype}`);
  if (targets.dtype !== 'i32') throw new Error(`crossEntropy: targets must be i32 class indices, got ${targets.dtype}`);
  return { N: sizeOf(leading), V };
}

function assertShapeOf(op: string, name: string, spec: TensorSpec, expected: readonly number[]): void {
  if (spec.shape.length !== expected.length || spec.shape.some((d, i) => d !== expected[i])) {
    throw new Error(`${op}: ${name} has shape ${shapeString(spec.shape)}, expected ${shapeString(expected)}`);
  }
}

/** Throws on the first target that is neither ignoreIndex nor a class in [0, V). */
function validateTargets(targets: ArrayLike<number>, V: number, ignoreIndex: number): void {
  for (let n = 0; n < targets.length; n++) {
    const target = targets[n];
    if (target === ignoreIndex || (target >= 0 && target < V)) continue;
    throw new Error(
      `crossEntropy: target ${target} at row ${n} is outside [0, ${V}) and is not ignoreIndex (${ignoreIndex}); ` +
        `check the vocabulary size of the logits and the label encoding`,
    );
  }
}

// ---------- kernels ----------

/**
 * Inputs: logits, targets. Outputs: loss [N] (0 on ignored rows) and logsumexp [N]. The CPU
 * reference throws on an invalid target. The WGSL kernel cannot raise, so it writes NaN there.
 */
export const crossEntropyKernel = defineKernel<CrossEntropyParams>({
  name: 'cross_entropy',
  outputs([logits, targets]) {
    const { N } = crossEntropyShape(logits, targets);
    return [
      { shape: [N], dtype: 'f32' },
      { shape: [N], dtype: 'f32' },
    ];
  },
  cpu([logits, targets], [loss, logsumexp], [sl, st], { ignoreIndex, labelSmoothing = 0 }) {
    const { N, V } = crossEntropyShape(sl, st);
    validateTargets(targets, V, ignoreIndex);
    for (let n = 0; n < N; n++) {
      const base = n * V;
      let max = -Infinity;
      for (let v = 0; v < V; v++) max = Math.max(max, logits[base + v]);
      let total = 0;
      for (let v = 0; v < V; v++) total += Math.exp(logits[base + v] - max);
      const lse = max + Math.log(total);
      logsumexp[n] = lse;
      if (targets[n] === ignoreIndex) {
        loss[n] = 0;
        continue;
      }
      const nll = lse - logits[base + targets[n]];
      if (labelSmoothing === 0) {
        loss[n] = nll;
        continue;
      }

      // Mean over classes of −log p[v] = lse − mean of the logits.
      let logitSum = 0;
      for (let v = 0; v < V; v++) logitSum += logits[base + v];
      loss[n] = (1 - labelSmoothing) * nll + labelSmoothing * (lse - logitSum / V);
    }
  },
  wgsl([logits, targets], { ignoreIndex, labelSmoothing = 0 }) {
    const { N, V } = crossEntropyShape(logits, targets);
    return crossEntropyProgram(N, V, ignoreIndex, labelSmoothing);
  },
});

/**
 * Inputs: loss [N], targets (any shape of N elements). Outputs: mean [1] over rows not
 * ignored, count [1] of those rows (f32).
 */
export const crossEntropyMeanKernel = defineKernel<CrossEntropyParams>({
  name: 'cross_entropy_mean',
  outputs([loss, targets]) {
    const N = sizeOf(loss.shape);
    assertShapeOf('crossEntropy mean', 'loss', loss, [N]);
    if (sizeOf(targets.shape) !== N) {
      throw new Error(`crossEntropy mean: targets ${shapeString(targets.shape)} do not have one element per loss row (loss is ${shapeString(loss.shape)})`);
    }
    return [
      { shape: [1], dtype: 'f32' },
      { shape: [1], dtype: 'f32' },
    ];
  },
  cpu([loss, targets], [mean, count], _specs, { ignoreIndex }) {
    let total = 0;
    let rows = 0;
    for (let n = 0; n < loss.length; n++) {
      total += loss[n];
      if (targets[n] !== ignoreIndex) rows += 1;
    }
    mean[0] = total / Math.max(rows, 1);
    count[0] = rows;
  },
  wgsl: ([loss], { ignoreIndex }) => crossEntropyMeanProgram(sizeOf(loss.shape), ignoreIndex),
});

/**
 * Inputs: logits, targets, logsumexp [N], count [1], dmean [1]. Output: dlogits, which is
 * (softmax − target distribution)·dmean/count, the target distribution being (1 − ε)·onehot + ε/V.
 */
export const crossEntropyBackwardKernel = defineKernel<CrossEntropyParams>({
  name: 'cross_entropy_backward',
  outputs([logits, targets, logsumexp, count, dmean]) {
    const { N } = crossEntropyShape(logits, targets);
    assertShapeOf('crossEntropy backward', 'logsumexp', logsumexp, [N]);
    assertShapeOf('crossEntropy backward', 'count', count, [1]);
    assertShapeOf('crossEntropy backward', 'dmean', dmean, [1]);
    return [{ shape: logits.shape, dtype: 'f32' }];
  },
  cpu([logits, targets, logsumexp, count, dmean], [dlogits], [sl, st], { ignoreIndex, labelSmoothing = 0 }) {
    const { N, V } = crossEntropyShape(sl, st);
    const scale = dmean[0] / Math.max(count[0], 1);
    const uniformShare = labelSmoothing / V;
    for (let n = 0; n < N; n++) {
      if (targets[n] === ignoreIndex) continue;
      for (let v = 0; v < V; v++) {
        const probability = Math.exp(logits[n * V + v] - logsumexp[n]);
        const onehot = v === targets[n] ? 1 : 0;
        // ε = 0 keeps the plain expression, so results stay bit-identical to unsmoothed cross-entropy.
        const targetProbability = labelSmoothing === 0 ? onehot : (1 - labelSmoothing) * onehot + uniformShare;
        dlogits[n * V + v] = (probability - targetProbability) * scale;
      }
    }
  },
  wgsl([logits, targets], { ignoreIndex, labelSmoothing = 0 }) {
    const { N, V } = crossEntropyShape(logits, targets);
    return crossEntropyBackwardProgram(N, V, ignoreIndex, labelSmoothing);
  },
});

// ---------- autograd op ----------

/**
 * Mean cross-entropy over rows whose target is not `ignoreIndex` (shapes in the file header),
 * with optional label smoothing (`options.labelSmoothing`, ε in [0, 1)).
 * Targets made from host data are checked here, so an out-of-range class throws before
 * anything runs. Other targets are checked by the CPU kernel, which throws too, but not on
 * WebGPU, where an invalid row gives a NaN loss.
 */
export function crossEntropy(logits: Tensor, targets: Tensor, ignoreIndex = -100, options: CrossEntropyOptions = {}): Tensor {
  assertDtype('crossEntropy', logits, 'f32');
  assertDtype('crossEntropy', targets, 'i32');
  if (!Number.isInteger(ignoreIndex) || Math.abs(ignoreIndex) > 2 ** 31 - 1) {
    throw new Error(`crossEntropy: ignoreIndex must be a 32-bit integer, got ${ignoreIndex}`);
  }
  const labelSmoothing = options.labelSmoothing ?? 0;
  if (!(labelSmoothing >= 0 && labelSmoothing < 1)) {
    throw new Error(`crossEntropy: labelSmoothing must be in [0, 1), got ${labelSmoothing}; use 0 for no smoothing`);
  }
  const { V } = crossEntropyShape(logits, targets);
  const hostTargets: TypedArray | null = targets.hostData;
  if (hostTargets) validateTargets(hostTargets, V, ignoreIndex);

  const params: CrossEntropyParams = { ignoreIndex, labelSmoothing };
  const [losses, logsumexp] = runKernel(crossEntropyKernel, [logits, targets], params);
  const [mean, count] = runKernel(crossEntropyMeanKernel, [losses, targets], { ignoreIndex });
  losses.dispose();

  const out = record(mean, [logits], (g) =>
    accumulateGradInto(logits, runKernel(crossEntropyBackwardKernel, [logits, targets, logsumexp, count, g], params)[0]),
  );
  if (!out.backwardFn) {
    logsumexp.dispose();
    count.dispose();
  }
  return out;
}
