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
// B may be stored as f16 (MatmulShape.dtypeB): its loads convert to f32, and the rest of the
// kernel is the same f32 code (see kernels/matmul-loaders.ts for the bindings).
//
// Loads clamp rows and columns past the edge of C into range (the lane computes values it
// never stores), so the inner loop has no bounds checks. K is split into full steps of 4 and
// a remainder loop.
//
// Fused extras (MatmulFusion), each off by default and each part of the program key:
// - second segment: after the K loop, the same accumulators run a second loop over K2 that
//   adds scale · A2 · op(B2). A2 is [batch, M, K2], and B2 is [batch, K2, N], or [batch, N, K2]
//   when its transB is set. A fused LoRA linear uses it for x·Wᵀ + s·u·Bᵀ in one dispatch.
// - epilogue in the store step: a bias vector over N, then an activation ('gelu' in the erf
//   form of kernels/elementwise.ts, or 'silu'). With preActivation the value before the
//   activation goes to a second output, which the backward needs.
// - split-K: workgroup z also runs over S slices of the K range, and each slice writes its
//   partial product to C viewed as [S, batch, M, N]. sumSlicesProgram then adds the slices
//   in a fixed order, so results are bitwise equal from run to run (no float atomics).
//   Split-K cannot be combined with the other extras.
import type { WgslProgram, DeviceCaps, MatmulTile } from './types.ts';
import { entry1d, flatIndex, grid1d, MAX_WORKGROUPS_PER_DIMENSION, storageBinding, uniformBinding } from './common.ts';
import { WGSL_ERF } from './elementwise.ts';
import { bindingTypeB, FIRST, loadersA, loadersB, maskedLoaders, rowsPerLoad, SECOND, type LayoutA, type LayoutB, type Segment, type StorageB } from './matmul-loaders.ts';


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
  /** Storage type of B, 'f32' when absent. An f16 B is converted to f32 as it is loaded. */
  dtypeB?: 'f32' | 'f16';
}

export type MatmulActivation = 'none' | 'gelu' | 'silu';

/** A second product added into the same accumulators: C += scale · A2 · op(B2). */
export interface MatmulSecondSegment {
  /** K2, the inner dimension of the second product. */
  K: number;
  /** B2 is [batch, N, K2] when true, else [batch, K2, N]. A2 is always [batch, M, K2]. */
  transB: boolean;
  /** Elements between consecutive matrices of A2 and B2 (0 to broadcast). */
  strideA: number;
  strideB: number;
  scale: number;
}

/**
 * Extras fused into one matmul dispatch. Extra inputs bind after A and B in the order A2, B2,
 * bias; the pre-activation output binds after C.
 */
export interface MatmulFusion {
  second?: MatmulSecondSegment;
  /** Adds a bias vector [N] in the store step. */
  bias?: boolean;
  activation?: MatmulActivation;
  /** Also writes the value before the activation (needs an activation other than 'none'). */
  preActivation?: boolean;
  /** S, the number of K slices; 1 or absent for no split. C then has S·batch·M·N elements. */
  splitK?: number;
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
  layoutA: LayoutA;
  /**
   * Access pattern for B: row-major as vec4 along n (N % 4 == 0), row-major scalars,
   * transposed as vec4 along k (K % 4 == 0), or transposed scalars.
   */
  layoutB: LayoutB;
  /** Storage of B and the way it is read: f32, f16 under `enable f16;`, or f16 unpacked from u32 words. */
  storageB: StorageB;
  /** Whether C is written as vec4 (N % 4 == 0). */
  vec4C: boolean;
  /** Whether K % 4 != 0, so that loads past K must read 0 (see maskedLoaders). */
  remainderK: boolean;
  /** Access patterns of the second segment (A2 is never transposed), or null without one. */
  second: { layoutA: 'rows4' | 'rows1'; layoutB: LayoutB; remainderK: boolean } | null;
  bias: boolean;
  activation: MatmulActivation;
  preActivation: boolean;
  /** Whether workgroups run over K slices (the slice count is a uniform parameter). */
  splitK: boolean;
}

function nextPowerOfTwo(value: number): number {
  return 2 ** Math.ceil(Math.log2(Math.max(1, value)));
}

function previousPowerOfTwo(value: number): number {
  return 2 ** Math.floor(Math.log2(Math.max(1, value)));
}

function layoutOfB(transB: boolean, N: number, K: number, strideB: number): LayoutB {
  if (transB) return K % 4 === 0 && strideB % 4 === 0 ? 'trans4' : 'trans1';
  return N % 4 === 0 && strideB % 4 === 0 ? 'rows4' : 'rows1';
}

function storageOfB(dtypeB: 'f32' | 'f16', caps: Pick<DeviceCaps, 'shaderF16'>): StorageB {
  if (dtypeB === 'f32') return 'f32';
  return caps.shaderF16 ? 'f16' : 'f16-in-u32';
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
export function matmulPlan(shape: MatmulShape, caps: DeviceCaps, fusion: MatmulFusion = {}): MatmulPlan {
  const { M, N, K, transA, transB, strideA, strideB } = shape;
  const { second } = fusion;

  // The subgroup variant's workgroup is a multiple of the largest subgroup size. A tile tuned
  // for this adapter and shape class replaces the defaults.
  const tuned = caps.matmulTiles?.get(matmulTileKey(shape));
  const subgroupWorkgroupSize = tuned && validTile(tuned, caps) ? tuned.workgroupSize : Math.max(WORKGROUP_SIZE, caps.subgroupMaxSize);
  const subgroupRows = tuned && validTile(tuned, caps) ? tuned.rows : SUBGROUP_ROWS;
  const subgroupsUsable =
    caps.subgroups &&
    caps.subgroupMinSize > 1 &&
    subgroupWorkgroupSize <= caps.maxComputeInvocationsPerWorkgroup &&
    subgroupWorkgroupSize <= caps.maxComputeWorkgroupSizeX;

  // Fewer rows per workgroup for small M (M = 1 when decoding), so that lanes do not compute
  // rows that do not exist.
  const rows = Math.min(subgroupsUsable ? subgroupRows : BLOCKED_ROWS, nextPowerOfTwo(M));

  // Both segments share one row-loading scheme, and A2 loads one row per value, so a second
  // segment rules out 'trans4' for A.
  let layoutA: LayoutA;
  if (transA) layoutA = M % 4 === 0 && strideA % 4 === 0 && rows >= 4 && !second ? 'trans4' : 'trans1';
  else layoutA = K % 4 === 0 && strideA % 4 === 0 ? 'rows4' : 'rows1';
  const layoutB = layoutOfB(transB, N, K, strideB);

  // A power of two, so that L divides R.
  const loadLanes = subgroupsUsable ? previousPowerOfTwo(Math.min(caps.subgroupMinSize, rows / rowsPerLoad(layoutA))) : 1;
  // With one loading lane (M = 1, or transA with M = 4) there is nothing to share.
  const variant = loadLanes > 1 ? 'subgroup' : 'blocked';
  const workgroupSize = variant === 'subgroup' ? subgroupWorkgroupSize : WORKGROUP_SIZE;

  return {
    variant,
    rows,
    loadLanes,
    workgroupSize,
    layoutA,
    layoutB,
    storageB: storageOfB(shape.dtypeB ?? 'f32', caps),
    vec4C: N % 4 === 0,
    remainderK: K % 4 !== 0,
    second: second
      ? {
          layoutA: second.K % 4 === 0 && second.strideA % 4 === 0 ? 'rows4' : 'rows1',
          layoutB: layoutOfB(second.transB, N, second.K, second.strideB),
          remainderK: second.K % 4 !== 0,
        }
      : null,
    bias: fusion.bias ?? false,
    activation: fusion.activation ?? 'none',
    preActivation: fusion.preActivation ?? false,
    splitK: (fusion.splitK ?? 1) > 1,
  };
}

/**
 * Returns the shape class that a tuned tile applies to. The key has the transposes and M, N
 * and K rounded up to a power of two (M from 1 to 1024, N and K from 16 to 4096, and larger
 * sizes share the last class). It ends in `v1` when N or K (or M, with A transposed) is not a
 * multiple of 4, because such shapes load scalars instead of vec4 and run another program.
 */
export function matmulTileKey(shape: Pick<MatmulShape, 'M' | 'N' | 'K' | 'transA' | 'transB'>): string {
  const bucket = (size: number, low: number, high: number) => Math.min(Math.max(nextPowerOfTwo(size), low), high);
  const transposes = `${shape.transA ? 't' : 'n'}${shape.transB ? 't' : 'n'}`;
  const aligned = shape.N % 4 === 0 && shape.K % 4 === 0 && (!shape.transA || shape.M % 4 === 0);
  return `${transposes}:m${bucket(shape.M, 1, 1024)}:n${bucket(shape.N, 16, 4096)}:k${bucket(shape.K, 16, 4096)}${aligned ? '' : ':v1'}`;
}

/**
 * Whether the subgroup variant can use `tile` on an adapter with `caps`: rows a power of two
 * from 4 to 64, and a workgroup that splits into whole subgroups and fits the limits.
 */
export function validTile(tile: MatmulTile, caps: DeviceCaps): boolean {
  const { rows, workgroupSize } = tile;
  const powerOfTwo = (value: number) => Number.isInteger(value) && value > 0 && (value & (value - 1)) === 0;
  return (
    powerOfTwo(rows) && rows >= 4 && rows <= 64 &&
    Number.isInteger(workgroupSize) && workgroupSize % caps.subgroupMaxSize === 0 &&
    workgroupSize <= caps.maxComputeInvocationsPerWorkgroup && workgroupSize <= caps.maxComputeWorkgroupSizeX
  );
}

/** Generates the subgroup variant when `caps` has subgroups, else the blocked variant. */
export function matmulProgram(shape: MatmulShape, caps: DeviceCaps, fusion: MatmulFusion = {}): WgslProgram {
  return matmulProgramForPlan(shape, matmulPlan(shape, caps, fusion), fusion);
}

/** Workgroups of the normal (unsplit) grid for `shape` on an adapter with `caps`. */
export function matmulWorkgroupCount(shape: MatmulShape, caps: DeviceCaps): number {
  const { rows, workgroupSize } = matmulPlan(shape, caps);
  return Math.ceil(Math.ceil(shape.N / LANE_COLUMNS) / workgroupSize) * Math.ceil(shape.M / rows) * shape.batch;
}

/**
 * Workgroups that split-K aims for. NOTE: an estimate, not measured per adapter, because
 * WebGPU does not report how many workgroups run at once. It is meant to cover a small GPU or
 * a many-core CPU adapter (lavapipe runs one workgroup per CPU thread).
 */
const SPLIT_TARGET_WORKGROUPS = 64;
/** Smallest K worth splitting, and the fewest k values per slice. */
const SPLIT_MIN_SLICE_K = 256;
const SPLIT_MAX_SLICES = 32;
/** Largest partial buffer, in elements (16 MiB of f32). */
const SPLIT_MAX_PARTIAL_ELEMENTS = 4 * 2 ** 20;

/**
 * Number of K slices for `shape`: 1 (no split) unless the normal grid has fewer than
 * SPLIT_TARGET_WORKGROUPS workgroups and K ≥ 2·SPLIT_MIN_SLICE_K. Then enough slices to
 * reach the target, with at least SPLIT_MIN_SLICE_K k values each, at most SPLIT_MAX_SLICES,
 * and a partial buffer of at most SPLIT_MAX_PARTIAL_ELEMENTS. This is the weight-gradient
 * shape dW = dYᵀ·X, where K is the token count and M·N is small.
 */
export function splitKSlices(shape: MatmulShape, caps: DeviceCaps): number {
  const { batch, M, N, K } = shape;
  const workgroups = matmulWorkgroupCount(shape, caps);
  if (workgroups >= SPLIT_TARGET_WORKGROUPS || K < 2 * SPLIT_MIN_SLICE_K) return 1;
  const slices = Math.min(
    Math.ceil(SPLIT_TARGET_WORKGROUPS / workgroups),
    Math.floor(K / SPLIT_MIN_SLICE_K),
    SPLIT_MAX_SLICES,
    Math.floor(SPLIT_MAX_PARTIAL_ELEMENTS / (batch * M * N)),
  );
  return splitKLayout(K, Math.max(1, slices)).slices;
}

/**
 * Splits K into `requested` slices of whole steps of 4: every slice but the last has
 * `sliceSteps` steps. Returns fewer slices when the steps do not fill `requested` slices, so
 * that no slice is empty.
 */
export function splitKLayout(K: number, requested: number): { slices: number; sliceSteps: number } {
  if (!Number.isInteger(requested) || requested < 1) {
    throw new Error(`matmul: splitK = ${requested} is invalid; use 1 (no split) or a whole number of slices ≥ 2`);
  }
  const steps = Math.max(1, Math.ceil(K / 4));
  const sliceSteps = Math.ceil(steps / Math.min(requested, steps));
  return { slices: Math.ceil(steps / sliceSteps), sliceSteps };
}

/** WGSL of the activation on a lane's 4 values, the same formulas as the elementwise gelu and silu kernels. */
function activationFunction(activation: MatmulActivation): string {
  if (activation === 'none') return '';
  const apply = activation === 'gelu' ? (x: string) => `gelu(${x})` : (x: string) => `${x} * sigmoid(${x})`;
  return `${WGSL_ERF}
fn activate(v: vec4<f32>) -> vec4<f32> {
  return vec4<f32>(${['v.x', 'v.y', 'v.z', 'v.w'].map(apply).join(', ')});
}
`;
}

/**
 * WGSL function that writes one row of a lane's 4 columns, skipping those outside C. With an
 * activation it writes activate(value) to C and, with preActivation, value itself to `pre`.
 */
function storeC(plan: MatmulPlan): string {
  const { vec4C, activation, preActivation } = plan;
  const activated = activation === 'none' ? 'value' : 'activate(value)';
  if (vec4C) {
    if (!preActivation) {
      return `fn storeRow(base: u32, row: u32, col: u32, value: vec4<f32>) {
  if (row < params.M && col < params.N) { c[(base + row * params.N + col) / 4u] = ${activated}; }
}
`;
    }
    return `fn storeRow(base: u32, row: u32, col: u32, value: vec4<f32>) {
  if (row < params.M && col < params.N) {
    let index = (base + row * params.N + col) / 4u;
    pre[index] = value;
    c[index] = ${activated};
  }
}
`;
  }
  const components = ['x', 'y', 'z', 'w'];
  const stores = (target: string, source: string) =>
    components.map((component, i) => `  if (col${i > 0 ? ` + ${i}u` : ''} < params.N) { ${target}[offset${i > 0 ? ` + ${i}u` : ''}] = ${source}.${component}; }\n`).join('');
  const output = activation === 'none' ? 'value' : 'activated';
  return `fn storeRow(base: u32, row: u32, col: u32, value: vec4<f32>) {
  if (row >= params.M) { return; }
  let offset = base + row * params.N + col;
${activation === 'none' ? '' : `  let activated = ${activated};\n`}${stores('c', output)}${preActivation ? stores('pre', 'value') : ''}}
`;
}

/** WGSL function that reads the bias at a lane's 4 columns, clamped into range like B. */
const LOAD_BIAS = `fn loadBias(col: u32) -> vec4<f32> {
  let cols = min(vec4<u32>(col) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(params.N - 1u));
  return vec4<f32>(bias[cols.x], bias[cols.y], bias[cols.z], bias[cols.w]);
}
`;

/** Lines of WGSL, one per index 0..count-1. */
function lines(count: number, line: (index: number) => string, indent = '  '): string {
  return Array.from({ length: count }, (_, index) => `${indent}${line(index)}\n`).join('');
}

function planKey(plan: MatmulPlan): string {
  const { variant, rows, loadLanes, workgroupSize, layoutA, layoutB, storageB, vec4C, remainderK, second } = plan;
  const remainder = remainderK ? ':k-masked' : '';
  const storage = storageB === 'f32' ? '' : `-${storageB}`;
  let key = `${variant}:r${rows}:l${loadLanes}:w${workgroupSize}:a-${layoutA}:b-${layoutB}${storage}:c${vec4C ? 4 : 1}${remainder}`;
  if (second) key += `:second-a-${second.layoutA}-b-${second.layoutB}${second.remainderK ? '-k-masked' : ''}`;
  if (plan.bias) key += ':bias';
  if (plan.activation !== 'none') key += `:${plan.activation}`;
  if (plan.preActivation) key += ':pre';
  if (plan.splitK) key += ':split-k';
  return key;
}

/** Generated WGSL by plan key. The plan fields take few values, so the cache stays small. */
const codeCache = new Map<string, string>();

/** Lists why the second segment's layouts do not fit `second`, or nothing when they do. */
function secondSegmentProblems(shape: MatmulShape, plan: MatmulPlan, second: MatmulSecondSegment | undefined): string[] {
  if (!plan.second && !second) return [];
  if (!plan.second || !second) return ['the plan and the fusion options disagree on the second segment'];
  const { N } = shape;
  const { K, transB, strideA, strideB } = second;
  const { layoutA, layoutB, remainderK } = plan.second;
  const problems: string[] = [];
  if (rowsPerLoad(plan.layoutA) !== 1) problems.push('a second segment needs A loaded one row per value (not trans4)');
  if (!Number.isInteger(K) || K < 1) problems.push(`the second segment needs K2 ≥ 1, got ${K}`);
  if (layoutB.startsWith('trans') !== transB) problems.push(`second layoutB ${layoutB} does not match transB = ${transB}`);
  if (layoutA === 'rows4' && (K % 4 !== 0 || strideA % 4 !== 0)) problems.push('rows4 A2 needs K2 and strideA2 divisible by 4');
  if (layoutB === 'rows4' && (N % 4 !== 0 || strideB % 4 !== 0)) problems.push('rows4 B2 needs N and strideB2 divisible by 4');
  if (layoutB === 'trans4' && (K % 4 !== 0 || strideB % 4 !== 0)) problems.push('trans4 B2 needs K2 and strideB2 divisible by 4');
  if (!remainderK && K % 4 !== 0) problems.push('K2 is not divisible by 4, so loads past K2 must be masked');
  return problems;
}

/** Throws when `plan` cannot compute `shape` with `fusion`, such as a vec4 layout for unaligned rows. */
function checkPlan(shape: MatmulShape, plan: MatmulPlan, fusion: MatmulFusion): void {
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
  if ((plan.storageB === 'f32') !== ((shape.dtypeB ?? 'f32') === 'f32')) problems.push(`storageB ${plan.storageB} does not match B's dtype ${shape.dtypeB ?? 'f32'}`);
  if (plan.vec4C && N % 4 !== 0) problems.push('vec4 stores of C need N divisible by 4');
  if (!plan.remainderK && K % 4 !== 0) problems.push('K is not divisible by 4, so loads past K must be masked');
  problems.push(...secondSegmentProblems(shape, plan, fusion.second));
  if (plan.bias !== (fusion.bias ?? false)) problems.push('the plan and the fusion options disagree on the bias');
  if (plan.activation !== (fusion.activation ?? 'none')) problems.push('the plan and the fusion options disagree on the activation');
  if (plan.preActivation && plan.activation === 'none') problems.push("preActivation needs an activation other than 'none'");
  if (plan.splitK !== (fusion.splitK ?? 1) > 1) problems.push('the plan and the fusion options disagree on split-K');
  if (plan.splitK && (plan.second || plan.bias || plan.activation !== 'none')) {
    problems.push('split-K cannot be combined with a second segment, a bias or an activation');
  }
  if (problems.length > 0) {
    throw new Error(`matmul: invalid plan ${planKey(plan)} for M=${M}, N=${N}, K=${K}: ${problems.join('; ')}`);
  }
}

/** Generates the program for an explicit plan (tests use this to force a variant). */
export function matmulProgramForPlan(shape: MatmulShape, plan: MatmulPlan, fusion: MatmulFusion = {}): WgslProgram {
  const { batch, M, N, K, strideA, strideB } = shape;
  const { rows, workgroupSize } = plan;
  checkPlan(shape, plan, fusion);
  const split = plan.splitK ? splitKLayout(K, fusion.splitK ?? 1) : { slices: 1, sliceSteps: 0 };

  // Workgroups: x over column blocks, y over row blocks, z over the batch (times the K slices
  // with split-K). A z range over the per-dimension limit folds into y, and the kernel
  // unfolds it with `rowGroups`.
  const items = batch * split.slices;
  const columnGroups = Math.ceil(Math.ceil(N / LANE_COLUMNS) / workgroupSize);
  const rowGroups = Math.ceil(M / rows);
  const itemFolds = Math.ceil(items / MAX_WORKGROUPS_PER_DIMENSION);
  const workgroups: [number, number, number] = [columnGroups, rowGroups * itemFolds, Math.min(items, MAX_WORKGROUPS_PER_DIMENSION)];
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
  if (fusion.second) {
    params.push(['K2', 'u32', fusion.second.K], ['strideA2', 'u32', fusion.second.strideA], ['strideB2', 'u32', fusion.second.strideB], ['scale2', 'f32', fusion.second.scale]);
  }
  if (plan.splitK) params.push(['slices', 'u32', split.slices], ['sliceSteps', 'u32', split.sliceSteps]);

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
 * Generates the WGSL of one product: the lane's offsets into A and B, and the loop over k.
 * Each step of 4 loads the lane's tile of B and its rows of A, shares the rows over the
 * subgroup and adds tile · row into every accumulator. `scale` multiplies the tile (the second
 * segment's scale), and `range` replaces the full range of steps (a K slice).
 */
function productLoop(plan: MatmulPlan, segment: Segment, layoutA: LayoutA, remainderK: boolean, range: string | null, scale: string): { offsets: string; loop: string } {
  const { rows, loadLanes } = plan;
  const subgroup = plan.variant === 'subgroup';
  const perLoad = rowsPerLoad(layoutA);
  const slots = rows / (loadLanes * perLoad);
  const s = segment.suffix;
  // Row r of the workgroup's R rows is loaded by lane j = ⌊r / perLoad⌋ mod L into its slot
  // g = ⌊r / (perLoad·L)⌋, as component r mod perLoad when perLoad = 4.
  const slotOf = (r: number) => Math.floor(r / (perLoad * loadLanes));
  const laneOf = (r: number) => Math.floor(r / perLoad) % loadLanes;
  const component = (r: number) => (perLoad > 1 ? `[${r % perLoad}]` : '');

  // Shares what lane j loaded into slot g with the whole subgroup as `shared{g}_{j}`, the
  // k-vector of one row (or, with perLoad = 4, a matrix whose column i is row i's k-vector).
  const broadcast = (value: string, lane: number) => (subgroup ? `subgroupBroadcast(${value}, ${lane}u)` : value);
  const share = (g: number, j: number) => {
    if (perLoad === 1) return `let shared${g}_${j} = ${broadcast(`a${g}`, j)};`;
    const columns = [0, 1, 2, 3].map((i) => broadcast(`a${g}[${i}]`, j)).join(', ');
    return `let shared${g}_${j} = transpose(mat4x4<f32>(${columns}));`;
  };
  const masked = remainderK ? 'Masked' : '';
  let stepBody = lines(slots, (g) => `let a${g} = loadA4${masked}${s}(offsetA${g}${s}, k);`, '    ');
  for (let g = 0; g < slots; g++) stepBody += lines(loadLanes, (j) => share(g, j), '    ');
  stepBody += lines(rows, (r) => `acc${r} += tile * shared${slotOf(r)}_${laneOf(r)}${component(r)};`, '    ');

  const steps = remainderK ? `(${segment.K} + 3u) / 4u` : `${segment.K} / 4u`;
  const offsets = `  let offsetsB${s} = columnOffsetsB${s}(batchIndex * ${segment.strideB}, col);
${lines(slots, (g) => `let offsetA${g}${s} = rowOffsetA${s}(batchIndex * ${segment.strideA}, min(laneRow + ${g * loadLanes * perLoad}u, params.M - ${perLoad}u));`)}`;
  const loop = `  let steps${s} = ${steps};
  for (${range ?? `var step = 0u; step < steps${s}; step++`}) {
    let k = step * 4u;
    let tile = loadB4${masked}${s}(offsetsB${s}, k)${scale};
${stepBody}  }
`;
  return { offsets, loop };
}

function generateCode(plan: MatmulPlan, params: WgslProgram['params']): string {
  const { rows, loadLanes, workgroupSize, layoutA, layoutB, storageB, vec4C, remainderK, second, splitK } = plan;
  const subgroup = plan.variant === 'subgroup';
  const perLoad = rowsPerLoad(layoutA);

  const typeOf = (layout: LayoutA | LayoutB) => (layout === 'rows4' || layout === 'trans4' ? 'vec4<f32>' : 'f32');
  let binding = 0;
  let bindings = storageBinding(binding++, 'a', typeOf(layoutA), 'read') + storageBinding(binding++, 'b', bindingTypeB(layoutB, storageB), 'read');
  if (second) bindings += storageBinding(binding++, 'a2', typeOf(second.layoutA), 'read') + storageBinding(binding++, 'b2', typeOf(second.layoutB), 'read');
  if (plan.bias) bindings += storageBinding(binding++, 'bias', 'f32', 'read');
  bindings += storageBinding(binding++, 'c', vec4C ? 'vec4<f32>' : 'f32', 'read_write');
  if (plan.preActivation) bindings += storageBinding(binding++, 'pre', vec4C ? 'vec4<f32>' : 'f32', 'read_write');
  bindings += uniformBinding(binding, params);

  const loaders = [loadersA(layoutA, FIRST), loadersB(layoutB, FIRST, storageB)];
  if (remainderK) loaders.push(maskedLoaders(layoutA, FIRST));
  if (second) {
    loaders.push(loadersA(second.layoutA, SECOND), loadersB(second.layoutB, SECOND));
    if (second.remainderK) loaders.push(maskedLoaders(second.layoutA, SECOND));
  }
  const epilogue = activationFunction(plan.activation) + (plan.bias ? LOAD_BIAS : '') + storeC(plan);

  // The z index of the workgroup (unfolded from y) runs over the batch, or over batch × slices
  // with split-K; a slice covers steps [stepBegin, stepEnd) of the first product.
  const item = `group.z + (group.y / params.rowGroups) * ${MAX_WORKGROUPS_PER_DIMENSION}u`;
  const locate = splitK
    ? `  let item = ${item};
  if (item >= params.batch * params.slices) { return; }
  let batchIndex = item / params.slices;
  let slice = item % params.slices;
`
    : `  let batchIndex = ${item};
  if (batchIndex >= params.batch) { return; }
`;
  const range = splitK ? 'var step = slice * params.sliceSteps; step < min((slice + 1u) * params.sliceSteps, steps); step++' : null;
  const baseC = splitK ? '(slice * params.batch + batchIndex) * params.M * params.N' : 'batchIndex * params.M * params.N';
  const stored = (r: number) => (plan.bias ? `acc${r} + biasColumns` : `acc${r}`);

  const first = productLoop(plan, FIRST, layoutA, remainderK, range, '');
  const secondProduct = second ? productLoop(plan, SECOND, second.layoutA, second.remainderK, null, ' * params.scale2') : { offsets: '', loop: '' };

  const laneBuiltin = subgroup ? ', @builtin(subgroup_invocation_id) subgroupLane: u32' : '';
  const laneIndex = subgroup ? `subgroupLane % ${loadLanes}u` : '0u';
  const extensions = [storageB === 'f16' ? 'enable f16;\n' : '', subgroup ? 'enable subgroups;\n' : ''].join('');
  return `${extensions ? `${extensions}\n` : ''}${bindings}
${loaders.join('\n')}
${epilogue}
@compute @workgroup_size(${workgroupSize})
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_id) local: vec3<u32>${laneBuiltin}) {
${locate}  let rowBase = (group.y % params.rowGroups) * ${rows}u;
  let col = (group.x * ${workgroupSize}u + local.x) * ${LANE_COLUMNS}u;
  let laneRow = rowBase + ${laneIndex} * ${perLoad}u;
${first.offsets}${secondProduct.offsets}
${lines(rows, (r) => `var acc${r} = vec4<f32>();`)}
${first.loop}${secondProduct.loop}
  let baseC = ${baseC};
${plan.bias ? '  let biasColumns = loadBias(col);\n' : ''}${lines(rows, (r) => `storeRow(baseC, rowBase + ${r}u, col, ${stored(r)});`)}}
`;
}

/**
 * Generates the program that adds the K slices of a split-K matmul: out[i] = Σ_s
 * partial[s·size + i] for s = 0, 1, …, S−1 in that order, so every run rounds the same way.
 */
export function sumSlicesProgram(size: number, slices: number): WgslProgram {
  const vec4 = size % 4 === 0;
  const width = vec4 ? 4 : 1;
  const type = vec4 ? 'vec4<f32>' : 'f32';
  const params: WgslProgram['params'] = [
    ['size', 'u32', size / width],
    ['slices', 'u32', slices],
  ];
  const code = `${storageBinding(0, 'partial', type, 'read')}${storageBinding(1, 'output', type, 'read_write')}${uniformBinding(2, params)}
${entry1d(WORKGROUP_SIZE)} {
  let i = ${flatIndex(WORKGROUP_SIZE)};
  if (i >= params.size) { return; }
  var total = partial[i];
  for (var slice = 1u; slice < params.slices; slice++) {
    total += partial[slice * params.size + i];
  }
  output[i] = total;
}`;
  return { key: `sum-slices:v${width}`, code, workgroups: grid1d(size / width, WORKGROUP_SIZE), params };
}
/** Generates the naive program, one invocation per output element, which tests use as a second reference. */
export function matmulNaiveProgram(shape: MatmulShape): WgslProgram {
  const { batch, M, N, K, transA, transB, strideA, strideB } = shape;
  if ((shape.dtypeB ?? 'f32') !== 'f32') throw new Error(`matmul: the naive program reads an f32 B only, got ${shape.dtypeB}; use matmulProgram for an f16 B`);
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
