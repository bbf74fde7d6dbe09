// The browser page end to end in Debian's Chromium (headless, WebGPU on SwiftShader). The test
// builds the page, serves it on 127.0.0.1 and loads the demo model and a sample X-ray through
// the page's controls. It then checks the streamed report against the CPU device in this process.
//
// Needs /usr/bin/chromium (`apt-get install chromium`) and examples/browser/model/ (written by
// `s2d export`). SwiftShader runs matmuls at about 6 GFLOP/s, so the report is cut at 20 tokens.
// Writes test/artifacts/browser.png; with S2D_UPDATE_SCREENSHOT=1 also docs/browser-screenshot.png.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { zipSync } from 'fflate';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { initDevice } from '../engine/devices.ts';
import { fromHost, noGrad, tidy } from '../engine/tensor.ts';
import { bytesSource } from '../weights/source.ts';
import { preprocessImage } from '../s2d/data/image.ts';
import { generateBeam } from '../s2d/beam.ts';
import { extractImageFeatures, generateGreedy } from '../s2d/generate.ts';
import { openInferenceModel } from '../s2d/inference-model.ts';

const CHROMIUM = '/usr/bin/chromium';
const MODEL_DIR = 'examples/browser/model';
const MAX_TOKENS = 20;
const CPU_FALLBACK_TOKENS = 3;
const BEAM_SIZE = 3;
const BEAM_TOKENS = 5;
const GENERATE_TIMEOUT_MS = 120_000;

// --enable-unsafe-webgpu exposes SwiftShader's WebGPU adapter in Debian's headless Chromium. The
// other flags keep Chromium off the network, which this machine's sandbox refuses anyway.
// NOTE: --disable-gpu is left out: Chromium 156 keeps WebGPU with it, but it is not needed, and
// whether other versions do is unverified.
const CHROMIUM_ARGS = [
  '--enable-unsafe-webgpu',
  '--no-sandbox',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

interface Sample {
  id: string;
  file: string;
}

interface LastRun {
  decoding: string;
  tokens: number[];
  text: string;
  grounding: number[];
  stepMs: number[];
}

interface Snapshot {
  device: { kind: string; vendor: string; architecture: string } | null;
  model: { label: string } | null;
  image: string | null;
  lastRun: LastRun | null;
}

function requireChromium(): void {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: install Debian's Chromium with "apt-get install chromium" (.ci/run installs it in CI)`);
  }
}

function buildPage(outDir: string): void {
  const result = spawnSync(process.execPath, ['scripts/build-web.mjs', '--out', outDir], { encoding: 'utf8', timeout: 120_000 });
  if (result.status !== 0) throw new Error(`scripts/build-web.mjs failed (exit ${result.status}):\n${result.stderr}${result.stdout}`);
}

/** Starts scripts/serve-web.mjs on a free port and returns the process with its base URL. */
async function startServer(root: string): Promise<{ server: ChildProcess; url: string }> {
  const server = spawn(process.execPath, ['scripts/serve-web.mjs', '--port', '0', '--root', root], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve-web.mjs printed no URL within 10 s; output: ${output}`)), 10_000);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      const match = /at (http:\/\/127\.0\.0\.1:\d+\/)/.exec(output);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    };
    server.stdout!.on('data', onData);
    server.stderr!.on('data', onData);
    server.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`serve-web.mjs exited with code ${code}: ${output}`));
    });
  });
  return { server, url };
}

/** Runs the same model, image and greedy decoding on the CPU device in Node, as the reference. */
async function referenceRun(imageBytes: Uint8Array, imageName: string) {
  await initDevice('cpu');
  const loaded = await openInferenceModel({
    configText: await readFile(join(MODEL_DIR, 'config.json'), 'utf8'),
    vocabText: await readFile(join(MODEL_DIR, 'vocab.json'), 'utf8'),
    weights: bytesSource(new Uint8Array(await readFile(join(MODEL_DIR, 'model.safetensors'))), 'model.safetensors'),
  });
  const { model, saved, vocab, ids } = loaded;
  const input = preprocessImage(imageBytes, imageName, { size: saved.config.vision.imageSize });
  const [features] = await extractImageFeatures(model, [input], 1);
  const width = saved.config.vision.hiddenSize;
  const featureTensor = noGrad(() => fromHost(features, [1, features.length / width, width]));
  const groundingTensor = noGrad(() => tidy(() => model.groundingMap(featureTensor)));
  const grounding = Array.from((await groundingTensor.data()) as Float32Array);
  groundingTensor.dispose();
  const [tokens] = await generateGreedy(model, featureTensor, { maxTokens: MAX_TOKENS, ids });
  const [shortTokens] = await generateGreedy(model, featureTensor, { maxTokens: CPU_FALLBACK_TOKENS, ids });
  const beam = await generateBeam(model, featureTensor, { beamSize: BEAM_SIZE, maxTokens: BEAM_TOKENS, ids });
  featureTensor.dispose();
  model.dispose();
  return { tokens, shortTokens, beamTokens: beam.tokens, grounding, text: vocab.decode(tokens) };
}

/** Collects console errors, uncaught page errors and requests that leave the local server. */
function watchPage(page: Page, baseUrl: string) {
  const errors: string[] = [];
  const externalRequests: string[] = [];
  page.on('console', (message) => {
    if (message.type() === 'error') errors.push(`console.error: ${message.text()}`);
  });
  page.on('pageerror', (error) => errors.push(`uncaught: ${error.message}`));
  page.on('request', (request) => {
    const url = request.url();
    if (!url.startsWith(baseUrl) && !url.startsWith('data:') && !url.startsWith('blob:')) externalRequests.push(url);
  });
  return { errors, externalRequests };
}

const snapshotOf = (page: Page) => page.evaluate(() => (window as unknown as { s2dPage: Snapshot }).s2dPage);

/** Loads the demo model, picks the first sample with the keyboard and generates greedily. */
async function generateOnPage(page: Page, url: string, maxTokens: number): Promise<Snapshot> {
  await page.goto(url);
  await page.waitForSelector('#device-info:not([data-state="pending"])', { timeout: 30_000 });

  await page.click('#demo-model');
  await page.waitForFunction(() => {
    const state = (window as unknown as { s2dPage: Snapshot }).s2dPage;
    return state.model !== null || document.getElementById('errors')!.textContent !== '';
  }, null, { timeout: 60_000 });
  assert.is(await page.textContent('#errors'), '', 'loading the demo model reported an error');

  await page.focus('#samples li:first-child button');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => (window as unknown as { s2dPage: Snapshot }).s2dPage.image !== null, null, { timeout: 10_000 });

  await page.selectOption('#decoding', 'greedy');
  await page.fill('#max-tokens', String(maxTokens));
  await page.focus('#generate');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#report[data-state="done"], #report[data-state="failed"]', { timeout: GENERATE_TIMEOUT_MS });
  assert.is(await page.textContent('#errors'), '', 'generating the report reported an error');
  return snapshotOf(page);
}

/** Distinct RGBA values and the alpha range of the heatmap canvas. */
function heatmapPixels(page: Page) {
  return page.evaluate(() => {
    const canvas = document.getElementById('heatmap-canvas') as HTMLCanvasElement;
    const { data } = canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height);
    const colors = new Set<number>();
    let minAlpha = 255;
    let maxAlpha = 0;
    for (let i = 0; i < data.length; i += 4) {
      colors.add(((data[i] << 24) | (data[i + 1] << 16) | (data[i + 2] << 8) | data[i + 3]) >>> 0);
      minAlpha = Math.min(minAlpha, data[i + 3]);
      maxAlpha = Math.max(maxAlpha, data[i + 3]);
    }
    return { distinct: colors.size, minAlpha, maxAlpha };
  });
}

let outDir = '';
let profileDir = '';
let server: ChildProcess | null = null;
let baseUrl = '';
let context: BrowserContext | null = null;
let reference: Awaited<ReturnType<typeof referenceRun>>;

async function cleanUp(): Promise<void> {
  await context?.close();
  context = null;
  server?.kill('SIGTERM');
  server = null;
  if (outDir) await rm(outDir, { recursive: true, force: true });
  if (profileDir) await rm(profileDir, { recursive: true, force: true });
}

// The server must not outlive the test process, whichever way it ends.
process.on('exit', () => server?.kill('SIGTERM'));

async function startUp(): Promise<void> {
  requireChromium();
  if (!existsSync(join(MODEL_DIR, 'model.safetensors'))) {
    throw new Error(`${MODEL_DIR}/model.safetensors not found: write the demo model with "node scripts/s2d.mjs export --model DIR --out ${MODEL_DIR} --f16"`);
  }
  outDir = await mkdtemp(join(tmpdir(), 's2d-web-'));
  profileDir = await mkdtemp(join(tmpdir(), 's2d-chromium-profile-'));
  buildPage(outDir);
  ({ server, url: baseUrl } = await startServer(outDir));

  const [sample] = JSON.parse(await readFile(join(outDir, 'samples', 'samples.json'), 'utf8')) as Sample[];
  reference = await referenceRun(new Uint8Array(await readFile(join(outDir, sample.file))), sample.id);

  context = await chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 900 },
    timeout: 60_000,
  });
}

// Setup runs inside the tests rather than in test.before, because uvu does not print the error
// of a failed hook. Each test then fails with the setup's message.
let setUp: Promise<void> | null = null;
function ensureStarted(): Promise<void> {
  setUp ??= startUp();
  return setUp;
}

test.after(cleanUp);

test('page report on WebGPU equals the CPU device', async () => {
  await ensureStarted();
  const page = await context!.newPage();
  const watched = watchPage(page, baseUrl);
  const started = performance.now();
  const state = await generateOnPage(page, baseUrl, MAX_TOKENS);
  const seconds = (performance.now() - started) / 1000;

  assert.is(state.device?.kind, 'webgpu', `the page fell back to the CPU device: ${await page.textContent('#device-warning')}`);
  assert.ok(state.device!.vendor.length > 0, 'the adapter vendor is shown');
  assert.match((await page.textContent('#device-info'))!, /^WebGPU adapter: /);

  const run = state.lastRun!;
  assert.equal(run.tokens, reference.tokens, `token ids webgpu=${run.tokens.join(' ')} | cpu=${reference.tokens.join(' ')}`);
  assert.is(run.text, reference.text);
  assert.is((await page.textContent('#report'))!, reference.text || '(the model produced an empty report)');
  assert.is(run.stepMs.length, Math.min(MAX_TOKENS, reference.tokens.length + 1), 'one timing per decoding step (the last may emit <eos>)');
  assert.match((await page.textContent('#timing'))!, /ms per token/);

  assert.is(run.grounding.length, reference.grounding.length);
  const worst = Math.max(...run.grounding.map((value, i) => Math.abs(value - reference.grounding[i])));
  assert.ok(worst < 1e-4, `grounding map max |webgpu − cpu| = ${worst} (tolerance 1e-4)`);

  const pixels = await heatmapPixels(page);
  assert.ok(pixels.distinct > 16, `heatmap has ${pixels.distinct} distinct pixel values; expected a gradient`);
  assert.ok(pixels.maxAlpha > pixels.minAlpha, `heatmap alpha is uniform (${pixels.minAlpha})`);

  await page.fill('#heatmap-opacity', '30');
  assert.is(await page.evaluate(() => document.getElementById('heatmap-canvas')!.style.opacity), '0.3');
  await page.fill('#heatmap-opacity', '55');
  await page.evaluate(() => (document.activeElement as HTMLElement | null)?.blur());

  await mkdir('test/artifacts', { recursive: true });
  await page.screenshot({ path: 'test/artifacts/browser.png', fullPage: true });
  if (process.env.S2D_UPDATE_SCREENSHOT === '1') {
    await mkdir('docs', { recursive: true });
    await copyFile('test/artifacts/browser.png', 'docs/browser-screenshot.png');
  }

  // Beam search on the same page and image.
  await page.selectOption('#decoding', 'beam');
  await page.fill('#beam-size', String(BEAM_SIZE));
  await page.fill('#max-tokens', String(BEAM_TOKENS));
  await page.click('#generate');
  await page.waitForSelector('#report[data-state="done"], #report[data-state="failed"]', { timeout: GENERATE_TIMEOUT_MS });
  const beamRun = (await snapshotOf(page)).lastRun!;
  assert.is(beamRun.decoding, 'beam');
  assert.equal(beamRun.tokens, reference.beamTokens, `beam token ids webgpu=${beamRun.tokens.join(' ')} | cpu=${reference.beamTokens.join(' ')}`);

  assert.equal(watched.errors, [], 'no console errors');
  assert.equal(watched.externalRequests, [], 'no requests outside the local server');
  console.log(`  webgpu (${state.device!.vendor} ${state.device!.architecture}): ${run.tokens.length} tokens, page flow ${seconds.toFixed(1)} s`);
  await page.close();
});

test('page falls back to the CPU device without navigator.gpu', async () => {
  await ensureStarted();
  const page = await context!.newPage();
  const watched = watchPage(page, baseUrl);
  // Simulates a browser without WebGPU.
  await page.addInitScript(() => {
    delete (Navigator.prototype as { gpu?: unknown }).gpu;
  });
  const state = await generateOnPage(page, baseUrl, CPU_FALLBACK_TOKENS);

  assert.is(state.device?.kind, 'cpu');
  assert.match((await page.textContent('#device-warning'))!, /navigator\.gpu is missing/);
  assert.not.ok(await page.isHidden('#device-warning'), 'the fallback warning is visible');
  assert.equal(state.lastRun!.tokens, reference.shortTokens, `token ids page cpu=${state.lastRun!.tokens.join(' ')} | node cpu=${reference.shortTokens.join(' ')}`);
  assert.equal(watched.errors, [], 'no console errors');
  await page.close();
});

test('page loads a model from a zip and from a folder', async () => {
  await ensureStarted();
  const page = await context!.newPage();
  const watched = watchPage(page, baseUrl);
  await page.goto(baseUrl);
  await page.waitForSelector('#device-info:not([data-state="pending"])', { timeout: 30_000 });
  const modelLoaded = (label: string) =>
    page.waitForFunction((expected) => {
      const state = (window as unknown as { s2dPage: Snapshot }).s2dPage;
      return state.model?.label === expected || document.getElementById('errors')!.textContent !== '';
    }, label, { timeout: 60_000 });

  // The files sit in a folder inside the archive, as zipping a model folder produces.
  const files: Record<string, Uint8Array> = {};
  for (const name of ['config.json', 'vocab.json', 'model.safetensors']) files[`demo/${name}`] = new Uint8Array(await readFile(join(MODEL_DIR, name)));
  const zipPath = join(outDir, 'demo-model.zip');
  await writeFile(zipPath, zipSync(files, { level: 0 }));
  await page.setInputFiles('#model-zip', zipPath);
  await modelLoaded('zip demo-model.zip');
  assert.is(await page.textContent('#errors'), '', 'loading the zip reported an error');

  await page.setInputFiles('#model-folder', MODEL_DIR);
  await modelLoaded('folder model');
  assert.is(await page.textContent('#errors'), '', 'loading the folder reported an error');
  assert.match((await page.textContent('#model-info'))!, /F16/);

  assert.equal(watched.errors, [], 'no console errors');
  await page.close();
});

test.run();
