// Cross-entropy of logits against integer targets: per-row loss, the mean over rows that are
// not ignored, and the gradient of that mean with respect to the logits.
//
// Shapes: logits and dlogits are [N, V]; targets (i32), loss and logsumexp are [N]; the mean,
// the count of rows that are not ignored and its incoming gradient are [1].
import { entry1d, flatIndex, grid1d, storageBinding, uniformBinding } from './common.ts';
import { ROW_ENTRY, ROW_INDEX, ROW_WORKGROUP, rowGrid, WGSL_MIN_F32, WGSL_WORKGROUP_REDUCE } from './rows.ts';
import type { WgslProgram } from './types.ts';

const WORKGROUP = 64;

/**
 * Bits of the canonical quiet NaN. WGSL has no NaN literal and rejects a constant expression
 * that evaluates to NaN, so the kernels read these bits from the uniform buffer instead.
 */
const NAN_BITS = 0x7fc00000;

/**
 * loss[n] = logsumexp(logits[n]) − logits[n, target[n]], computed stably around the row max.
 * The loss is 0 where the target is ignoreIndex and NaN where it is outside [0, V). Also writes
 * logsumexp.
 *
 * With label smoothing ε > 0 the loss is (1 − ε)·(lse − logits[n, target]) + ε·(lse − mean_v logits[n, v]),
 * the second term being the mean of −log p over the V classes. ε = 0 generates the plain program.
 */
export function crossEntropyProgram(N: number, V: number, ignoreIndex: number, labelSmoothing = 0): WgslProgram {
  if (labelSmoothing !== 0) return crossEntropySmoothedProgram(N, V, ignoreIndex, labelSmoothing);
  const params: WgslProgram['params'] = [
    ['rows', 'u32', N],
    ['V', 'u32', V],
    ['ignore_index', 'i32', ignoreIndex],
    ['nan_bits', 'u32', NAN_BITS],
  ];
  const code = `${storageBinding(0, 'logits', 'f32', 'read')}${storageBinding(1, 'targets', 'i32', 'read')}${storageBinding(2, 'loss', 'f32', 'read_write')}${storageBinding(3, 'logsumexp', 'f32', 'read_write')}${uniformBinding(4, params)}${WGSL_WORKGROUP_REDUCE}
${ROW_ENTRY} {
  ${ROW_INDEX}
  if (row >= params.rows) { return; }
  let base = row * params.V;

  var local_max = ${WGSL_MIN_F32};
  for (var v = lane; v < params.V; v += ${ROW_WORKGROUP}u) { local_max = max(local_max, logits[base + v]); }
  let row_max = workgroup_max(lane, local_max);

  var local_sum = 0.0;
  for (var v = lane; v < params.V; v += ${ROW_WORKGROUP}u) { local_sum += exp(logits[base + v] - row_max); }
  let lse = row_max + log(workgroup_sum(lane, local_sum));

  if (lane == 0u) {
    logsumexp[row] = lse;
    let target_id = targets[row];
    if (target_id == params.ignore_index) {
      loss[row] = 0.0;
    } else if (target_id < 0 || target_id >= i32(params.V)) {
      loss[row] = bitcast<f32>(params.nan_bits);
    } else {
      loss[row] = lse - logits[base + u32(target_id)];
    }
  }
}`;
  return { key: 'cross_entropy', code, workgroups: rowGrid(N), params };
}

/** crossEntropyProgram with label smoothing ε > 0: one more pass over the row sums the logits. */
function crossEntropySmoothedProgram(N: number, V: number, ignoreIndex: number, labelSmoothing: number): WgslProgram {
  const params: WgslProgram['params'] = [
    ['rows', 'u32', N],
    ['V', 'u32', V],
    ['ignore_index', 'i32', ignoreIndex],
    ['nan_bits', 'u32', NAN_BITS],
    ['smoothing', 'f32', labelSmoothing],
  ];
  const code = `${storageBinding(0, 'logits', 'f32', 'read')}${storageBinding(1, 'targets', 'i32', 'read')}${storageBinding(2, 'loss', 'f32', 'read_write')}${storageBinding(3, 'logsumexp', 'f32', 'read_write')}${uniformBinding(4, params)}${WGSL_WORKGROUP_REDUCE}
${ROW_ENTRY} {
  ${ROW_INDEX}
  if (row >= params.rows) { return; }
  let base = row * params.V;

  var local_max = ${WGSL_MIN_F32};
  for (var v = lane; v < params.V; v += ${ROW_WORKGROUP}u) { local_max = max(local_max, logits[base + v]); }
  let row_max = workgroup_max(lane, local_max);

  var local_sum = 0.0;
  var local_logits = 0.0;
  for (var v = lane; v < params.V; v += ${ROW_WORKGROUP}u) {
    local_sum += exp(logits[base + v] - row_max);
    local_logits += logits[base + v];
  }
  let lse = row_max + log(workgroup_sum(lane, local_sum));
  let mean_logit = workgroup_sum(lane, local_logits) / f32(params.V);

  if (lane == 0u) {
    logsumexp[row] = lse;
    let target_id = targets[row];
    if (target_id == params.ignore_index) {
      loss[row] = 0.0;
    } else if (target_id < 0 || target_id >= i32(params.V)) {
      loss[row] = bitcast<f32>(params.nan_bits);
    } else {
      let nll = lse - logits[base + u32(target_id)];
      loss[row] = (1.0 - params.smoothing) * nll + params.smoothing * (lse - mean_logit);
    }
  }
}`;
  return { key: 'cross_entropy_smoothed', code, workgroups: rowGrid(N), params };
}

/** mean = Σ loss / max(count, 1) over one workgroup, with count = rows whose target is not ignoreIndex. */
export function crossEntropyMeanProgram(N: number, ignoreIndex: number): WgslProgram {
  const params: WgslProgram['params'] = [
    ['rows', 'u32', N],
    ['ignore_index', 'i32', ignoreIndex],
  ];
  const code = `${storageBinding(0, 'loss', 'f32', 'read')}${storageBinding(1, 'targets', 'i32', 'read')}${storageBinding(2, 'mean', 'f32', 'read_write')}${storageBinding(3, 'count', 'f32', 'read_write')}${uniformBinding(4, params)}${WGSL_WORKGROUP_REDUCE}
${ROW_ENTRY} {
  let lane = lid.x;
  var local_sum = 0.0;
  var local_count = 0.0;
  for (var n = lane; n < params.rows; n += ${ROW_WORKGROUP}u) {
    local_sum += loss[n];
    local_count += select(1.0, 0.0, targets[n] == params.ignore_index);
  }
  let total = workgroup_sum(lane, local_sum);
  let rows_counted = workgroup_sum(lane, local_count);
  if (lane == 0u) {
    mean[0] = total / max(rows_counted, 1.0);
    count[0] = rows_counted;
  }
}`;
  return { key: 'cross_entropy_mean', code, workgroups: [1, 1, 1], params };
}

/**
 * dlogits[n, v] = (softmax(logits[n])[v] − [v == target[n]]) · dmean / max(count, 1). Ignored rows get 0.
 * With label smoothing ε > 0 the target distribution is (1 − ε)·onehot + ε/V instead of onehot.
 */
export function crossEntropyBackwardProgram(N: number, V: number, ignoreIndex: number, labelSmoothing = 0): WgslProgram {
  const size = N * V;
  const smoothed = labelSmoothing !== 0;
  const params: WgslProgram['params'] = [
    ['size', 'u32', size],
    ['V', 'u32', V],
    ['ignore_index', 'i32', ignoreIndex],
  ];
  if (smoothed) params.push(['smoothing', 'f32', labelSmoothing]);
  // ε = 0 keeps the plain one-hot expression, so results stay bit-identical to the unsmoothed program.
  const targetProbability = smoothed
    ? `(1.0 - params.smoothing) * select(0.0, 1.0, i32(v) == target_id) + params.smoothing / f32(params.V)`
    : `select(0.0, 1.0, i32(v) == target_id)`;
  const code = `${storageBinding(0, 'logits', 'f32', 'read')}${storageBinding(1, 'targets', 'i32', 'read')}${storageBinding(2, 'logsumexp', 'f32', 'read')}${storageBinding(3, 'count', 'f32', 'read')}${storageBinding(4, 'dmean', 'f32', 'read')}${storageBinding(5, 'dlogits', 'f32', 'read_write')}${uniformBinding(6, params)}
${entry1d(WORKGROUP)} {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.size) { return; }
  let row = i / params.V;
  let v = i % params.V;
  let target_id = targets[row];
  if (target_id == params.ignore_index) {
    dlogits[i] = 0.0;
    return;
  }
  let probability = exp(logits[i] - logsumexp[row]);
  let target_probability = ${targetProbability};
  dlogits[i] = (probability - target_probability) * dmean[0] / max(count[0], 1.0);
}`;
  return { key: smoothed ? 'cross_entropy_backward_smoothed' : 'cross_entropy_backward', code, workgroups: grid1d(size, WORKGROUP), params };
}
