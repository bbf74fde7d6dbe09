// Small WGSL helpers shared by the kernel generators.
import type { ParamType, WgslProgram } from './types.ts';

/** Declares `struct Params` with one 4-byte field per entry, in order. */
export function paramsStruct(params: WgslProgram['params']): string {
  if (params.length === 0) return '';
  const fields = params.map(([name, type]) => `  ${name}: ${type},`).join('\n');
  return `struct Params {\n${fields}\n}\n`;
}

export function uniformBinding(binding: number, params: WgslProgram['params']): string {
  if (params.length === 0) return '';
  return `${paramsStruct(params)}@group(0) @binding(${binding}) var<uniform> params: Params;\n`;
}

export function storageBinding(binding: number, name: string, type: string, access: 'read' | 'read_write'): string {
  return `@group(0) @binding(${binding}) var<storage, ${access}> ${name}: array<${type}>;\n`;
}

export const MAX_WORKGROUPS_PER_DIMENSION = 65535;

/**
 * Workgroup counts for `count` independent items with `workgroupSize` items per workgroup.
 * Counts over 65,535 workgroups fold into a 2-D grid: the kernel recovers the flat item
 * index with `flatIndex` and must check it against the item count.
 */
export function grid1d(count: number, workgroupSize: number): [number, number, number] {
  const groups = Math.max(1, Math.ceil(count / workgroupSize));
  if (groups <= MAX_WORKGROUPS_PER_DIMENSION) return [groups, 1, 1];
  const rows = Math.ceil(groups / MAX_WORKGROUPS_PER_DIMENSION);
  return [MAX_WORKGROUPS_PER_DIMENSION, rows, 1];
}

/** WGSL expression for the flat item index under `grid1d`, given `gid` and `nwg` builtins. */
export function flatIndex(workgroupSize: number): string {
  return `(gid.x + gid.y * nwg.x * ${workgroupSize}u)`;
}

/** Entry-point signature for a 1-D kernel over items. */
export function entry1d(workgroupSize: number): string {
  return `@compute @workgroup_size(${workgroupSize})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>)`;
}

export type { ParamType };
