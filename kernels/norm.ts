// LayerNorm and RMSNorm over the last axis, forward and backward.
//
// Shapes: x, y, dy, dx are [rows, C] (leading axes flattened); weight, bias, dweight, dbias
// are [C]; mean and rstd are [rows]. Forward and dx kernels run one workgroup per row. The
// weight and bias gradients run one invocation per column that loops over the rows, so they
// need no atomics and are deterministic.
import { entry1d, flatIndex, grid1d, storageBinding, uniformBinding } from './common.ts';
import { ROW_ENTRY, ROW_INDEX, ROW_WORKGROUP, rowGrid, WGSL_WORKGROUP_REDUCE } from './rows.ts';
import type { WgslProgram } from './types.ts';

const COLUMN_WORKGROUP = 64;

function rowParams(rows: number, C: number): WgslProgram['params'] {
  return [
    ['rows', 'u32', rows],
    ['C', 'u32', C],
  ];
}

/** Loop over this lane's columns of the current row. */
const EACH_COLUMN = `for (var c = lane; c < params.C; c += ${ROW_WORKGROUP}u)`;

/**
 * y = (x − mean) · rstd · weight + bias, with rstd = 1/√(var + eps) and the biased variance.
 * Also writes mean and rstd per row for the backward. The variance is Σ(x − mean)²/C, two
 * passes, which loses less precision than E[x²] − mean².
 */
export function layerNormProgram(rows: number, C: number, eps: number): WgslProgram {
  const params: WgslProgram['params'] = [...rowParams(rows, C), ['eps', 'f32', eps]];
  const code = `${storageBinding(0, 'x', 'f32', 'read')}${storageBinding(1, 'weight', 'f32', 'read')}${storageBinding(2, 'bias', 'f32', 'read')}${storageBinding(3, 'y', 'f32', 'read_write')}${storageBinding(4, 'mean_out', 'f32', 'read_write')}${storageBinding(5, 'rstd_out', 'f32', 'read_write')}${uniformBinding(6, params)}${WGSL_WORKGROUP_REDUCE}
${ROW_ENTRY} {
  ${ROW_INDEX}
  if (row >= params.rows) { return; }
  let base = row * params.C;
  let width = f32(params.C);

  var local_sum = 0.0;
  ${EACH_COLUMN} { local_sum += x[base + c]; }
  let mean = workgroup_sum(lane, local_sum) / width;

  var local_squares = 0.0;
  ${EACH_COLUMN} {
    let centered = x[base + c] - mean;
    local_squares += centered * centered;
  }
  let rstd = inverseSqrt(workgroup_sum(lane, local_squares) / width + params.eps);

  ${EACH_COLUMN} { y[base + c] = (x[base + c] - mean) * rstd * weight[c] + bias[c]; }
  if (lane == 0u) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}`;
  return { key: 'layer_norm', code, workgroups: rowGrid(rows), params };
}

/**
 * dx = rstd · (dnorm − mean(dnorm) − xhat · mean(dnorm · xhat)), where xhat = (x − mean) · rstd
 * and dnorm = weight · dy.
 */
export function layerNormBackwardProgram(rows: number, C: number): WgslProgram {
  const params = rowParams(rows, C);
  const code = `${storageBinding(0, 'x', 'f32', 'read')}${storageBinding(1, 'weight', 'f32', 'read')}${storageBinding(2, 'mean', 'f32', 'read')}${storageBinding(3, 'rstd', 'f32', 'read')}${storageBinding(4, 'dy', 'f32', 'read')}${storageBinding(5, 'dx', 'f32', 'read_write')}${uniformBinding(6, params)}${WGSL_WORKGROUP_REDUCE}
${ROW_ENTRY} {
  ${ROW_INDEX}
  if (row >= params.rows) { return; }
  let base = row * params.C;
  let width = f32(params.C);
  let row_mean = mean[row];
  let row_rstd = rstd[row];

  var local_dnorm = 0.0;
  var local_dnorm_xhat = 0.0;
  ${EACH_COLUMN} {
    let xhat = (x[base + c] - row_mean) * row_rstd;
    let dnorm = weight[c] * dy[base + c];
    local_dnorm += dnorm;
    local_dnorm_xhat += dnorm * xhat;
  }
  let dnorm_mean = workgroup_sum(lane, local_dnorm) / width;
  let dnorm_xhat_mean = workgroup_sum(lane, local_dnorm_xhat) / width;

  ${EACH_COLUMN} {
    let xhat = (x[base + c] - row_mean) * row_rstd;
    let dnorm = weight[c] * dy[base + c];
    dx[base + c] = row_rstd * (dnorm - dnorm_mean - xhat * dnorm_xhat_mean);
  }
}`;
  return { key: 'layer_norm_backward', code, workgroups: rowGrid(rows), params };
}

/** dweight[c] = Σ_rows dy · xhat, dbias[c] = Σ_rows dy. */
export function layerNormParamGradProgram(rows: number, C: number): WgslProgram {
  const params = rowParams(rows, C);
  const code = `${storageBinding(0, 'x', 'f32', 'read')}${storageBinding(1, 'mean', 'f32', 'read')}${storageBinding(2, 'rstd', 'f32', 'read')}${storageBinding(3, 'dy', 'f32', 'read')}${storageBinding(4, 'dweight', 'f32', 'read_write')}${storageBinding(5, 'dbias', 'f32', 'read_write')}${uniformBinding(6, params)}
${entry1d(COLUMN_WORKGROUP)} {
  let c = ${flatIndex(COLUMN_WORKGROUP)};
  if (c >= params.C) { return; }
  var weight_sum = 0.0;
  var bias_sum = 0.0;
  for (var row = 0u; row < params.rows; row++) {
    let i = row * params.C + c;
    let xhat = (x[i] - mean[row]) * rstd[row];
    weight_sum += dy[i] * xhat;
    bias_sum += dy[i];
  }
  dweight[c] = weight_sum;
  dbias[c] = bias_sum;
}`;
  return { key: 'layer_norm_param_grad', code, workgroups: grid1d(C, COLUMN_WORKGROUP), params };
}

/** y = x · rstd · weight with rstd = 1/√(mean(x²) + eps). Also writes rstd per row. */
export function rmsNormProgram(rows: number, C: number, eps: number): WgslProgram {
  const params: WgslProgram['params'] = [...rowParams(rows, C), ['eps', 'f32', eps]];
  const code = `${storageBinding(0, 'x', 'f32', 'read')}${storageBinding(1, 'weight', 'f32', 'read')}${storageBinding(2, 'y', 'f32', 'read_write')}${storageBinding(3, 'rstd_out', 'f32', 'read_write')}${uniformBinding(4, params)}${WGSL_WORKGROUP_REDUCE}
${ROW_ENTRY} {
  ${ROW_INDEX}
  if (row >= params.rows) { return; }
  let base = row * params.C;

  var local_squares = 0.0;
  ${EACH_COLUMN} { local_squares += x[base + c] * x[base + c]; }
  let rstd = inverseSqrt(workgroup_sum(lane, local_squares) / f32(params.C) + params.eps);

  ${EACH_COLUMN} { y[base + c] = x[base + c] * rstd * weight[c]; }
  if (lane == 0u) { rstd_out[row] = rstd; }
}`;
  return { key: 'rms_norm', code, workgroups: rowGrid(rows), params };
}

/** dx = rstd · (dnorm − xhat · mean(dnorm · xhat)), where xhat = x · rstd and dnorm = weight · dy. */
export function rmsNormBackwardProgram(rows: number, C: number): WgslProgram {
  const params = rowParams(rows, C);
  const code = `${storageBinding(0, 'x', 'f32', 'read')}${storageBinding(1, 'weight', 'f32', 'read')}${storageBinding(2, 'rstd', 'f32', 'read')}${storageBinding(3, 'dy', 'f32', 'read')}${storageBinding(4, 'dx', 'f32', 'read_write')}${uniformBinding(5, params)}${WGSL_WORKGROUP_REDUCE}
${ROW_ENTRY} {
  ${ROW_INDEX}
  if (row >= params.rows) { return; }
  let base = row * params.C;
  let row_rstd = rstd[row];

  var local_dnorm_xhat = 0.0;
  ${EACH_COLUMN} { local_dnorm_xhat += weight[c] * dy[base + c] * x[base + c] * row_rstd; }
  let dnorm_xhat_mean = workgroup_sum(lane, local_dnorm_xhat) / f32(params.C);

  ${EACH_COLUMN} {
    let xhat = x[base + c] * row_rstd;
    dx[base + c] = row_rstd * (weight[c] * dy[base + c] - xhat * dnorm_xhat_mean);
  }
}`;
  return { key: 'rms_norm_backward', code, workgroups: rowGrid(rows), params };
}

/** dweight[c] = Σ_rows dy · x · rstd. */
export function rmsNormWeightGradProgram(rows: number, C: number): WgslProgram {
  const params = rowParams(rows, C);
  const code = `${storageBinding(0, 'x', 'f32', 'read')}${storageBinding(1, 'rstd', 'f32', 'read')}${storageBinding(2, 'dy', 'f32', 'read')}${storageBinding(3, 'dweight', 'f32', 'read_write')}${uniformBinding(4, params)}
${entry1d(COLUMN_WORKGROUP)} {
  let c = ${flatIndex(COLUMN_WORKGROUP)};
  if (c >= params.C) { return; }
  var weight_sum = 0.0;
  for (var row = 0u; row < params.rows; row++) {
    let i = row * params.C + c;
    weight_sum += dy[i] * x[i] * rstd[row];
  }
  dweight[c] = weight_sum;
}`;
  return { key: 'rms_norm_weight_grad', code, workgroups: grid1d(C, COLUMN_WORKGROUP), params };
}
