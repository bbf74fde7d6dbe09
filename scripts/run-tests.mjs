#!/usr/bin/env node
// Runs every test/*.test.ts file in its own Node process (a crashed GPU driver then fails one
// file, not the run), prints each file's output, and ends with one line of totals:
// "N passed, N failed" (plus ", N skipped" when some were skipped).
//
// When Chromium's SwiftShader Vulkan driver is installed, the kernel test files run a second
// time on it (subgroup size 4, where lavapipe has 8), so subgroup code is checked on two
// sizes. That pass also drops Dawn's shader bounds checks (S2D_BOUNDS_CHECKS=0), so the
// kernels are tested both with and without them. S2D_TEST_SWIFTSHADER=0 skips that pass.
//
// Usage: node scripts/run-tests.mjs [substring ...]   runs only files whose name contains one.
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const filters = process.argv.slice(2);
const files = readdirSync(join(root, 'test'))
  .filter((name) => name.endsWith('.test.ts'))
  .filter((name) => filters.length === 0 || filters.some((f) => name.includes(f)))
  .sort();

const SWIFTSHADER_ICD = '/usr/lib/chromium/vk_swiftshader_icd.json';
// Files whose tests run kernels on the WebGPU device.
const KERNEL_FILES = ['matmul', 'matmul-f16', 'linear', 'elementwise', 'softmax', 'norm', 'loss', 'shape', 'embedding', 'dropout', 'mask', 'optim', 'device', 'generate', 'golden', 'rope', 'select', 'attention', 'lora', 'gather', 'beam', 'checkpoint', 'device-lost', 'f16', 'large-tensor', 'autotune'];

function runFile(name, extraEnv = {}) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', './scripts/register-ts.mjs', join('test', name)], {
      cwd: root,
      env: { ...process.env, FORCE_COLOR: '0', ...extraEnv },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk) => { output += chunk; process.stdout.write(chunk); });
    child.stderr.on('data', (chunk) => { output += chunk; process.stderr.write(chunk); });
    child.on('close', (code, signal) => resolve({ output, code, signal }));
  });
}

// uvu ends each file with "Total: N", "Passed: N", "Skipped: N".
function readTotals(output) {
  const clean = output.replace(/\x1b\[[0-9;]*m/g, '');
  const number = (label) => {
    const matches = [...clean.matchAll(new RegExp(`${label}:\\s+(\\d+)`, 'g'))];
    return matches.length ? Number(matches[matches.length - 1][1]) : null;
  };
  return { total: number('Total'), passed: number('Passed'), skipped: number('Skipped') ?? 0 };
}

const runs = files.map((name) => ({ name, label: name, env: {} }));
if (process.env.S2D_TEST_SWIFTSHADER !== '0' && existsSync(SWIFTSHADER_ICD)) {
  for (const name of files) {
    if (KERNEL_FILES.some((stem) => name === `${stem}.test.ts`)) {
      runs.push({ name, label: `${name} on SwiftShader without bounds checks`, env: { VK_ICD_FILENAMES: SWIFTSHADER_ICD, S2D_BOUNDS_CHECKS: '0' } });
    }
  }
}

let passed = 0;
let failed = 0;
let skipped = 0;
for (const { name, label, env } of runs) {
  process.stdout.write(`\n# ${label}\n`);
  const { output, code, signal } = await runFile(name, env);
  const totals = readTotals(output);
  if (totals.total === null || totals.passed === null) {
    // The file crashed before uvu printed its summary: count it as one failure.
    process.stdout.write(`# ${label}: no uvu summary (exit code ${code}, signal ${signal}); counted as 1 failed\n`);
    failed += 1;
    continue;
  }
  passed += totals.passed;
  skipped += totals.skipped;
  let fileFailed = totals.total - totals.passed - totals.skipped;
  if (code !== 0 && fileFailed === 0) fileFailed = 1;
  failed += fileFailed;
}

const skippedPart = skipped ? `, ${skipped} skipped` : '';
process.stdout.write(`\n${passed} passed, ${failed} failed${skippedPart}\n`);
process.exit(failed === 0 && files.length > 0 ? 0 : 1);
