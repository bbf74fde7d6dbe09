// BERT WordPiece tokenizer, from a `vocab.txt` (one token per line, id = line number) or a HF
// tokenizer.json with `model.type` "WordPiece".
//
// Encoding, per piece of text between added tokens ([CLS], [SEP], [MASK] …):
//   BasicTokenizer: drop control characters, map whitespace to spaces, space out CJK ideographs,
//     strip accents (NFD, drop combining marks) and lower-case for uncased vocabularies,
//     split on whitespace and make each punctuation character its own word;
//   WordPiece: per word, greedy longest-match-first against the vocabulary, with "##" before
//     every piece that does not start the word. A word with no full split, or longer than
//     `max_input_chars_per_word` (100) characters, becomes [UNK] as a whole.
// Browser-safe: no Node imports.
import {
  AddedTokens,
  dropUndefined,
  finishIds,
  isObject,
  parseJsonObject,
  readAddedTokens,
  readTemplate,
  readVocab,
  type AddedToken,
  type DecodeOptions,
  type EncodeOptions,
  type JsonObject,
  type SpecialTemplate,
  type SpecialTokenIds,
  type Tokenizer,
} from './tokenizer-common.ts';
import { compileDecoder, compileNormalizer, compilePreTokenizer, type Decode, type Normalize, type PreTokenize } from './tokenizer-pipeline.ts';

/** BERT's special tokens, which a vocab.txt lists among the ordinary ones. */
const BERT_SPECIAL_TOKENS = { unk: '[UNK]', cls: '[CLS]', sep: '[SEP]', pad: '[PAD]', mask: '[MASK]' } as const;

export interface VocabTxtOptions {
  /** Lower-cases and strips accents, as bert-base-uncased does. Default true. */
  lowercase?: boolean;
}

/** Settings of the WordPiece model itself. */
interface WordPieceModelOptions {
  unkToken: string;
  /** `continuing_subword_prefix`: "##" for BERT. */
  continuingSubwordPrefix: string;
  /** `max_input_chars_per_word`: longer words become the unk token. */
  maxInputCharsPerWord: number;
}

export class WordPieceTokenizer implements Tokenizer {
  readonly modelType = 'WordPiece';
  readonly vocabSize: number;
  readonly specialIds: SpecialTokenIds;
  private readonly idToTokenTable: string[];
  private readonly unkId: number;

  constructor(
    readonly name: string,
    private readonly vocab: Map<string, number>,
    tokens: string[],
    private readonly added: AddedTokens,
    private readonly template: SpecialTemplate,
    private readonly model: WordPieceModelOptions,
    private readonly normalize: Normalize,
    private readonly preTokenize: PreTokenize,
    private readonly decodeTokens: Decode,
  ) {
    this.idToTokenTable = [...tokens];
    for (const token of added.tokens) this.idToTokenTable[token.id] = token.content;
    this.vocabSize = this.idToTokenTable.length;

    const unkId = this.lookUp(model.unkToken);
    if (unkId === undefined) throw new Error(`${name}: the unk token "${model.unkToken}" is not in the vocabulary`);
    this.unkId = unkId;
    this.specialIds = dropUndefined({
      unk: unkId,
      cls: this.lookUp(BERT_SPECIAL_TOKENS.cls) ?? template.prefix[0],
      sep: this.lookUp(BERT_SPECIAL_TOKENS.sep) ?? template.suffix.at(-1),
      pad: this.lookUp(BERT_SPECIAL_TOKENS.pad),
      mask: this.lookUp(BERT_SPECIAL_TOKENS.mask),
    });
  }

  /** Builds the tokenizer from a parsed tokenizer.json whose `model.type` is "WordPiece". */
  static fromJSON(json: JsonObject, name: string): WordPieceTokenizer {
    const model = json.model;
    if (!isObject(model) || model.type !== 'WordPiece') throw new Error(`${name}: model.type must be "WordPiece" for WordPieceTokenizer`);
    const { vocab, tokens } = readVocab(model, name);
    const added = readAddedTokens(json, name);
    const idOf = (token: string) => added.find((t) => t.content === token)?.id ?? vocab.get(token);
    return new WordPieceTokenizer(
      name,
      vocab,
      tokens,
      new AddedTokens(added),
      readTemplate(json, name, idOf),
      readModelOptions(model, name),
      compileNormalizer(json.normalizer, name),
      compilePreTokenizer(json.pre_tokenizer, name),
      compileDecoder(json.decoder, name),
    );
  }

  /** Parses tokenizer.json text whose `model.type` is "WordPiece". */
  static fromText(text: string, name: string): WordPieceTokenizer {
    return WordPieceTokenizer.fromJSON(parseJsonObject(text, name), name);
  }

  /**
   * Builds the tokenizer from vocab.txt text with the settings of HF's BertTokenizer: the five
   * bracketed BERT special tokens are added tokens, [CLS] … [SEP] is the template, "##" marks
   * continuations, and words over 100 characters become [UNK].
   */
  static fromVocabTxt(text: string, name: string, options: VocabTxtOptions = {}): WordPieceTokenizer {
    const lines = text.split('\n').map((line) => (line.endsWith('\r') ? line.slice(0, -1) : line));
    if (lines.at(-1) === '') lines.pop();
    if (lines.length === 0) throw new Error(`${name}: the vocab.txt is empty`);
    const vocab = new Map<string, number>();
    lines.forEach((token, id) => {
      if (!vocab.has(token)) vocab.set(token, id);
    });

    const added: AddedToken[] = [];
    for (const content of Object.values(BERT_SPECIAL_TOKENS)) {
      const id = vocab.get(content);
      if (id !== undefined) added.push({ id, content, special: true, lstrip: false, rstrip: false, singleWord: false });
    }
    if (!vocab.has(BERT_SPECIAL_TOKENS.unk)) throw new Error(`${name}: the vocab.txt has no "[UNK]" line; is it a BERT WordPiece vocabulary?`);
    const cls = vocab.get(BERT_SPECIAL_TOKENS.cls);
    const sep = vocab.get(BERT_SPECIAL_TOKENS.sep);
    const template = cls !== undefined && sep !== undefined ? { prefix: [cls], suffix: [sep] } : { prefix: [], suffix: [] };

    const lowercase = options.lowercase ?? true;
    return new WordPieceTokenizer(
      name,
      vocab,
      lines,
      new AddedTokens(added),
      template,
      { unkToken: BERT_SPECIAL_TOKENS.unk, continuingSubwordPrefix: '##', maxInputCharsPerWord: 100 },
      compileNormalizer({ type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: null, lowercase }, name),
      compilePreTokenizer({ type: 'BertPreTokenizer' }, name),
      compileDecoder({ type: 'WordPiece', prefix: '##', cleanup: true }, name),
    );
  }

  tokenize(text: string, options: Pick<EncodeOptions, 'parseSpecialTokens'> = {}): string[] {
    return this.encodeText(text, options.parseSpecialTokens ?? true).map((id) => this.idToTokenTable[id]);
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    const ids = this.encodeText(text, options.parseSpecialTokens ?? true);
    const template = options.addSpecialTokens ? this.template : { prefix: [], suffix: [] };
    return finishIds(this.name, ids, template, options, this.specialIds.pad);
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    const tokens: string[] = [];
    for (const id of ids) {
      const token = this.idToTokenTable[id];
      if (token === undefined) throw new RangeError(`${this.name}: decode got id ${id}, outside the vocabulary (0 … ${this.vocabSize - 1})`);
      if (options.skipSpecialTokens && this.added.isSpecial(id)) continue;
      tokens.push(token);
    }
    return this.decodeTokens(tokens).join('');
  }

  tokenToId(token: string): number {
    return this.lookUp(token) ?? this.unkId;
  }

  idToToken(id: number): string | undefined {
    return this.idToTokenTable[id];
  }

  private lookUp(token: string): number | undefined {
    return this.added.tokens.find((t) => t.content === token)?.id ?? this.vocab.get(token);
  }

  /** Runs added-token matching, normalizer, pre-tokenizer and WordPiece; no template. */
  private encodeText(text: string, parseSpecialTokens: boolean): number[] {
    const segments = parseSpecialTokens ? this.added.split(text) : [{ text, offset: 0 }];
    const ids: number[] = [];
    for (const segment of segments) {
      if ('id' in segment) {
        ids.push(segment.id);
        continue;
      }
      for (const word of this.preTokenize(this.normalize(segment.text), segment.offset === 0)) this.encodeWord(word, ids);
    }
    return ids;
  }

  /** Splits one word greedily, longest match first, and appends the pieces' ids, or only the unk id when a part has no match. */
  private encodeWord(word: string, out: number[]): void {
    const chars = Array.from(word);
    if (chars.length > this.model.maxInputCharsPerWord) {
      out.push(this.unkId);
      return;
    }
    const pieces: number[] = [];
    let start = 0;
    while (start < chars.length) {
      let found: number | undefined;
      let end = chars.length;
      for (; end > start; end--) {
        const body = chars.slice(start, end).join('');
        found = this.vocab.get(start > 0 ? this.model.continuingSubwordPrefix + body : body);
        if (found !== undefined) break;
      }
      if (found === undefined) {
        out.push(this.unkId);
        return;
      }
      pieces.push(found);
      start = end;
    }
    out.push(...pieces);
  }
}

function readModelOptions(model: JsonObject, name: string): WordPieceModelOptions {
  const unkToken = model.unk_token ?? BERT_SPECIAL_TOKENS.unk;
  if (typeof unkToken !== 'string') throw new Error(`${name}: model.unk_token must be a string`);
  const prefix = model.continuing_subword_prefix ?? '##';
  if (typeof prefix !== 'string') throw new Error(`${name}: model.continuing_subword_prefix must be a string`);
  const maxChars = model.max_input_chars_per_word ?? 100;
  if (!(Number.isInteger(maxChars) && (maxChars as number) > 0)) throw new Error(`${name}: model.max_input_chars_per_word must be a positive integer`);
  return { unkToken, continuingSubwordPrefix: prefix, maxInputCharsPerWord: maxChars as number };
}
