import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { corpusBleu, rougeL, scoreReports } from '../s2d/metrics.ts';

/** Asserts |actual − expected| ≤ tolerance and prints both sides when it is not. */
function close(actual: number, expected: number, tolerance: number, label: string) {
  assert.ok(Math.abs(actual - expected) <= tolerance, `${label}: ours=${actual} | reference=${expected} (tolerance ${tolerance})`);
}

const references = [
  'the heart is normal in size . the lungs are clear .',
  'no acute cardiopulmonary abnormality .',
  'there is a small left pleural effusion . no pneumothorax .',
];
const hypotheses = [
  'the heart size is normal . the lungs are clear .',
  'no acute cardiopulmonary process .',
  'small left pleural effusion .',
];

// Expected values: pycocoevalcap's Bleu(4) and Rouge() outputs for these pairs, to 6 decimals.
test('scores match pycocoevalcap on three reports', () => {
  const scores = scoreReports(references, hypotheses);
  close(scores.bleu1, 0.682411, 5e-7, 'BLEU-1');
  close(scores.bleu2, 0.594259, 5e-7, 'BLEU-2');
  close(scores.bleu3, 0.512935, 5e-7, 'BLEU-3');
  close(scores.bleu4, 0.448025, 5e-7, 'BLEU-4');
  close(scores.rougeL, 0.749404, 5e-7, 'ROUGE-L');
});

test('single references equal one-element lists', () => {
  const asStrings = scoreReports(references, hypotheses);
  const asLists = scoreReports(references.map((text) => [text]), hypotheses);
  assert.equal(asLists, asStrings);
});

test('identical texts score 1', () => {
  const scores = scoreReports(references, references);
  for (const [name, value] of Object.entries(scores)) close(value, 1, 1e-9, name);
});

test('empty hypothesis scores 0', () => {
  const scores = scoreReports(['the lungs are clear .'], ['']);
  for (const [name, value] of Object.entries(scores)) {
    assert.ok(Number.isFinite(value), `${name} is ${value}, expected a finite number`);
    close(value, 0, 1e-9, name);
  }
});

test('BLEU clips repeated words', () => {
  // 'the' counts once against a reference that has it once: p1 = 1/4, no brevity penalty (T=4 > R=2).
  const [bleu1] = corpusBleu([['the cat']], ['the the the the']);
  close(bleu1, 0.25, 1e-9, 'BLEU-1');
});

test('BLEU brevity penalty', () => {
  // All hypothesis words match, T = 2, R = 6: BLEU-1 = exp(1 − 6/2).
  const [bleu1] = corpusBleu([['the cat sat on the mat']], ['the cat']);
  close(bleu1, Math.exp(-2), 1e-9, 'BLEU-1');
});

test('BLEU closest length ties to shorter', () => {
  // T = 4 is 1 away from both 3 and 5; R = 3 gives no penalty, R = 5 would give exp(1 − 5/4).
  const bleu = corpusBleu([['a b c', 'a b c d e']], ['a b c d']);
  for (let n = 0; n < 4; n++) close(bleu[n], 1, 1e-9, `BLEU-${n + 1}`);
});

test('BLEU is corpus-level, not a mean', () => {
  // Sentence 1 matches fully (4 of 4 unigrams), sentence 2 not at all (0 of 2): p1 = 4/6.
  // T = 6 and R = 4 + 2, so there is no brevity penalty.
  const [bleu1] = corpusBleu([['a b c d'], ['e f']], ['a b c d', 'x y']);
  close(bleu1, 4 / 6, 1e-9, 'BLEU-1');
});

test('ROUGE-L from LCS with beta 1.2', () => {
  // LCS("a b c d", "a c d e f") = 3: P = 3/5, R = 3/4.
  const precision = 3 / 5;
  const recall = 3 / 4;
  const expected = ((1 + 1.44) * precision * recall) / (recall + 1.44 * precision);
  close(rougeL(['a b c d'], 'a c d e f'), expected, 1e-12, 'ROUGE-L');
});

test('ROUGE-L maxes P and R separately', () => {
  // Reference 1 gives P = 2/2, R = 2/6; reference 2 gives P = 1/2, R = 1/1. The maxima P = 1 and
  // R = 1 give F = 1, although no single reference scores 1.
  close(rougeL(['a b c d e f', 'a'], 'a b'), 1, 1e-12, 'ROUGE-L');
});

test('scoreReports rejects mismatched lengths', () => {
  assert.throws(() => scoreReports(['a .', 'b .'], ['a .']), /2 reference entries for 1 hypotheses/);
  assert.throws(() => scoreReports([[]], ['a .']), /hypothesis 0 has no reference texts/);
  assert.throws(() => scoreReports([], []), /no hypotheses/);
});

test.run();
