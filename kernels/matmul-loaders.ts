// WGSL functions with which the matmul kernel (kernels/matmul.ts) reads its operands: one set
// per access pattern of A and B, and masked versions for K % 4 != 0. A fused second product
// gets its own set, named with the suffix `_2`.
//
// B may be stored as f16 (a frozen weight). Its loaders then read each value through `readB`,
// which converts it to f32, so the products and sums stay f32. With `shader-f16` the binding
// is `array<f16>` or `array<vec4<f16>>`. Without it the binding is `array<u32>` (two values
// per word, the lower-addressed one in the low half) or `array<vec2<u32>>` (four values), and
// unpack2x16float converts them.

/** Access pattern for A: row-major vec4 along k, row-major scalars, transposed vec4 along m, or transposed scalars. */
export type LayoutA = 'rows4' | 'rows1' | 'trans4' | 'trans1';
/** Access pattern for B: row-major vec4 along n, row-major scalars, transposed vec4 along k, or transposed scalars. */
export type LayoutB = 'rows4' | 'rows1' | 'trans4' | 'trans1';

/**
 * Storage of B: 'f32', 'f16' (read as f16 under `enable f16;`), or 'f16-in-u32' (f16 read as
 * 32-bit words and converted with unpack2x16float, for adapters without `shader-f16`).
 */
export type StorageB = 'f32' | 'f16' | 'f16-in-u32';

function isVec4Layout(layout: LayoutB): boolean {
  return layout === 'rows4' || layout === 'trans4';
}

/** Element type of B's binding for `layout` and `storage`: one value, or 4 consecutive values for the vec4 layouts. */
export function bindingTypeB(layout: LayoutB, storage: StorageB): string {
  const vec4 = isVec4Layout(layout);
  switch (storage) {
    case 'f32':
      return vec4 ? 'vec4<f32>' : 'f32';
    case 'f16':
      return vec4 ? 'vec4<f16>' : 'f16';
    case 'f16-in-u32':
      return vec4 ? 'vec2<u32>' : 'u32';
  }
}

/**
 * WGSL function `readB` that returns element `i` of B's binding as f32 (a vec4 for the vec4
 * layouts), or '' for f32 storage, whose loaders index the binding directly. In the scalar
 * u32 layout value i is half i % 2 of word i / 2, so a row that starts at an odd value (odd K
 * or N) is read correctly.
 */
function readerB(layout: LayoutB, storage: StorageB, { b, suffix }: Segment): string {
  if (storage === 'f32') return '';
  const vec4 = isVec4Layout(layout);
  if (storage === 'f16') {
    return vec4
      ? `fn readB${suffix}(i: u32) -> vec4<f32> { return vec4<f32>(${b}[i]); }
`
      : `fn readB${suffix}(i: u32) -> f32 { return f32(${b}[i]); }
`;
  }
  return vec4
    ? `fn readB${suffix}(i: u32) -> vec4<f32> {
  let words = ${b}[i];
  return vec4<f32>(unpack2x16float(words.x), unpack2x16float(words.y));
}
`
    : `fn readB${suffix}(i: u32) -> f32 { return unpack2x16float(${b}[i / 2u])[i % 2u]; }
`;
}

/** Rows of A that one lane loads as one value per k: 4 with the 'trans4' layout, else 1. */
export function rowsPerLoad(layoutA: LayoutA): number {
  return layoutA === 'trans4' ? 4 : 1;
}

/** Names that the WGSL of one product (segment) uses for its operands, parameters and loaders. */
export interface Segment {
  a: string;
  b: string;
  K: string;
  strideA: string;
  strideB: string;
  /** Suffix of the loader function names and local variables. */
  suffix: string;
}

export const FIRST: Segment = { a: 'a', b: 'b', K: 'params.K', strideA: 'params.strideA', strideB: 'params.strideB', suffix: '' };
export const SECOND: Segment = { a: 'a2', b: 'b2', K: 'params.K2', strideA: 'params.strideA2', strideB: 'params.strideB2', suffix: '_2' };

/**
 * WGSL functions that read A: the offset of a row, its values at k..k+3 (loadA4) and, for
 * the layouts that allow K % 4 != 0, at k alone (loadA1). With 'trans4' a load covers 4 rows:
 * loadA4 returns a matrix whose column i is rows row..row+3 at k+i, and loadA1 returns those
 * 4 rows at k.
 */
export function loadersA(layout: LayoutA, { a, K, suffix }: Segment): string {
  switch (layout) {
    case 'rows4':
      return `fn rowOffsetA${suffix}(base: u32, row: u32) -> u32 { return (base + row * ${K}) / 4u; }
fn loadA4${suffix}(offset: u32, k: u32) -> vec4<f32> { return ${a}[offset + k / 4u]; }
`;
    case 'rows1':
      return `fn rowOffsetA${suffix}(base: u32, row: u32) -> u32 { return base + row * ${K}; }
fn loadA4${suffix}(offset: u32, k: u32) -> vec4<f32> {
  return vec4<f32>(${a}[offset + k], ${a}[offset + k + 1u], ${a}[offset + k + 2u], ${a}[offset + k + 3u]);
}
fn loadA1${suffix}(offset: u32, k: u32) -> f32 { return ${a}[offset + k]; }
`;
    case 'trans4':
      return `fn rowOffsetA${suffix}(base: u32, row: u32) -> u32 { return (base + row) / 4u; }
fn loadA1${suffix}(offset: u32, k: u32) -> vec4<f32> { return ${a}[offset + k * (params.M / 4u)]; }
fn loadA4${suffix}(offset: u32, k: u32) -> mat4x4<f32> {
  return mat4x4<f32>(loadA1${suffix}(offset, k), loadA1${suffix}(offset, k + 1u), loadA1${suffix}(offset, k + 2u), loadA1${suffix}(offset, k + 3u));
}
`;
    case 'trans1':
      return `fn rowOffsetA${suffix}(base: u32, row: u32) -> u32 { return base + row; }
fn loadA4${suffix}(offset: u32, k: u32) -> vec4<f32> {
  let M = params.M;
  return vec4<f32>(${a}[offset + k * M], ${a}[offset + (k + 1u) * M], ${a}[offset + (k + 2u) * M], ${a}[offset + (k + 3u) * M]);
}
fn loadA1${suffix}(offset: u32, k: u32) -> f32 { return ${a}[offset + k * params.M]; }
`;
  }
}

/**
 * WGSL functions that read B at a lane's 4 columns: their offsets, the 4×4 tile of rows
 * k..k+3 (loadB4, whose column i is row k+i of B) and, for the layouts that allow
 * K % 4 != 0, the single row k (loadB1). Indices count elements of the binding (vec4s in the
 * vec4 layouts) whatever `storage` is.
 */
export function loadersB(layout: LayoutB, segment: Segment, storage: StorageB = 'f32'): string {
  const { b, K, suffix } = segment;
  const at = (index: string) => (storage === 'f32' ? `${b}[${index}]` : `readB${suffix}(${index})`);
  return readerB(layout, storage, segment) + loadersForLayoutB(layout, K, suffix, at);
}

function loadersForLayoutB(layout: LayoutB, K: string, suffix: string, at: (index: string) => string): string {
  const loadB4FromRows = `fn loadB4${suffix}(offsets: vec4<u32>, k: u32) -> mat4x4<f32> {
  return mat4x4<f32>(loadB1${suffix}(offsets, k), loadB1${suffix}(offsets, k + 1u), loadB1${suffix}(offsets, k + 2u), loadB1${suffix}(offsets, k + 3u));
}
`;
  switch (layout) {
    case 'rows4':
      // N % 4 == 0, so a clamped first column keeps all 4 inside the row.
      return `fn columnOffsetsB${suffix}(base: u32, col: u32) -> vec4<u32> { return vec4<u32>((base + min(col, params.N - 4u)) / 4u); }
fn loadB1${suffix}(offsets: vec4<u32>, k: u32) -> vec4<f32> { return ${at('offsets.x + k * (params.N / 4u)')}; }
${loadB4FromRows}`;
    case 'rows1':
      return `fn columnOffsetsB${suffix}(base: u32, col: u32) -> vec4<u32> {
  return base + min(vec4<u32>(col) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(params.N - 1u));
}
fn loadB1${suffix}(offsets: vec4<u32>, k: u32) -> vec4<f32> {
  let row = k * params.N;
  return vec4<f32>(${at('offsets.x + row')}, ${at('offsets.y + row')}, ${at('offsets.z + row')}, ${at('offsets.w + row')});
}
${loadB4FromRows}`;
    case 'trans4':
      // Each of the 4 columns is a row of the stored [N, K] matrix: one vec4 along k each,
      // transposed into the tile layout.
      return `fn columnOffsetsB${suffix}(base: u32, col: u32) -> vec4<u32> {
  let cols = min(vec4<u32>(col) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(params.N - 1u));
  return (base + cols * ${K}) / 4u;
}
fn loadB4${suffix}(offsets: vec4<u32>, k: u32) -> mat4x4<f32> {
  let step = k / 4u;
  return transpose(mat4x4<f32>(${at('offsets.x + step')}, ${at('offsets.y + step')}, ${at('offsets.z + step')}, ${at('offsets.w + step')}));
}
`;
    case 'trans1':
      return `fn columnOffsetsB${suffix}(base: u32, col: u32) -> vec4<u32> {
  let cols = min(vec4<u32>(col) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(params.N - 1u));
  return base + cols * ${K};
}
fn loadB1${suffix}(offsets: vec4<u32>, k: u32) -> vec4<f32> {
  return vec4<f32>(${at('offsets.x + k')}, ${at('offsets.y + k')}, ${at('offsets.z + k')}, ${at('offsets.w + k')});
}
${loadB4FromRows}`;
  }
}

/**
 * WGSL functions that replace loadA4 and loadB4 when K % 4 != 0: values at k ≥ K read as 0,
 * so the last step of 4 may run past K. Zeroing both sides keeps an Inf in A or B from
 * turning into 0 · Inf = NaN.
 */
export function maskedLoaders(layoutA: LayoutA, { K, suffix }: Segment): string {
  const valueA = rowsPerLoad(layoutA) === 4 ? 'vec4<f32>' : 'f32';
  const stepA = rowsPerLoad(layoutA) === 4 ? 'mat4x4<f32>' : 'vec4<f32>';
  const s = suffix;
  return `fn loadA1Masked${s}(offset: u32, k: u32) -> ${valueA} {
  return select(${valueA}(0.0), loadA1${s}(offset, min(k, ${K} - 1u)), k < ${K});
}
fn loadA4Masked${s}(offset: u32, k: u32) -> ${stepA} {
  return ${stepA}(loadA1Masked${s}(offset, k), loadA1Masked${s}(offset, k + 1u), loadA1Masked${s}(offset, k + 2u), loadA1Masked${s}(offset, k + 3u));
}
fn loadB1Masked${s}(offsets: vec4<u32>, k: u32) -> vec4<f32> {
  return select(vec4<f32>(0.0), loadB1${s}(offsets, min(k, ${K} - 1u)), k < ${K});
}
fn loadB4Masked${s}(offsets: vec4<u32>, k: u32) -> mat4x4<f32> {
  return mat4x4<f32>(loadB1Masked${s}(offsets, k), loadB1Masked${s}(offsets, k + 1u), loadB1Masked${s}(offsets, k + 2u), loadB1Masked${s}(offsets, k + 3u));
}
`;
}
