// Chooses and holds the current device: WebGPU when an adapter exists (Dawn in Node,
// navigator.gpu in a browser), else the CPU reference device.
import { CpuDevice } from './cpu-device.ts';
import type { Device } from './device.ts';
import { createWebGpuDevice } from './webgpu-device.ts';

export type DeviceKind = 'auto' | 'webgpu' | 'cpu';

let current: Device | null = null;
// Dawn's instance object must outlive the device, or the process crashes later in a finalizer.
let dawnInstance: unknown = null;
let dawnBoundsChecks = true;

/** Returns the device new tensors go to: the CPU device until `initDevice` picks another. */
export function getDevice(): Device {
  if (!current) current = new CpuDevice();
  return current;
}

export function setDevice(device: Device): void {
  current = device;
}

/**
 * Dawn's GPU object that `initDevice` created in Node, so another library can use the same
 * adapter. Null in a browser and until `initDevice` has tried WebGPU in Node.
 */
export function getDawnGpu(): GPU | null {
  return dawnInstance as GPU | null;
}

/**
 * Returns whether the current device's shaders check buffer accesses. It is false only when
 * `initDevice` was asked to drop the checks and runs on Dawn in Node.
 */
export function boundsChecksEnabled(): boolean {
  return current?.kind !== 'webgpu' || !dawnInstance || dawnBoundsChecks;
}

async function findGpu(boundsChecks: boolean): Promise<GPU | null> {
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu) return nav.gpu;
  const isNode = typeof process !== 'undefined' && !!process.versions?.node;
  if (!isNode) return null;
  // A computed specifier keeps bundlers from pulling the Node-only package into browser code.
  const packageName = 'webgpu';
  const dawn = (await import(/* @vite-ignore */ packageName)) as {
    create: (flags: string[]) => GPU;
    globals: Record<string, unknown>;
  };
  Object.assign(globalThis, dawn.globals);
  if (!process.env.XDG_RUNTIME_DIR) process.env.XDG_RUNTIME_DIR = '/tmp';
  // Without timestamp_quantization off, Dawn rounds timestamp queries to 65.5 µs steps, too
  // coarse for profiling. disable_robustness drops the bounds checks that Dawn adds to every
  // buffer access in generated shaders.
  const flags = ['disable-dawn-features=timestamp_quantization'];
  if (!boundsChecks) flags.push('enable-dawn-features=disable_robustness');
  dawnInstance = dawn.create(flags);
  dawnBoundsChecks = boundsChecks;
  return dawnInstance as GPU;
}

export interface InitDeviceOptions {
  /** Called with a one-line message when WebGPU was requested or preferred but is missing. */
  warn?: (message: string) => void;
  /**
   * Whether shaders check every buffer access against the buffer's size (WebGPU's robustness
   * guarantee). True by default. False applies to Dawn in Node only, because browsers always
   * check. It removes the checks from generated shaders, which made matmul 1.2–1.6× faster on
   * lavapipe (BENCHMARKS.md). A kernel bug that indexes past a buffer then reads or corrupts
   * other memory instead of reading zeros. The engine's kernels guard their indices themselves,
   * and their tests run both ways. The environment variable S2D_BOUNDS_CHECKS=0 sets the
   * default to false.
   */
  boundsChecks?: boolean;
}

function defaultBoundsChecks(): boolean {
  const env = typeof process !== 'undefined' ? process.env?.S2D_BOUNDS_CHECKS : undefined;
  if (env === undefined || env === '' || env === '1' || env === 'true') return true;
  if (env === '0' || env === 'false') return false;
  throw new Error(`S2D_BOUNDS_CHECKS=${env} is invalid; use 0 or false to drop the shader bounds checks, 1 or true (or unset) to keep them`);
}

/**
 * Creates the device of `kind` and makes it current. `auto` tries WebGPU and falls back to
 * the CPU device with a warning; `webgpu` throws when no adapter exists.
 */
export async function initDevice(kind: DeviceKind = 'auto', options: InitDeviceOptions = {}): Promise<Device> {
  if (kind === 'cpu') {
    current = new CpuDevice();
    return current;
  }
  const boundsChecks = options.boundsChecks ?? defaultBoundsChecks();
  let reason = 'no WebGPU adapter was found';
  try {
    const gpu = await findGpu(boundsChecks);
    if (gpu) {
      const device = await createWebGpuDevice(gpu, dawnInstance);
      if (device) {
        current = device;
        return device;
      }
    } else {
      reason = 'this environment has no WebGPU implementation';
    }
  } catch (error) {
    reason = `WebGPU failed to start: ${(error as Error).message}`;
  }
  const hint =
    'on Debian 12 install mesa-vulkan-drivers from bookworm-backports (lavapipe; Mesa 22 is too old for Dawn)';
  if (kind === 'webgpu') throw new Error(`${reason}; ${hint}`);
  options.warn?.(`warning: ${reason}; using the CPU device (slow). For WebGPU without a GPU, ${hint}.`);
  current = new CpuDevice();
  return current;
}
