// The tokenizer interface of the training pipeline, with three implementations: the tiny
// preset's word-level Vocabulary (decoder and text encoder alike), a LLaMA BPE tokenizer for
// the decoder and a BERT WordPiece tokenizer for the text encoder of the `paper` preset.
//
// `encode` returns the ids of the text alone. The decoder's <bos> and <eos> are added when a
// batch is built (batches.ts), and so are the [CLS] … [SEP] that a BERT encoder expects
// around each reference report or set of key phrases (see textEncoderIds).
import { BpeTokenizer, WordPieceTokenizer, loadTokenizer, type Tokenizer } from '../weights/tokenizer.ts';
import type { SpecialIds, TextEncoderIds } from './batches.ts';
import type { Vocabulary } from './data/vocab.ts';

export interface ReportTokenizer {
  /** The file or vocabulary the ids come from, for messages. */
  readonly name: string;
  /** One more than the largest id; the model's embedding needs at least this many rows. */
  readonly vocabSize: number;
  readonly padId: number;
  /** <bos> for a decoder tokenizer; [CLS] for BERT. */
  readonly bosId: number;
  /** <eos> for a decoder tokenizer; [SEP] for BERT. */
  readonly eosId: number;
  readonly unkId?: number;
  /** Whether text-encoder inputs are framed as bosId … eosId, as BERT's [CLS] … [SEP] are. */
  readonly framesEncoderInput: boolean;
  /** Ids of `text` without special tokens, cut to `maxLength` ids. */
  encode(text: string, options?: { maxLength?: number }): number[];
  /** Text of generated ids: stops at the first eosId and leaves out special tokens. */
  decode(ids: ArrayLike<number>): string;
}

/** Wraps the tiny preset's word-level vocabulary (<pad>, <bos>, <eos>, <unk> are ids 0–3). */
export function wordLevelTokenizer(vocab: Vocabulary): ReportTokenizer {
  return {
    name: 'word-level vocabulary',
    vocabSize: vocab.size,
    padId: vocab.padId,
    bosId: vocab.bosId,
    eosId: vocab.eosId,
    unkId: vocab.unkId,
    framesEncoderInput: false,
    encode: (text, options = {}) => vocab.encode(text, { maxLength: options.maxLength, addEos: false }),
    decode: (ids) => vocab.decode(ids),
  };
}

/** Ids up to the first `eos`, as a plain array. */
function untilEos(ids: ArrayLike<number>, eos: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < ids.length && ids[i] !== eos; i++) out.push(ids[i]);
  return out;
}

/**
 * Wraps a LLaMA-style BPE tokenizer (LLaMA-2, Vicuna) for the decoder. LLaMA-2's vocabulary
 * has no <pad>, so padding uses <unk>. Padded positions are never read, because their targets
 * are ignored and attention is causal.
 */
export function llamaReportTokenizer(tokenizer: BpeTokenizer): ReportTokenizer {
  const { bos, eos, unk, pad } = tokenizer.specialIds;
  if (bos === undefined || eos === undefined) {
    throw new Error(`${tokenizer.name}: the tokenizer has no <s> or </s> token; the decoder needs both (use the LLaMA model's tokenizer.json)`);
  }
  const padId = pad ?? unk;
  if (padId === undefined) throw new Error(`${tokenizer.name}: the tokenizer has neither <pad> nor <unk>, so it has no id to pad with`);
  return {
    name: tokenizer.name,
    vocabSize: tokenizer.vocabSize,
    padId,
    bosId: bos,
    eosId: eos,
    unkId: unk,
    framesEncoderInput: false,
    encode: (text, options = {}) => tokenizer.encode(text, { addSpecialTokens: false, parseSpecialTokens: false, maxLength: options.maxLength }),
    decode: (ids) => tokenizer.decode(untilEos(ids, eos), { skipSpecialTokens: true }),
  };
}

/** Wraps a BERT WordPiece tokenizer for the text encoder, whose texts are framed as [CLS] … [SEP] and padded with [PAD]. */
export function bertReportTokenizer(tokenizer: WordPieceTokenizer): ReportTokenizer {
  const { cls, sep, pad, unk } = tokenizer.specialIds;
  if (cls === undefined || sep === undefined || pad === undefined) {
    throw new Error(`${tokenizer.name}: the vocabulary lacks [CLS], [SEP] or [PAD]; the BERT text encoder needs all three`);
  }
  return {
    name: tokenizer.name,
    vocabSize: tokenizer.vocabSize,
    padId: pad,
    bosId: cls,
    eosId: sep,
    unkId: unk,
    framesEncoderInput: true,
    encode: (text, options = {}) => tokenizer.encode(text, { addSpecialTokens: false, parseSpecialTokens: false, maxLength: options.maxLength }),
    decode: (ids) => tokenizer.decode(untilEos(ids, sep), { skipSpecialTokens: true }),
  };
}

/**
 * Parses tokenizer text for one side of the model: `decoder` needs a BPE tokenizer.json,
 * `text encoder` a WordPiece tokenizer.json or vocab.txt (`lowercase` applies to vocab.txt).
 */
export function parseReportTokenizer(text: string, name: string, side: 'decoder' | 'text encoder', options: { lowercase?: boolean } = {}): ReportTokenizer {
  const tokenizer: Tokenizer = loadTokenizer(text, name, options);
  if (side === 'decoder') {
    if (!(tokenizer instanceof BpeTokenizer)) throw new Error(`${name}: the decoder needs a BPE tokenizer.json (LLaMA-style), got a ${tokenizer.modelType} tokenizer`);
    return llamaReportTokenizer(tokenizer);
  }
  if (!(tokenizer instanceof WordPieceTokenizer)) throw new Error(`${name}: the text encoder needs a BERT WordPiece vocab.txt or tokenizer.json, got a ${tokenizer.modelType} tokenizer`);
  return bertReportTokenizer(tokenizer);
}

/**
 * Returns the decoder's special ids, plus the text encoder's when its tokenizer frames inputs
 * or differs from the decoder's. `textMaxLength` is the encoder's position limit.
 */
export function pipelineIds(decoder: ReportTokenizer, text: ReportTokenizer, textMaxLength: number): SpecialIds {
  const ids: SpecialIds = { pad: decoder.padId, bos: decoder.bosId, eos: decoder.eosId, unk: decoder.unkId };
  if (text !== decoder || text.framesEncoderInput) ids.text = textEncoderIds(text, textMaxLength);
  return ids;
}

/** Returns the framing and padding ids of text-encoder inputs for `tokenizer`. */
export function textEncoderIds(tokenizer: ReportTokenizer, maxLength: number): TextEncoderIds {
  if (!tokenizer.framesEncoderInput) return { pad: tokenizer.padId, maxLength };
  return { pad: tokenizer.padId, cls: tokenizer.bosId, sep: tokenizer.eosId, maxLength };
}
