// The engine example runs as the README shows and lowers its loss.
import { spawnSync } from 'node:child_process';
import { test } from 'uvu';
import * as assert from 'uvu/assert';

test('examples/engine/fit-linear.ts lowers the loss', () => {
  const run = spawnSync(process.execPath, ['--import', './scripts/register-ts.mjs', 'examples/engine/fit-linear.ts'], { encoding: 'utf8', timeout: 120_000 });
  assert.is(run.status, 0, `exit ${run.status}: ${run.stderr}`);
  const losses = [...run.stdout.matchAll(/loss (\d+\.\d+)/g)].map((match) => Number(match[1]));
  assert.is(losses.length, 4, `expected 4 loss lines, got:\n${run.stdout}`);
  assert.ok(losses[3] < losses[0] / 10, `loss ${losses[0]} → ${losses[3]} should fall by more than 10×`);
});

test.run();
