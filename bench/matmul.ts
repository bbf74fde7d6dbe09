// f32 matmul throughput on the WebGPU device, per kernel variant, next to peer libraries.
//
// Each timed run records `dispatches` matmuls into one submit and reads back 16 elements of
// the last output, so the wall-clock time includes submit, GPU work and the readback round
// trip. GFLOP/s = 2·M·N·K·dispatches / time. The table shows the median of RUNS runs after
// warm-up. A run during which other processes took more than 10 % of the CPUs is repeated,
// because this benchmark targets shared machines. Every result is checked once against the
// CPU reference: in full up to 512³, above that on sampled entries.
//
// After our kernels, the same method times TensorFlow.js (npm @tensorflow/tfjs-core with
// its webgpu and wasm backends) on the shapes marked `peers`: tf.matMul back to back, then
// 16 elements read with `data()`. The webgpu backend gets its own GPUDevice from the Dawn
// instance that our engine created, so both run on the same adapter. The wasm backend loads
// its .wasm files from node_modules and runs one thread, because tfjs 4.22 turns wasm
// threads off in Node.
//
// Usage: npm run bench:matmul -- [--variants subgroup,blocked,naive] [--large] [--only TEXT] [--no-peers]
//                                [--no-bounds-checks] [--tune] [--tuning FILE] [--f16-b]
//   --variants  kernels to time (default: all three, naive only up to 512³)
//   --large     adds 2048³ and 512×4096 · 4096×4096
//   --only      times only the shapes whose label contains TEXT, such as 1024
//   --no-peers  skips the TensorFlow.js backends
//   --no-bounds-checks  runs our kernels without Dawn's buffer bounds checks (see
//               InitDeviceOptions.boundsChecks); the peers share the instance, so theirs go too
//   --tune      times the subgroup kernel's tile sizes for each shape first (engine/autotune.ts)
//               and uses the fastest; the program column then shows the tuned tile
//   --tuning FILE  loads tuned tiles from FILE when it was written on this adapter, and with
//               --tune writes the new table there
//   --f16-b     also times the adapter's kernel with B stored as f16: read directly by the
//               kernel, and cast to a temporary f32 copy before each matmul (the cast is
//               part of the time). Results are checked against B rounded to f16.
import { cpus, freemem } from 'node:os';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { pathToFileURL } from 'node:url';
import { matmulKernel, matmulShape, matmulReference } from '../engine/ops/matmul.ts';
import { castKernel } from '../engine/ops/cast.ts';
import { floatArrayToHalf, halfArrayToFloat } from '../engine/dtype.ts';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { autotuneMatmul, exportMatmulTuning, importMatmulTuning } from '../engine/autotune.ts';
import { boundsChecksEnabled, getDawnGpu, initDevice } from '../engine/devices.ts';
import { defineKernel, type Kernel, type TensorSpec } from '../engine/kernel.ts';
import { sizeClassOf, type WebGpuDevice } from '../engine/webgpu-device.ts';
import { matmulNaiveProgram, matmulProgram, type MatmulShape } from '../kernels/matmul.ts';

interface BenchShape {
  label: string;
  a: number[];
  b: number[];
  transA?: boolean;
  transB?: boolean;
  /** Also timed with the peer libraries. */
  peers?: boolean;
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
/**
 * Estimated copies of A, B and C that a shape needs in host memory at once: the JavaScript
 * inputs and the full readback, the WebGPU buffers and staging buffer (lavapipe allocates
 * them in host memory) and the wasm heap. A shape that needs more than the free memory is
 * skipped.
 */
const HOST_COPIES_ESTIMATE = 8;

type Variant = 'subgroup' | 'blocked' | 'naive';
/** Storage of B as the kernel receives it: f32, f16 read by the kernel, or f16 cast to f32 before each matmul. */
type StorageB = 'f32' | 'f16' | 'f16-cast';

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

/** Timed run of `dispatches` matmuls back to back and a readback of the first `readSize` elements of the last output. */
type TimeRun = (dispatches: number, readSize: number) => Promise<{ ms: number; data: Float32Array }>;

/** Checks the first run of `timeRun` against the CPU reference, warms it up and times it. */
async function measure(
  shape: MatmulShape,
  a: Float32Array,
  b: Float32Array,
  timeRun: TimeRun,
): Promise<Omit<Result, 'label' | 'program'>> {
  const flops = 2 * shape.batch * shape.M * shape.N * shape.K;

  // The first run compiles the pipeline and checks the result.
  const first = await timeRun(1, shape.M * shape.N);
  const maxDiff = checkResult(a, b, first.data, shape);

  // Warm-up. Our device sleeps for most of the GPU time it expects before awaiting a
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
  return {
    medianMs: median(times),
    gflops: median(rates),
    minGflops: Math.min(...rates),
    maxGflops: Math.max(...rates),
    maxDiff,
    otherLoad: median(otherLoads),
    discarded,
  };
}

/** Returns seeded random inputs for `specs`, the same for every implementation. */
function inputsOf(specs: TensorSpec[]): { a: Float32Array; b: Float32Array } {
  return {
    a: randomArray(specs[0].shape.reduce((p, d) => p * d, 1), 1),
    b: randomArray(specs[1].shape.reduce((p, d) => p * d, 1), 2),
  };
}

async function benchShape(device: WebGpuDevice, shapeSpec: BenchShape, variant: Variant, storage: StorageB = 'f32'): Promise<Result> {
  const { specs, params } = problemOf(shapeSpec);
  const { shape } = matmulShape(specs[0], specs[1], params);
  const inputs = inputsOf(specs);
  const { a } = inputs;
  const kernel = kernelFor(variant);
  const storageA = device.upload(a);

  // An f16 B contains the f16 rounding of the f32 inputs, and the check uses the rounded values.
  const bHalf = storage === 'f32' ? null : floatArrayToHalf(inputs.b);
  const b = bHalf ? halfArrayToFloat(bHalf) : inputs.b;
  const storageB = device.upload(bHalf ?? b);
  const specB16: TensorSpec = { shape: specs[1].shape, dtype: 'f16' };
  const kernelSpecs = storage === 'f16' ? [specs[0], specB16] : specs;

  /** Records one matmul (after the cast of B with 'f16-cast') and returns its output. */
  const recordMatmul = () => {
    if (storage !== 'f16-cast') return device.run(kernel, [storageA, storageB], kernelSpecs, params).storages[0];
    const b32 = device.run(castKernel, [storageB], [specB16], { to: 'f32' }).storages[0];
    const out = device.run(kernel, [storageA, b32], specs, params).storages[0];
    device.release(b32);
    return out;
  };

  const timeRun: TimeRun = async (dispatches, readSize) => {
    const started = performance.now();
    let last = null;
    for (let i = 0; i < dispatches; i++) {
      if (last) device.release(last);
      last = recordMatmul();
    }
    const data = (await device.read(last!, 'f32', readSize)) as Float32Array;
    const ms = performance.now() - started;
    device.release(last!);
    return { ms, data };
  };

  const timing = await measure(shape, a, b, timeRun);
  device.release(storageA);
  device.release(storageB);
  const program = storage === 'f32' ? programKey(device, shapeSpec, variant) : kernel.wgsl(kernelSpecs, params, device.caps).key;
  return { label: shapeSpec.label, program: storage === 'f16-cast' ? `cast + ${program}` : program, ...timing };
}

/**
 * Returns the reason `shapeSpec` cannot run here, or null when it fits. It does not fit when
 * an operand exceeds the adapter's maxStorageBufferBindingSize (tfjs-webgpu requests the same
 * limit) or when the estimated host memory exceeds the free memory.
 */
function memoryShortfall(device: WebGpuDevice, shapeSpec: BenchShape): string | null {
  const { specs, params } = problemOf(shapeSpec);
  const { out } = matmulShape(specs[0], specs[1], params);
  const byteSizes = [specs[0].shape, specs[1].shape, out].map((dims) => 4 * dims.reduce((p, d) => p * d, 1));
  const maxBinding = device.device.limits.maxStorageBufferBindingSize;
  const largest = Math.max(...byteSizes);
  if (sizeClassOf(largest) > maxBinding) {
    return `an operand of ${mebibytes(largest)} exceeds the adapter's maxStorageBufferBindingSize (${mebibytes(maxBinding)})`;
  }
  const neededBytes = HOST_COPIES_ESTIMATE * byteSizes.reduce((sum, size) => sum + size, 0);
  if (neededBytes > freemem()) {
    return `it needs about ${mebibytes(neededBytes)} of host memory (an estimate), but ${mebibytes(freemem())} is free`;
  }
  return null;
}

function mebibytes(bytes: number): string {
  return `${Math.round(bytes / 2 ** 20)} MiB`;
}

// The parts of the TensorFlow.js API that this benchmark uses, typed here because the
// declarations of @tensorflow/tfjs-core 4.22 load its own @webgpu/types 0.1.38, which
// conflicts with the newer @webgpu/types that the engine compiles against.
interface TfTensor {
  dispose(): void;
  data(): Promise<Float32Array | Int32Array | Uint8Array>;
}
interface Tfjs {
  version_core: string;
  tensor(values: Float32Array, shape: number[]): TfTensor;
  matMul(a: TfTensor, b: TfTensor, transposeA: boolean, transposeB: boolean): TfTensor;
  reshape(x: TfTensor, shape: number[]): TfTensor;
  slice(x: TfTensor, begin: number, size: number): TfTensor;
  tidy<T extends TfTensor>(fn: () => T): T;
  setBackend(name: string): Promise<boolean>;
  backend(): unknown;
  env(): { getAsync(flag: string): Promise<unknown> };
}
interface TfjsWasm {
  setWasmPaths(prefix: string): void;
  getThreadsCount(): number;
}

/** Imports a module without type-checking against its declarations (see `Tfjs`). */
async function importUntyped<T>(specifier: string): Promise<T> {
  return (await import(specifier)) as T;
}

/** A TensorFlow.js backend timed next to our kernels. */
interface Peer {
  /** Library and backend, as printed in the tables. */
  name: string;
  /** Backend name for `tf.setBackend`. */
  backend: 'webgpu' | 'wasm';
  /** Package, version and setup (adapter or threads), as printed before the tables. */
  description: string;
}

const require = createRequire(import.meta.url);

function packageVersion(name: string): string {
  return (require(`${name}/package.json`) as { version: string }).version;
}

/** Sets `navigator.gpu`, where tfjs-webgpu looks for WebGPU, to Dawn's GPU object. Node 20 has no `navigator`, so it is created. */
function exposeNavigatorGpu(gpu: GPU): void {
  const global = globalThis as { navigator?: { gpu?: GPU } };
  if (!global.navigator) global.navigator = { gpu };
  else if (!global.navigator.gpu) Object.defineProperty(global.navigator, 'gpu', { value: gpu, configurable: true });
}

/** Loads tfjs-core and starts its webgpu and wasm backends. A backend that fails to start is left out with a note. */
async function loadPeers(notes: string[]): Promise<{ tf: Tfjs; peers: Peer[] }> {
  const tf = await importUntyped<Tfjs>('@tensorflow/tfjs-core');
  const peers: Peer[] = [];

  const gpu = getDawnGpu();
  if (gpu) {
    exposeNavigatorGpu(gpu);
    // The import registers the backend only when navigator.gpu exists. Its factory requests
    // a high-performance adapter from navigator.gpu and creates a GPUDevice of its own.
    await importUntyped('@tensorflow/tfjs-backend-webgpu');
    if (await tf.setBackend('webgpu')) {
      const backend = tf.backend() as unknown as { adapterInfo?: { vendor?: string; architecture?: string } };
      const adapter = `${backend.adapterInfo?.vendor ?? 'unknown vendor'} ${backend.adapterInfo?.architecture ?? 'unknown adapter'}`;
      peers.push({
        name: 'tfjs-webgpu',
        backend: 'webgpu',
        description: `@tensorflow/tfjs-backend-webgpu ${packageVersion('@tensorflow/tfjs-backend-webgpu')}, adapter ${adapter}, its own GPUDevice from the engine's Dawn instance`,
      });
    } else {
      notes.push('tfjs-webgpu: skipped, because the backend failed to start (tfjs logged the error above)');
    }
  } else {
    notes.push('tfjs-webgpu: skipped, because the engine created no Dawn instance (not running in Node)');
  }

  const wasm = await importUntyped<TfjsWasm>('@tensorflow/tfjs-backend-wasm');
  // In Node the wasm backend reads a file:// path with fs, so nothing is downloaded.
  const wasmFolder = dirname(require.resolve('@tensorflow/tfjs-backend-wasm'));
  wasm.setWasmPaths(`${pathToFileURL(wasmFolder).href}/`);
  if (await tf.setBackend('wasm')) {
    const simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
    const threads = wasm.getThreadsCount();
    peers.push({
      name: 'tfjs-wasm',
      backend: 'wasm',
      description:
        `@tensorflow/tfjs-backend-wasm ${packageVersion('@tensorflow/tfjs-backend-wasm')}, ` +
        `${simd ? 'SIMD' : 'non-SIMD'} build, ${threads} ${threads === 1 ? 'thread' : 'threads'}`,
    });
  } else {
    notes.push('tfjs-wasm: skipped, because the backend failed to start (tfjs logged the error above)');
  }
  return { tf, peers };
}

/** Times tf.matMul on the current tfjs backend, with the same inputs and method as our kernels. */
async function benchPeerShape(tf: Tfjs, peer: Peer, shapeSpec: BenchShape): Promise<Result> {
  const { specs, params } = problemOf(shapeSpec);
  const { shape } = matmulShape(specs[0], specs[1], params);
  const { a, b } = inputsOf(specs);
  const tensorA = tf.tensor(a, [...specs[0].shape]);
  const tensorB = tf.tensor(b, [...specs[1].shape]);

  const timeRun: TimeRun = async (dispatches, readSize) => {
    const started = performance.now();
    let last: TfTensor | null = null;
    for (let i = 0; i < dispatches; i++) {
      last?.dispose();
      last = tf.matMul(tensorA, tensorB, params.transA, params.transB);
    }
    const output = last!;
    const head = tf.tidy(() => tf.slice(tf.reshape(output, [-1]), 0, readSize));
    const data = (await head.data()) as Float32Array;
    const ms = performance.now() - started;
    head.dispose();
    output.dispose();
    return { ms, data };
  };

  try {
    const timing = await measure(shape, a, b, timeRun);
    return { label: shapeSpec.label, program: peer.name, ...timing };
  } finally {
    tensorA.dispose();
    tensorB.dispose();
  }
}

function formatRow(result: Result): string {
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
  return `| ${row.join(' | ')} |`;
}

function printHeader(columns: string[]): void {
  console.log(`| ${columns.join(' | ')} |`);
  console.log(`|${columns.map(() => '---').join('|')}|`);
}

const args = process.argv.slice(2);
const FLAGS = ['--large', '--no-peers', '--no-bounds-checks', '--tune', '--f16-b'];
const WITH_VALUE = ['--variants', '--only', '--tuning'];
for (let i = 0; i < args.length; i++) {
  if (WITH_VALUE.includes(args[i]) && i + 1 < args.length) i += 1;
  else if (!FLAGS.includes(args[i])) {
    console.error(`bench/matmul: unknown or incomplete option "${args[i]}"; options: ${[...FLAGS, ...WITH_VALUE.map((o) => `${o} VALUE`)].join(', ')}`);
    process.exit(2);
  }
}
const variantArg = args.indexOf('--variants');
const variants = (variantArg >= 0 ? args[variantArg + 1].split(',') : ['subgroup', 'blocked', 'naive']) as Variant[];
for (const variant of variants) {
  if (!['subgroup', 'blocked', 'naive'].includes(variant)) {
    throw new Error(`bench/matmul: unknown variant "${variant}"; use subgroup, blocked or naive`);
  }
}
const runPeers = !args.includes('--no-peers');

const shapes: BenchShape[] = [
  { label: '256³', a: [256, 256], b: [256, 256], peers: true },
  { label: '512³', a: [512, 512], b: [512, 512], peers: true },
  { label: '1024³', a: [1024, 1024], b: [1024, 1024], peers: true },
  { label: '128×768 · 768×3072', a: [128, 768], b: [768, 3072], peers: true },
  { label: '128×768 · (3072×768)ᵀ', a: [128, 768], b: [3072, 768], transB: true },
  { label: '(768×128)ᵀ · 768×3072', a: [768, 128], b: [768, 3072], transA: true },
  { label: '1×768 · 768×3072', a: [1, 768], b: [768, 3072] },
  // K, M and N not multiples of 4: scalar loads, and masked loads in the last step of k.
  { label: '1023×1023 · 1023×1023', a: [1023, 1023], b: [1023, 1023] },
];
if (args.includes('--large')) {
  shapes.splice(
    3,
    0,
    { label: '2048³', a: [2048, 2048], b: [2048, 2048], peers: true },
    { label: '512×4096 · 4096×4096', a: [512, 4096], b: [4096, 4096], peers: true },
  );
}
const onlyArg = args.indexOf('--only');
const selectedShapes = onlyArg >= 0 ? shapes.filter((shape) => shape.label.includes(args[onlyArg + 1])) : shapes;
if (selectedShapes.length === 0) {
  console.error(`bench/matmul: --only ${args[onlyArg + 1]} matches no shape; shapes: ${shapes.map((shape) => shape.label).join('; ')} (2048³ and 512×4096 · 4096×4096 need --large)`);
  process.exit(2);
}

const device = (await initDevice('webgpu', { boundsChecks: args.includes('--no-bounds-checks') ? false : undefined })) as WebGpuDevice;
console.log(`device: ${device.description}; shader bounds checks ${boundsChecksEnabled() ? 'on' : 'off'}`);
console.log(`runs: median of ${RUNS} after warm-up, each ≥ ${RUN_TARGET_MS} ms of back-to-back dispatches plus one readback\n`);

const tuningArg = args.indexOf('--tuning');
const tuningFile = tuningArg >= 0 ? args[tuningArg + 1] : null;
if (tuningFile) {
  let saved = null;
  try {
    saved = JSON.parse(readFileSync(tuningFile, 'utf8'));
  } catch {
    console.log(`tuning: ${tuningFile} not read (missing or not JSON); starting from the defaults`);
  }
  if (saved) console.log(`tuning: ${importMatmulTuning(device, saved) ? 'loaded' : 'ignored (measured on another adapter)'} ${tuningFile}`);
}

const notes: string[] = [];
const skipReasons = new Map<string, string>();
for (const shape of selectedShapes) {
  const reason = memoryShortfall(device, shape);
  if (reason) {
    skipReasons.set(shape.label, reason);
    notes.push(`${shape.label}: skipped, because ${reason}`);
  }
}

if (args.includes('--tune')) {
  const tunable = selectedShapes.filter((shape) => !skipReasons.has(shape.label) && shape.a.length === 2);
  console.log(`tuning ${tunable.length} shapes (interleaved rounds; a tile must beat the default by 5 %):`);
  await autotuneMatmul(
    device,
    tunable.map((shape) => matmulShape(...problemOf(shape).specs as [TensorSpec, TensorSpec], problemOf(shape).params).shape),
    { log: (line) => console.log(`  ${line}`) },
  );
  if (tuningFile) {
    writeFileSync(`${tuningFile}.tmp`, `${JSON.stringify(exportMatmulTuning(device), null, 2)}\n`);
    renameSync(`${tuningFile}.tmp`, tuningFile);
    console.log(`tuning: wrote ${tuningFile}`);
  }
  console.log('');
}

const header = ['shape', 'program', 'ms/matmul', 'GFLOP/s (median)', 'min–max', 'max |diff| vs CPU', 'other load', 'discarded'];
let failedChecks = 0;
/** GFLOP/s of the engine's default matmul kernel (variant `subgroup`), per shape label. */
const oursGflops = new Map<string, number>();
printHeader(header);
for (const shape of selectedShapes) {
  if (skipReasons.has(shape.label)) continue;
  const shapeFlops = 2 * shape.a.reduce((p, d) => p * d, 1) * (shape.transB ? shape.b[0] : shape.b[1]);
  const programsDone = new Set<string>();
  for (const variant of variants) {
    if (variant === 'naive' && shapeFlops > FULL_CHECK_MAX_FLOPS) continue;
    // Both variants generate the same program when M = 1: time it once.
    const program = programKey(device, shape, variant);
    if (programsDone.has(program)) continue;
    programsDone.add(program);
    const result = await benchShape(device, shape, variant);
    console.log(formatRow(result));
    if (variant === 'subgroup') oursGflops.set(shape.label, result.gflops);
    if (!(result.maxDiff <= CHECK_TOLERANCE)) failedChecks += 1;
  }
  if (args.includes('--f16-b')) {
    for (const storage of ['f16', 'f16-cast'] as const) {
      const result = await benchShape(device, shape, 'subgroup', storage);
      console.log(formatRow(result));
      if (!(result.maxDiff <= CHECK_TOLERANCE)) failedChecks += 1;
    }
  }
}
// Frees our buffers before the peers run. Dawn's instance stays alive in engine/devices.ts.
device.destroy();

const peerShapes = selectedShapes.filter((shape) => shape.peers && !skipReasons.has(shape.label));
if (runPeers && peerShapes.length > 0) {
  const { tf, peers } = await loadPeers(notes);
  console.log(`\npeers: @tensorflow/tfjs-core ${tf.version_core}`);
  for (const peer of peers) console.log(`  ${peer.name}: ${peer.description}`);
  console.log('');

  /** GFLOP/s per peer name, per shape label. */
  const peerGflops = new Map<string, Map<string, number>>();
  printHeader(header.map((column) => (column === 'program' ? 'library' : column)));
  for (const peer of peers) {
    await tf.setBackend(peer.backend);
    const rates = new Map<string, number>();
    peerGflops.set(peer.name, rates);
    for (const shape of peerShapes) {
      try {
        const result = await benchPeerShape(tf, peer, shape);
        console.log(formatRow(result));
        rates.set(shape.label, result.gflops);
        if (!(result.maxDiff <= CHECK_TOLERANCE)) failedChecks += 1;
      } catch (error) {
        // A failing peer must not hide our results or the other peers' results.
        notes.push(`${peer.name} failed on ${shape.label}: ${(error as Error).message}`);
      }
    }
  }

  // One table side by side. "ours" is the engine's default matmul kernel on this adapter.
  console.log('');
  const columns = ['shape', 'ours GFLOP/s'];
  for (const peer of peers) columns.push(`${peer.name} GFLOP/s`);
  for (const peer of peers) columns.push(`ours / ${peer.name}`);
  printHeader(columns);
  for (const shape of peerShapes) {
    const ours = oursGflops.get(shape.label);
    const row = [shape.label, ours === undefined ? '—' : ours.toFixed(1)];
    for (const peer of peers) row.push(peerGflops.get(peer.name)?.get(shape.label)?.toFixed(1) ?? '—');
    for (const peer of peers) {
      const theirs = peerGflops.get(peer.name)?.get(shape.label);
      row.push(ours === undefined || theirs === undefined ? '—' : `${(ours / theirs).toFixed(2)}×`);
    }
    console.log(`| ${row.join(' | ')} |`);
  }
}

if (notes.length > 0) console.log('');
for (const note of notes) console.log(`note: ${note}`);
if (failedChecks > 0) {
  console.error(`bench/matmul: ${failedChecks} results differ from the CPU reference by more than ${CHECK_TOLERANCE}`);
  process.exit(1);
}
