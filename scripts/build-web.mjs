#!/usr/bin/env node
// Builds the browser page into dist/web/. esbuild bundles examples/browser/main.ts with the
// engine, kernels, weights and s2d sources into one ES module, main.js. Next to it go
// index.html, style.css, a few sample X-rays with their licence data (samples/) and, when
// examples/browser/model/ exists, the demo model (model/).
//
// The build fails when a Node built-in or the Node-only `webgpu` package (Dawn) reaches the
// bundle. engine/devices.ts imports `webgpu` through a computed specifier, which esbuild
// neither resolves nor records, so the check reads only static and literal dynamic imports.
//
// Usage: node scripts/build-web.mjs [--out DIR]   (default dist/web; the folder is replaced)
import { build } from 'esbuild';
import { copyFile, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { builtinModules } from 'node:module';
import { dirname, extname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const pageDir = join(root, 'examples', 'browser');
const sampleDir = join(root, 'examples', 'data', 'covid-cxr-sample');

// Test-split studies whose images allow adaptations (no CC BY-NC-ND), in several formats.
const SAMPLE_IDS = ['covid_p103_ona', 'covid_p330_o7', 'covid_p334_ona', 'covid_p100_ona', 'covid_p183_o0', 'covid_p110_ona'];
const MODEL_FILES = ['config.json', 'vocab.json', 'model.safetensors'];

const NODE_BUILTINS = new Set(builtinModules.flatMap((name) => [name, `node:${name}`]));

const WEBGPU_PACKAGE_FILE = /(^|\/)node_modules\/webgpu\//;

/** Returns why the import specifier `path`, left external, must not reach a browser. */
function externalReason(path) {
  if (path.startsWith('node:') || NODE_BUILTINS.has(path) || NODE_BUILTINS.has(path.split('/')[0])) return 'a Node built-in';
  if (path === 'webgpu' || path.startsWith('webgpu/')) return 'the Node-only webgpu package (Dawn)';
  return 'a bare import that a browser cannot resolve';
}

/** Lists every bundled file or import that is Node-only, from esbuild's metafile. */
export function findNodeOnlyImports(metafile) {
  const problems = [];
  for (const [input, info] of Object.entries(metafile.inputs)) {
    if (input.startsWith('node:')) problems.push(`${input} is a Node built-in`);
    if (WEBGPU_PACKAGE_FILE.test(input)) problems.push(`${input} belongs to the Node-only webgpu package (Dawn)`);
    for (const imported of info.imports) {
      // A package's "browser" field can replace a built-in with an empty module, which esbuild
      // records as "(disabled):fs"; it contains no Node code.
      if (imported.path.startsWith('(disabled):')) continue;
      // "<runtime>" is esbuild's own helper code (CommonJS interop), not a module.
      if (imported.path === '<runtime>') continue;
      if (imported.external) problems.push(`${input} imports ${imported.path}, ${externalReason(imported.path)} (left external)`);
      else if (WEBGPU_PACKAGE_FILE.test(imported.path)) problems.push(`${input} imports ${imported.path}, the Node-only webgpu package (Dawn)`);
    }
  }
  return problems;
}

async function exists(path) {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

async function bundlePage(outDir) {
  const result = await build({
    entryPoints: [join(pageDir, 'main.ts')],
    outfile: join(outDir, 'main.js'),
    bundle: true,
    platform: 'browser',
    format: 'esm',
    target: 'es2022',
    sourcemap: 'linked',
    metafile: true,
    logLevel: 'warning',
  });
  const problems = findNodeOnlyImports(result.metafile);
  if (problems.length) {
    throw new Error(`build-web: Node-only code reached the browser bundle:\n  ${problems.join('\n  ')}\nReach Node-only modules through a dynamic import with a computed specifier, as engine/devices.ts does.`);
  }
  const output = result.metafile.outputs[relative(process.cwd(), join(outDir, 'main.js'))];
  return { inputs: Object.keys(result.metafile.inputs).length, bytes: output?.bytes ?? 0 };
}

/** Copies the sample X-rays and writes samples/samples.json with each one's licence data. */
async function copySamples(outDir) {
  const annotation = JSON.parse(await readFile(join(sampleDir, 'annotation.json'), 'utf8'));
  const studies = new Map(Object.values(annotation).flat().map((study) => [study.id, study]));
  await mkdir(join(outDir, 'samples'), { recursive: true });
  const samples = [];
  for (const id of SAMPLE_IDS) {
    const study = studies.get(id);
    if (!study) throw new Error(`build-web: sample ${id} not found in ${join(sampleDir, 'annotation.json')}`);
    if (/\bND\b/.test(study.license)) throw new Error(`build-web: sample ${id} is licensed ${study.license}, which allows no derivatives; pick another study`);
    const source = join(sampleDir, 'images', study.image_path[0]);
    const file = `samples/${id}${extname(source).toLowerCase()}`;
    await copyFile(source, join(outDir, file));
    samples.push({
      id,
      file,
      license: study.license,
      sourceUrl: study.source_url,
      doi: study.doi,
      finding: study.finding,
      view: study.views?.[0] ?? '',
      report: study.report,
    });
  }
  await writeFile(join(outDir, 'samples', 'samples.json'), `${JSON.stringify(samples, null, 2)}\n`);
  return samples.length;
}

/** Copies examples/browser/model/ when present; returns its size in bytes, or null. */
async function copyDemoModel(outDir) {
  const modelDir = join(pageDir, 'model');
  if (!(await exists(modelDir))) return null;
  const missing = [];
  for (const name of MODEL_FILES) if (!(await exists(join(modelDir, name)))) missing.push(name);
  if (missing.length) {
    throw new Error(`build-web: ${modelDir} lacks ${missing.join(', ')}; write it with "node scripts/s2d.mjs export --model DIR --out ${relative(root, modelDir)} --f16"`);
  }
  await mkdir(join(outDir, 'model'), { recursive: true });
  let bytes = 0;
  for (const name of MODEL_FILES) {
    await copyFile(join(modelDir, name), join(outDir, 'model', name));
    bytes += (await stat(join(modelDir, name))).size;
  }
  return bytes;
}

async function main() {
  const { values } = parseArgs({ options: { out: { type: 'string' } } });
  const outDir = resolve(values.out ?? join(root, 'dist', 'web'));
  if (outDir === root || outDir === pageDir || pageDir.startsWith(outDir + '/')) {
    throw new Error(`build-web: --out ${outDir} would delete sources; pick an output folder such as dist/web`);
  }
  await rm(outDir, { recursive: true, force: true });
  await mkdir(outDir, { recursive: true });

  const bundle = await bundlePage(outDir);
  for (const name of ['index.html', 'style.css']) await copyFile(join(pageDir, name), join(outDir, name));
  const sampleCount = await copySamples(outDir);
  const modelBytes = await copyDemoModel(outDir);

  process.stdout.write(`built ${relative(process.cwd(), outDir) || '.'}: main.js ${(bundle.bytes / 1e6).toFixed(2)} MB from ${bundle.inputs} modules, ${sampleCount} sample images, `);
  process.stdout.write(modelBytes === null ? 'no demo model (examples/browser/model/ is absent)\n' : `demo model ${(modelBytes / 1e6).toFixed(1)} MB\n`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    await main();
  } catch (error) {
    process.stderr.write(`${error.message}\n`);
    process.exitCode = 1;
  }
}
