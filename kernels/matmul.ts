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
// Neither variant uses workgroup memory, because lavapipe runs workgroup-memory tiling
// slower than plain storage loads (the opposite of a real GPU).
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

/** Rows of C per workgroup in the subgroup variant. On lavapipe at 1024³, 16 and 64 ran slower. */
const SUBGROUP_ROWS = 32;
/** Rows of C per workgroup in the blocked variant. */
const BLOCKED_ROWS = 4;
/** Columns of C per lane, one vec4. */
const LANE_COLUMNS = 4;
/** Lanes per workgroup unless subgroups are larger. On lavapipe 64 and 128 ran equally fast, 16 slower. */
const WORKGROUP_SIZE = 64;

/** Everything about the generated code that depends on the shape and the adapter. */
export interface MatmulPlan {
  variant: 'subgroup' | 'blocked';
  /** R: rows of C per workgroup, and the number of vec4 accumulators per lane. */
  rows: number;
  /** L: lanes that split the loading of A's rows, or 1 in the blocked variant. */
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
  /** Whether K % 4 != 0, so that loads past K must read 0 (see maskedLoaders). */
  remainderK: boolean;
}

function nextPowerOfTwo(value: number): number {
  return 2 ** Math.ceil(Math.log2(Math.max(1, value)));
}

function previousPowerOfTwo(value: number): number {
  return 2 ** Math.floor(Math.log2(Math.max(1, value)));
}

/** Rows of A that one lane loads as one value per k: 4 with the 'trans4' layout, else 1. */
function rowsPerLoad(layoutA: MatmulPlan['layoutA']): number {
  return layoutA === 'trans4' ? 4 : 1;
}

/**
 * Picks the variant and tile sizes for `shape` on an adapter with `caps`.
 *
 * NOTE: the subgroup variant is correct for any subgroup size of at least L, but only when
 * lanes 0..L-1 of every subgroup are active, because the other lanes read their rows of A
 * from those lanes. L ≤ subgroupMinSize, and the workgroup size is a multiple of
 * subgroupMaxSize so that it can split into full subgroups. WebGPU does not promise that
 * split. The tests check it on lavapipe (subgroup size 8) only.
 */
export function matmulPlan(shape: MatmulShape, caps: DeviceCaps): MatmulPlan {
  const { M, N, K, transA, transB, strideA, strideB } = shape;

  // The subgroup variant's workgroup is a multiple of the largest subgroup size.
  const subgroupWorkgroupSize = Math.max(WORKGROUP_SIZE, caps.subgroupMaxSize);
  const subgroupsUsable =
    caps.subgroups &&
    caps.subgroupMinSize > 1 &&
    subgroupWorkgroupSize <= caps.maxComputeInvocationsPerWorkgroup &&
    subgroupWorkgroupSize <= caps.maxComputeWorkgroupSizeX;

  // Fewer rows per workgroup for small M (M = 1 when decoding), so that lanes do not compute
  // rows that do not exist.
  const rows = Math.min(subgroupsUsable ? SUBGROUP_ROWS : BLOCKED_ROWS, nextPowerOfTwo(M));

  let layoutA: MatmulPlan['layoutA'];
  if (transA) layoutA = M % 4 === 0 && strideA % 4 === 0 && rows >= 4 ? 'trans4' : 'trans1';
  else layoutA = K % 4 === 0 && strideA % 4 === 0 ? 'rows4' : 'rows1';
  let layoutB: MatmulPlan['layoutB'];
  if (transB) layoutB = K % 4 === 0 && strideB % 4 === 0 ? 'trans4' : 'trans1';
  else layoutB = N % 4 === 0 && strideB % 4 === 0 ? 'rows4' : 'rows1';

  // A power of two, so that L divides R.
  const loadLanes = subgroupsUsable ? previousPowerOfTwo(Math.min(caps.subgroupMinSize, rows / rowsPerLoad(layoutA))) : 1;
  // With one loading lane (M = 1, or transA with M = 4) there is nothing to share.
  const variant = loadLanes > 1 ? 'subgroup' : 'blocked';
  const workgroupSize = variant === 'subgroup' ? subgroupWorkgroupSize : WORKGROUP_SIZE;

  return { variant, rows, loadLanes, workgroupSize, layoutA, layoutB, vec4C: N % 4 === 0, remainderK: K % 4 !== 0 };
}

/** Generates the subgroup variant when `caps` has subgroups, else the blocked variant. */
export function matmulProgram(shape: MatmulShape, caps: DeviceCaps): WgslProgram {
  return matmulProgramForPlan(shape, matmulPlan(shape, caps));
}

/**
 * WGSL functions that read A: the offset of a row, its values at k..k+3 (loadA4) and, for
 * the layouts that allow K % 4 != 0, at k alone (loadA1). With 'trans4' a load covers 4 rows:
 * loadA4 returns a matrix whose column i is rows row..row+3 at k+i, and loadA1 returns those
 * 4 rows at k.
 */
function loadersA(layout: MatmulPlan['layoutA']): string {
  switch (layout) {
    case 'rows4':
      return `fn rowOffsetA(base: u32, row: u32) -> u32 { return (base + row * params.K) / 4u; }
fn loadA4(offset: u32, k: u32) -> vec4<f32> { return a[offset + k / 4u]; }
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
 * k..k+3 (loadB4, whose column i is row k+i of B) and, for the layouts that allow
 * K % 4 != 0, the single row k (loadB1).
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
  const { variant, rows, loadLanes, workgroupSize, layoutA, layoutB, vec4C, remainderK } = plan;
  const remainder = remainderK ? ':k-masked' : '';
  return `${variant}:r${rows}:l${loadLanes}:w${workgroupSize}:a-${layoutA}:b-${layoutB}:c${vec4C ? 4 : 1}${remainder}`;
}

/** Generated WGSL by plan key. The plan fields take few values, so the cache stays small. */
const codeCache = new Map<string, string>();

/** Throws when `plan` cannot compute `shape`, such as a vec4 layout for unaligned rows. */
function checkPlan(shape: MatmulShape, plan: MatmulPlan): void {
  const { M, N, K, transA, transB, strideA, strideB } = shape;
  const { rows, loadLanes, layoutA, layoutB } = plan;
  const perLoad = rowsPerLoad(layoutA);
  const problems: string[] = [];
  if (rows % (loadLanes * perLoad) !== 0) problems.push(`${rows} rows do not split over ${loadLanes} lanes loading ${perLoad} rows each`);
  if (plan.variant === 'blocked' && loadLanes !== 1) problems.push('the blocked variant needs loadLanes = 1');
  if (layoutA.startsWith('trans') !== transA) problems.push(`layoutA ${layoutA} does not match transA = ${transA}`);
  if (layoutB.startsWith('trans') !== transB) problems.push(`layoutB ${layoutB} does not match transB = ${transB}`);
  if (layoutA === 'rows4' && (K % 4 !== 0 || strideA % 4 !== 0)) problems.push('rows4 A needs K and strideA divisible by 4');
  if (layoutA === 'trans4' && (M % 4 !== 0 || strideA % 4 !== 0)) problems.push('trans4 A needs M and strideA divisible by 4');
  if (layoutB === 'rows4' && (N % 4 !== 0 || strideB % 4 !== 0)) problems.push('rows4 B needs N and strideB divisible by 4');
  if (layoutB === 'trans4' && (K % 4 !== 0 || strideB % 4 !== 0)) problems.push('trans4 B needs K and strideB divisible by 4');
  if (plan.vec4C && N % 4 !== 0) problems.push('vec4 stores of C need N divisible by 4');
  if (!plan.remainderK && K % 4 !== 0) problems.push('K is not divisible by 4, so loads past K must be masked');
  if (problems.length > 0) {
    throw new Error(`matmul: invalid plan ${planKey(plan)} for M=${M}, N=${N}, K=${K}: ${problems.join('; ')}`);
  }
}

/** Generates the program for an explicit plan (tests use this to force a variant). */
export function matmulProgramForPlan(shape: MatmulShape, plan: MatmulPlan): WgslProgram {
  const { batch, M, N, K, strideA, strideB } = shape;
  const { rows, loadLanes, workgroupSize } = plan;
  checkPlan(shape, plan);

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

  // The code depends only on the plan. Generating it took about 90 µs on a 2-core VM, far
  // more than encoding the dispatch, so it is cached.
  const key = planKey(plan);
  let code = codeCache.get(key);
  if (code === undefined) {
    code = generateCode(plan, params);
    codeCache.set(key, code);
  }
  return { key, code, workgroups, params };
}

/**
 * WGSL functions that replace loadA4 and loadB4 when K % 4 != 0: values at k ≥ K read as 0,
 * so the last step of 4 may run past K. Zeroing both sides keeps an Inf in A or B from
 * turning into 0 · Inf = NaN.
 */
function maskedLoaders(layoutA: MatmulPlan['layoutA']): string {
  const valueA = rowsPerLoad(layoutA) === 4 ? 'vec4<f32>' : 'f32';
  const stepA = rowsPerLoad(layoutA) === 4 ? 'mat4x4<f32>' : 'vec4<f32>';
  return `fn loadA1Masked(offset: u32, k: u32) -> ${valueA} {
  return select(${valueA}(0.0), loadA1(offset, min(k, params.K - 1u)), k < params.K);
}
fn loadA4Masked(offset: u32, k: u32) -> ${stepA} {
  return ${stepA}(loadA1Masked(offset, k), loadA1Masked(offset, k + 1u), loadA1Masked(offset, k + 2u), loadA1Masked(offset, k + 3u));
}
fn loadB1Masked(offsets: vec4<u32>, k: u32) -> vec4<f32> {
  return select(vec4<f32>(0.0), loadB1(offsets, min(k, params.K - 1u)), k < params.K);
}
fn loadB4Masked(offsets: vec4<u32>, k: u32) -> mat4x4<f32> {
  return mat4x4<f32>(loadB1Masked(offsets, k), loadB1Masked(offsets, k + 1u), loadB1Masked(offsets, k + 2u), loadB1Masked(offsets, k + 3u));
}
`;
}

function generateCode(plan: MatmulPlan, params: WgslProgram['params']): string {
  const { rows, loadLanes, workgroupSize, layoutA, layoutB, vec4C, remainderK } = plan;
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

  // Shares what lane j loaded into slot g with the whole subgroup as `shared{g}_{j}`, the
  // k-vector of one row (or, with perLoad = 4, a matrix whose column i is row i's k-vector).
  const broadcast = (value: string, lane: number) => (subgroup ? `subgroupBroadcast(${value}, ${lane}u)` : value);
  const share = (g: number, j: number) => {
    if (perLoad === 1) return `let shared${g}_${j} = ${broadcast(`a${g}`, j)};`;
    const columns = [0, 1, 2, 3].map((i) => broadcast(`a${g}[${i}]`, j)).join(', ');
    return `let shared${g}_${j} = transpose(mat4x4<f32>(${columns}));`;
  };
  const masked = remainderK ? 'Masked' : '';
  let stepBody = lines(slots, (g) => `let a${g} = loadA4${masked}(offsetA${g}, k);`, '    ');
  for (let g = 0; g < slots; g++) stepBody += lines(loadLanes, (j) => share(g, j), '    ');
  stepBody += lines(rows, (r) => `acc${r} += tile * shared${slotOf(r)}_${laneOf(r)}${component(r)};`, '    ');

  const laneBuiltin = subgroup ? ', @builtin(subgroup_invocation_id) subgroupLane: u32' : '';
  const laneIndex = subgroup ? `subgroupLane % ${loadLanes}u` : '0u';
  return `${subgroup ? 'enable subgroups;\n\n' : ''}${bindings}
${loadersA(layoutA)}
${loadersB(layoutB)}
${remainderK ? `${maskedLoaders(layoutA)}\n` : ''}${storeC(vec4C)}
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
  let steps = ${remainderK ? '(params.K + 3u) / 4u' : 'params.K / 4u'};
  for (var step = 0u; step < steps; step++) {
    let k = step * 4u;
    let tile = loadB4${masked}(offsetsB, k);
${stepBody}  }

  let baseC = batchIndex * params.M * params.N;
${lines(rows, (r) => `storeRow(baseC, rowBase + ${r}u, col, acc${r});`)}}
`;
}

/** Generates the naive program, one invocation per output element, which tests use as a second reference. */
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
