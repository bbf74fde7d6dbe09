// The interface that every tokenizer implements, and the steps that do not depend on the model.
// Added tokens (such as <s> or [SEP]) are cut out of the text before the model runs. The
// special-token template, truncation and padding are applied to the model's ids afterwards.
// Browser-safe: no Node imports.

/** Ids of a tokenizer's special tokens; a field is absent when the vocabulary has no such token. */
export interface SpecialTokenIds {
  unk?: number;
  bos?: number;
  eos?: number;
  pad?: number;
  cls?: number;
  sep?: number;
  mask?: number;
}

export interface EncodeOptions {
  /**
   * Adds the special tokens of the tokenizer's template (the tokenizer.json `post_processor`):
   * `<s>` first for LLaMA-2 and Mistral, `[CLS]` … `[SEP]` for BERT. Default false.
   */
  addSpecialTokens?: boolean;
  /** Matches added tokens such as `<s>` or `[SEP]` written in the text itself. Default true. */
  parseSpecialTokens?: boolean;
  /** Maximum number of ids returned, counting the template's special tokens, which are kept. */
  maxLength?: number;
  /** Right-pads the ids to this length; longer results are returned unchanged. */
  padTo?: number;
  /** Id used for padding; default the tokenizer's pad token. */
  padId?: number;
}

export interface DecodeOptions {
  /** Drops added tokens marked special (`<s>`, `</s>`, `[CLS]`, `[PAD]` …). Default false. */
  skipSpecialTokens?: boolean;
}

export interface Tokenizer {
  /** File name or URL the tokenizer was loaded from, for error messages. */
  readonly name: string;
  /** The tokenizer.json `model.type`; "WordPiece" for a vocab.txt. */
  readonly modelType: 'BPE' | 'WordPiece';
  /** One more than the largest id of the vocabulary and the added tokens. */
  readonly vocabSize: number;
  readonly specialIds: SpecialTokenIds;
  /** Splits text into token strings, without the special-token template, truncation or padding. */
  tokenize(text: string, options?: Pick<EncodeOptions, 'parseSpecialTokens'>): string[];
  /** Encodes text to ids. Pieces outside the vocabulary become the unk id (BPE tries byte tokens first). */
  encode(text: string, options?: EncodeOptions): number[];
  /** Decodes ids to text; raises a RangeError for an id outside the vocabulary. */
  decode(ids: readonly number[], options?: DecodeOptions): string;
  /** Looks up a token's id: the unk id for a token outside the vocabulary, undefined if there is no unk token. */
  tokenToId(token: string): number | undefined;
  idToToken(id: number): string | undefined;
}

/** An entry of tokenizer.json `added_tokens`: matched in the raw text before normalization. */
export interface AddedToken {
  id: number;
  content: string;
  special: boolean;
  /** Absorbs the whitespace to the left of a match. */
  lstrip: boolean;
  /** Absorbs the whitespace to the right of a match. */
  rstrip: boolean;
  /** Matches only when no letter, digit, combining mark or underscore touches either end. */
  singleWord: boolean;
}

/** A piece of the input: plain text for the model (with its UTF-16 offset) or a matched added token. */
export type Segment = { text: string; offset: number } | { id: number; content: string };

const WORD_CHAR = /[\p{L}\p{N}\p{M}_]/u;
const WHITESPACE = /\s/u;

export class AddedTokens {
  /** Candidates by first UTF-16 code unit, longest first, so the scan finds the leftmost-longest match. */
  private readonly byFirstUnit = new Map<string, AddedToken[]>();
  private readonly byId = new Map<number, AddedToken>();

  constructor(readonly tokens: readonly AddedToken[]) {
    for (const token of tokens) {
      this.byId.set(token.id, token);
      if (token.content.length === 0) continue;
      const first = token.content[0];
      const list = this.byFirstUnit.get(first) ?? [];
      list.push(token);
      this.byFirstUnit.set(first, list);
    }
    for (const list of this.byFirstUnit.values()) list.sort((a, b) => b.content.length - a.content.length);
  }

  get(id: number): AddedToken | undefined {
    return this.byId.get(id);
  }

  isSpecial(id: number): boolean {
    return this.byId.get(id)?.special ?? false;
  }

  /**
   * Cuts the added tokens out of `text`, leftmost-longest first, and returns the pieces in order.
   * NOTE: tokens with `normalized: true` are matched in the raw text too, whereas HF tokenizers
   * match them in the normalized text. The LLaMA-2, Mistral and BERT files have none.
   */
  split(text: string): Segment[] {
    const segments: Segment[] = [];
    let textStart = 0;
    let position = 0;
    while (position < text.length) {
      const match = this.matchAt(text, position, textStart);
      if (!match) {
        position += 1;
        continue;
      }
      if (match.start > textStart) segments.push({ text: text.slice(textStart, match.start), offset: textStart });
      segments.push({ id: match.token.id, content: match.token.content });
      textStart = match.end;
      position = match.end;
    }
    if (textStart < text.length) segments.push({ text: text.slice(textStart), offset: textStart });
    return segments;
  }

  private matchAt(text: string, position: number, textStart: number): { token: AddedToken; start: number; end: number } | undefined {
    const candidates = this.byFirstUnit.get(text[position]);
    if (!candidates) return undefined;
    for (const token of candidates) {
      if (!text.startsWith(token.content, position)) continue;
      let start = position;
      let end = position + token.content.length;
      if (token.singleWord && (WORD_CHAR.test(text[start - 1] ?? '') || WORD_CHAR.test(text[end] ?? ''))) continue;
      if (token.lstrip) while (start > textStart && WHITESPACE.test(text[start - 1])) start -= 1;
      if (token.rstrip) while (end < text.length && WHITESPACE.test(text[end])) end += 1;
      return { token, start, end };
    }
    return undefined;
  }
}

/** Copies `ids` without the fields that are undefined, so `'pad' in specialIds` means a pad token exists. */
export function dropUndefined(ids: SpecialTokenIds): SpecialTokenIds {
  return Object.fromEntries(Object.entries(ids).filter(([, id]) => id !== undefined)) as SpecialTokenIds;
}

/** The special tokens put around one encoded text: `[CLS]` before and `[SEP]` after for BERT. */
export interface SpecialTemplate {
  prefix: number[];
  suffix: number[];
}

/**
 * Truncates the model's ids to fit `maxLength` together with the template, adds the template,
 * then right-pads to `padTo`. `defaultPadId` is the tokenizer's pad token, if it has one.
 */
export function finishIds(name: string, ids: number[], template: SpecialTemplate, options: EncodeOptions, defaultPadId: number | undefined): number[] {
  const { prefix, suffix } = template;
  let content = ids;
  if (options.maxLength !== undefined) {
    const reserved = prefix.length + suffix.length;
    if (!(Number.isInteger(options.maxLength) && options.maxLength >= reserved)) {
      throw new RangeError(`${name}: maxLength ${options.maxLength} is invalid; use an integer ≥ ${reserved} (the number of special tokens added)`);
    }
    content = content.slice(0, options.maxLength - reserved);
  }
  const out = [...prefix, ...content, ...suffix];

  if (options.padTo !== undefined) {
    if (!(Number.isInteger(options.padTo) && options.padTo >= 0)) throw new RangeError(`${name}: padTo ${options.padTo} is invalid; use a non-negative integer`);
    const padId = options.padId ?? defaultPadId;
    if (padId === undefined) throw new Error(`${name}: the tokenizer has no pad token; pass padId to choose the padding id`);
    while (out.length < options.padTo) out.push(padId);
  }
  return out;
}

// ---- Reading tokenizer.json ----

export type JsonObject = Record<string, unknown>;

export function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Parses tokenizer.json text, raising an error that names the file when it is not a JSON object. */
export function parseJsonObject(text: string, name: string): JsonObject {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new Error(`${name}: invalid JSON (${(error as Error).message})`);
  }
  if (!isObject(json)) throw new Error(`${name}: expected a JSON object (a HF tokenizer.json)`);
  return json;
}

/** Reads `model.vocab` ({token: id}) into a map and an id → token table. */
export function readVocab(model: JsonObject, name: string): { vocab: Map<string, number>; tokens: string[] } {
  if (!isObject(model.vocab)) throw new Error(`${name}: model.vocab is missing or not a {token: id} object`);
  const vocab = new Map<string, number>();
  const tokens: string[] = [];
  for (const [token, id] of Object.entries(model.vocab)) {
    if (!(Number.isInteger(id) && (id as number) >= 0)) throw new Error(`${name}: model.vocab["${token}"] is ${JSON.stringify(id)}, expected a non-negative integer id`);
    vocab.set(token, id as number);
    tokens[id as number] = token;
  }
  return { vocab, tokens };
}

/** Reads the `added_tokens` list of a tokenizer.json. */
export function readAddedTokens(json: JsonObject, name: string): AddedToken[] {
  const list = json.added_tokens ?? [];
  if (!Array.isArray(list)) throw new Error(`${name}: added_tokens must be a list`);
  return list.map((entry, i) => {
    if (!isObject(entry) || typeof entry.content !== 'string' || !Number.isInteger(entry.id)) {
      throw new Error(`${name}: added_tokens[${i}] needs an integer "id" and a string "content"`);
    }
    return {
      id: entry.id as number,
      content: entry.content,
      special: entry.special === true,
      lstrip: entry.lstrip === true,
      rstrip: entry.rstrip === true,
      singleWord: entry.single_word === true,
    };
  });
}

/**
 * Reads the special tokens placed around a single text from `post_processor`:
 * TemplateProcessing (its `single` list), BertProcessing and RobertaProcessing (`cls`, `sep`).
 */
export function readTemplate(json: JsonObject, name: string, idOf: (token: string) => number | undefined): SpecialTemplate {
  const processor = json.post_processor;
  if (processor === null || processor === undefined) return { prefix: [], suffix: [] };
  if (!isObject(processor)) throw new Error(`${name}: post_processor must be an object or null`);

  if (processor.type === 'TemplateProcessing') {
    const specials = isObject(processor.special_tokens) ? processor.special_tokens : {};
    const single = Array.isArray(processor.single) ? processor.single : [];
    const template: SpecialTemplate = { prefix: [], suffix: [] };
    let seenSequence = false;
    for (const piece of single) {
      if (isObject(piece) && isObject(piece.Sequence)) {
        seenSequence = true;
        continue;
      }
      const key = isObject(piece) && isObject(piece.SpecialToken) ? piece.SpecialToken.id : undefined;
      const special = typeof key === 'string' ? specials[key] : undefined;
      const ids = isObject(special) && Array.isArray(special.ids) ? (special.ids as number[]) : undefined;
      if (!ids) throw new Error(`${name}: post_processor.single has an entry ${JSON.stringify(piece)} without ids in special_tokens`);
      (seenSequence ? template.suffix : template.prefix).push(...ids);
    }
    return template;
  }

  if (processor.type === 'BertProcessing' || processor.type === 'RobertaProcessing') {
    const idOfPair = (pair: unknown, field: string): number => {
      if (Array.isArray(pair) && Number.isInteger(pair[1])) return pair[1] as number;
      const id = Array.isArray(pair) && typeof pair[0] === 'string' ? idOf(pair[0]) : undefined;
      if (id === undefined) throw new Error(`${name}: post_processor.${field} must be a [token, id] pair`);
      return id;
    };
    return { prefix: [idOfPair(processor.cls, 'cls')], suffix: [idOfPair(processor.sep, 'sep')] };
  }

  throw new Error(`${name}: post_processor type "${String(processor.type)}" is not supported; supported: TemplateProcessing, BertProcessing, RobertaProcessing`);
}
