// NLG metrics for report generation, computed the way the pycocoevalcap scorers (Bleu, Rouge)
// compute them, because published report-generation results use those scorers on
// space-separated, already-cleaned text:
//
// BLEU-n (corpus level): tokens from splitting on whitespace; per hypothesis, n-gram counts
// clipped by the maximum count in any one reference; summed over the corpus,
//   p_k = (Σ correct_k + 1e-15) / (Σ guess_k + 1e-9),   BLEU-n = (p_1 · … · p_n)^(1/n),
// times the brevity penalty exp(1 − R/T) when T < R, with T the total hypothesis length and R
// the total of the reference lengths closest to each hypothesis length (ties go to the shorter).
//
// ROUGE-L (mean over samples): tokens from splitting on single spaces; P = LCS / |hypothesis|
// and R = LCS / |reference|, each maximised over the references separately, and
// F = (1 + β²) P R / (R + β² P) with β = 1.2, or 0 when P or R is 0.

export interface ReportScores {
  bleu1: number;
  bleu2: number;
  bleu3: number;
  bleu4: number;
  rougeL: number;
}

const MAX_ORDER = 4;
const TINY = 1e-15;
const SMALL = 1e-9;
const ROUGE_BETA = 1.2;

/**
 * Scores hypotheses against references: `references[i]` is one reference text or a list of
 * them for `hypotheses[i]`. Texts are used as given, so clean both sides the same way first.
 */
export function scoreReports(references: string[][] | string[], hypotheses: string[]): ReportScores {
  if (references.length !== hypotheses.length) {
    throw new Error(`scoreReports: ${references.length} reference entries for ${hypotheses.length} hypotheses; pass one entry per hypothesis`);
  }
  if (hypotheses.length === 0) throw new Error('scoreReports: no hypotheses to score');
  const referenceLists = references.map((entry, i) => {
    const list = typeof entry === 'string' ? [entry] : entry;
    if (list.length === 0) throw new Error(`scoreReports: hypothesis ${i} has no reference texts`);
    return list;
  });

  const bleu = corpusBleu(referenceLists, hypotheses);
  let rougeSum = 0;
  for (let i = 0; i < hypotheses.length; i++) rougeSum += rougeL(referenceLists[i], hypotheses[i]);
  return { bleu1: bleu[0], bleu2: bleu[1], bleu3: bleu[2], bleu4: bleu[3], rougeL: rougeSum / hypotheses.length };
}

/** BLEU-1..4 over the corpus (see the file header for the formula). */
export function corpusBleu(references: string[][], hypotheses: string[]): number[] {
  const correct = new Array<number>(MAX_ORDER).fill(0);
  const guess = new Array<number>(MAX_ORDER).fill(0);
  let hypothesisLength = 0;
  let referenceLength = 0;

  for (let i = 0; i < hypotheses.length; i++) {
    const hypothesis = whitespaceTokens(hypotheses[i]);
    const referenceTokens = references[i].map(whitespaceTokens);

    for (let n = 1; n <= MAX_ORDER; n++) {
      // Clip each n-gram's count by its largest count in a single reference.
      const maxReferenceCounts = new Map<string, number>();
      for (const tokens of referenceTokens) {
        for (const [gram, count] of ngramCounts(tokens, n)) {
          maxReferenceCounts.set(gram, Math.max(maxReferenceCounts.get(gram) ?? 0, count));
        }
      }
      for (const [gram, count] of ngramCounts(hypothesis, n)) correct[n - 1] += Math.min(count, maxReferenceCounts.get(gram) ?? 0);
      guess[n - 1] += Math.max(0, hypothesis.length - n + 1);
    }

    hypothesisLength += hypothesis.length;
    referenceLength += closestLength(referenceTokens.map((tokens) => tokens.length), hypothesis.length);
  }

  const scores: number[] = [];
  let product = 1;
  for (let k = 0; k < MAX_ORDER; k++) {
    product *= (correct[k] + TINY) / (guess[k] + SMALL);
    scores.push(product ** (1 / (k + 1)));
  }
  const ratio = (hypothesisLength + TINY) / (referenceLength + SMALL);
  if (ratio < 1) {
    const brevityPenalty = Math.exp(1 - 1 / ratio);
    for (let k = 0; k < MAX_ORDER; k++) scores[k] *= brevityPenalty;
  }
  return scores;
}

/** ROUGE-L F-measure of one hypothesis against its references. */
export function rougeL(references: string[], hypothesis: string): number {
  // Splitting on single spaces (not on whitespace runs) matches pycocoevalcap, and it makes an
  // empty hypothesis one empty token, so its precision is 0 instead of 0/0.
  const candidate = hypothesis.split(' ');
  let precision = 0;
  let recall = 0;
  for (const reference of references) {
    const tokens = reference.split(' ');
    const lcs = lcsLength(tokens, candidate);
    precision = Math.max(precision, lcs / candidate.length);
    recall = Math.max(recall, lcs / tokens.length);
  }
  if (precision === 0 || recall === 0) return 0;
  const beta2 = ROUGE_BETA * ROUGE_BETA;
  return ((1 + beta2) * precision * recall) / (recall + beta2 * precision);
}

function whitespaceTokens(text: string): string[] {
  return text.split(/\s+/).filter((token) => token !== '');
}

/** Counts of the n-grams of `tokens`, keyed by the n tokens joined with spaces (tokens have none). */
function ngramCounts(tokens: string[], n: number): Map<string, number> {
  const counts = new Map<string, number>();
  for (let start = 0; start + n <= tokens.length; start++) {
    const gram = tokens.slice(start, start + n).join(' ');
    counts.set(gram, (counts.get(gram) ?? 0) + 1);
  }
  return counts;
}

/** Picks the reference length nearest to `length`, the shorter one on a tie. */
function closestLength(referenceLengths: number[], length: number): number {
  let best = referenceLengths[0];
  for (const candidate of referenceLengths) {
    const distance = Math.abs(candidate - length);
    const bestDistance = Math.abs(best - length);
    if (distance < bestDistance || (distance === bestDistance && candidate < best)) best = candidate;
  }
  return best;
}

function lcsLength(a: string[], b: string[]): number {
  // One row of the dynamic-programming table at a time: row[j] = LCS of a[..i] and b[..j].
  let previous = new Array<number>(b.length + 1).fill(0);
  let current = new Array<number>(b.length + 1).fill(0);
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      current[j] = a[i - 1] === b[j - 1] ? previous[j - 1] + 1 : Math.max(previous[j], current[j - 1]);
    }
    [previous, current] = [current, previous];
  }
  return previous[b.length];
}
