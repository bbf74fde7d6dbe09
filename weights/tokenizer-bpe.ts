// BPE tokenizer for HF tokenizer.json files with `model.type` "BPE" in the SentencePiece style of
// LLaMA-2, Vicuna and Mistral: spaces become "▁", one "▁" is prepended, merges apply by rank, and
// characters outside the vocabulary fall back to <0xXX> tokens of their UTF-8 bytes.
//
// Encoding, per piece of text between added tokens:
//   normalizer ("Prepend ▁", "Replace ' ' → ▁") → pre_tokenizer (none or Metaspace)
//   → one symbol per character (byte tokens or unk when not in the vocabulary)
//   → repeatedly merge the adjacent pair with the lowest merge rank, leftmost first.
// The merge loop is a priority queue over a linked list of symbols, O(n log n) in the text length.
// Decoding runs the tokenizer.json `decoder` chain (Replace ▁ → ' ', ByteFallback, Fuse, Strip).
//
// NOTE: byte-level BPE (GPT-2, LLaMA-3: pre_tokenizer "ByteLevel") is not supported and raises an
// error when loaded. Merge dropout is ignored, as at inference in HF tokenizers.
// Browser-safe: no Node imports.
import { compileDecoder, compileNormalizer, compilePreTokenizer, type Decode, type Normalize, type PreTokenize } from './tokenizer-pipeline.ts';
import {
  AddedTokens,
  dropUndefined,
  finishIds,
  isObject,
  parseJsonObject,
  readAddedTokens,
  readTemplate,
  readVocab,
  type DecodeOptions,
  type EncodeOptions,
  type JsonObject,
  type SpecialTemplate,
  type SpecialTokenIds,
  type Tokenizer,
} from './tokenizer-common.ts';

export interface BpeEncodeOptions extends EncodeOptions {
  /** Puts `<s>` first (true) or nothing (false), replacing the template's prefix. */
  addBos?: boolean;
  /** Puts `</s>` last (true) or nothing (false), replacing the template's suffix. */
  addEos?: boolean;
}

/** A merge rule: the pair's priority (lower merges first) and the id of the merged token. */
interface Merge {
  rank: number;
  id: number;
}

/** Settings of the tokenizer.json `model` section other than vocab and merges. */
interface BpeModelOptions {
  unkId: number | undefined;
  /** `fuse_unk`: consecutive unknown characters become one unk token. */
  fuseUnk: boolean;
  /** `byte_fallback`: unknown characters become <0xXX> tokens when all their bytes exist. */
  byteFallback: boolean;
  /** `continuing_subword_prefix`, put before every character but the first of a word. */
  continuingSubwordPrefix: string;
  /** `end_of_word_suffix`, put after the last character of a word. */
  endOfWordSuffix: string;
  /** `ignore_merges`: a word found whole in the vocabulary is one token, without merging. */
  ignoreMerges: boolean;
}

export class BpeTokenizer implements Tokenizer {
  readonly modelType = 'BPE';
  readonly vocabSize: number;
  readonly specialIds: SpecialTokenIds;
  /** Id of each byte's <0xXX> token, or -1 where the vocabulary lacks it. */
  private readonly byteIds = new Int32Array(256).fill(-1);
  private readonly idToTokenTable: string[];

  constructor(
    readonly name: string,
    private readonly vocab: Map<string, number>,
    tokens: string[],
    /** Merge rules keyed by mergeKey(leftId, rightId). */
    private readonly merges: Map<number, Merge>,
    private readonly added: AddedTokens,
    private readonly template: SpecialTemplate,
    private readonly model: BpeModelOptions,
    private readonly normalize: Normalize,
    private readonly preTokenize: PreTokenize,
    private readonly decodeTokens: Decode,
  ) {
    this.idToTokenTable = [...tokens];
    for (const token of added.tokens) this.idToTokenTable[token.id] = token.content;
    this.vocabSize = this.idToTokenTable.length;

    for (let byte = 0; byte < 256; byte++) {
      const id = vocab.get(byteToken(byte));
      if (id !== undefined) this.byteIds[byte] = id;
    }

    // LLaMA-style files name BOS and EOS only in tokenizer_config.json, so use the usual names.
    const find = (token: string) => this.added.tokens.find((t) => t.content === token)?.id ?? vocab.get(token);
    this.specialIds = dropUndefined({
      unk: model.unkId,
      bos: find('<s>') ?? template.prefix[0],
      eos: find('</s>') ?? template.suffix.at(-1),
      pad: find('<pad>'),
    });
  }

  /** Builds the tokenizer from a parsed tokenizer.json whose `model.type` is "BPE". */
  static fromJSON(json: JsonObject, name: string): BpeTokenizer {
    const model = json.model;
    if (!isObject(model) || model.type !== 'BPE') throw new Error(`${name}: model.type must be "BPE" for BpeTokenizer`);
    const { vocab, tokens } = readVocab(model, name);
    const added = readAddedTokens(json, name);
    if (tokens.length > MAX_IDS) throw new Error(`${name}: model.vocab has ids up to ${tokens.length - 1}; BpeTokenizer supports ids below ${MAX_IDS}`);
    const continuingSubwordPrefix = typeof model.continuing_subword_prefix === 'string' ? model.continuing_subword_prefix : '';
    const merges = readMerges(model.merges, vocab, continuingSubwordPrefix, name);

    const unkToken = model.unk_token;
    const unkId = typeof unkToken === 'string' ? vocab.get(unkToken) ?? added.find((t) => t.content === unkToken)?.id : undefined;
    if (typeof unkToken === 'string' && unkId === undefined) throw new Error(`${name}: model.unk_token "${unkToken}" is not in the vocabulary`);

    const idOf = (token: string) => vocab.get(token) ?? added.find((t) => t.content === token)?.id;
    return new BpeTokenizer(
      name,
      vocab,
      tokens,
      merges,
      new AddedTokens(added),
      readTemplate(json, name, idOf),
      {
        unkId,
        fuseUnk: model.fuse_unk === true,
        byteFallback: model.byte_fallback === true,
        continuingSubwordPrefix,
        endOfWordSuffix: typeof model.end_of_word_suffix === 'string' ? model.end_of_word_suffix : '',
        ignoreMerges: model.ignore_merges === true,
      },
      compileNormalizer(json.normalizer, name),
      compilePreTokenizer(json.pre_tokenizer, name),
      compileDecoder(json.decoder, name),
    );
  }

  /** Parses tokenizer.json text whose `model.type` is "BPE". */
  static fromText(text: string, name: string): BpeTokenizer {
    return BpeTokenizer.fromJSON(parseJsonObject(text, name), name);
  }

  tokenize(text: string, options: Pick<EncodeOptions, 'parseSpecialTokens'> = {}): string[] {
    return this.encodeText(text, options.parseSpecialTokens ?? true).map((id) => this.idToTokenTable[id]);
  }

  encode(text: string, options: BpeEncodeOptions = {}): number[] {
    const ids = this.encodeText(text, options.parseSpecialTokens ?? true);
    const addSpecial = options.addSpecialTokens ?? false;
    const template: SpecialTemplate = {
      prefix: addSpecial ? this.template.prefix : [],
      suffix: addSpecial ? this.template.suffix : [],
    };
    if (options.addBos !== undefined) template.prefix = options.addBos ? [this.requireSpecial('bos', '<s>')] : [];
    if (options.addEos !== undefined) template.suffix = options.addEos ? [this.requireSpecial('eos', '</s>')] : [];
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

  tokenToId(token: string): number | undefined {
    return this.added.tokens.find((t) => t.content === token)?.id ?? this.vocab.get(token) ?? this.model.unkId;
  }

  idToToken(id: number): string | undefined {
    return this.idToTokenTable[id];
  }

  private requireSpecial(kind: 'bos' | 'eos', usual: string): number {
    const id = this.specialIds[kind];
    if (id === undefined) throw new Error(`${this.name}: the vocabulary has no ${kind.toUpperCase()} token (looked for "${usual}")`);
    return id;
  }

  /** Runs added-token matching, normalizer, pre-tokenizer and BPE; no template. */
  private encodeText(text: string, parseSpecialTokens: boolean): number[] {
    const segments = parseSpecialTokens ? this.added.split(text) : [{ text, offset: 0 }];
    const ids: number[] = [];
    for (const segment of segments) {
      if ('id' in segment) {
        ids.push(segment.id);
        continue;
      }
      const normalized = this.normalize(segment.text);
      for (const word of this.preTokenize(normalized, segment.offset === 0)) this.encodeWord(word, ids);
    }
    return ids;
  }

  /** Appends the ids of one pre-tokenized word to `out`. */
  private encodeWord(word: string, out: number[]): void {
    if (word.length === 0) return;
    if (this.model.ignoreMerges) {
      const id = this.vocab.get(word);
      if (id !== undefined) {
        out.push(id);
        return;
      }
    }
    const symbols = this.initialSymbols(word);
    this.mergeSymbols(symbols);
    for (const id of symbols) if (id !== REMOVED) out.push(id);
  }

  /** Maps each character to its id, or to byte-token ids or the unk id when it is outside the vocabulary. */
  private initialSymbols(word: string): number[] {
    const { continuingSubwordPrefix, endOfWordSuffix, byteFallback, unkId, fuseUnk } = this.model;
    const chars = Array.from(word);
    const symbols: number[] = [];
    let previousWasUnk = false;
    for (let i = 0; i < chars.length; i++) {
      let piece = chars[i];
      if (i > 0) piece = continuingSubwordPrefix + piece;
      if (i === chars.length - 1) piece += endOfWordSuffix;

      const id = this.vocab.get(piece);
      if (id !== undefined) {
        symbols.push(id);
        previousWasUnk = false;
        continue;
      }
      if (byteFallback) {
        const byteIds = Array.from(UTF8.encode(piece), (byte) => this.byteIds[byte]);
        if (byteIds.every((byteId) => byteId >= 0)) {
          symbols.push(...byteIds);
          previousWasUnk = false;
          continue;
        }
      }
      if (unkId === undefined) {
        const codePoint = chars[i].codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0');
        throw new Error(`${this.name}: character "${chars[i]}" (U+${codePoint}) is not in the vocabulary, and the tokenizer has no unk token or byte tokens for it`);
      }
      if (!(fuseUnk && previousWasUnk)) symbols.push(unkId);
      previousWasUnk = true;
    }
    return symbols;
  }

  /**
   * Applies merges in place: the pair with the lowest rank first, the leftmost among equal ranks.
   * Merged-away symbols are set to REMOVED. Queue entries made stale by an earlier merge are
   * recognised on pop (their pair no longer yields the same merged id) and skipped.
   */
  private mergeSymbols(symbols: number[]): void {
    const count = symbols.length;
    if (count < 2) return;
    const next = new Int32Array(count);
    const previous = new Int32Array(count);
    for (let i = 0; i < count; i++) {
      next[i] = i + 1 < count ? i + 1 : -1;
      previous[i] = i - 1;
    }
    const queue = new MergeQueue();
    const pushPair = (left: number) => {
      const right = next[left];
      if (right < 0) return;
      const merge = this.merges.get(mergeKey(symbols[left], symbols[right]));
      if (merge) queue.push(merge.rank, left, merge.id);
    };
    for (let i = 0; i + 1 < count; i++) pushPair(i);

    while (queue.size > 0) {
      const { position, id } = queue.pop();
      const right = next[position];
      if (symbols[position] === REMOVED || right < 0) continue;
      const current = this.merges.get(mergeKey(symbols[position], symbols[right]));
      if (!current || current.id !== id) continue;

      symbols[position] = id;
      symbols[right] = REMOVED;
      next[position] = next[right];
      if (next[right] >= 0) previous[next[right]] = position;

      if (previous[position] >= 0) pushPair(previous[position]);
      pushPair(position);
    }
  }
}

const REMOVED = -1;

/** Ids below 2^26 keep `left * 2^26 + right` under 2^53, so the key is an exact number. */
const MAX_IDS = 2 ** 26;

function mergeKey(leftId: number, rightId: number): number {
  return leftId * MAX_IDS + rightId;
}
const UTF8 = new TextEncoder();

/** Returns the SentencePiece name of a byte token: 10 → "<0x0A>". */
export function byteToken(byte: number): string {
  return `<0x${byte.toString(16).toUpperCase().padStart(2, '0')}>`;
}

/**
 * Reads `model.merges`: "left right" strings (tokenizers < 0.20) or [left, right] pairs, in rank
 * order. The merged token is left + right, less right's continuing-subword prefix.
 */
function readMerges(list: unknown, vocab: Map<string, number>, continuingSubwordPrefix: string, name: string): Map<number, Merge> {
  if (!Array.isArray(list)) throw new Error(`${name}: model.merges is missing or not a list`);
  const merges = new Map<number, Merge>();
  list.forEach((entry: unknown, rank) => {
    const pair = typeof entry === 'string' ? entry.split(' ') : entry;
    if (!Array.isArray(pair) || pair.length !== 2 || typeof pair[0] !== 'string' || typeof pair[1] !== 'string') {
      throw new Error(`${name}: model.merges[${rank}] is ${JSON.stringify(entry)}; expected "left right" or ["left", "right"]`);
    }
    const [left, right] = pair as [string, string];
    const rightBody = continuingSubwordPrefix && right.startsWith(continuingSubwordPrefix) ? right.slice(continuingSubwordPrefix.length) : right;
    const leftId = vocab.get(left);
    const rightId = vocab.get(right);
    const mergedId = vocab.get(left + rightBody);
    if (leftId === undefined || rightId === undefined || mergedId === undefined) {
      throw new Error(`${name}: model.merges[${rank}] (${JSON.stringify(entry)}) uses a token that is not in model.vocab`);
    }
    const key = mergeKey(leftId, rightId);
    if (!merges.has(key)) merges.set(key, { rank, id: mergedId });
  });
  return merges;
}

/** Binary min-heap of candidate merges ordered by (rank, position), in parallel typed arrays. */
class MergeQueue {
  private ranks = new Int32Array(64);
  private positions = new Int32Array(64);
  private ids = new Int32Array(64);
  size = 0;

  push(rank: number, position: number, id: number): void {
    if (this.size === this.ranks.length) this.grow();
    let i = this.size++;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.less(rank, position, this.ranks[parent], this.positions[parent])) break;
      this.set(i, this.ranks[parent], this.positions[parent], this.ids[parent]);
      i = parent;
    }
    this.set(i, rank, position, id);
  }

  pop(): { position: number; id: number } {
    const top = { position: this.positions[0], id: this.ids[0] };
    const last = --this.size;
    const rank = this.ranks[last];
    const position = this.positions[last];
    const id = this.ids[last];
    let i = 0;
    while (true) {
      let child = 2 * i + 1;
      if (child >= last) break;
      if (child + 1 < last && this.less(this.ranks[child + 1], this.positions[child + 1], this.ranks[child], this.positions[child])) child += 1;
      if (!this.less(this.ranks[child], this.positions[child], rank, position)) break;
      this.set(i, this.ranks[child], this.positions[child], this.ids[child]);
      i = child;
    }
    if (last > 0) this.set(i, rank, position, id);
    return top;
  }

  private less(rankA: number, positionA: number, rankB: number, positionB: number): boolean {
    return rankA < rankB || (rankA === rankB && positionA < positionB);
  }

  private set(i: number, rank: number, position: number, id: number): void {
    this.ranks[i] = rank;
    this.positions[i] = position;
    this.ids[i] = id;
  }

  private grow(): void {
    const grown = (array: Int32Array) => {
      const bigger = new Int32Array(array.length * 2);
      bigger.set(array);
      return bigger;
    };
    this.ranks = grown(this.ranks);
    this.positions = grown(this.positions);
    this.ids = grown(this.ids);
  }
}
