#!/usr/bin/env node
// Writes the small copy of the COVID-CXR sample that ships in examples/data. Every image is
// converted to 8-bit grayscale and shrunk to at most 256 px on its longest side, except the
// images of CC BY-NC-ND studies, which must not be modified. Those are copied byte for byte
// when the whole output stays within 10 MB, and otherwise left out with their entries.
//
// Usage: node scripts/prepare-sample.mjs SOURCE_DIR OUTPUT_DIR [--force]
//   SOURCE_DIR  a folder with annotation.json, images/, metadata_subset.csv, SOURCE.txt and
//               LICENSE_NOTES_upstream_README.txt (the full-size sample)
//   OUTPUT_DIR  created; --force replaces it when it already exists
//
// The resize is the same area filter that the data loader uses (s2d/data/image.ts).
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import jpeg from 'jpeg-js';
import pngjs from 'pngjs';

await import('./register-ts.mjs');
const { decodeGray, resizeGray } = await import('../s2d/data/image.ts');

const MAX_SIDE = 256;
const JPEG_QUALITY = 90;
const MAX_TOTAL_BYTES = 10_000_000;
const COPIED_FILES = ['SOURCE.txt', 'LICENSE_NOTES_upstream_README.txt', 'metadata_subset.csv'];
const SPLITS = ['train', 'val', 'test'];

const args = process.argv.slice(2);
const force = args.includes('--force');
const [sourceDir, outputDir] = args.filter((arg) => arg !== '--force');
if (!sourceDir || !outputDir) {
  console.error('usage: node scripts/prepare-sample.mjs SOURCE_DIR OUTPUT_DIR [--force]');
  process.exit(2);
}
for (const name of ['annotation.json', 'images', ...COPIED_FILES]) {
  if (!existsSync(join(sourceDir, name))) {
    console.error(`prepare-sample: ${join(sourceDir, name)} not found; SOURCE_DIR must be the full-size sample folder`);
    process.exit(1);
  }
}
if (existsSync(outputDir) && readdirSync(outputDir).length > 0) {
  if (!force) {
    console.error(`prepare-sample: ${outputDir} already exists and is not empty; pass --force to replace it`);
    process.exit(1);
  }
  rmSync(outputDir, { recursive: true });
}

const annotationText = readFileSync(join(sourceDir, 'annotation.json'), 'utf8');
const annotation = JSON.parse(annotationText);
const isNoDerivatives = (entry) => /\bBY-NC-ND\b/.test(entry.license ?? '');
const entries = SPLITS.flatMap((split) => annotation[split]);

/** Grayscale, longest side MAX_SIDE (never enlarged), re-encoded in the source's format family. */
function shrinkImage(bytes, path) {
  const gray = decodeGray(new Uint8Array(bytes), path);
  const scale = Math.min(1, MAX_SIDE / Math.max(gray.width, gray.height));
  const width = Math.max(1, Math.round(gray.width * scale));
  const height = Math.max(1, Math.round(gray.height * scale));
  const small = resizeGray(gray, width, height);
  const levels = Uint8Array.from(small.pixels, (v) => Math.round(Math.min(Math.max(v, 0), 1) * 255));

  if (/\.png$/i.test(path)) {
    const png = new pngjs.PNG({ width, height, colorType: 0, inputColorType: 0, inputHasAlpha: false });
    png.data = Buffer.from(levels);
    return { bytes: pngjs.PNG.sync.write(png, { colorType: 0, inputColorType: 0, inputHasAlpha: false }), width, height };
  }
  // jpeg-js encodes RGBA input; equal channels give a gray JPEG with flat chroma.
  const rgba = Buffer.alloc(width * height * 4);
  for (let i = 0; i < levels.length; i++) {
    rgba[4 * i] = levels[i];
    rgba[4 * i + 1] = levels[i];
    rgba[4 * i + 2] = levels[i];
    rgba[4 * i + 3] = 255;
  }
  return { bytes: jpeg.encode({ data: rgba, width, height }, JPEG_QUALITY).data, width, height };
}

// Step 1: shrink every image that may be modified, in memory.
const outputs = new Map();
let shrunkBytes = 0;
let noDerivativesBytes = 0;
for (const entry of entries) {
  for (const relative of entry.image_path) {
    const source = readFileSync(join(sourceDir, 'images', relative));
    if (isNoDerivatives(entry)) {
      noDerivativesBytes += source.length;
      continue;
    }
    const { bytes } = shrinkImage(source, relative);
    outputs.set(relative, bytes);
    shrunkBytes += bytes.length;
  }
}

// Step 2: keep the CC BY-NC-ND studies verbatim only when everything fits. The estimate uses
// the full annotation and a README allowance, so the real total can only be smaller.
const README_ALLOWANCE = 20_000;
const fixedBytes = COPIED_FILES.reduce((sum, name) => sum + statSync(join(sourceDir, name)).size, 0) + annotationText.length + README_ALLOWANCE;
const keepNoDerivatives = shrunkBytes + noDerivativesBytes + fixedBytes <= MAX_TOTAL_BYTES;
const leftOut = keepNoDerivatives ? [] : entries.filter(isNoDerivatives);

// Step 3: write images, annotation, copied files, checksums and README.
mkdirSync(outputDir, { recursive: true });
const checksums = [];
for (const entry of entries) {
  if (leftOut.includes(entry)) continue;
  for (const relative of entry.image_path) {
    const target = join(outputDir, 'images', relative);
    mkdirSync(dirname(target), { recursive: true });
    if (isNoDerivatives(entry)) copyFileSync(join(sourceDir, 'images', relative), target);
    else writeFileSync(target, outputs.get(relative));
    const digest = createHash('sha256').update(readFileSync(target)).digest('hex');
    checksums.push(`${digest}  images/${relative}`);
  }
}
writeFileSync(join(outputDir, 'SHA256SUMS'), checksums.sort((a, b) => a.slice(66).localeCompare(b.slice(66))).join('\n') + '\n');

if (leftOut.length === 0) {
  // Image paths are unchanged (each image keeps its format), so the annotation is copied as is.
  copyFileSync(join(sourceDir, 'annotation.json'), join(outputDir, 'annotation.json'));
} else {
  const kept = {};
  for (const split of SPLITS) kept[split] = annotation[split].filter((entry) => !leftOut.includes(entry));
  writeFileSync(join(outputDir, 'annotation.json'), JSON.stringify(kept, null, 1));
}
for (const name of COPIED_FILES) copyFileSync(join(sourceDir, name), join(outputDir, name));

writeFileSync(join(outputDir, 'README.md'), renderReadme());

const total = folderBytes(outputDir);
const counts = SPLITS.map((split) => `${split} ${annotation[split].filter((entry) => !leftOut.includes(entry)).length}`).join(' / ');
console.log(`prepare-sample: wrote ${outputDir}: ${checksums.length} images, ${counts}, ${(total / 1e6).toFixed(2)} MB`);
if (leftOut.length > 0) console.log(`prepare-sample: left out ${leftOut.length} CC BY-NC-ND studies: ${leftOut.map((entry) => entry.id).join(', ')}`);
if (total > MAX_TOTAL_BYTES) {
  console.error(`prepare-sample: output is ${total} bytes, over the ${MAX_TOTAL_BYTES}-byte limit; lower MAX_SIDE or JPEG_QUALITY`);
  process.exit(1);
}

function folderBytes(dir) {
  let sum = 0;
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    const stat = statSync(path);
    sum += stat.isDirectory() ? folderBytes(path) : stat.size;
  }
  return sum;
}

function renderReadme() {
  const kept = entries.filter((entry) => !leftOut.includes(entry));
  const byLicence = new Map();
  for (const entry of kept) byLicence.set(entry.license, [...(byLicence.get(entry.license) ?? []), entry]);
  const licenceRows = [...byLicence.entries()]
    .sort((a, b) => b[1].length - a[1].length || a[0].localeCompare(b[0]))
    .map(([licence, list]) => `| ${licence} | ${list.length} | ${isNoDerivatives(list[0]) ? 'original file, byte for byte' : 'downscaled copy'} |`);
  const noDerivativesIds = kept.filter(isNoDerivatives).map((entry) => `\`${entry.id}\``);
  const splitCounts = SPLITS.map((split) => `${kept.filter((entry) => annotation[split].includes(entry)).length} ${split}`).join(' / ');
  const imageCount = kept.reduce((sum, entry) => sum + entry.image_path.length, 0);

  const lines = [
    '# COVID-CXR sample (downscaled)',
    '',
    `${kept.length} chest X-ray studies (${imageCount} images) from the COVID-19 image data collection`,
    '(Cohen et al.), each paired with the case\'s free-text clinical note. The layout is R2Gen\'s',
    `\`annotation.json\` with ${splitCounts} studies, split by patient (one study per patient).`,
    '`SOURCE.txt` describes how the studies were selected and what the texts are (case notes, not',
    '"Findings" sections). It was written for the full-size sample, so its sizes and its statement',
    'that no image was resized apply to that copy, not to this folder.',
    '',
    '## What was changed',
    '',
    'This folder was written by `scripts/prepare-sample.mjs` from the full-size sample. That script:',
    '',
    `- converted every image of a study not licensed CC BY-NC-ND to 8-bit grayscale (BT.601 luma),`,
    `  shrank it to at most ${MAX_SIDE} px on its longest side with an area filter (aspect ratio kept,`,
    `  never enlarged) and re-encoded it in its original format: JPEG at quality ${JPEG_QUALITY} (jpeg-js) or`,
    '  grayscale PNG (pngjs), so `image_path` values are unchanged;',
    keepNoDerivatives
      ? '- copied the images of the CC BY-NC-ND studies byte for byte, because that licence allows no\n  derivatives (their SHA-256 sums equal those of the full-size sample);'
      : `- left out the CC BY-NC-ND studies, because that licence allows no derivatives and their original\n  files did not fit within ${MAX_TOTAL_BYTES / 1e6} MB (see the note below);`,
    '- copied `SOURCE.txt`, `LICENSE_NOTES_upstream_README.txt` and `metadata_subset.csv` unchanged',
    `  and wrote \`SHA256SUMS\` for the images here.${leftOut.length === 0 ? ' `annotation.json` is unchanged.' : ''}`,
    '',
    'The report texts are unchanged.',
    '',
    '## Licences',
    '',
    'Each study has its own image licence, stored in the `license` key of its `annotation.json` entry:',
    '',
    '| image licence | studies | files here |',
    '| --- | --- | --- |',
    ...licenceRows,
    '',
    noDerivativesIds.length > 0
      ? `CC BY-NC-ND (no derivatives, kept as original files): ${noDerivativesIds.join(', ')}.`
      : 'No CC BY-NC-ND study is included.',
    '',
    'The downscaled images are adaptations and keep the licence of their original; the ShareAlike',
    'licences (CC BY-NC-SA, CC BY-SA) require that they be shared under the same licence. The report',
    'texts come from the collection\'s `metadata.csv`, which is licensed CC BY-NC-SA 4.0, so the',
    'texts are NonCommercial and ShareAlike even for the studies whose images allow commercial use.',
    '`LICENSE_NOTES_upstream_README.txt` is the upstream licence statement.',
    '',
    '## Attribution',
    '',
    'Joseph Paul Cohen, Paul Morrison, Lan Dao. "COVID-19 image data collection".',
    'arXiv:2003.11597, 2020. https://github.com/ieee8023/covid-chestxray-dataset',
    '',
    'The original publisher of each image is given by `source_url` and `doi` in its annotation entry.',
  ];
  if (leftOut.length > 0) {
    lines.push(
      '',
      '## NOTE: studies left out',
      '',
      `The CC BY-NC-ND studies ${leftOut.map((entry) => `\`${entry.id}\``).join(', ')} are not included:`,
      `their images may not be downscaled, and the original files would exceed the ${MAX_TOTAL_BYTES / 1e6} MB limit for`,
      'this folder. Their entries were removed from `annotation.json`, but `metadata_subset.csv` still',
      'lists their rows.',
    );
  }
  return lines.join('\n') + '\n';
}
