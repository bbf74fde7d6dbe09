// Row kernels: one workgroup per row of a [rows, C] matrix (softmax, normalisation, loss).
//
// The lanes of a workgroup stride over the row and combine their partial results with a tree
// reduction in workgroup memory. No subgroup operations are used, so the result does not
// depend on the subgroup size, and the summation order is fixed, so it is deterministic.
import { grid1d } from './common.ts';

/** Lanes per row. NOTE: rows narrower than this leave lanes idle, and no other size was measured on lavapipe. */
export const ROW_WORKGROUP = 64;

/** Workgroup counts for `rows` rows. Past 65,535 rows the grid folds into two dimensions, which ROW_INDEX undoes. */
export function rowGrid(rows: number): [number, number, number] {
  return grid1d(rows, 1);
}

export const ROW_ENTRY = `@compute @workgroup_size(${ROW_WORKGROUP})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>)`;

/** Declares `row` (uniform across the workgroup, so barriers after an early return are valid) and `lane`. */
export const ROW_INDEX = `let row = wid.x + wid.y * nwg.x;
  let lane = lid.x;`;

/** Most negative finite f32, the identity of max (WGSL has no infinity literal). */
export const WGSL_MIN_F32 = '-3.4028234663852886e38';

/**
 * `workgroup_sum(lane, value)` and `workgroup_max(lane, value)` return the sum or max of
 * `value` over the workgroup to every lane. Call them from uniform control flow.
 */
export const WGSL_WORKGROUP_REDUCE = `
var<workgroup> partials: array<f32, ${ROW_WORKGROUP}>;

fn workgroup_sum(lane: u32, value: f32) -> f32 {
  partials[lane] = value;
  workgroupBarrier();
  for (var stride = ${ROW_WORKGROUP / 2}u; stride > 0u; stride = stride / 2u) {
    if (lane < stride) { partials[lane] = partials[lane] + partials[lane + stride]; }
    workgroupBarrier();
  }
  let total = partials[0];
  // The next reduction overwrites partials, so every lane must read the total first.
  workgroupBarrier();
  return total;
}

fn workgroup_max(lane: u32, value: f32) -> f32 {
  partials[lane] = value;
  workgroupBarrier();
  for (var stride = ${ROW_WORKGROUP / 2}u; stride > 0u; stride = stride / 2u) {
    if (lane < stride) { partials[lane] = max(partials[lane], partials[lane + stride]); }
    workgroupBarrier();
  }
  let total = partials[0];
  workgroupBarrier();
  return total;
}
`;
