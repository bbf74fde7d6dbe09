// Test helpers for the tokenizer fixtures in test/fixtures/tokenizers (copied with their SOURCE
// and licence files). llama.cpp's test vectors: the .inp file holds the strings, each followed by
// "\n__ggml_vocab_test__\n", and line i of the .out file holds string i's reference ids, separated
// by spaces, without BOS or CLS.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const FIXTURES = fileURLToPath(new URL('./fixtures/tokenizers/', import.meta.url));

const SEPARATOR = '\n__ggml_vocab_test__\n';

export interface Golden {
  text: string;
  ids: number[];
}

export function readFixture(path: string): string {
  return readFileSync(`${FIXTURES}${path}`, 'utf8');
}

/** Reads the llama.cpp test pairs for `ggml-vocab-<vocab>.gguf`, as its test-tokenizer-0 splits them. */
export function readGoldens(vocab: 'llama-spm' | 'bert-bge'): Golden[] {
  const texts = readFixture(`llamacpp-goldens/ggml-vocab-${vocab}.gguf.inp`).split(SEPARATOR);
  // The file ends with a separator, so the last piece is empty and is not a test string.
  if (texts.pop() !== '') throw new Error(`ggml-vocab-${vocab}.gguf.inp does not end with the test separator`);
  const lines = readFixture(`llamacpp-goldens/ggml-vocab-${vocab}.gguf.out`).split('\n');
  if (lines.at(-1) === '') lines.pop();
  if (lines.length !== texts.length) throw new Error(`ggml-vocab-${vocab}: ${texts.length} strings but ${lines.length} lines of ids`);
  return texts.map((text, i) => {
    const line = lines[i].trim();
    return { text, ids: line === '' ? [] : line.split(' ').map(Number) };
  });
}
