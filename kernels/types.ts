// Types shared by the WGSL kernel generators and the engine that dispatches them.

/** Adapter capabilities that a generator may rely on. */
export interface DeviceCaps {
  /** The adapter has the `subgroups` feature. */
  subgroups: boolean;
  /** Smallest subgroup size the adapter reports (8 on lavapipe, 4 on SwiftShader). */
  subgroupMinSize: number;
  subgroupMaxSize: number;
  /** The adapter has `shader-f16`. */
  shaderF16: boolean;
  maxComputeWorkgroupSizeX: number;
  maxComputeInvocationsPerWorkgroup: number;
  maxComputeWorkgroupStorageSize: number;
  maxComputeWorkgroupsPerDimension: number;
  /**
   * Tile sizes chosen for this adapter by timing (engine/autotune.ts), by matmul shape class
   * (see matmulTileKey in kernels/matmul.ts). Missing entries use the built-in defaults.
   */
  matmulTiles?: Map<string, MatmulTile>;
}

/** Tile sizes of the subgroup matmul kernel: rows of C per workgroup and lanes per workgroup. */
export interface MatmulTile {
  rows: number;
  workgroupSize: number;
}

export type ParamType = 'u32' | 'i32' | 'f32';

/**
 * One compiled-and-dispatched WGSL program.
 *
 * Binding convention: `@group(0) @binding(i)` for the i-th input, then the outputs in order,
 * then, if `params` is not empty, `var<uniform> params: Params` at the next binding. `Params`
 * is a struct of 4-byte scalars declared in `params` order (see `paramsStruct`).
 */
export interface WgslProgram {
  /** Pipeline cache key: equal keys must mean equal `code`. */
  key: string;
  code: string;
  workgroups: [number, number, number];
  params: Array<[name: string, type: ParamType, value: number]>;
}
