// Chooses and holds the current device: WebGPU when an adapter exists (Dawn in Node,
// navigator.gpu in a browser), else the CPU reference device.
import { CpuDevice } from './cpu-device.ts';
import type { Device } from './device.ts';
import { createWebGpuDevice } from './webgpu-device.ts';

export type DeviceKind = 'auto' | 'webgpu' | 'cpu';

let current: Device | null = null;
// Dawn's instance object must outlive the device, or the process crashes later in a finalizer.
let dawnInstance: unknown = null;

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

async function findGpu(): Promise<GPU | null> {
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
  // Without this flag Dawn rounds timestamp queries to 65.5 µs steps, too coarse for profiling.
  dawnInstance = dawn.create(['disable-dawn-features=timestamp_quantization']);
  return dawnInstance as GPU;
}

export interface InitDeviceOptions {
  /** Called with a one-line message when WebGPU was requested or preferred but is missing. */
  warn?: (message: string) => void;
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
  let reason = 'no WebGPU adapter was found';
  try {
    const gpu = await findGpu();
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
