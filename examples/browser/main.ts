// The browser page: picks a device (WebGPU through navigator.gpu, else the CPU device), loads
// an S2D-Align model, and writes a report for a chest X-ray with greedy or beam decoding,
// streaming the tokens and drawing SMA_v's attention over the image.
//
// `window.s2dPage` contains a snapshot of the state (device, model, last run with its token ids)
// for automated tests and the browser console.
import type { Device } from '../../engine/device.ts';
import { initDevice } from '../../engine/devices.ts';
import { fromHost, noGrad, tidy } from '../../engine/tensor.ts';
import type { WebGpuDevice } from '../../engine/webgpu-device.ts';
import { openSafetensors } from '../../weights/safetensors.ts';
import { generateBeam } from '../../s2d/beam.ts';
import { detectImageFormat, preprocessImage } from '../../s2d/data/image.ts';
import { extractImageFeatures, generateGreedy } from '../../s2d/generate.ts';
import { openInferenceModel, type InferenceModel } from '../../s2d/inference-model.ts';
import { describePeak, drawHeatmap, gridSide } from './heatmap.ts';
import { modelFromFolder, modelFromUrl, modelFromZip, type PickedModel } from './model-sources.ts';

interface Sample {
  id: string;
  file: string;
  license: string;
  sourceUrl: string;
  doi: string;
  finding: string;
  view: string;
  report: string;
}

interface ChosenImage {
  name: string;
  bytes: Uint8Array;
  sample: Sample | null;
}

interface RunRecord {
  decoding: 'greedy' | 'beam';
  beamSize: number;
  maxTokens: number;
  tokens: number[];
  text: string;
  featuresMs: number;
  stepMs: number[];
  grounding: number[];
}

/** The state snapshot exposed as `window.s2dPage`. */
interface PageSnapshot {
  device: { kind: 'webgpu' | 'cpu'; description: string; vendor: string; architecture: string; fallbackReason: string | null } | null;
  model: { label: string; bytes: number; dtypes: string[]; parameters: number } | null;
  image: string | null;
  busy: boolean;
  lastRun: RunRecord | null;
}

const $ = <T extends HTMLElement>(id: string): T => {
  const element = document.getElementById(id);
  if (!element) throw new Error(`page: element #${id} is missing from index.html`);
  return element as T;
};

const ui = {
  deviceInfo: $<HTMLParagraphElement>('device-info'),
  deviceWarning: $<HTMLParagraphElement>('device-warning'),
  demoModel: $<HTMLButtonElement>('demo-model'),
  modelFolder: $<HTMLInputElement>('model-folder'),
  modelZip: $<HTMLInputElement>('model-zip'),
  modelProgress: $<HTMLProgressElement>('model-progress'),
  modelProgressLabel: $<HTMLLabelElement>('model-progress-label'),
  modelInfo: $<HTMLDListElement>('model-info'),
  imageFile: $<HTMLInputElement>('image-file'),
  dropZone: $<HTMLDivElement>('drop-zone'),
  samples: $<HTMLUListElement>('samples'),
  samplesStatus: $<HTMLParagraphElement>('samples-status'),
  form: $<HTMLFormElement>('generate-form'),
  decoding: $<HTMLSelectElement>('decoding'),
  beamSize: $<HTMLInputElement>('beam-size'),
  maxTokens: $<HTMLInputElement>('max-tokens'),
  generate: $<HTMLButtonElement>('generate'),
  generateStatus: $<HTMLParagraphElement>('generate-status'),
  xrayCanvas: $<HTMLCanvasElement>('xray-canvas'),
  heatmapCanvas: $<HTMLCanvasElement>('heatmap-canvas'),
  opacity: $<HTMLInputElement>('heatmap-opacity'),
  opacityValue: $<HTMLOutputElement>('heatmap-opacity-value'),
  report: $<HTMLParagraphElement>('report'),
  timing: $<HTMLParagraphElement>('timing'),
  tokenIds: $<HTMLParagraphElement>('token-ids'),
  referenceBlock: $<HTMLDivElement>('reference-block'),
  reference: $<HTMLParagraphElement>('reference'),
  errors: $<HTMLDivElement>('errors'),
};

const snapshot: PageSnapshot = { device: null, model: null, image: null, busy: false, lastRun: null };
(window as unknown as { s2dPage: PageSnapshot }).s2dPage = snapshot;

let loaded: InferenceModel | null = null;
let image: ChosenImage | null = null;
let devicePromise: Promise<Device>;

function showError(context: string, error: unknown): void {
  const message = error instanceof Error ? error.message : String(error);
  console.error(`${context}: ${message}`, error);
  const line = document.createElement('p');
  line.textContent = `${context}: ${message}`;
  ui.errors.append(line);
}

function clearErrors(): void {
  ui.errors.replaceChildren();
}

function megabytes(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

function refreshControls(): void {
  const busy = snapshot.busy;
  ui.generate.disabled = busy || !loaded || !image;
  ui.demoModel.disabled = busy;
  ui.modelFolder.disabled = busy;
  ui.modelZip.disabled = busy;
  ui.imageFile.disabled = busy;
  ui.samples.querySelectorAll('button').forEach((button) => (button.disabled = busy));
  ui.beamSize.disabled = ui.decoding.value !== 'beam';
  if (busy) return;
  if (!loaded && !image) ui.generateStatus.textContent = 'Load a model and choose an X-ray first.';
  else if (!loaded) ui.generateStatus.textContent = 'Load a model first.';
  else if (!image) ui.generateStatus.textContent = 'Choose an X-ray first.';
  else ui.generateStatus.textContent = `Ready: ${image.name} with the ${snapshot.model?.label}.`;
}

// ---- Device ----------------------------------------------------------------------------

async function startDevice(): Promise<Device> {
  let fallbackReason: string | null = null;
  const device = await initDevice('auto', {
    warn: (message) => {
      // The engine's message ends with install advice for Node; the reason comes first.
      fallbackReason = /^warning: (.*?); using the CPU device/.exec(message)?.[1] ?? message;
    },
  });

  if (device.kind === 'webgpu') {
    const info = (device as WebGpuDevice).adapterInfo as (GPUAdapterInfo & { isFallbackAdapter?: boolean }) | null;
    const vendor = info?.vendor || 'unknown vendor';
    const architecture = info?.architecture || info?.device || 'unknown architecture';
    const software = info?.isFallbackAdapter ? ' (a software fallback adapter, so expect CPU speed)' : '';
    ui.deviceInfo.textContent = `WebGPU adapter: ${vendor}, ${architecture}${info?.description ? ` (${info.description})` : ''}${software}. shader-f16: ${device.caps.shaderF16 ? 'yes' : 'no'}, subgroups: ${device.caps.subgroups ? 'yes' : 'no'}.`;
    snapshot.device = { kind: 'webgpu', description: device.description, vendor, architecture, fallbackReason: null };
  } else {
    const hasGpu = 'gpu' in navigator;
    ui.deviceInfo.textContent = 'Running on the CPU device (the engine’s TypeScript reference code): it works, but much more slowly than WebGPU.';
    ui.deviceWarning.hidden = false;
    ui.deviceWarning.textContent = hasGpu
      ? `This browser has WebGPU (navigator.gpu) but gave no usable adapter: ${fallbackReason ?? 'unknown reason'}. The GPU may be blocklisted or WebGPU disabled in the browser settings.`
      : 'This browser does not expose WebGPU (navigator.gpu is missing). WebGPU needs a recent Chrome or Edge (or another browser with WebGPU enabled) and a page served from https:// or http://localhost.';
    snapshot.device = { kind: 'cpu', description: device.description, vendor: '', architecture: '', fallbackReason };
  }
  ui.deviceInfo.dataset.state = device.kind;
  return device;
}

// ---- Model -----------------------------------------------------------------------------

function setModelProgress(label: string, fraction: number | null): void {
  ui.modelProgressLabel.textContent = label;
  if (fraction === null) ui.modelProgress.removeAttribute('value');
  else ui.modelProgress.value = fraction;
}

function addFact(list: HTMLDListElement, term: string, value: string): void {
  const dt = document.createElement('dt');
  dt.textContent = term;
  const dd = document.createElement('dd');
  dd.textContent = value;
  list.append(dt, dd);
}

async function loadModel(pick: () => Promise<PickedModel>): Promise<void> {
  clearErrors();
  snapshot.busy = true;
  refreshControls();
  ui.modelInfo.hidden = true;
  ui.modelFolder.closest('section')!.setAttribute('aria-busy', 'true');
  try {
    await devicePromise;
    if (loaded) {
      loaded.model.dispose();
      loaded = null;
      snapshot.model = null;
    }
    setModelProgress('Reading the model files…', null);
    const picked = await pick();
    const header = await openSafetensors(picked.weights);
    const entries = [...header.tensors.values()];
    const dtypes = [...new Set(entries.map((entry) => entry.dtype))];
    const parameters = entries.reduce((total, entry) => total + entry.shape.reduce((p, d) => p * d, 1), 0);

    const started = performance.now();
    loaded = await openInferenceModel(picked, {
      onProgress: ({ loadedBytes, totalBytes }) => setModelProgress(`Loading weights onto the device: ${megabytes(loadedBytes)} of ${megabytes(totalBytes)}`, loadedBytes / totalBytes),
    });
    const seconds = (performance.now() - started) / 1000;
    setModelProgress(`Loaded the ${picked.label} in ${seconds.toFixed(1)} s`, 1);

    const { config, loraEnabled } = loaded.saved;
    const grid = config.vision.imageSize / config.vision.patchSize;
    const contextTokens = config.memory.queries;
    ui.maxTokens.max = String(config.decoder.maxPositions - contextTokens - 1);
    if (Number(ui.maxTokens.value) > Number(ui.maxTokens.max)) ui.maxTokens.value = ui.maxTokens.max;

    ui.modelInfo.replaceChildren();
    addFact(ui.modelInfo, 'Source', picked.label);
    addFact(ui.modelInfo, 'Weights', `${megabytes(picked.weights.size)}, ${(parameters / 1e6).toFixed(2)} M parameters (${dtypes.join(', ')}, computed in f32)`);
    addFact(ui.modelInfo, 'Vision encoder', `ViT, ${config.vision.imageSize} px input, ${config.vision.patchSize} px patches (${grid}×${grid}), ${config.vision.layers} layers, width ${config.vision.hiddenSize}`);
    addFact(ui.modelInfo, 'Memory adapter', `SMA_v with ${config.memory.queries} memory queries, ${config.memory.heads} heads`);
    addFact(ui.modelInfo, 'Decoder', `${config.decoder.layers} layers, width ${config.decoder.hiddenSize}, LoRA ${loraEnabled ? 'on' : 'off'}, ${loaded.vocab.size} words`);
    ui.modelInfo.hidden = false;
    snapshot.model = { label: picked.label, bytes: picked.weights.size, dtypes, parameters };
  } catch (error) {
    setModelProgress('Model not loaded', 0);
    showError('Loading the model failed', error);
  } finally {
    ui.modelFolder.closest('section')!.removeAttribute('aria-busy');
    snapshot.busy = false;
    refreshControls();
  }
}

// ---- Image -----------------------------------------------------------------------------

async function drawXray(bytes: Uint8Array, name: string): Promise<void> {
  const bitmap = await createImageBitmap(new Blob([bytes as BlobPart]));
  // Keep the aspect ratio, longest side 448 px. The model itself squeezes the image to a square,
  // so each heatmap cell covers the same fraction of the displayed image.
  const scale = 448 / Math.max(bitmap.width, bitmap.height);
  const width = Math.max(1, Math.round(bitmap.width * scale));
  const height = Math.max(1, Math.round(bitmap.height * scale));
  for (const canvas of [ui.xrayCanvas, ui.heatmapCanvas]) {
    canvas.width = width;
    canvas.height = height;
  }
  ui.xrayCanvas.getContext('2d')!.drawImage(bitmap, 0, 0, width, height);
  bitmap.close();
  ui.heatmapCanvas.getContext('2d')!.clearRect(0, 0, width, height);
  ui.xrayCanvas.setAttribute('aria-label', `Chest X-ray ${name}`);
  ui.heatmapCanvas.setAttribute('aria-label', 'No attention map yet: generate a report');
}

async function chooseImage(name: string, bytes: Uint8Array, sample: Sample | null): Promise<void> {
  if (snapshot.busy) return;
  clearErrors();
  try {
    if (!detectImageFormat(bytes)) throw new Error(`${name} is neither PNG nor JPEG`);
    await drawXray(bytes, name);
    image = { name, bytes, sample };
    snapshot.image = name;
    ui.samples.querySelectorAll('button').forEach((button) => button.setAttribute('aria-pressed', String(button.dataset.id === sample?.id)));
    ui.referenceBlock.hidden = !sample;
    ui.reference.textContent = sample?.report ?? '';
    ui.report.textContent = 'No report yet.';
    ui.report.dataset.state = 'empty';
    ui.timing.textContent = '';
    ui.tokenIds.textContent = '';
  } catch (error) {
    showError('Opening the image failed', error);
  }
  refreshControls();
}

async function chooseImageFile(file: File | undefined): Promise<void> {
  if (!file) return;
  await chooseImage(file.name, new Uint8Array(await file.arrayBuffer()), null);
}

function sampleAttribution(sample: Sample): HTMLParagraphElement {
  const line = document.createElement('p');
  line.className = 'attribution';
  line.append(`${sample.license}. Source: `);
  const link = document.createElement('a');
  link.href = sample.sourceUrl;
  link.textContent = new URL(sample.sourceUrl).hostname;
  link.rel = 'noopener noreferrer';
  line.append(link, sample.doi ? `, doi:${sample.doi}` : '', '. Downscaled, grayscale.');
  return line;
}

async function loadSamples(): Promise<void> {
  try {
    const response = await fetch('./samples/samples.json');
    if (!response.ok) throw new Error(`./samples/samples.json: HTTP ${response.status}`);
    const samples = (await response.json()) as Sample[];
    for (const sample of samples) {
      const item = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.dataset.id = sample.id;
      button.setAttribute('aria-pressed', 'false');
      const thumbnail = document.createElement('img');
      thumbnail.src = sample.file;
      thumbnail.alt = '';
      const caption = document.createElement('span');
      caption.textContent = `${sample.id} (${sample.finding}${sample.view ? `, ${sample.view}` : ''})`;
      button.append(thumbnail, caption);
      button.addEventListener('click', async () => {
        try {
          const bytes = await fetch(sample.file).then((r) => {
            if (!r.ok) throw new Error(`${sample.file}: HTTP ${r.status}`);
            return r.arrayBuffer();
          });
          await chooseImage(sample.id, new Uint8Array(bytes), sample);
        } catch (error) {
          showError('Opening the sample failed', error);
        }
      });
      item.append(button, sampleAttribution(sample));
      ui.samples.append(item);
    }
    ui.samplesStatus.textContent = 'Choose one to use it as the input.';
  } catch (error) {
    ui.samplesStatus.textContent = `No samples available (${(error as Error).message}).`;
  }
}

// ---- Generation ------------------------------------------------------------------------

function readInteger(input: HTMLInputElement, label: string): number {
  const value = Number(input.value);
  const min = Number(input.min);
  const max = Number(input.max);
  if (!(Number.isInteger(value) && value >= min && value <= max)) throw new Error(`${label} must be an integer from ${min} to ${max}, got "${input.value}"`);
  return value;
}

function showTiming(stepMs: number[], featuresMs: number, done: boolean): void {
  if (stepMs.length === 0) return;
  const total = stepMs.reduce((sum, ms) => sum + ms, 0);
  const later = stepMs.slice(1);
  const perToken = later.length ? later.reduce((sum, ms) => sum + ms, 0) / later.length : stepMs[0];
  ui.timing.textContent =
    `${stepMs.length} decoding steps in ${(total / 1000).toFixed(2)} s: ${perToken.toFixed(0)} ms per token after the first ` +
    `(first ${stepMs[0].toFixed(0)} ms, including shader compilation); image features ${featuresMs.toFixed(0)} ms${done ? '.' : '…'}`;
}

async function generate(): Promise<void> {
  if (!loaded || !image || snapshot.busy) return;
  clearErrors();
  const { model, saved, vocab, ids } = loaded;
  const chosen = image;
  let decoding: 'greedy' | 'beam';
  let beamSize: number;
  let maxTokens: number;
  try {
    decoding = ui.decoding.value === 'beam' ? 'beam' : 'greedy';
    beamSize = decoding === 'beam' ? readInteger(ui.beamSize, 'Beam size') : 1;
    maxTokens = readInteger(ui.maxTokens, 'Max tokens');
  } catch (error) {
    showError('Invalid option', error);
    return;
  }

  snapshot.busy = true;
  refreshControls();
  ui.generateStatus.textContent = 'Extracting image features…';
  ui.report.textContent = '';
  ui.report.dataset.state = 'running';
  // aria-busy holds back screen-reader announcements until the report is complete.
  ui.report.setAttribute('aria-busy', 'true');
  ui.timing.textContent = '';
  ui.tokenIds.textContent = '';
  try {
    const input = preprocessImage(chosen.bytes, chosen.name, { size: saved.config.vision.imageSize });
    const featuresStarted = performance.now();
    const [features] = await extractImageFeatures(model, [input], 1);
    const featuresMs = performance.now() - featuresStarted;
    const width = saved.config.vision.hiddenSize;
    const featureTensor = noGrad(() => fromHost(features, [1, features.length / width, width]));
    try {
      const groundingTensor = noGrad(() => tidy(() => model.groundingMap(featureTensor)));
      const grounding = Array.from((await groundingTensor.data()) as Float32Array);
      groundingTensor.dispose();
      drawHeatmap(ui.heatmapCanvas, grounding);
      ui.heatmapCanvas.setAttribute('aria-label', describePeak(grounding));

      ui.generateStatus.textContent = decoding === 'beam' ? `Decoding with beam size ${beamSize}…` : 'Decoding greedily…';
      const stepMs: number[] = [];
      let last = performance.now();
      const onTokens = (tokens: number[]) => {
        const now = performance.now();
        stepMs.push(now - last);
        last = now;
        ui.report.textContent = vocab.decode(tokens.filter((id) => id !== ids.pad));
        showTiming(stepMs, featuresMs, false);
      };
      let tokens: number[];
      if (decoding === 'greedy') {
        [tokens] = await generateGreedy(model, featureTensor, { maxTokens, ids, onStep: (rows) => onTokens(rows[0]) });
      } else {
        ({ tokens } = await generateBeam(model, featureTensor, { beamSize, maxTokens, ids, onStep: onTokens }));
      }

      const text = vocab.decode(tokens);
      ui.report.textContent = text || '(the model produced an empty report)';
      ui.tokenIds.textContent = tokens.join(' ') || '(none)';
      showTiming(stepMs, featuresMs, true);
      ui.generateStatus.textContent = `Done: ${tokens.length} tokens${decoding === 'beam' ? ` (beam size ${beamSize})` : ''}. The grid of the heatmap is ${gridSide(grounding.length)}×${gridSide(grounding.length)} patches.`;
      snapshot.lastRun = { decoding, beamSize, maxTokens, tokens, text, featuresMs, stepMs, grounding };
      ui.report.dataset.state = 'done';
    } finally {
      featureTensor.dispose();
    }
  } catch (error) {
    ui.report.dataset.state = 'failed';
    ui.generateStatus.textContent = 'Generation failed.';
    showError('Generating the report failed', error);
  } finally {
    ui.report.removeAttribute('aria-busy');
    snapshot.busy = false;
    refreshControls();
  }
}

// ---- Wiring ----------------------------------------------------------------------------

function wire(): void {
  ui.demoModel.addEventListener('click', () => void loadModel(() => modelFromUrl(new URL('./model/', location.href).href, (done, total) => {
    setModelProgress(`Downloading the demo model: ${megabytes(done)}${total ? ` of ${megabytes(total)}` : ''}`, total ? done / total : null);
  })));
  ui.modelFolder.addEventListener('change', () => {
    const files = ui.modelFolder.files;
    if (files && files.length) void loadModel(() => modelFromFolder(files));
  });
  ui.modelZip.addEventListener('change', () => {
    const file = ui.modelZip.files?.[0];
    if (file) void loadModel(() => modelFromZip(file));
  });

  ui.imageFile.addEventListener('change', () => void chooseImageFile(ui.imageFile.files?.[0]));
  ui.dropZone.addEventListener('click', () => ui.imageFile.click());
  ui.dropZone.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' || event.key === ' ') {
      event.preventDefault();
      ui.imageFile.click();
    }
  });
  ui.dropZone.addEventListener('dragover', (event) => {
    event.preventDefault();
    ui.dropZone.classList.add('dragging');
  });
  ui.dropZone.addEventListener('dragleave', () => ui.dropZone.classList.remove('dragging'));
  ui.dropZone.addEventListener('drop', (event) => {
    event.preventDefault();
    ui.dropZone.classList.remove('dragging');
    void chooseImageFile(event.dataTransfer?.files[0]);
  });

  ui.decoding.addEventListener('change', refreshControls);
  ui.form.addEventListener('submit', (event) => {
    event.preventDefault();
    void generate();
  });
  const applyOpacity = () => {
    ui.heatmapCanvas.style.opacity = String(Number(ui.opacity.value) / 100);
    ui.opacityValue.textContent = `${ui.opacity.value} %`;
  };
  ui.opacity.addEventListener('input', applyOpacity);
  applyOpacity();
}

devicePromise = startDevice();
wire();
refreshControls();
devicePromise.catch((error) => showError('Starting the device failed', error));
void loadSamples();
