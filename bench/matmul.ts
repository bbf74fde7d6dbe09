// f32 matmul throughput on the WebGPU device, per kernel variant.
//
// Each timed run records `dispatches` matmuls into one submit and reads back 16 elements of
// the last output, so the wall-clock time includes submit, GPU work and the readback round
// trip. GFLOP/s = 2·M·N·K·dispatches / time. The table shows the median of RUNS runs after
// warm-up. A run during which other processes took more than 10 % of the CPUs is repeated,
// because this benchmark targets shared machines. Every result is checked once against the
// CPU reference: in full up to 512³, above that on sampled entries.
//
// Usage: npm run bench:matmul -- [--variants subgroup,blocked,naive] [--large] [--only TEXT]
//   --variants  kernels to time (default: all three, naive only up to 512³)
//   --large     adds 2048³
//   --only      times only the shapes whose label contains TEXT, such as 1024
import { cpus } from 'node:os';
import { matmulKernel, matmulShape, matmulReference } from '../engine/ops/matmul.ts';
import { initDevice } from '../engine/devices.ts';
import { defineKernel, type Kernel, type TensorSpec } from '../engine/kernel.ts';
import type { WebGpuDevice } from '../engine/webgpu-device.ts';
import { matmulNaiveProgram, matmulProgram, type MatmulShape } from '../kernels/matmul.ts';

interface BenchShape {
  label: string;
  a: number[];
  b: number[];
  transA?: boolean;
  transB?: boolean;
}

const RUNS = 7;
const MAX_ATTEMPTS = 3 * RUNS;
/** Share of the CPUs that other processes may use during a timed run before it is repeated. */
const OTHER_LOAD_LIMIT = 0.1;
/**
 * Target wall-clock length of one timed run: long enough that the readback round trip is
 * small and that the operating system's CPU counters (10 ms ticks) can measure other
 * processes' load.
 */
const RUN_TARGET_MS = 300;
const WARMUP_MAX_READS = 40;
const SAMPLED_ENTRIES = 256;
/** Largest |ours − reference| accepted; inputs are uniform in [-1, 1). */
const CHECK_TOLERANCE = 1e-3;
const FULL_CHECK_MAX_FLOPS = 2 * 512 ** 3;

type Variant = 'subgroup' | 'blocked' | 'naive';

/** Builds the engine's matmul kernel with the program of `variant` in place of the adapter's choice. */
function kernelFor(variant: Variant): Kernel<{ transA: boolean; transB: boolean }> {
  if (variant === 'subgroup') return matmulKernel;
  return defineKernel({
    ...matmulKernel,
    name: `matmul-${variant}`,
    wgsl: ([a, b], params, caps) => {
      const { shape } = matmulShape(a, b, params);
      return variant === 'naive' ? matmulNaiveProgram(shape) : matmulProgram(shape, { ...caps, subgroups: false });
    },
  });
}

function randomArray(size: number, seed: number): Float32Array {
  let state = seed >>> 0;
  const out = new Float32Array(size);
  for (let i = 0; i < size; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    out[i] = state / 2 ** 31 - 1;
  }
  return out;
}

function median(values: number[]): number {
  const sorted = [...values].sort((x, y) => x - y);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/** Largest |ours − reference| over all entries (small shapes) or sampled entries. */
function checkResult(a: Float32Array, b: Float32Array, actual: Float32Array, shape: MatmulShape): number {
  const { M, N, K, transA, transB } = shape;
  if (2 * M * N * K <= FULL_CHECK_MAX_FLOPS) {
    const expected = new Float32Array(M * N);
    matmulReference(a, b, expected, shape);
    let worst = 0;
    for (let i = 0; i < expected.length; i++) worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
    return worst;
  }
  let worst = 0;
  for (let sample = 0; sample < SAMPLED_ENTRIES; sample++) {
    const row = Math.floor((sample * 7919) % M);
    const col = Math.floor((sample * 104729) % N);
    let total = 0;
    for (let k = 0; k < K; k++) {
      const aIndex = transA ? k * M + row : row * K + k;
      const bIndex = transB ? col * K + k : k * N + col;
      total += a[aIndex] * b[bIndex];
    }
    worst = Math.max(worst, Math.abs(actual[row * N + col] - total));
  }
  return worst;
}

interface Result {
  label: string;
  program: string;
  medianMs: number;
  gflops: number;
  minGflops: number;
  maxGflops: number;
  maxDiff: number;
  /** Median share of the CPUs that other processes used during the kept runs. */
  otherLoad: number;
  discarded: number;
}

interface CpuSample {
  busyMs: number;
  ownMs: number;
  at: number;
}

/** Busy time of all CPUs and CPU time of this process (with lavapipe's threads), in ms. */
function sampleCpu(): CpuSample {
  let busyMs = 0;
  for (const cpu of cpus()) busyMs += cpu.times.user + cpu.times.nice + cpu.times.sys + cpu.times.irq;
  const own = process.cpuUsage();
  return { busyMs, ownMs: (own.user + own.system) / 1000, at: performance.now() };
}

/** Share of the machine's CPU time (0 to 1) that other processes used between two samples. */
function otherLoad(before: CpuSample, after: CpuSample): number {
  const capacityMs = (after.at - before.at) * cpus().length;
  const othersMs = after.busyMs - before.busyMs - (after.ownMs - before.ownMs);
  return Math.max(0, othersMs / capacityMs);
}

function problemOf(shapeSpec: BenchShape): { specs: TensorSpec[]; params: { transA: boolean; transB: boolean } } {
  const specs: TensorSpec[] = [
    { shape: shapeSpec.a, dtype: 'f32' },
    { shape: shapeSpec.b, dtype: 'f32' },
  ];
  return { specs, params: { transA: shapeSpec.transA ?? false, transB: shapeSpec.transB ?? false } };
}

/** Generated program's key, which names the variant, tile sizes and access patterns. */
function programKey(device: WebGpuDevice, shapeSpec: BenchShape, variant: Variant): string {
  const { specs, params } = problemOf(shapeSpec);
  return kernelFor(variant).wgsl(specs, params, device.caps).key;
}

async function benchShape(device: WebGpuDevice, shapeSpec: BenchShape, variant: Variant): Promise<Result> {
  const { specs, params } = problemOf(shapeSpec);
  const { shape } = matmulShape(specs[0], specs[1], params);
  const flops = 2 * shape.batch * shape.M * shape.N * shape.K;
  const a = randomArray(specs[0].shape.reduce((p, d) => p * d, 1), 1);
  const b = randomArray(specs[1].shape.reduce((p, d) => p * d, 1), 2);
  const kernel = kernelFor(variant);
  const storageA = device.upload(a);
  const storageB = device.upload(b);

  // Runs `dispatches` matmuls, reads `readSize` elements of the last output, returns ms.
  const timeRun = async (dispatches: number, readSize: number): Promise<{ ms: number; data: Float32Array }> => {
    const started = performance.now();
    let last = null;
    for (let i = 0; i < dispatches; i++) {
      if (last) device.release(last);
      last = device.run(kernel, [storageA, storageB], specs, params).storages[0];
    }
    const data = (await device.read(last!, 'f32', readSize)) as Float32Array;
    const ms = performance.now() - started;
    device.release(last!);
    return { ms, data };
  };

  // The first run compiles the pipeline and checks the result.
  const first = await timeRun(1, shape.M * shape.N);
  const maxDiff = checkResult(a, b, first.data, shape);

  // Warm-up. The device sleeps for most of the GPU time it expects before awaiting a
  // readback, from one throughput estimate for all kernels. It corrects that estimate by at
  // most 25 % per readback, so after a slower kernel it oversleeps for several readbacks.
  // Read until the time stops falling by more than 10 % twice in a row.
  let ms = Infinity;
  let previousMs = Infinity;
  let steadyReads = 0;
  for (let reads = 0; reads < WARMUP_MAX_READS && steadyReads < 2; reads++) {
    const readMs = (await timeRun(1, 16)).ms;
    steadyReads = readMs > 0.9 * previousMs ? steadyReads + 1 : 0;
    previousMs = readMs;
    ms = Math.min(ms, readMs);
  }
  const dispatches = Math.max(1, Math.min(1000, Math.round(RUN_TARGET_MS / ms)));
  await timeRun(dispatches, 16);

  // Timed runs. A run during which other processes used more than OTHER_LOAD_LIMIT of the
  // CPUs is discarded and repeated, up to MAX_ATTEMPTS runs in all.
  const rates: number[] = [];
  const times: number[] = [];
  const otherLoads: number[] = [];
  let discarded = 0;
  for (let attempt = 0; attempt < MAX_ATTEMPTS && rates.length < RUNS; attempt++) {
    const before = sampleCpu();
    const result = await timeRun(dispatches, 16);
    const load = otherLoad(before, sampleCpu());
    if (load > OTHER_LOAD_LIMIT && attempt < MAX_ATTEMPTS - 1) {
      discarded += 1;
      continue;
    }
    times.push(result.ms / dispatches);
    rates.push((flops * dispatches) / (result.ms * 1e6));
    otherLoads.push(load);
  }
  device.release(storageA);
  device.release(storageB);
  return {
    label: shapeSpec.label,
    program: programKey(device, shapeSpec, variant),
    medianMs: median(times),
    gflops: median(rates),
    minGflops: Math.min(...rates),
    maxGflops: Math.max(...rates),
    maxDiff,
    otherLoad: median(otherLoads),
    discarded,
  };
}

const args = process.argv.slice(2);
const variantArg = args.indexOf('--variants');
const variants = (variantArg >= 0 ? args[variantArg + 1].split(',') : ['subgroup', 'blocked', 'naive']) as Variant[];
for (const variant of variants) {
  if (!['subgroup', 'blocked', 'naive'].includes(variant)) {
    throw new Error(`bench/matmul: unknown variant "${variant}"; use subgroup, blocked or naive`);
  }
}

const shapes: BenchShape[] = [
  { label: '256³', a: [256, 256], b: [256, 256] },
  { label: '512³', a: [512, 512], b: [512, 512] },
  { label: '1024³', a: [1024, 1024], b: [1024, 1024] },
  { label: '128×768 · 768×3072', a: [128, 768], b: [768, 3072] },
  { label: '128×768 · (3072×768)ᵀ', a: [128, 768], b: [3072, 768], transB: true },
  { label: '(768×128)ᵀ · 768×3072', a: [768, 128], b: [768, 3072], transA: true },
  { label: '1×768 · 768×3072', a: [1, 768], b: [768, 3072] },
  // K, M and N not multiples of 4: scalar loads, and masked loads in the last step of k.
  { label: '1023×1023 · 1023×1023', a: [1023, 1023], b: [1023, 1023] },
];
if (args.includes('--large')) shapes.splice(3, 0, { label: '2048³', a: [2048, 2048], b: [2048, 2048] });
const onlyArg = args.indexOf('--only');
const selectedShapes = onlyArg >= 0 ? shapes.filter((shape) => shape.label.includes(args[onlyArg + 1])) : shapes;

const device = (await initDevice('webgpu')) as WebGpuDevice;
console.log(`device: ${device.description}`);
console.log(`runs: median of ${RUNS} after warm-up, each ≥ ${RUN_TARGET_MS} ms of back-to-back dispatches plus one readback\n`);

const header = ['shape', 'program', 'ms/matmul', 'GFLOP/s (median)', 'min–max', 'max |diff| vs CPU', 'other load', 'discarded'];
let failedChecks = 0;
console.log(`| ${header.join(' | ')} |`);
console.log(`|${header.map(() => '---').join('|')}|`);
for (const shape of selectedShapes) {
  const shapeFlops = 2 * shape.a.reduce((p, d) => p * d, 1) * (shape.transB ? shape.b[0] : shape.b[1]);
  const programsDone = new Set<string>();
  for (const variant of variants) {
    if (variant === 'naive' && shapeFlops > FULL_CHECK_MAX_FLOPS) continue;
    // Both variants generate the same program when M = 1: time it once.
    const program = programKey(device, shape, variant);
    if (programsDone.has(program)) continue;
    programsDone.add(program);
    const result = await benchShape(device, shape, variant);
    const row = [
      result.label,
      result.program,
      result.medianMs.toFixed(2),
      result.gflops.toFixed(1),
      `${result.minGflops.toFixed(1)}–${result.maxGflops.toFixed(1)}`,
      `${result.maxDiff.toExponential(1)}${result.maxDiff <= CHECK_TOLERANCE ? '' : ' FAILED'}`,
      `${Math.round(result.otherLoad * 100)} %`,
      String(result.discarded),
    ];
    console.log(`| ${row.join(' | ')} |`);
    if (!(result.maxDiff <= CHECK_TOLERANCE)) failedChecks += 1;
  }
}
device.destroy();
if (failedChecks > 0) {
  console.error(`bench/matmul: ${failedChecks} results differ from the CPU reference by more than ${CHECK_TOLERANCE}`);
  process.exit(1);
}
