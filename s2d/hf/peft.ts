// LoRA adapters of the LLaMA decoder in the layout of HF PEFT, so adapters move between this
// engine and PyTorch: a folder with
//   adapter_config.json        {"peft_type": "LORA", "r", "lora_alpha", "lora_dropout",
//                               "target_modules", "base_model_name_or_path", "bias": "none",
//                               "task_type": "CAUSAL_LM", ...}
//   adapter_model.safetensors  base_model.model.<module>.lora_A.weight [r, in] and
//                              base_model.model.<module>.lora_B.weight [out, r], where
//                              <module> is e.g. model.layers.0.self_attn.q_proj
// The adapted layer computes W·x + (lora_alpha / r)·B·A·x, as our LoRALinear does.
import type { LoRALinear, LoraOptions } from '../../engine/nn/layers.ts';
import { openSafetensors, readTensor, type TensorToWrite, encodeSafetensors } from '../../weights/safetensors.ts';
import { CheckpointError } from '../../weights/source.ts';
import type { LlamaDecoder } from '../models/llama.ts';
import type { CheckpointFolder } from './checkpoint.ts';

export const PEFT_CONFIG_FILE = 'adapter_config.json';
export const PEFT_WEIGHTS_FILE = 'adapter_model.safetensors';

/** The linear layers of a LLaMA block, by their HF module names; all of them carry LoRA here. */
export const LLAMA_LORA_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

/** The adapter_config.json fields this module reads and writes. */
export interface PeftLoraConfig {
  peft_type: 'LORA';
  task_type: string;
  base_model_name_or_path: string | null;
  r: number;
  lora_alpha: number;
  lora_dropout: number;
  /** Module name suffixes, or one regular expression that must match the whole module name. */
  target_modules: string[] | string;
  bias: 'none';
}

/** Lists each LoRA layer of the decoder with its HF module name, e.g. `model.layers.0.self_attn.q_proj`. */
export function namedLoraLayers(decoder: LlamaDecoder): Array<[string, LoRALinear]> {
  const out: Array<[string, LoRALinear]> = [];
  decoder.layers.items.forEach((layer, i) => {
    const { qProj, kProj, vProj, oProj } = layer.attention;
    const { gateProj, upProj, downProj } = layer.mlp;
    out.push(
      [`model.layers.${i}.self_attn.q_proj`, qProj],
      [`model.layers.${i}.self_attn.k_proj`, kProj],
      [`model.layers.${i}.self_attn.v_proj`, vProj],
      [`model.layers.${i}.self_attn.o_proj`, oProj],
      [`model.layers.${i}.mlp.gate_proj`, gateProj],
      [`model.layers.${i}.mlp.up_proj`, upProj],
      [`model.layers.${i}.mlp.down_proj`, downProj],
    );
  });
  return out;
}

/**
 * Tells whether PEFT adapts `moduleName`. A list entry matches the name itself or its last
 * dotted segments (`q_proj` matches `model.layers.0.self_attn.q_proj`). A string is a regular
 * expression that must match the whole name.
 */
export function isTargetModule(targets: string[] | string, moduleName: string): boolean {
  if (typeof targets === 'string') return new RegExp(`^(?:${targets})$`).test(moduleName);
  return targets.some((target) => moduleName === target || moduleName.endsWith(`.${target}`));
}

const isEmpty = (value: unknown) =>
  value === undefined || value === null || value === false || (Array.isArray(value) && value.length === 0) ||
  (typeof value === 'object' && value !== null && Object.keys(value).length === 0);

/** Parses adapter_config.json, rejecting PEFT options that this engine does not implement. */
export function parsePeftConfig(text: string, where = PEFT_CONFIG_FILE): PeftLoraConfig {
  let parsed: Record<string, unknown>;
  try {
    parsed = JSON.parse(text) as Record<string, unknown>;
  } catch (error) {
    throw new Error(`${where}: invalid JSON (${(error as Error).message})`);
  }
  const fail = (message: string): never => {
    throw new Error(`${where}: ${message}`);
  };
  if (parsed.peft_type !== 'LORA') fail(`"peft_type" is ${JSON.stringify(parsed.peft_type)}; only "LORA" adapters are supported`);
  if (!Number.isInteger(parsed.r) || (parsed.r as number) <= 0) fail(`"r" is ${JSON.stringify(parsed.r)}, expected a positive integer`);
  if (typeof parsed.lora_alpha !== 'number' || !(parsed.lora_alpha > 0)) fail(`"lora_alpha" is ${JSON.stringify(parsed.lora_alpha)}, expected a positive number`);
  const dropout = parsed.lora_dropout ?? 0;
  if (typeof dropout !== 'number' || dropout < 0 || dropout >= 1) fail(`"lora_dropout" is ${JSON.stringify(dropout)}, expected a number in [0, 1)`);
  const targets = parsed.target_modules;
  const validTargets = typeof targets === 'string' || (Array.isArray(targets) && targets.length > 0 && targets.every((t) => typeof t === 'string'));
  if (!validTargets) fail(`"target_modules" is ${JSON.stringify(targets)}, expected a list of module names or a regular expression`);
  if ((parsed.bias ?? 'none') !== 'none') fail(`"bias" is ${JSON.stringify(parsed.bias)}; only "none" is supported (biases are not trained)`);

  // Options that change what the adapter computes; each is rejected rather than ignored.
  const unsupported: Array<[string, string]> = [
    ['use_rslora', 'rank-stabilised scaling alpha/√r'],
    ['use_dora', 'DoRA'],
    ['fan_in_fan_out', 'transposed (Conv1D) weights'],
    ['layers_to_transform', 'adapting a subset of layers'],
    ['rank_pattern', 'per-module ranks'],
    ['alpha_pattern', 'per-module alphas'],
    ['modules_to_save', 'fully trained extra modules'],
  ];
  for (const [key, what] of unsupported) {
    if (!isEmpty(parsed[key])) fail(`"${key}" is ${JSON.stringify(parsed[key])}; ${what} is not supported`);
  }

  return {
    peft_type: 'LORA',
    task_type: typeof parsed.task_type === 'string' ? parsed.task_type : 'CAUSAL_LM',
    base_model_name_or_path: typeof parsed.base_model_name_or_path === 'string' ? parsed.base_model_name_or_path : null,
    r: parsed.r as number,
    lora_alpha: parsed.lora_alpha as number,
    lora_dropout: dropout as number,
    target_modules: targets as string[] | string,
    bias: 'none',
  };
}

/** Returns the LoRALinear settings that reproduce an adapter's scaling (build the decoder with them). */
export function loraOptionsFromPeft(config: PeftLoraConfig): LoraOptions {
  return { rank: config.r, alpha: config.lora_alpha, dropout: config.lora_dropout };
}

export interface SavePeftOptions {
  /** Written as base_model_name_or_path, e.g. "lmsys/vicuna-7b-v1.5". */
  baseModel: string | null;
  /** Module name suffixes to save (default: all seven linear layers of each block). */
  targetModules?: string[];
}

/**
 * Reads the decoder's LoRA factors back from the device and returns the two files of a PEFT
 * adapter folder: adapter_config.json (text) and adapter_model.safetensors (byte chunks).
 */
export async function encodePeftAdapter(decoder: LlamaDecoder, options: SavePeftOptions): Promise<{ config: string; weights: Uint8Array[] }> {
  const targets = options.targetModules ?? LLAMA_LORA_TARGETS;
  const unknown = targets.filter((target) => !LLAMA_LORA_TARGETS.includes(target));
  if (unknown.length) throw new Error(`encodePeftAdapter: unknown target modules ${unknown.join(', ')}; choose from ${LLAMA_LORA_TARGETS.join(', ')}`);

  const tensors: TensorToWrite[] = [];
  for (const [name, layer] of namedLoraLayers(decoder)) {
    if (!isTargetModule(targets, name)) continue;
    tensors.push({ name: `base_model.model.${name}.lora_A.weight`, dtype: 'F32', shape: layer.loraA.shape, data: (await layer.loraA.data()) as Float32Array });
    tensors.push({ name: `base_model.model.${name}.lora_B.weight`, dtype: 'F32', shape: layer.loraB.shape, data: (await layer.loraB.data()) as Float32Array });
  }
  const { rank, alpha, dropout } = decoder.lora;
  const config = {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: options.baseModel,
    r: rank,
    lora_alpha: alpha,
    lora_dropout: dropout,
    target_modules: targets,
    bias: 'none',
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layers_to_transform: null,
    layers_pattern: null,
    rank_pattern: {},
    alpha_pattern: {},
    modules_to_save: null,
    use_rslora: false,
    use_dora: false,
  };
  // PEFT writes its safetensors with {"format": "pt"} metadata.
  return { config: `${JSON.stringify(config, null, 2)}\n`, weights: encodeSafetensors(tensors, { format: 'pt' }) };
}

/**
 * Loads a PEFT LoRA adapter folder into the decoder: copies lora_A and lora_B of every target
 * module and switches LoRA on in exactly those layers (off in the others). The adapter's r and
 * lora_alpha must equal the decoder's (build it with `loraOptionsFromPeft`); lora_dropout may
 * differ, because it acts only in training.
 */
export async function loadPeftAdapter(decoder: LlamaDecoder, folder: CheckpointFolder): Promise<PeftLoraConfig> {
  const configText = await folder.readText(PEFT_CONFIG_FILE);
  if (configText === null) throw new CheckpointError(folder.name, `${PEFT_CONFIG_FILE} not found; point at a PEFT adapter folder`);
  const config = parsePeftConfig(configText, `${folder.name}/${PEFT_CONFIG_FILE}`);
  const { rank, alpha } = decoder.lora;
  if (config.r !== rank || config.lora_alpha !== alpha) {
    throw new CheckpointError(
      folder.name,
      `adapter has r=${config.r}, lora_alpha=${config.lora_alpha}, but the decoder was built with rank ${rank}, alpha ${alpha}; ` +
        'build the decoder with loraOptionsFromPeft(config) to load this adapter',
    );
  }

  const source = await folder.open(PEFT_WEIGHTS_FILE);
  try {
    const index = await openSafetensors(source);
    const targeted = namedLoraLayers(decoder).filter(([name]) => isTargetModule(config.target_modules, name));
    if (targeted.length === 0) {
      throw new CheckpointError(folder.name, `target_modules ${JSON.stringify(config.target_modules)} match none of the decoder's LoRA layers (${LLAMA_LORA_TARGETS.join(', ')})`);
    }

    const expected = new Map<string, { layer: LoRALinear; factor: 'A' | 'B' }>();
    for (const [name, layer] of targeted) {
      expected.set(`base_model.model.${name}.lora_A.weight`, { layer, factor: 'A' });
      expected.set(`base_model.model.${name}.lora_B.weight`, { layer, factor: 'B' });
    }
    const missing = [...expected.keys()].filter((key) => !index.tensors.has(key));
    const unexpected = [...index.tensors.keys()].filter((key) => !expected.has(key));
    const badShapes: string[] = [];
    for (const [key, { layer, factor }] of expected) {
      const entry = index.tensors.get(key);
      const want = factor === 'A' ? layer.loraA.shape : layer.loraB.shape;
      if (entry && (entry.shape.length !== 2 || entry.shape[0] !== want[0] || entry.shape[1] !== want[1])) {
        badShapes.push(`${key} is [${entry.shape.join(', ')}], expected [${want.join(', ')}]`);
      } else if (entry && !['F32', 'F16', 'BF16', 'F64'].includes(entry.dtype)) {
        badShapes.push(`${key} has dtype ${entry.dtype}, expected a float dtype`);
      }
    }
    if (missing.length || unexpected.length || badShapes.length) {
      const list = (names: string[]) => (names.length ? names.slice(0, 8).join(', ') + (names.length > 8 ? `, … (${names.length - 8} more)` : '') : 'none');
      throw new CheckpointError(
        source.name,
        `adapter does not match the decoder (missing: ${list(missing)}; unexpected: ${list(unexpected)}; other shapes or dtypes: ${list(badShapes)}); ` +
          'check that the adapter was trained on this base model',
      );
    }

    for (const [key, { layer, factor }] of expected) {
      const values = await readTensor(index, key);
      (factor === 'A' ? layer.loraA : layer.loraB).assign(values);
    }
    const targetedLayers = new Set(targeted.map(([, layer]) => layer));
    for (const layer of decoder.loraLayers()) layer.loraEnabled = targetedLayers.has(layer);
  } finally {
    await source.close?.();
  }
  return config;
}
