// Softmax and log-softmax over the last axis, and their backwards.
//
// Shapes: x, y, dy, dx are [rows, C] (leading axes flattened). One workgroup per row.
import { storageBinding, uniformBinding } from './common.ts';
import { ROW_ENTRY, ROW_INDEX, ROW_WORKGROUP, rowGrid, WGSL_MIN_F32, WGSL_WORKGROUP_REDUCE } from './rows.ts';
import type { WgslProgram } from './types.ts';

/**
 * y = exp(x − max(x)) / Σ exp(x − max(x)) per row, or with `log` its logarithm,
 * y = x − max(x) − log Σ exp(x − max(x)), computed without forming the quotient.
 */
export function softmaxProgram(rows: number, C: number, log = false): WgslProgram {
  const params: WgslProgram['params'] = [
    ['rows', 'u32', rows],
    ['C', 'u32', C],
  ];
  const code = `${storageBinding(0, 'x', 'f32', 'read')}${storageBinding(1, 'y', 'f32', 'read_write')}${uniformBinding(2, params)}${WGSL_WORKGROUP_REDUCE}
${ROW_ENTRY} {
  ${ROW_INDEX}
  if (row >= params.rows) { return; }
  let base = row * params.C;

  var local_max = ${WGSL_MIN_F32};
  for (var c = lane; c < params.C; c += ${ROW_WORKGROUP}u) { local_max = max(local_max, x[base + c]); }
  let row_max = workgroup_max(lane, local_max);

  var local_sum = 0.0;
  for (var c = lane; c < params.C; c += ${ROW_WORKGROUP}u) { local_sum += exp(x[base + c] - row_max); }
  let total = workgroup_sum(lane, local_sum);

${log
  ? `  let shift = row_max + log(total);
  for (var c = lane; c < params.C; c += ${ROW_WORKGROUP}u) { y[base + c] = x[base + c] - shift; }`
  : `  let inv_total = 1.0 / total;
  for (var c = lane; c < params.C; c += ${ROW_WORKGROUP}u) { y[base + c] = exp(x[base + c] - row_max) * inv_total; }`}
}`;
  return { key: log ? 'log_softmax' : 'softmax', code, workgroups: rowGrid(rows), params };
}

/** dx = y · (dy − Σ dy·y) per row; with `log` (y the log-softmax), dx = dy − exp(y) · Σ dy. */
export function softmaxBackwardProgram(rows: number, C: number, log = false): WgslProgram {
  const params: WgslProgram['params'] = [
    ['rows', 'u32', rows],
    ['C', 'u32', C],
  ];
  const code = `${storageBinding(0, 'y', 'f32', 'read')}${storageBinding(1, 'dy', 'f32', 'read')}${storageBinding(2, 'dx', 'f32', 'read_write')}${uniformBinding(3, params)}${WGSL_WORKGROUP_REDUCE}
${ROW_ENTRY} {
  ${ROW_INDEX}
  if (row >= params.rows) { return; }
  let base = row * params.C;

  var local_dot = 0.0;
  for (var c = lane; c < params.C; c += ${ROW_WORKGROUP}u) { local_dot += ${log ? 'dy[base + c]' : 'dy[base + c] * y[base + c]'}; }
  let row_dot = workgroup_sum(lane, local_dot);

  for (var c = lane; c < params.C; c += ${ROW_WORKGROUP}u) { dx[base + c] = ${log ? 'dy[base + c] - exp(y[base + c]) * row_dot' : 'y[base + c] * (dy[base + c] - row_dot)'}; }
}`;
  return { key: log ? 'log_softmax_backward' : 'softmax_backward', code, workgroups: rowGrid(rows), params };
}
