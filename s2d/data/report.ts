// Report cleaning in the style of R2Gen: lower case, "." and "," as tokens of their own, other
// punctuation dropped, one space between tokens, and a final "." when the report has words.
// Example: "Heart size is normal. No effusion, no pneumothorax!" →
// "heart size is normal . no effusion , no pneumothorax ."
//
// Differences from R2Gen's cleaner, which drops commas and joins words split by "/" or "-":
// commas are kept as tokens, dropped punctuation separates words ("ground-glass" →
// "ground glass"), and decimal numbers stay one token ("2.5").

// A list number such as "1." or "2)" at the start of the report or of a sentence.
const LIST_NUMBER = /(^|[.:;]\s+)\d{1,2}[.)]\s+(?=\p{L})/gu;

// Decimal numbers (with any letters that follow, as in "1.5cm"), words, or "." and ",".
const TOKEN = /\p{N}+(?:\.\p{N}+)+[\p{L}\p{N}]*|[\p{L}\p{N}]+|[.,]/gu;

/** Splits a report into cleaned tokens (words, ".", ","). Cleaning twice changes nothing. */
export function tokenizeReport(text: string): string[] {
  const lower = text
    .toLowerCase()
    .replace(/['’`]/g, '')
    .replace(LIST_NUMBER, '$1 . ');
  const raw = lower.match(TOKEN) ?? [];

  // Merge runs of punctuation (". ," or ". .") into one token; a "." wins over ",".
  const tokens: string[] = [];
  for (const token of raw) {
    const isPunctuation = token === '.' || token === ',';
    const previous = tokens[tokens.length - 1];
    if (!isPunctuation) tokens.push(token);
    else if (previous === undefined) continue;
    else if (previous === '.' || previous === ',') tokens[tokens.length - 1] = previous === '.' || token === '.' ? '.' : ',';
    else tokens.push(token);
  }

  if (tokens.length > 0) {
    if (tokens[tokens.length - 1] === ',') tokens[tokens.length - 1] = '.';
    else if (tokens[tokens.length - 1] !== '.') tokens.push('.');
  }
  return tokens;
}

/** Returns the cleaned report: tokenizeReport's tokens joined by single spaces. */
export function cleanReport(text: string): string {
  return tokenizeReport(text).join(' ');
}
