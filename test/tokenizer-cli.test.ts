import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { FIXTURES, readGoldens } from './tokenizer-goldens.ts';

const root = fileURLToPath(new URL('..', import.meta.url));

/** Runs `node scripts/s2d.mjs tokenize ARGS` from the repository root. */
function s2dTokenize(...args: string[]) {
  const result = spawnSync(process.execPath, ['scripts/s2d.mjs', 'tokenize', ...args], { cwd: root, encoding: 'utf8', timeout: 30_000 });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

function goldenWith(goldens: ReturnType<typeof readGoldens>, text: string) {
  const golden = goldens.find((g) => g.text === text);
  if (!golden) throw new Error(`no golden string ${JSON.stringify(text)}`);
  return golden;
}

const llamaGoldens = readGoldens('llama-spm');
const bertGoldens = readGoldens('bert-bge');

test('LLaMA-2 folder prints reference ids', () => {
  // The string has an emoji (byte fallback), a newline and leading spaces.
  const { text, ids } = goldenWith(llamaGoldens, '    Hello\n    Hello');
  const { code, stdout, stderr } = s2dTokenize('--tokenizer', join(FIXTURES, 'llama2'), '--text', text);
  assert.is(code, 0, stderr);
  assert.is(stdout, `${JSON.stringify(ids)}\n`, `ours=${stdout.trim()} | llama.cpp=${JSON.stringify(ids)}`);

  const emoji = goldenWith(llamaGoldens, ' this is 🦙.cpp');
  const withBos = s2dTokenize('--tokenizer', join(FIXTURES, 'llama2', 'tokenizer.json'), '--text', emoji.text, '--bos');
  assert.is(withBos.code, 0, withBos.stderr);
  assert.equal(JSON.parse(withBos.stdout), [1, ...emoji.ids]);
});

test('BERT vocab.txt prints reference ids', () => {
  const { text, ids } = goldenWith(bertGoldens, 'Führer');
  const { code, stdout, stderr } = s2dTokenize('--tokenizer', join(FIXTURES, 'bert-base-uncased', 'vocab.txt'), '--text', text);
  assert.is(code, 0, stderr);
  assert.equal(JSON.parse(stdout), ids, `ours=${stdout.trim()} | llama.cpp=${JSON.stringify(ids)}`);
});

test('decode prints text', () => {
  const { code, stdout, stderr } = s2dTokenize('--tokenizer', join(FIXTURES, 'llama2'), '--decode', '--ids', '[1,15043,3186]', '--skip-special');
  assert.is(code, 0, stderr);
  assert.is(stdout, 'Hello world\n');
});

test('unknown model type exits 1', () => {
  const dir = mkdtempSync(join(tmpdir(), 's2d-tokenize-'));
  try {
    const path = join(dir, 'tokenizer.json');
    writeFileSync(path, JSON.stringify({ model: { type: 'Unigram', vocab: [['<unk>', 0]] } }));
    const { code, stdout, stderr } = s2dTokenize('--tokenizer', path, '--text', 'hello');
    assert.is(code, 1, `exit code ${code}, stderr: ${stderr}`);
    assert.is(stdout, '');
    assert.is(stderr, `s2d tokenize: ${path}: tokenizer model type "Unigram" is not supported; supported types: BPE, WordPiece\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('missing --tokenizer exits 2', () => {
  const { code, stderr } = s2dTokenize('--text', 'hello');
  assert.is(code, 2);
  assert.match(stderr, 's2d tokenize: missing --tokenizer PATH');
});

test.run();
