// Rule-based key phrases for stage-3 training (key-phrase grounding): the sentences and clauses
// of a report that state a finding, present or absent, such as "Small left pleural effusion."
// or "No pneumothorax."
//
// NOTE: S2D-Align builds its phrases from RadGraph entities and relations rewritten by an LLM.
// RadGraph is not available here, so this keyword rule replaces it: a clause counts when it
// names a finding or a normal appearance from FINDING_TERMS, or starts with a negation ("no ...",
// "without ...").
import { Random } from '../../engine/random.ts';

/** Finding words as regular-expression stems, matched as whole words, case-insensitive. */
export const FINDING_TERMS: readonly string[] = [
  'opaci(?:ty|ties|fication|fications|fied)', 'condensation', 'consolidat(?:ion|ions|ed|ive)', 'effusions?', 'pneumothora(?:x|ces)',
  'o?edema(?:tous)?', 'atelecta(?:sis|ses|tic)', 'cardiomegaly', 'nodul(?:e|es|ar)', 'infiltrat(?:e|es|ion|ions|ive)',
  'ground[- ]glass', 'pneumonias?', 'fractures?', 'mass(?:es)?', 'lesions?', 'thickening', 'cavit(?:y|ies|ation|ary)',
  'emphysema(?:tous)?', 'fibro(?:sis|tic)', 'granulomas?', 'calcifi(?:ed|cation|cations)', 'hernias?', 'scar(?:s|ring)?',
  'enlarge(?:d|ment)', 'hyperinfla(?:tion|ted)', 'hyperexpan(?:ded|sion)', 'bronchiectasis', 'reticul(?:ar|ation|onodular)',
  'interstitial', 'air[- ]?space', 'congestion', 'crazy[- ]paving', 'lymphadenopathy', 'collapsed?', 'abnormalit(?:y|ies)',
  'haz(?:y|iness)', 'shadow(?:s|ing)?', 'tortu(?:ous|osity)', 'pneumoperitoneum', 'cardiomediastinal', 'tubes?',
  'catheters?', 'pacemakers?', 'sternotomy', 'intubat(?:ed|ion)',
  // Statements of normal appearance are observations too ("Lungs clear.", "Heart size normal.").
  'normal', 'unremarkable', 'clear', 'intact',
];

// Cues that open a statement of absence.
const NEGATION_START = /^(?:no|without|negative for|free of|absence of|resolution of|resolved)\b/i;
const FINDING = new RegExp(`\\b(?:${FINDING_TERMS.join('|')})\\b`, 'i');

// A clause with more words than this is split further at commas.
const MAX_CLAUSE_WORDS = 20;

/** Returns every key phrase of a report, in report order, without duplicates. */
export function findKeyPhrases(report: string): string[] {
  const phrases: string[] = [];
  const seen = new Set<string>();
  for (const sentence of splitSentences(report)) {
    for (const clause of splitClauses(sentence)) {
      if (!FINDING.test(clause) && !NEGATION_START.test(clause)) continue;
      const phrase = toPhrase(clause);
      const key = phrase.toLowerCase();
      if (seen.has(key)) continue;
      seen.add(key);
      phrases.push(phrase);
    }
  }
  return phrases;
}

/**
 * Picks `count` phrases at random (all of them when there are no more than `count`), keeping
 * report order. The same seed gives the same picks.
 */
export function sampleKeyPhrases(phrases: readonly string[], count: number, seed: number): string[] {
  if (!(Number.isInteger(count) && count >= 0)) throw new Error(`sampleKeyPhrases: count must be a non-negative integer, got ${count}`);
  if (phrases.length <= count) return [...phrases];
  const indices = phrases.map((_, i) => i);
  const chosen = new Random(seed).shuffle(indices).slice(0, count).sort((a, b) => a - b);
  return chosen.map((i) => phrases[i]);
}

/**
 * Finds the key phrases of one report and, when `maxPhrases` is given, samples that many of them
 * with `seed` (default 0).
 */
export function extractKeyPhrases(report: string, options: { maxPhrases?: number; seed?: number } = {}): string[] {
  const phrases = findKeyPhrases(report);
  if (options.maxPhrases === undefined) return phrases;
  return sampleKeyPhrases(phrases, options.maxPhrases, options.seed ?? 0);
}

// Sentence ends: ".", "!", "?" or ";" not between two digits (so "2.5 cm" stays), or a line break.
function splitSentences(text: string): string[] {
  return text
    .split(/(?<!\d)[.!?;]|[.!?;](?!\d)|\n+/)
    .map((sentence) => sentence.trim())
    .filter((sentence) => sentence !== '');
}

function splitClauses(sentence: string): string[] {
  // A sentence that opens with a negation lists absent findings ("No effusion, pneumothorax or
  // consolidation"): splitting it would separate later findings from the "no".
  if (NEGATION_START.test(sentence)) return [sentence];

  const clauses = sentence.split(/\s+(?:but|whereas|while)\s+/i);
  return clauses.flatMap((clause) => (wordCount(clause) > MAX_CLAUSE_WORDS ? clause.split(',') : [clause]));
}

function wordCount(text: string): number {
  return text.split(/\s+/).filter((word) => word !== '').length;
}

/** Trims, collapses spaces, capitalises the first letter and ends the phrase with ".". */
function toPhrase(clause: string): string {
  const text = clause.replace(/\s+/g, ' ').replace(/^[\s,:-]+|[\s,:-]+$/g, '');
  return `${text.charAt(0).toUpperCase()}${text.slice(1)}.`;
}
