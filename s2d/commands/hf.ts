// `s2d plan` and `s2d check-hf`: the Hugging Face side of the CLI.
//   s2d plan --preset paper [--vision DIR] [--text DIR] [--llm DIR] [--weights f16|f32]
//            [--stage 1|2|3] [--max-binding SIZE] [--max-buffer SIZE] [--memory SIZE] [--adapter]
//       Prints the memory plan; exits with 1 when a tensor or the total does not fit.
//   s2d check-hf (--vision DIR | --text DIR | --llm DIR) [--device auto|webgpu|cpu]
//       Loads an HF checkpoint folder and runs one forward pass on a dummy input.
import { parseArgs } from 'node:util';
import { initDevice, type DeviceKind } from '../../engine/devices.ts';
import { fromHost, noGrad, tidy, type Tensor } from '../../engine/tensor.ts';
import { WebGpuDevice } from '../../engine/webgpu-device.ts';
import { readHfConfig } from '../hf/checkpoint.ts';
import { loadBert, parseBertConfig } from '../hf/bert.ts';
import { loadDinov2, parseDinov2Config } from '../hf/dinov2.ts';
import { loadLlama, parseLlamaConfig } from '../hf/llama.ts';
import { formatMemoryPlan, planMemory, planModelsFromPreset, WEBGPU_DEFAULT_LIMITS, type AdapterLimits, type StorageDtype } from '../hf/memory-plan.ts';
import { nodeFolder } from '../hf/node-folder.ts';
import { PAPER_PRESET, PAPER_VOCAB } from '../hf/paper.ts';
import { patchify } from '../models/vit.ts';

const PLAN_USAGE = `usage: s2d plan --preset paper [--vision DIR] [--text DIR] [--llm DIR] [--weights f16|f32] [--stage 1|2|3]
                [--max-binding SIZE] [--max-buffer SIZE] [--memory SIZE] [--adapter]
  --vision, --text, --llm  HF checkpoint folders whose config.json replaces the preset's model
  --weights     storage of the frozen weights, as "s2d train --preset paper --weights" sets it (default f16)
  --stage       PAG stage to plan for (default 3, the largest context and trainable set)
  --max-binding maxStorageBufferBindingSize, e.g. 128MiB or 2GiB (default 128MiB, the WebGPU default)
  --max-buffer  maxBufferSize (default 256MiB, the WebGPU default)
  --memory      device memory budget, e.g. 80GiB (default: none, not checked)
  --adapter     read maxStorageBufferBindingSize and maxBufferSize from this machine's WebGPU adapter`;

const CHECK_USAGE = 'usage: s2d check-hf (--vision DIR | --text DIR | --llm DIR) [--device auto|webgpu|cpu]';

const UNITS: Record<string, number> = { '': 1, b: 1, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, kb: 1e3, mb: 1e6, gb: 1e9 };

/** Parses "128MiB", "2GiB", "4e9" and the like into bytes. */
export function parseSize(text: string, option: string): number {
  const match = /^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*$/i.exec(text);
  const unit = match ? UNITS[match[2].toLowerCase()] : undefined;
  if (!match || unit === undefined) throw new Error(`${option} ${text} is invalid; give a size such as 128MiB, 2GiB or a number of bytes`);
  return Math.round(Number(match[1]) * unit);
}

export async function planCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      preset: { type: 'string', default: 'paper' },
      vision: { type: 'string' },
      text: { type: 'string' },
      llm: { type: 'string' },
      weights: { type: 'string', default: 'f16' },
      stage: { type: 'string', default: '3' },
      'max-binding': { type: 'string' },
      'max-buffer': { type: 'string' },
      memory: { type: 'string' },
      adapter: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`${PLAN_USAGE}\n`);
    return 0;
  }
  if (values.preset !== 'paper') throw new Error(`--preset ${values.preset} is not planned; only "paper" is (the tiny preset fits any adapter)\n${PLAN_USAGE}`);
  if (values.weights !== 'f16' && values.weights !== 'f32') throw new Error(`--weights ${values.weights} is invalid; use f16 or f32`);
  const stage = Number(values.stage);
  if (stage !== 1 && stage !== 2 && stage !== 3) throw new Error(`--stage ${values.stage} is invalid; use 1, 2 or 3`);

  // The preset's models, replaced by the config.json of any folder given.
  const models = planModelsFromPreset(PAPER_PRESET, PAPER_VOCAB);
  const sources = ['preset paper'];
  if (values.vision) {
    const folder = nodeFolder(values.vision);
    models.vision = { ...parseDinov2Config(await readHfConfig(folder), `${folder.name}/config.json`), positionInterpolation: 'size' };
    sources.push(`vision ${folder.name}`);
  }
  if (values.text) {
    const folder = nodeFolder(values.text);
    models.text = parseBertConfig(await readHfConfig(folder), `${folder.name}/config.json`);
    sources.push(`text ${folder.name}`);
  }
  if (values.llm) {
    const folder = nodeFolder(values.llm);
    models.decoder = parseLlamaConfig(await readHfConfig(folder), `${folder.name}/config.json`);
    sources.push(`llm ${folder.name}`);
  }

  const limits: AdapterLimits = { ...WEBGPU_DEFAULT_LIMITS };
  if (values.adapter) {
    const device = await initDevice('webgpu');
    if (device instanceof WebGpuDevice) {
      limits.maxStorageBufferBindingSize = device.device.limits.maxStorageBufferBindingSize;
      limits.maxBufferSize = device.device.limits.maxBufferSize;
      sources.push(`limits of ${device.description}`);
    }
  }
  if (values['max-binding']) limits.maxStorageBufferBindingSize = parseSize(values['max-binding'], '--max-binding');
  if (values['max-buffer']) limits.maxBufferSize = parseSize(values['max-buffer'], '--max-buffer');
  if (values.memory) limits.memoryBudget = parseSize(values.memory, '--memory');

  const plan = planMemory(models, limits, { weightDtype: values.weights as StorageDtype, stage });
  process.stdout.write(`configs: ${sources.join('; ')}\n${formatMemoryPlan(plan)}\n`);
  return plan.problems.length === 0 ? 0 : 1;
}

function deviceKind(value: string | undefined): DeviceKind {
  const kind = value ?? 'auto';
  if (kind !== 'auto' && kind !== 'webgpu' && kind !== 'cpu') throw new Error(`--device ${kind} is invalid; use auto, webgpu or cpu`);
  return kind;
}

/** Runs `forward` without recording a graph, waits for the result and returns its shape. */
async function runOnce(forward: () => Tensor): Promise<readonly number[]> {
  const out = noGrad(() => tidy(forward));
  await out.data();
  const shape = out.shape;
  out.dispose();
  return shape;
}

const shapeText = (shape: readonly number[]) => `[${shape.join(', ')}]`;

export async function checkHfCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { vision: { type: 'string' }, text: { type: 'string' }, llm: { type: 'string' }, device: { type: 'string' } },
  });
  const folderCount = [values.vision, values.text, values.llm].filter((value) => value !== undefined).length;
  if (folderCount !== 1) {
    process.stderr.write(`s2d check-hf: give exactly one of --vision, --text or --llm\n${CHECK_USAGE}\n`);
    return 2;
  }
  const device = await initDevice(deviceKind(values.device), { warn: (message) => process.stderr.write(`${message}\n`) });
  const started = performance.now();
  let summary: string;
  let shape: readonly number[];

  if (values.vision) {
    const { model, config } = await loadDinov2(nodeFolder(values.vision));
    const { imageSize: size, channels, patchSize } = config;
    // A smooth dummy image in place of a preprocessed X-ray.
    const image = new Float32Array(channels * size * size).map((_, i) => Math.sin(i / 97));
    const patchCount = (size / patchSize) ** 2;
    shape = await runOnce(() => model.forward(fromHost(patchify(image, channels, size, patchSize), [1, patchCount, channels * patchSize * patchSize])));
    summary = `Dinov2 ${config.layers} layers, width ${config.hiddenSize}, ${size} px in ${patchSize} px patches; input image [1, ${channels}, ${size}, ${size}]`;
    model.dispose();
  } else if (values.text) {
    const { model, config } = await loadBert(nodeFolder(values.text));
    const length = Math.min(8, config.maxPositions);
    const ids = new Int32Array(length).map((_, i) => (i + 1) % config.vocabSize);
    shape = await runOnce(() => model.forward(fromHost(ids, [1, length]), fromHost(new Int32Array([length]), [1])));
    summary = `BERT ${config.layers} layers, width ${config.hiddenSize}, vocabulary ${config.vocabSize}; input ids [1, ${length}]`;
    model.dispose();
  } else {
    const { model, config } = await loadLlama(nodeFolder(values.llm!));
    const length = Math.min(8, config.maxPositions);
    const ids = new Int32Array(length).map((_, i) => (i + 1) % config.vocabSize);
    shape = await runOnce(() => model.logits(model.forwardHidden(model.embed(fromHost(ids, [1, length])))));
    const kvHeads = config.kvHeads ?? config.heads;
    summary = `LLaMA ${config.layers} layers, width ${config.hiddenSize}, ${config.heads} heads (${kvHeads} key/value), vocabulary ${config.vocabSize}; input ids [1, ${length}]`;
    model.dispose();
  }

  const seconds = (performance.now() - started) / 1000;
  process.stdout.write(`${summary}\noutput shape ${shapeText(shape)} on ${device.description} (${seconds.toFixed(1)} s including loading)\n`);
  return 0;
}
