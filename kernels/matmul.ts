// Matrix multiplication C[b] = op(A[b]) · op(B[b]), op = identity or transpose.
//
// Shapes: A is [batch, M, K] ([batch, K, M] when transA), B is [batch, K, N] ([batch, N, K]
// when transB), C is [batch, M, N]. A batch stride of 0 broadcasts one matrix over the batch.
//
// Tiling scheme. Every invocation (lane) owns 4 adjacent columns of C for the R rows of its
// workgroup, as R vec4 accumulators. Per step of 4 k values it loads its 4×4 tile of B once
// and multiplies it into every row, so it does 16·R multiply-adds per 4 vec4 loads of B.
// The rows of A are loaded in one of two ways:
// - subgroup variant: L lanes of each subgroup split the R rows of A between them, and
//   subgroupBroadcast shares each loaded row with the whole subgroup. A lane then loads only
//   R / L rows of A per step (R = 32 and L = 8 on lavapipe).
// - blocked variant, for adapters without subgroups: every lane loads all R ≤ 4 rows.
// Neither variant uses workgroup memory. CPU implementations such as lavapipe run it slower
// than storage loads, which is the opposite of a real GPU.
//
// Loads clamp rows and columns past the edge of C into range (the lane computes values it
// never stores), so the inner loop has no bounds checks. K is split into full steps of 4 and
// a remainder loop.
import type { WgslProgram, DeviceCaps } from './types.ts';
import { MAX_WORKGROUPS_PER_DIMENSION, storageBinding, uniformBinding } from './common.ts';

export interface MatmulShape {
  batch: number;
  M: number;
  N: number;
  K: number;
  transA: boolean;
  transB: boolean;
  /** Elements between consecutive matrices of A (0 to broadcast A). */
  strideA: number;
  strideB: number;
}

/**
 * Rows of C per workgroup in the subgroup variant. On lavapipe 16 rows ran 30 % slower at
 * 1024³, and more rows than 32 need more accumulator registers than the CPU has.
 */
const SUBGROUP_ROWS = 32;
/** Rows of C per workgroup in the blocked variant. */
const BLOCKED_ROWS = 4;
/** Columns of C per lane, one vec4. */
const LANE_COLUMNS = 4;
/** Lanes per workgroup unless subgroups are larger. On lavapipe 64 and 128 ran at the same speed. */
const WORKGROUP_SIZE = 64;

/** Everything about the generated code that depends on the shape and the adapter. */
export interface MatmulPlan {
  variant: 'subgroup' | 'blocked';
  /** R: rows of C per workgroup, and the number of vec4 accumulators per lane. */
  rows: number;
  /** L: lanes that split the loading of A's rows; 1 in the blocked variant. */
  loadLanes: number;
  workgroupSize: number;
  /**
   * Access pattern for A: row-major rows as vec4 along k (K % 4 == 0), row-major scalars,
   * transposed as vec4 along m (M % 4 == 0), or transposed scalars.
   */
  layoutA: 'rows4' | 'rows1' | 'trans4' | 'trans1';
  /**
   * Access pattern for B: row-major as vec4 along n (N % 4 == 0), row-major scalars,
   * transposed as vec4 along k (K % 4 == 0), or transposed scalars.
   */
  layoutB: 'rows4' | 'rows1' | 'trans4' | 'trans1';
  /** Whether C is written as vec4 (N % 4 == 0). */
  vec4C: boolean;
}

function nextPowerOfTwo(value: number): number {
  return 2 ** Math.ceil(Math.log2(Math.max(1, value)));
}

/** Rows of A that one lane loads as one value per k: 4 with the 'trans4' layout, else 1. */
function rowsPerLoad(layoutA: MatmulPlan['layoutA']): number {
  return layoutA === 'trans4' ? 4 : 1;
}

/**
 * Picks the variant and tile sizes for `shape` on an adapter with `caps`.
 *
 * NOTE: the subgroup variant is correct for any subgroup size of at least L, but only when
 * every subgroup is full: lanes 0..L-1 must be active, because the others read their rows of
 * A from those lanes. L ≤ subgroupMinSize, and the workgroup size is a multiple of
 * subgroupMaxSize so that it splits into full subgroups. WebGPU does not promise that split,
 * but lavapipe (subgroup size 8) and SwiftShader (4) produce it.
 */
export function matmulPlan(shape: MatmulShape, caps: DeviceCaps): MatmulPlan {
  const { M, N, K, transA, transB, strideA, strideB } = shape;

  // Fewer rows per workgroup for small M (M = 1 when decoding), so that lanes do not compute
  // rows that do not exist.
  const subgroupsUsable = caps.subgroups && caps.subgroupMinSize > 1;
  const rows = Math.min(subgroupsUsable ? SUBGROUP_ROWS : BLOCKED_ROWS, nextPowerOfTwo(M));

  let layoutA: MatmulPlan['layoutA'];
  if (transA) layoutA = M % 4 === 0 && strideA % 4 === 0 && rows >= 4 ? 'trans4' : 'trans1';
  else layoutA = K % 4 === 0 && strideA % 4 === 0 ? 'rows4' : 'rows1';
  let layoutB: MatmulPlan['layoutB'];
  if (transB) layoutB = K % 4 === 0 && strideB % 4 === 0 ? 'trans4' : 'trans1';
  else layoutB = N % 4 === 0 && strideB % 4 === 0 ? 'rows4' : 'rows1';

  const loadLanes = subgroupsUsable ? Math.min(caps.subgroupMinSize, rows / rowsPerLoad(layoutA)) : 1;
  const variant = loadLanes > 1 ? 'subgroup' : 'blocked';
  const workgroupSize = variant === 'subgroup' ? Math.max(WORKGROUP_SIZE, caps.subgroupMaxSize) : WORKGROUP_SIZE;
  if (workgroupSize > caps.maxComputeInvocationsPerWorkgroup || workgroupSize > caps.maxComputeWorkgroupSizeX) {
    throw new Error(
      `matmul: a workgroup of ${workgroupSize} invocations exceeds this adapter's limits ` +
        `(maxComputeInvocationsPerWorkgroup ${caps.maxComputeInvocationsPerWorkgroup}, ` +
        `maxComputeWorkgroupSizeX ${caps.maxComputeWorkgroupSizeX}); run without subgroups`,
    );
  }

  return { variant, rows, loadLanes, workgroupSize, layoutA, layoutB, vec4C: N % 4 === 0 };
}

/** Generates the subgroup variant when `caps` has subgroups, else the blocked variant. */
export function matmulProgram(shape: MatmulShape, caps: DeviceCaps): WgslProgram {
  return matmulProgramForPlan(shape, matmulPlan(shape, caps));
}

/**
 * WGSL functions that read A: the offset of a row, then the values for k..k+3 and for k.
 * With 'trans4' a load covers 4 rows: loadA4 returns a matrix whose column i is rows
 * row..row+3 at k+i, and loadA1 returns those 4 rows at k.
 */
function loadersA(layout: MatmulPlan['layoutA']): string {
  switch (layout) {
    case 'rows4':
      return `fn rowOffsetA(base: u32, row: u32) -> u32 { return (base + row * params.K) / 4u; }
fn loadA4(offset: u32, k: u32) -> vec4<f32> { return a[offset + k / 4u]; }
fn loadA1(offset: u32, k: u32) -> f32 { return a[offset + k / 4u][k % 4u]; }
`;
    case 'rows1':
      return `fn rowOffsetA(base: u32, row: u32) -> u32 { return base + row * params.K; }
fn loadA4(offset: u32, k: u32) -> vec4<f32> {
  return vec4<f32>(a[offset + k], a[offset + k + 1u], a[offset + k + 2u], a[offset + k + 3u]);
}
fn loadA1(offset: u32, k: u32) -> f32 { return a[offset + k]; }
`;
    case 'trans4':
      return `fn rowOffsetA(base: u32, row: u32) -> u32 { return (base + row) / 4u; }
fn loadA1(offset: u32, k: u32) -> vec4<f32> { return a[offset + k * (params.M / 4u)]; }
fn loadA4(offset: u32, k: u32) -> mat4x4<f32> {
  return mat4x4<f32>(loadA1(offset, k), loadA1(offset, k + 1u), loadA1(offset, k + 2u), loadA1(offset, k + 3u));
}
`;
    case 'trans1':
      return `fn rowOffsetA(base: u32, row: u32) -> u32 { return base + row; }
fn loadA4(offset: u32, k: u32) -> vec4<f32> {
  let M = params.M;
  return vec4<f32>(a[offset + k * M], a[offset + (k + 1u) * M], a[offset + (k + 2u) * M], a[offset + (k + 3u) * M]);
}
fn loadA1(offset: u32, k: u32) -> f32 { return a[offset + k * params.M]; }
`;
  }
}

/**
 * WGSL functions that read B at a lane's 4 columns: their offsets, the 4×4 tile of rows
 * k..k+3 (column i of the matrix is row k+i of B), and the single row k.
 */
function loadersB(layout: MatmulPlan['layoutB']): string {
  switch (layout) {
    case 'rows4':
      // N % 4 == 0, so a clamped first column keeps all 4 inside the row.
      return `fn columnOffsetsB(base: u32, col: u32) -> vec4<u32> { return vec4<u32>((base + min(col, params.N - 4u)) / 4u); }
fn loadB1(offsets: vec4<u32>, k: u32) -> vec4<f32> { return b[offsets.x + k * (params.N / 4u)]; }
fn loadB4(offsets: vec4<u32>, k: u32) -> mat4x4<f32> {
  return mat4x4<f32>(loadB1(offsets, k), loadB1(offsets, k + 1u), loadB1(offsets, k + 2u), loadB1(offsets, k + 3u));
}
`;
    case 'rows1':
      return `fn columnOffsetsB(base: u32, col: u32) -> vec4<u32> {
  return base + min(vec4<u32>(col) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(params.N - 1u));
}
fn loadB1(offsets: vec4<u32>, k: u32) -> vec4<f32> {
  let row = k * params.N;
  return vec4<f32>(b[offsets.x + row], b[offsets.y + row], b[offsets.z + row], b[offsets.w + row]);
}
fn loadB4(offsets: vec4<u32>, k: u32) -> mat4x4<f32> {
  return mat4x4<f32>(loadB1(offsets, k), loadB1(offsets, k + 1u), loadB1(offsets, k + 2u), loadB1(offsets, k + 3u));
}
`;
    case 'trans4':
      // Each of the 4 columns is a row of the stored [N, K] matrix: one vec4 along k each,
      // transposed into the tile layout.
      return `fn columnOffsetsB(base: u32, col: u32) -> vec4<u32> {
  let cols = min(vec4<u32>(col) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(params.N - 1u));
  return (base + cols * params.K) / 4u;
}
fn loadB1(offsets: vec4<u32>, k: u32) -> vec4<f32> {
  let step = k / 4u;
  let i = k % 4u;
  return vec4<f32>(b[offsets.x + step][i], b[offsets.y + step][i], b[offsets.z + step][i], b[offsets.w + step][i]);
}
fn loadB4(offsets: vec4<u32>, k: u32) -> mat4x4<f32> {
  let step = k / 4u;
  return transpose(mat4x4<f32>(b[offsets.x + step], b[offsets.y + step], b[offsets.z + step], b[offsets.w + step]));
}
`;
    case 'trans1':
      return `fn columnOffsetsB(base: u32, col: u32) -> vec4<u32> {
  let cols = min(vec4<u32>(col) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(params.N - 1u));
  return base + cols * params.K;
}
fn loadB1(offsets: vec4<u32>, k: u32) -> vec4<f32> {
  return vec4<f32>(b[offsets.x + k], b[offsets.y + k], b[offsets.z + k], b[offsets.w + k]);
}
fn loadB4(offsets: vec4<u32>, k: u32) -> mat4x4<f32> {
  return mat4x4<f32>(loadB1(offsets, k), loadB1(offsets, k + 1u), loadB1(offsets, k + 2u), loadB1(offsets, k + 3u));
}
`;
  }
}

/** WGSL function that writes one row of a lane's 4 columns, skipping those outside C. */
function storeC(vec4C: boolean): string {
  if (vec4C) {
    return `fn storeRow(base: u32, row: u32, col: u32, value: vec4<f32>) {
  if (row < params.M && col < params.N) { c[(base + row * params.N + col) / 4u] = value; }
}
`;
  }
  return `fn storeRow(base: u32, row: u32, col: u32, value: vec4<f32>) {
  if (row >= params.M) { return; }
  let offset = base + row * params.N + col;
  if (col < params.N) { c[offset] = value.x; }
  if (col + 1u < params.N) { c[offset + 1u] = value.y; }
  if (col + 2u < params.N) { c[offset + 2u] = value.z; }
  if (col + 3u < params.N) { c[offset + 3u] = value.w; }
}
`;
}

/** Lines of WGSL, one per index 0..count-1. */
function lines(count: number, line: (index: number) => string, indent = '  '): string {
  return Array.from({ length: count }, (_, index) => `${indent}${line(index)}\n`).join('');
}

function planKey(plan: MatmulPlan): string {
  const { variant, rows, loadLanes, workgroupSize, layoutA, layoutB, vec4C } = plan;
  return `${variant}:r${rows}:l${loadLanes}:w${workgroupSize}:a-${layoutA}:b-${layoutB}:c${vec4C ? 4 : 1}`;
}

/** Generated WGSL by plan key. The plan fields take few values, so the cache stays small. */
const codeCache = new Map<string, string>();

/** Generates the program for an explicit plan (tests use this to force a variant). */
export function matmulProgramForPlan(shape: MatmulShape, plan: MatmulPlan): WgslProgram {
  const { batch, M, N, K, strideA, strideB } = shape;
  const { rows, loadLanes, workgroupSize } = plan;
  const perLoad = rowsPerLoad(plan.layoutA);
  if (rows % (loadLanes * perLoad) !== 0 || (plan.variant === 'blocked' && loadLanes !== 1)) {
    throw new Error(`matmul: invalid plan ${planKey(plan)}: ${rows} rows do not split over ${loadLanes} lanes loading ${perLoad} rows each`);
  }

  // Workgroups: x over column blocks, y over row blocks, z over the batch. A batch over the
  // per-dimension limit folds into y, and the kernel unfolds it with `rowGroups`.
  const columnGroups = Math.ceil(Math.ceil(N / LANE_COLUMNS) / workgroupSize);
  const rowGroups = Math.ceil(M / rows);
  const batchFolds = Math.ceil(batch / MAX_WORKGROUPS_PER_DIMENSION);
  const workgroups: [number, number, number] = [columnGroups, rowGroups * batchFolds, Math.min(batch, MAX_WORKGROUPS_PER_DIMENSION)];
  if (workgroups.some((count) => count > MAX_WORKGROUPS_PER_DIMENSION)) {
    throw new Error(
      `matmul: [${batch}, ${M}, ${K}] x [${batch}, ${K}, ${N}] needs ${workgroups.join(' x ')} workgroups, ` +
        `over the limit of ${MAX_WORKGROUPS_PER_DIMENSION} per dimension; split the batch or the matrices`,
    );
  }

  const params: WgslProgram['params'] = [
    ['M', 'u32', M],
    ['N', 'u32', N],
    ['K', 'u32', K],
    ['strideA', 'u32', strideA],
    ['strideB', 'u32', strideB],
    ['batch', 'u32', batch],
    ['rowGroups', 'u32', Math.max(1, rowGroups)],
  ];

  // The code depends only on the plan, and generating it takes tens of microseconds, which
  // is more than encoding the dispatch: cache it.
  const key = planKey(plan);
  let code = codeCache.get(key);
  if (code === undefined) {
    code = generateCode(plan, params);
    codeCache.set(key, code);
  }
  return { key, code, workgroups, params };
}

function generateCode(plan: MatmulPlan, params: WgslProgram['params']): string {
  const { rows, loadLanes, workgroupSize, layoutA, layoutB, vec4C } = plan;
  const subgroup = plan.variant === 'subgroup';
  const perLoad = rowsPerLoad(layoutA);
  const slots = rows / (loadLanes * perLoad);
  // Row r of the workgroup's R rows is loaded by lane j = ⌊r / perLoad⌋ mod L into its slot
  // g = ⌊r / (perLoad·L)⌋, as component r mod perLoad when perLoad = 4.
  const slotOf = (r: number) => Math.floor(r / (perLoad * loadLanes));
  const laneOf = (r: number) => Math.floor(r / perLoad) % loadLanes;
  const component = (r: number) => (perLoad > 1 ? `[${r % perLoad}]` : '');

  const typeA = layoutA === 'rows4' || layoutA === 'trans4' ? 'vec4<f32>' : 'f32';
  const typeB = layoutB === 'rows4' || layoutB === 'trans4' ? 'vec4<f32>' : 'f32';
  const bindings =
    storageBinding(0, 'a', typeA, 'read') +
    storageBinding(1, 'b', typeB, 'read') +
    storageBinding(2, 'c', vec4C ? 'vec4<f32>' : 'f32', 'read_write') +
    uniformBinding(3, params);

  // Shares what lane j loaded into slot g with the whole subgroup as `shared{g}_{j}`.
  const broadcast = (value: string, lane: number) => (subgroup ? `subgroupBroadcast(${value}, ${lane}u)` : value);
  const share = (g: number, j: number, fullStep: boolean) => {
    if (perLoad === 1 || !fullStep) return `let shared${g}_${j} = ${broadcast(`a${g}`, j)};`;
    // 'trans4' in a full step: rebuild the k-vectors of the 4 rows from the 4 columns.
    const columns = [0, 1, 2, 3].map((i) => broadcast(`a${g}[${i}]`, j)).join(', ');
    return `let shared${g}_${j} = transpose(mat4x4<f32>(${columns}));`;
  };
  const step = (fullStep: boolean) => {
    const load = fullStep ? 'loadA4' : 'loadA1';
    const tile = fullStep ? 'tile' : 'row';
    let body = lines(slots, (g) => `let a${g} = ${load}(offsetA${g}, k);`, '    ');
    for (let g = 0; g < slots; g++) body += lines(loadLanes, (j) => share(g, j, fullStep), '    ');
    body += lines(rows, (r) => `acc${r} += ${tile} * shared${slotOf(r)}_${laneOf(r)}${component(r)};`, '    ');
    return body;
  };

  const laneBuiltin = subgroup ? ', @builtin(subgroup_invocation_id) subgroupLane: u32' : '';
  const laneIndex = subgroup ? `subgroupLane % ${loadLanes}u` : '0u';
  return `${subgroup ? 'enable subgroups;\n\n' : ''}${bindings}
${loadersA(layoutA)}
${loadersB(layoutB)}
${storeC(vec4C)}
@compute @workgroup_size(${workgroupSize})
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_id) local: vec3<u32>${laneBuiltin}) {
  let batchIndex = group.z + (group.y / params.rowGroups) * ${MAX_WORKGROUPS_PER_DIMENSION}u;
  if (batchIndex >= params.batch) { return; }
  let rowBase = (group.y % params.rowGroups) * ${rows}u;
  let col = (group.x * ${workgroupSize}u + local.x) * ${LANE_COLUMNS}u;
  let offsetsB = columnOffsetsB(batchIndex * params.strideB, col);
  let laneRow = rowBase + ${laneIndex} * ${perLoad}u;
${lines(slots, (g) => `let offsetA${g} = rowOffsetA(batchIndex * params.strideA, min(laneRow + ${g * loadLanes * perLoad}u, params.M - ${perLoad}u));`)}
${lines(rows, (r) => `var acc${r} = vec4<f32>();`)}
  let fullSteps = params.K / 4u;
  for (var step = 0u; step < fullSteps; step++) {
    let k = step * 4u;
    let tile = loadB4(offsetsB, k);
${step(true)}  }
  for (var k = fullSteps * 4u; k < params.K; k++) {
    let row = loadB1(offsetsB, k);
${step(false)}  }

  let baseC = batchIndex * params.M * params.N;
${lines(rows, (r) => `storeRow(baseC, rowBase + ${r}u, col, acc${r});`)}}
`;
}

/** One invocation per output element: a second, simple reference for tests. */
export function matmulNaiveProgram(shape: MatmulShape): WgslProgram {
  const { batch, M, N, K, transA, transB, strideA, strideB } = shape;
  const tile = 8;
  const params: WgslProgram['params'] = [
    ['M', 'u32', M],
    ['N', 'u32', N],
    ['K', 'u32', K],
    ['strideA', 'u32', strideA],
    ['strideB', 'u32', strideB],
  ];
  const aIndex = transA ? 'k * params.M + row' : 'row * params.K + k';
  const bIndex = transB ? 'col * params.K + k' : 'k * params.N + col';
  const code = `${storageBinding(0, 'a', 'f32', 'read')}${storageBinding(1, 'b', 'f32', 'read')}${storageBinding(2, 'c', 'f32', 'read_write')}${uniformBinding(3, params)}
@compute @workgroup_size(${tile}, ${tile})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let col = gid.x;
  let row = gid.y;
  let batch = gid.z;
  if (row >= params.M || col >= params.N) { return; }
  let baseA = batch * params.strideA;
  let baseB = batch * params.strideB;
  var total = 0.0;
  for (var k = 0u; k < params.K; k++) {
    total += a[baseA + ${aIndex}] * b[baseB + ${bIndex}];
  }
  c[batch * params.M * params.N + row * params.N + col] = total;
}`;
  return {
    key: `naive:${transA ? 't' : 'n'}${transB ? 't' : 'n'}`,
    code,
    workgroups: [Math.ceil(N / tile), Math.ceil(M / tile), batch],
    params,
  };
}
