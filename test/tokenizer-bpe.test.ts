import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { BpeTokenizer, byteToken } from '../weights/tokenizer-bpe.ts';
import { loadTokenizer } from '../weights/tokenizer.ts';
import { readFixture, readGoldens } from './tokenizer-goldens.ts';

const llama = BpeTokenizer.fromText(readFixture('llama2/tokenizer.json'), 'llama2/tokenizer.json');
const mistral = BpeTokenizer.fromText(readFixture('mistral/tokenizer.json'), 'mistral/tokenizer.json');
const goldens = readGoldens('llama-spm');

/** The id of a byte token in both vocabularies: <0x00> … <0xFF> follow <unk>, <s>, </s>. */
const byteId = (byte: number) => 3 + byte;
const utf8Ids = (text: string) => Array.from(new TextEncoder().encode(text), byteId);

test('goldens: 46 llama.cpp strings', () => {
  // llama.cpp stops at the separator that ends the .inp file, so there are 46 strings, not 47.
  assert.is(goldens.length, 46);
});

test('LLaMA-2 matches all llama.cpp goldens', () => {
  for (const [i, { text, ids }] of goldens.entries()) {
    const ours = llama.encode(text);
    assert.equal(ours, ids, `string ${i} ${JSON.stringify(text)}: ours=[${ours}] | llama.cpp=[${ids}]`);
  }
});

test('LLaMA-2 decode inverts encode on goldens', () => {
  for (const [i, { text, ids }] of goldens.entries()) {
    const decoded = llama.decode(ids);
    assert.is(decoded, text, `string ${i}: decoded ${JSON.stringify(decoded)} | original ${JSON.stringify(text)}`);
  }
});

test('LLaMA-2 SentencePiece pieces', () => {
  assert.equal(llama.tokenize('Hello world'), ['▁Hello', '▁world']);
  assert.equal(llama.tokenize(' Hello'), ['▁', '▁Hello']);
  assert.equal(llama.encode('the'), [278]);
  assert.equal(llama.encode(''), []);
  assert.equal(llama.encode(' '), [259]);
});

test('LLaMA-2 special token ids', () => {
  assert.equal(llama.specialIds, { unk: 0, bos: 1, eos: 2 });
  assert.is(llama.vocabSize, 32000);
  assert.is(llama.tokenToId('▁the'), 278);
  assert.is(llama.tokenToId('no such token'), 0, 'unknown tokens map to <unk>');
  assert.is(llama.idToToken(29871), '▁');
  assert.is(llama.idToToken(32000), undefined);
});

test('BOS and EOS options', () => {
  assert.equal(llama.encode('Hello world', { addBos: true }), [1, 15043, 3186]);
  assert.equal(llama.encode('Hello world', { addBos: true, addEos: true }), [1, 15043, 3186, 2]);
  assert.equal(llama.encode('Hello world', { addSpecialTokens: true }), [1, 15043, 3186], 'the post_processor template adds <s>');
  assert.equal(llama.encode('Hello world', { addSpecialTokens: true, addBos: false }), [15043, 3186]);
  assert.equal(llama.encode('', { addBos: true }), [1]);
});

test('special tokens in text', () => {
  // Each text piece between added tokens gets its own "▁" prefix, as in HF tokenizers (legacy mode).
  assert.equal(llama.encode('<s>Hello</s>'), [1, 15043, 2]);
  assert.equal(llama.tokenize('Hello</s> world'), ['▁Hello', '</s>', '▁', '▁world']);
  const literal = llama.encode('<s>', { parseSpecialTokens: false });
  assert.not.ok(literal.includes(1), `parseSpecialTokens false: ours=[${literal}] should not contain <s> (1)`);
  assert.is(llama.decode(literal), '<s>');
});

test('decode with special tokens', () => {
  const ids = [1, 15043, 3186, 2];
  assert.is(llama.decode(ids), '<s> Hello world</s>');
  assert.is(llama.decode(ids, { skipSpecialTokens: true }), 'Hello world');
  assert.throws(() => llama.decode([32000]), /id 32000, outside the vocabulary \(0 … 31999\)/);
});

test('byte fallback for emoji', () => {
  assert.is(llama.tokenToId('🦙'), 0, '🦙 is not a LLaMA-2 token');
  assert.equal(llama.encode('🦙'), [29871, ...utf8Ids('🦙')]);
  assert.equal(llama.tokenize('🦙').slice(1), ['<0xF0>', '<0x9F>', '<0xA6>', '<0x99>']);
  assert.is(llama.decode(llama.encode('a🦙b')), 'a🦙b');
});

test('byte fallback for CJK', () => {
  // 龘 (U+9F98) and 𠀋 (U+2000B) are outside both vocabularies; 我 is inside.
  for (const [name, tokenizer] of [['LLaMA-2', llama], ['Mistral', mistral]] as const) {
    assert.equal(tokenizer.encode('龘').slice(1), utf8Ids('龘'), `${name}: 龘`);
    assert.equal(tokenizer.encode('𠀋').slice(1), utf8Ids('𠀋'), `${name}: 𠀋`);
    assert.is(tokenizer.tokenize('我').at(-1), '我', `${name}: 我 is a vocabulary token`);
    assert.is(tokenizer.decode(tokenizer.encode('我想龘𠀋')), '我想龘𠀋', `${name}: round trip`);
  }
});

test('invalid UTF-8 bytes decode to U+FFFD', () => {
  // A lone lead byte of a 4-byte sequence, then a complete "é" (C3 A9).
  assert.is(llama.decode([byteId(0xf0), 15043]), '\uFFFD Hello');
  assert.is(llama.decode([byteId(0xc3), byteId(0xa9)]), 'é');
  assert.is(byteToken(10), '<0x0A>');
});

test('truncation keeps BOS', () => {
  const full = llama.encode('the heart is normal in size', { addBos: true });
  const cut = llama.encode('the heart is normal in size', { addBos: true, maxLength: 3 });
  assert.equal(cut, full.slice(0, 3));
  assert.equal(llama.encode('the heart', { addBos: true, addEos: true, maxLength: 3 }), [1, 278, 2]);
  assert.throws(() => llama.encode('the', { addBos: true, addEos: true, maxLength: 1 }), /maxLength 1 is invalid; use an integer ≥ 2/);
});

test('padding needs a pad id', () => {
  assert.equal(llama.encode('the', { addBos: true, padTo: 4, padId: 2 }), [1, 278, 2, 2]);
  assert.equal(llama.encode('the heart is normal', { padTo: 2, padId: 0 }).length, 4, 'padTo does not truncate');
  assert.throws(() => llama.encode('the', { padTo: 4 }), /has no pad token; pass padId/);
});

test('Mistral round trip on ASCII text', () => {
  const texts = [
    'The heart is normal in size. The lungs are clear.',
    ' leading space, trailing space ',
    'No acute cardiopulmonary abnormality.\nNo pneumothorax.\n',
    'Tabs\tand  double  spaces; symbols: ~!@#$%^&*()_+{}|:"<>?`-=[]\\;\',./',
    'T12 1.5 cm 3/4 100%',
  ];
  for (const text of texts) {
    const decoded = mistral.decode(mistral.encode(text));
    assert.is(decoded, text, `ours=${JSON.stringify(decoded)} | original=${JSON.stringify(text)}`);
  }
});

test('Mistral vocabulary differs from LLaMA-2', () => {
  assert.equal(mistral.specialIds, { unk: 0, bos: 1, eos: 2 });
  assert.equal(mistral.tokenize('Hello world'), ['▁Hello', '▁world']);
  assert.equal(mistral.encode('Hello world'), [22557, 1526]);
  assert.equal(mistral.encode('the'), [272]);
  assert.equal(mistral.tokenize(' Hello'), ['▁', '▁Hello']);
  assert.equal(mistral.encode(' Hello'), [28705, 22557]);
  assert.equal(mistral.encode('\n'), [28705, 13], 'newline falls back to <0x0A>');
});

test('longest golden encodes quickly', () => {
  const longest = goldens.reduce((a, b) => (b.text.length > a.text.length ? b : a));
  let started = performance.now();
  const ids = llama.encode(longest.text);
  const goldenMs = performance.now() - started;
  assert.equal(ids, longest.ids);
  assert.ok(goldenMs < 1000, `longest golden (${longest.text.length} chars) took ${goldenMs.toFixed(1)} ms; limit 1000 ms`);

  // 100,000 characters without a space form one word; rescanning the merge list per merge would take minutes.
  const long = 'cardiomegaly'.repeat(8334).slice(0, 100_000);
  started = performance.now();
  llama.encode(long);
  const longMs = performance.now() - started;
  assert.ok(longMs < 3000, `100,000 characters took ${longMs.toFixed(0)} ms; limit 3000 ms`);
});

/** Builds a tokenizer with a six-token vocabulary, for code paths that the real files do not reach. */
function tinyBpe(model: Record<string, unknown>, rest: Record<string, unknown> = {}): BpeTokenizer {
  const json = {
    added_tokens: [{ id: 5, content: '<s>', special: true }],
    model: { type: 'BPE', vocab: { '<unk>': 0, '▁': 1, a: 2, b: 3, '▁a': 4, '<s>': 5 }, merges: ['▁ a'], unk_token: '<unk>', ...model },
    ...rest,
  };
  return BpeTokenizer.fromText(JSON.stringify(json), 'tiny.json');
}

test('unk without byte fallback', () => {
  assert.equal(tinyBpe({ fuse_unk: true }).encode('xyab'), [0, 2, 3], 'fuse_unk: one <unk> for "xy"');
  assert.equal(tinyBpe({ fuse_unk: false }).encode('xyab'), [0, 0, 2, 3]);
  assert.throws(() => tinyBpe({ unk_token: null }).encode('x'), /character "x" \(U\+0078\) is not in the vocabulary/);
});

test('Metaspace pre-tokenizer and decoder', () => {
  const metaspace = { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: true };
  const tokenizer = tinyBpe({}, { pre_tokenizer: metaspace, decoder: metaspace });
  assert.equal(tokenizer.tokenize('a a'), ['▁a', '▁a']);
  assert.equal(tokenizer.tokenize('<s>a'), ['<s>', 'a'], 'prepend_scheme "first" skips text after an added token');
  assert.is(tokenizer.decode([4, 4]), 'a a');
});

test('loadTokenizer dispatches BPE', () => {
  const loaded = loadTokenizer(readFixture('llama2/tokenizer.json'), 'llama2/tokenizer.json');
  assert.instance(loaded, BpeTokenizer);
  assert.is(loaded.modelType, 'BPE');
  assert.equal(loaded.encode(goldens[0].text), goldens[0].ids);
});

test('loadTokenizer rejects unknown model type', () => {
  const text = JSON.stringify({ model: { type: 'Unigram', vocab: [] } });
  assert.throws(() => loadTokenizer(text, 'bad/tokenizer.json'), (error: Error) => {
    return error.message === 'bad/tokenizer.json: tokenizer model type "Unigram" is not supported; supported types: BPE, WordPiece';
  });
});

test('loadTokenizer rejects byte-level BPE', () => {
  const json = JSON.parse(readFixture('mistral/tokenizer.json'));
  json.pre_tokenizer = { type: 'ByteLevel', add_prefix_space: false };
  assert.throws(() => loadTokenizer(JSON.stringify(json), 'gpt2.json'), /gpt2.json: pre_tokenizer type "ByteLevel" is not supported; supported: /);
});

test('loadTokenizer rejects invalid JSON', () => {
  assert.throws(() => loadTokenizer('{"model": ', 'broken.json'), /broken.json: invalid JSON/);
});

test.run();
