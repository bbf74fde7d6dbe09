// Loads a real tokenizer from the text of a HF `tokenizer.json` or a BERT `vocab.txt` and returns it
// behind one interface (weights/tokenizer-common.ts):
//   model.type "BPE"       → BpeTokenizer (LLaMA-2 / Vicuna / Mistral, SentencePiece conventions)
//   model.type "WordPiece" → WordPieceTokenizer (BERT)
//   vocab.txt              → WordPieceTokenizer with BERT's defaults (uncased unless `lowercase: false`)
// Unknown pieces map to the unk id: BPE first tries <0xXX> byte tokens when the file enables
// byte_fallback, and WordPiece maps a whole word without a full split to [UNK].
// Browser-safe: the caller reads the file (fetch, File, node:fs) and passes its text.
import { BpeTokenizer } from './tokenizer-bpe.ts';
import { isObject, parseJsonObject, type Tokenizer } from './tokenizer-common.ts';
import { WordPieceTokenizer, type VocabTxtOptions } from './tokenizer-wordpiece.ts';

export type { BpeEncodeOptions } from './tokenizer-bpe.ts';
export type { DecodeOptions, EncodeOptions, SpecialTokenIds, Tokenizer } from './tokenizer-common.ts';
export { BpeTokenizer, WordPieceTokenizer };

export const SUPPORTED_MODEL_TYPES = ['BPE', 'WordPiece'] as const;

/**
 * Parses tokenizer text. `name` (a file name or URL) appears in errors and decides the format:
 * a name ending in ".txt" is read as vocab.txt, one ending in ".json" as tokenizer.json, and
 * any other name by its content (a JSON object or not).
 */
export function loadTokenizer(text: string, name: string, options: VocabTxtOptions = {}): Tokenizer {
  const isJson = name.endsWith('.json') || (!name.endsWith('.txt') && text.trimStart().startsWith('{'));
  if (!isJson) return WordPieceTokenizer.fromVocabTxt(text, name, options);

  const json = parseJsonObject(text, name);
  const model = json.model;
  if (!isObject(model)) throw new Error(`${name}: no "model" section; expected a HF tokenizer.json`);
  switch (model.type) {
    case 'BPE':
      return BpeTokenizer.fromJSON(json, name);
    case 'WordPiece':
      return WordPieceTokenizer.fromJSON(json, name);
    default:
      throw new Error(`${name}: tokenizer model type ${JSON.stringify(model.type ?? null)} is not supported; supported types: ${SUPPORTED_MODEL_TYPES.join(', ')}`);
  }
}
