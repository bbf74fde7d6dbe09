// Fused (flash-style) attention: softmax(scale · q·kᵀ, masked)·v without the Tq × Tk matrix.
//
// Shapes: q, out, dq, dOut [B, H, Tq, Dh]; k, v, dk, dv [B, H, Tk, Dh]; lse, delta [B, H, Tq];
// keyLengths i32 [B] (optional).
//
// Scheme: one invocation per query row (forward, dq) or per key row (dk, dv), holding its row
// and its accumulators in private arrays of Dh floats. The forward keeps a running max m and
// running sum l over blocks of KEY_BLOCK keys and rescales the accumulator once per block. It
// saves lse = m + log(l) per row, so the backward recomputes each probability as
// exp(s − lse). No subgroup operations or atomics are used, and each invocation sums in a
// fixed order, so results are deterministic and independent of the subgroup size.
//
// NOTE: rows are read as scalar f32. A vec4 variant (Dh a multiple of 4) ran the B8 H4 T128
// Dh64 forward in 40 ms instead of 66 ms on lavapipe (Mesa 25.0.7), but lavapipe took 100 s to
// compile its three Dh = 128 pipelines (scalar: about 1 s), so it was not kept.
//
// Masking: the valid keys of query i are the prefix j < n(b, i), with
// n = min(Tk, keyLengths[b], i + queryOffset + 1 when causal), clamped at 0. A row with no
// valid key gets uniform weights 1/Tk over all keys, as softmax over scores that are all the
// mask fill (−1e9) does in the unfused composition, and its masked scores get no gradient.
import { entry1d, flatIndex, grid1d, storageBinding, uniformBinding } from './common.ts';
import { WGSL_MIN_F32 } from './rows.ts';
import type { WgslProgram } from './types.ts';

const WORKGROUP = 64;

/** Keys scored before each rescale of the forward accumulator. Not tuned: no other size was measured. */
const KEY_BLOCK = 16;

/** Largest head width. Each invocation keeps up to four private arrays of Dh floats, and this bound keeps them small. */
export const MAX_HEAD_DIM = 128;

export interface AttentionShape {
  batch: number;
  heads: number;
  queryLength: number;
  keyLength: number;
  headDim: number;
}

export interface AttentionMaskParams {
  causal: boolean;
  queryOffset: number;
  scale: number;
  hasKeyLengths: boolean;
}

function attentionParams(shape: AttentionShape, mask: AttentionMaskParams, rows: number): WgslProgram['params'] {
  return [
    ['rows', 'u32', rows],
    ['heads', 'u32', shape.heads],
    ['query_length', 'u32', shape.queryLength],
    ['key_length', 'u32', shape.keyLength],
    ['causal', 'u32', mask.causal ? 1 : 0],
    ['query_offset', 'i32', mask.queryOffset],
    ['scale', 'f32', mask.scale],
  ];
}

/** Declares the storage bindings in order, then the uniform params. */
function bindings(buffers: Array<[name: string, type: string, access: 'read' | 'read_write']>, params: WgslProgram['params']): string {
  const declared = buffers.map(([name, type, access], i) => storageBinding(i, name, type, access)).join('');
  return declared + uniformBinding(buffers.length, params);
}

/** `valid_keys(b, i)`: the number n of keys query i of batch row b may attend to (keys 0..n-1). */
function validKeysFunction(hasKeyLengths: boolean): string {
  const lengthLimit = hasKeyLengths ? '\n  n = min(n, key_lengths[b]);' : '';
  return `
fn valid_keys(b: u32, i: u32) -> u32 {
  var n = i32(params.key_length);
  if (params.causal != 0u) { n = min(n, i32(i) + params.query_offset + 1); }${lengthLimit}
  return u32(max(n, 0));
}
`;
}

function keySuffix(shape: AttentionShape, mask: AttentionMaskParams): string {
  return `dh${shape.headDim}${mask.hasKeyLengths ? '_lengths' : ''}`;
}

/** Inputs q, k, v, [keyLengths] → out, lse. One invocation per query row. */
export function attentionForwardProgram(shape: AttentionShape, mask: AttentionMaskParams): WgslProgram {
  const { batch, heads, queryLength, headDim } = shape;
  const rows = batch * heads * queryLength;
  const params = attentionParams(shape, mask, rows);
  const buffers: Array<[string, string, 'read' | 'read_write']> = [
    ['q', 'f32', 'read'],
    ['k', 'f32', 'read'],
    ['v', 'f32', 'read'],
    ...(mask.hasKeyLengths ? [['key_lengths', 'i32', 'read'] as [string, string, 'read']] : []),
    ['out', 'f32', 'read_write'],
    ['lse', 'f32', 'read_write'],
  ];
  const code = `${bindings(buffers, params)}
const DH: u32 = ${headDim}u;
const KEY_BLOCK: u32 = ${KEY_BLOCK}u;
${validKeysFunction(mask.hasKeyLengths)}
${entry1d(WORKGROUP)} {
  let row = ${flatIndex(WORKGROUP)};
  if (row >= params.rows) { return; }
  let i = row % params.query_length;
  let head_row = row / params.query_length;
  let b = head_row / params.heads;
  let q_base = row * DH;
  let kv_base = head_row * params.key_length * DH;

  var q_row: array<f32, DH>;
  var acc: array<f32, DH>;
  for (var d = 0u; d < DH; d++) {
    q_row[d] = q[q_base + d];
    acc[d] = 0.0;
  }

  // A fully masked row: uniform weights over all keys (see the file header).
  let n = valid_keys(b, i);
  if (n == 0u) {
    for (var j = 0u; j < params.key_length; j++) {
      for (var d = 0u; d < DH; d++) { acc[d] += v[kv_base + j * DH + d]; }
    }
    let uniform_weight = 1.0 / f32(params.key_length);
    for (var d = 0u; d < DH; d++) { out[q_base + d] = acc[d] * uniform_weight; }
    lse[row] = -1e9 + log(f32(params.key_length));
    return;
  }

  var running_max = ${WGSL_MIN_F32};
  var running_sum = 0.0;
  var scores: array<f32, KEY_BLOCK>;
  for (var start = 0u; start < n; start += KEY_BLOCK) {
    let end = min(start + KEY_BLOCK, n);

    var block_max = ${WGSL_MIN_F32};
    for (var j = start; j < end; j++) {
      let k_base = kv_base + j * DH;
      var qk = 0.0;
      for (var d = 0u; d < DH; d++) { qk += q_row[d] * k[k_base + d]; }
      let score = qk * params.scale;
      scores[j - start] = score;
      block_max = max(block_max, score);
    }

    // Rescale what was summed under the old max once per block.
    let new_max = max(running_max, block_max);
    let correction = exp(running_max - new_max);
    running_sum *= correction;
    for (var d = 0u; d < DH; d++) { acc[d] *= correction; }

    for (var j = start; j < end; j++) {
      let p = exp(scores[j - start] - new_max);
      running_sum += p;
      let v_base = kv_base + j * DH;
      for (var d = 0u; d < DH; d++) { acc[d] += p * v[v_base + d]; }
    }
    running_max = new_max;
  }

  let inv_sum = 1.0 / running_sum;
  for (var d = 0u; d < DH; d++) { out[q_base + d] = acc[d] * inv_sum; }
  lse[row] = running_max + log(running_sum);
}`;
  return { key: `attention_forward_${keySuffix(shape, mask)}`, code, workgroups: grid1d(rows, WORKGROUP), params };
}

/**
 * Inputs q, k, v, out, dOut, lse, [keyLengths] → dq, delta. One invocation per query row:
 * delta = rowsum(dOut ∘ out), dq = scale · Σⱼ p·(dOut·vⱼ − delta)·kⱼ over the valid keys.
 */
export function attentionBackwardQueryProgram(shape: AttentionShape, mask: AttentionMaskParams): WgslProgram {
  const { batch, heads, queryLength, headDim } = shape;
  const rows = batch * heads * queryLength;
  const params = attentionParams(shape, mask, rows);
  const buffers: Array<[string, string, 'read' | 'read_write']> = [
    ['q', 'f32', 'read'],
    ['k', 'f32', 'read'],
    ['v', 'f32', 'read'],
    ['out', 'f32', 'read'],
    ['d_out', 'f32', 'read'],
    ['lse', 'f32', 'read'],
    ...(mask.hasKeyLengths ? [['key_lengths', 'i32', 'read'] as [string, string, 'read']] : []),
    ['dq', 'f32', 'read_write'],
    ['delta', 'f32', 'read_write'],
  ];
  const code = `${bindings(buffers, params)}
const DH: u32 = ${headDim}u;
${validKeysFunction(mask.hasKeyLengths)}
${entry1d(WORKGROUP)} {
  let row = ${flatIndex(WORKGROUP)};
  if (row >= params.rows) { return; }
  let i = row % params.query_length;
  let head_row = row / params.query_length;
  let b = head_row / params.heads;
  let q_base = row * DH;
  let kv_base = head_row * params.key_length * DH;

  var q_row: array<f32, DH>;
  var d_out_row: array<f32, DH>;
  var dq_row: array<f32, DH>;
  var row_delta = 0.0;
  for (var d = 0u; d < DH; d++) {
    q_row[d] = q[q_base + d];
    d_out_row[d] = d_out[q_base + d];
    dq_row[d] = 0.0;
    row_delta += d_out_row[d] * out[q_base + d];
  }
  delta[row] = row_delta;

  // Masked scores get no gradient, so only the valid keys contribute.
  let n = valid_keys(b, i);
  let row_lse = lse[row];
  for (var j = 0u; j < n; j++) {
    let k_base = kv_base + j * DH;
    var qk = 0.0;
    var dp = 0.0;
    for (var d = 0u; d < DH; d++) {
      qk += q_row[d] * k[k_base + d];
      dp += d_out_row[d] * v[k_base + d];
    }
    let p = exp(qk * params.scale - row_lse);
    let ds = p * (dp - row_delta);
    for (var d = 0u; d < DH; d++) { dq_row[d] += ds * k[k_base + d]; }
  }

  for (var d = 0u; d < DH; d++) { dq[q_base + d] = dq_row[d] * params.scale; }
}`;
  return { key: `attention_backward_query_${keySuffix(shape, mask)}`, code, workgroups: grid1d(rows, WORKGROUP), params };
}

/**
 * Inputs q, k, v, dOut, lse, delta, [keyLengths] → dk, dv. One invocation per key row j,
 * looping over every query row i: dv = Σᵢ pᵢⱼ·dOutᵢ, dk = scale · Σᵢ pᵢⱼ·(dOutᵢ·vⱼ − deltaᵢ)·qᵢ.
 */
export function attentionBackwardKeyProgram(shape: AttentionShape, mask: AttentionMaskParams): WgslProgram {
  const { batch, heads, keyLength, headDim } = shape;
  const rows = batch * heads * keyLength;
  const params = attentionParams(shape, mask, rows);
  const buffers: Array<[string, string, 'read' | 'read_write']> = [
    ['q', 'f32', 'read'],
    ['k', 'f32', 'read'],
    ['v', 'f32', 'read'],
    ['d_out', 'f32', 'read'],
    ['lse', 'f32', 'read'],
    ['delta', 'f32', 'read'],
    ...(mask.hasKeyLengths ? [['key_lengths', 'i32', 'read'] as [string, string, 'read']] : []),
    ['dk', 'f32', 'read_write'],
    ['dv', 'f32', 'read_write'],
  ];
  const code = `${bindings(buffers, params)}
const DH: u32 = ${headDim}u;
${validKeysFunction(mask.hasKeyLengths)}
${entry1d(WORKGROUP)} {
  let row = ${flatIndex(WORKGROUP)};
  if (row >= params.rows) { return; }
  let j = row % params.key_length;
  let head_row = row / params.key_length;
  let b = head_row / params.heads;
  let k_base = row * DH;

  var k_row: array<f32, DH>;
  var v_row: array<f32, DH>;
  var dk_row: array<f32, DH>;
  var dv_row: array<f32, DH>;
  for (var d = 0u; d < DH; d++) {
    k_row[d] = k[k_base + d];
    v_row[d] = v[k_base + d];
    dk_row[d] = 0.0;
    dv_row[d] = 0.0;
  }

  let uniform_weight = 1.0 / f32(params.key_length);
  for (var i = 0u; i < params.query_length; i++) {
    let query_row = head_row * params.query_length + i;
    let q_base = query_row * DH;
    let n = valid_keys(b, i);
    if (j < n) {
      var qk = 0.0;
      var dp = 0.0;
      for (var d = 0u; d < DH; d++) {
        qk += q[q_base + d] * k_row[d];
        dp += d_out[q_base + d] * v_row[d];
      }
      let p = exp(qk * params.scale - lse[query_row]);
      let ds = p * (dp - delta[query_row]);
      for (var d = 0u; d < DH; d++) {
        dv_row[d] += p * d_out[q_base + d];
        dk_row[d] += ds * q[q_base + d];
      }
    } else if (n == 0u) {
      // A fully masked query row weighs every key by 1/Tk and sends no gradient to k.
      for (var d = 0u; d < DH; d++) { dv_row[d] += uniform_weight * d_out[q_base + d]; }
    }
  }

  for (var d = 0u; d < DH; d++) {
    dk[k_base + d] = dk_row[d] * params.scale;
    dv[k_base + d] = dv_row[d];
  }
}`;
  return { key: `attention_backward_key_${keySuffix(shape, mask)}`, code, workgroups: grid1d(rows, WORKGROUP), params };
}
