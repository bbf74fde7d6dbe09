import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { loadTokenizer } from '../weights/tokenizer.ts';
import { WordPieceTokenizer } from '../weights/tokenizer-wordpiece.ts';
import { readFixture, readGoldens } from './tokenizer-goldens.ts';

const fromJson = loadTokenizer(readFixture('bert-base-uncased/tokenizer.json'), 'bert-base-uncased/tokenizer.json');
const fromVocabTxt = loadTokenizer(readFixture('bert-base-uncased/vocab.txt'), 'bert-base-uncased/vocab.txt');
const bert = fromVocabTxt;
const goldens = readGoldens('bert-bge');

const UNK = 100;
const CLS = 101;
const SEP = 102;

test('goldens: 46 llama.cpp strings', () => {
  assert.is(goldens.length, 46);
});

for (const [source, tokenizer] of [['tokenizer.json', fromJson], ['vocab.txt', fromVocabTxt]] as const) {
  test(`BERT ${source} matches all llama.cpp goldens`, () => {
    for (const [i, { text, ids }] of goldens.entries()) {
      const ours = tokenizer.encode(text);
      assert.equal(ours, ids, `string ${i} ${JSON.stringify(text)}: ours=[${ours}] | llama.cpp=[${ids}]`);
    }
  });

  test(`BERT ${source} special token ids`, () => {
    assert.is(tokenizer.modelType, 'WordPiece');
    assert.is(tokenizer.vocabSize, 30522);
    assert.equal(tokenizer.specialIds, { unk: UNK, cls: CLS, sep: SEP, pad: 0, mask: 103 });
  });
}

test('accents are stripped when uncased', () => {
  assert.equal(bert.tokenize('Führer'), ['fu', '##hrer']);
  assert.equal(bert.tokenize('CAFÉ Café café cafe\u0301'), ['cafe', 'cafe', 'cafe', 'cafe']);
});

test('cased vocab.txt keeps case and accents', () => {
  const cased = WordPieceTokenizer.fromVocabTxt(readFixture('bert-base-uncased/vocab.txt'), 'vocab.txt', { lowercase: false });
  // The uncased vocabulary has no capitalised "Hello", so the cased pipeline finds no full split.
  assert.equal(cased.encode('Hello'), [UNK]);
  assert.equal(cased.encode('hello'), [7592]);
  assert.equal(cased.tokenize('café'), ['[UNK]'], 'é is kept, and the uncased vocabulary has no piece with it');
});

test('punctuation splits words', () => {
  assert.equal(bert.tokenize('Hello, world!'), ['hello', ',', 'world', '!']);
  assert.equal(bert.tokenize("don't"), ['don', "'", 't']);
  assert.equal(bert.tokenize('3.5cm'), ['3', '.', '5', '##cm']);
  assert.equal(bert.tokenize('a$b'), ['a', '$', 'b'], 'ASCII $ counts as punctuation');
});

test('CJK ideographs become single words', () => {
  assert.equal(bert.tokenize('我想apple'), ['我', '[UNK]', 'apple']);
});

test('control characters are removed', () => {
  assert.equal(bert.tokenize('hel\u0000lo'), ['hello']);
  assert.equal(bert.tokenize('hel\u200blo'), ['hello'], 'zero-width space is a format (Cf) character');
  assert.equal(bert.tokenize('hello\u00a0world\r\nagain\tnow'), ['hello', 'world', 'again', 'now']);
});

test('unknown word becomes one [UNK]', () => {
  assert.equal(bert.encode('🦙'), [UNK]);
  assert.equal(bert.encode('hello 🦙 world'), [7592, UNK, 2088]);
});

test('words over 100 characters are [UNK]', () => {
  const hundred = 'a'.repeat(100);
  assert.not.equal(bert.encode(hundred), [UNK], '100 characters still go through WordPiece');
  assert.equal(bert.encode('a'.repeat(101)), [UNK]);
  assert.equal(bert.encode(`the ${'a'.repeat(101)} heart`), [1996, UNK, 2540]);
});

test('subword continuation pieces', () => {
  assert.equal(bert.tokenize('unaffable'), ['una', '##ffa', '##ble']);
  assert.is(bert.decode(bert.encode('unaffable')), 'unaffable');
});

test('CLS and SEP on request', () => {
  assert.equal(bert.encode('hello world'), [7592, 2088]);
  assert.equal(bert.encode('hello world', { addSpecialTokens: true }), [CLS, 7592, 2088, SEP]);
  assert.equal(bert.encode('', { addSpecialTokens: true }), [CLS, SEP]);
  assert.equal(bert.encode('[CLS] hello [SEP]'), [CLS, 7592, SEP], 'special tokens in the text are matched before lower-casing');
  assert.equal(bert.encode('[MASK]', { parseSpecialTokens: false }).includes(103), false);
});

test('truncation keeps CLS and SEP', () => {
  assert.equal(bert.encode('the heart is normal', { addSpecialTokens: true, maxLength: 4 }), [CLS, 1996, 2540, SEP]);
  assert.throws(() => bert.encode('the', { addSpecialTokens: true, maxLength: 1 }), /maxLength 1 is invalid/);
});

test('padding uses [PAD]', () => {
  assert.equal(bert.encode('hello', { addSpecialTokens: true, padTo: 5 }), [CLS, 7592, SEP, 0, 0]);
  assert.equal(bert.encode('hello', { padTo: 3, padId: 103 }), [7592, 103, 103]);
});

test('decode joins pieces and cleans spaces', () => {
  const ids = bert.encode("The heart isn't enlarged, no effusion.", { addSpecialTokens: true });
  assert.is(bert.decode(ids), "[CLS] the heart isn't enlarged, no effusion. [SEP]");
  assert.is(bert.decode(ids, { skipSpecialTokens: true }), "the heart isn't enlarged, no effusion.");
  assert.is(bert.decode(bert.encode('i do not know')), 'i do not know');
  assert.throws(() => bert.decode([30522]), /id 30522, outside the vocabulary/);
});

test('tokenToId maps unknown tokens to [UNK]', () => {
  assert.is(bert.tokenToId('hello'), 7592);
  assert.is(bert.tokenToId('##hrer'), 17875);
  assert.is(bert.tokenToId('Hello'), UNK);
  assert.is(bert.idToToken(CLS), '[CLS]');
});

test('vocab.txt without [UNK] is rejected', () => {
  assert.throws(() => loadTokenizer('hello\nworld\n', 'words.txt'), /words.txt: the vocab.txt has no "\[UNK\]" line/);
});

test.run();
