// The three ways the page gets a model's files (config.json, model.safetensors, vocab.json):
// a folder picked with <input webkitdirectory>, a .zip of the three files, or the demo model
// served next to the page at ./model/.
import { unzipSync } from 'fflate';
import { blobSource, bytesSource, type ByteSource } from '../../weights/source.ts';
import type { ModelFiles } from '../../s2d/inference-model.ts';

export const CONFIG_NAME = 'config.json';
export const WEIGHTS_NAME = 'model.safetensors';
export const VOCAB_NAME = 'vocab.json';
const REQUIRED = [CONFIG_NAME, WEIGHTS_NAME, VOCAB_NAME];

/** Model files plus a label for the page ("demo model", the folder or zip name). */
export interface PickedModel extends ModelFiles {
  label: string;
}

/** Bytes done and expected during a download; total is 0 when the server sent no length. */
export type DownloadProgress = (loaded: number, total: number) => void;

function baseName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

/**
 * Picks, for each required name, the entry nearest the top of the tree. Two candidates at the
 * same depth are ambiguous, and a missing one is an error naming what was found.
 */
function pickEntries<T>(entries: Array<{ path: string; value: T }>, container: string): Map<string, T> {
  const picked = new Map<string, T>();
  const missing: string[] = [];
  for (const name of REQUIRED) {
    const matches = entries.filter((entry) => baseName(entry.path) === name && !entry.path.startsWith('__MACOSX/'));
    if (matches.length === 0) {
      missing.push(name);
      continue;
    }
    const depth = (path: string) => path.split('/').length;
    matches.sort((a, b) => depth(a.path) - depth(b.path));
    if (matches.length > 1 && depth(matches[0].path) === depth(matches[1].path)) {
      throw new Error(`${container}: ${name} occurs more than once (${matches.map((m) => m.path).join(', ')}); keep one model per folder`);
    }
    picked.set(name, matches[0].value);
  }
  if (missing.length) {
    const found = entries.slice(0, 6).map((entry) => entry.path).join(', ') || 'no files';
    throw new Error(`${container}: ${missing.join(', ')} not found (found: ${found}); a model needs ${REQUIRED.join(', ')}, as "s2d export" writes them`);
  }
  return picked;
}

/** Model files from a folder picked with <input webkitdirectory>; the weights are read lazily. */
export async function modelFromFolder(files: FileList): Promise<PickedModel> {
  const entries = Array.from(files, (file) => ({ path: file.webkitRelativePath || file.name, value: file }));
  const folder = entries[0]?.path.split('/')[0] ?? 'folder';
  const picked = pickEntries(entries, `folder ${folder}`);
  const weightsFile = picked.get(WEIGHTS_NAME)!;
  return {
    label: `folder ${folder}`,
    configText: await picked.get(CONFIG_NAME)!.text(),
    vocabText: await picked.get(VOCAB_NAME)!.text(),
    weights: blobSource(weightsFile, `${folder}/${WEIGHTS_NAME}`),
    configName: `${folder}/${CONFIG_NAME}`,
    vocabName: `${folder}/${VOCAB_NAME}`,
  };
}

/** Model files from a .zip holding the three files (at the top level or in one folder). */
export async function modelFromZip(file: File): Promise<PickedModel> {
  const bytes = new Uint8Array(await file.arrayBuffer());
  let unzipped: Record<string, Uint8Array>;
  try {
    unzipped = unzipSync(bytes, { filter: (entry) => REQUIRED.includes(baseName(entry.name)) });
  } catch (error) {
    throw new Error(`${file.name}: not a readable zip archive (${(error as Error).message})`);
  }
  const picked = pickEntries(Object.entries(unzipped).map(([path, value]) => ({ path, value })), file.name);
  const text = new TextDecoder();
  return {
    label: `zip ${file.name}`,
    configText: text.decode(picked.get(CONFIG_NAME)!),
    vocabText: text.decode(picked.get(VOCAB_NAME)!),
    weights: bytesSource(picked.get(WEIGHTS_NAME)!, `${file.name}/${WEIGHTS_NAME}`),
    configName: `${file.name}/${CONFIG_NAME}`,
    vocabName: `${file.name}/${VOCAB_NAME}`,
  };
}

/** Downloads `url` whole, reporting progress per received chunk. */
async function download(url: string, onProgress?: DownloadProgress): Promise<Uint8Array> {
  let response: Response;
  try {
    response = await fetch(url);
  } catch (error) {
    throw new Error(`${url}: download failed (${(error as Error).message})`);
  }
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status} ${response.statusText}`);
  const total = Number(response.headers.get('content-length')) || 0;
  if (!response.body) return new Uint8Array(await response.arrayBuffer());

  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.byteLength;
    onProgress?.(loaded, total);
  }
  const out = new Uint8Array(loaded);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}

/** Downloads the model files served at `baseUrl` (the demo model at ./model/ next to the page). */
export async function modelFromUrl(baseUrl: string, onProgress?: DownloadProgress): Promise<PickedModel> {
  const url = (name: string) => new URL(name, baseUrl).href;
  const configResponse = await fetch(url(CONFIG_NAME));
  if (configResponse.status === 404) {
    throw new Error(`no demo model at ${url('')}: build the page with examples/browser/model/ present, or pick a model folder or .zip`);
  }
  if (!configResponse.ok) throw new Error(`${url(CONFIG_NAME)}: HTTP ${configResponse.status} ${configResponse.statusText}`);
  const configText = await configResponse.text();
  const vocabText = new TextDecoder().decode(await download(url(VOCAB_NAME)));
  const weights: ByteSource = bytesSource(await download(url(WEIGHTS_NAME), onProgress), url(WEIGHTS_NAME));
  return { label: 'demo model', configText, vocabText, weights, configName: url(CONFIG_NAME), vocabName: url(VOCAB_NAME) };
}
