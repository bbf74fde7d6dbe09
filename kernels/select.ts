// Selection along the last axis for decoding: the k largest entries of each row, in order.
//
// Shapes: x [N, V] (rows flattened) → values [N, k] (f32, only for topK) and indices [N, k] (i32).
// Order: larger value first, and among equal values the lower index first.
//
// One workgroup per row makes k passes. Pass p picks the best entry among those that rank after
// the pick of pass p − 1, so no scratch memory marks the entries already taken. The cost is
// k·V/64 comparisons per lane, which suits the small k of decoding.
import { storageBinding, uniformBinding } from './common.ts';
import { ROW_ENTRY, ROW_INDEX, ROW_WORKGROUP, rowGrid } from './rows.ts';
import type { WgslProgram } from './types.ts';

/** Index value meaning "no entry yet". */
const NONE = '0xffffffffu';

/**
 * Builds the program that writes the k largest entries of each row of x, as indices and (when
 * `withValues`) values. Bindings:
 * x, then values when `withValues`, then indices, then params.
 * NOTE: WGSL does not define comparisons with NaN, so a row containing NaN gives unspecified picks.
 */
export function topKProgram(N: number, V: number, k: number, withValues: boolean): WgslProgram {
  const params: WgslProgram['params'] = [
    ['rows', 'u32', N],
    ['V', 'u32', V],
    ['k', 'u32', k],
  ];
  const outputs = withValues
    ? `${storageBinding(1, 'values', 'f32', 'read_write')}${storageBinding(2, 'indices', 'i32', 'read_write')}`
    : storageBinding(1, 'indices', 'i32', 'read_write');
  const writeValue = withValues ? 'values[row * params.k + slot] = prev_value;' : '';
  const code = `${storageBinding(0, 'x', 'f32', 'read')}${outputs}${uniformBinding(withValues ? 3 : 2, params)}
var<workgroup> best_values: array<f32, ${ROW_WORKGROUP}>;
var<workgroup> best_indices: array<u32, ${ROW_WORKGROUP}>;

// Whether (value, index) ranks before (best_value, best_index). An index of NONE marks an empty slot.
fn ranks_before(value: f32, index: u32, best_value: f32, best_index: u32) -> bool {
  if (index == ${NONE}) { return false; }
  if (best_index == ${NONE}) { return true; }
  return value > best_value || (value == best_value && index < best_index);
}

${ROW_ENTRY} {
  ${ROW_INDEX}
  if (row >= params.rows) { return; }
  let base = row * params.V;

  var prev_value = 0.0;
  var prev_index = ${NONE};
  for (var slot = 0u; slot < params.k; slot++) {
    // Each lane's best entry among those ranking after the previous pick.
    var local_value = 0.0;
    var local_index = ${NONE};
    for (var v = lane; v < params.V; v += ${ROW_WORKGROUP}u) {
      let value = x[base + v];
      let after_prev = prev_index == ${NONE} || value < prev_value || (value == prev_value && v > prev_index);
      if (after_prev && ranks_before(value, v, local_value, local_index)) {
        local_value = value;
        local_index = v;
      }
    }

    // Tree reduction of the lanes' picks.
    best_values[lane] = local_value;
    best_indices[lane] = local_index;
    workgroupBarrier();
    for (var stride = ${ROW_WORKGROUP / 2}u; stride > 0u; stride = stride / 2u) {
      if (lane < stride && ranks_before(best_values[lane + stride], best_indices[lane + stride], best_values[lane], best_indices[lane])) {
        best_values[lane] = best_values[lane + stride];
        best_indices[lane] = best_indices[lane + stride];
      }
      workgroupBarrier();
    }
    prev_value = best_values[0];
    prev_index = best_indices[0];
    // The next pass overwrites the arrays, so every lane must read the pick first.
    workgroupBarrier();

    if (lane == 0u) {
      ${writeValue}
      indices[row * params.k + slot] = i32(prev_index);
    }
  }
}`;
  return { key: withValues ? 'top_k' : 'argmax', code, workgroups: rowGrid(N), params };
}
