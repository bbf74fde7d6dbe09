// Word-level vocabulary over cleaned reports, as in R2Gen: every token seen at least minCount
// times in the training reports, sorted alphabetically after four special tokens.
import { tokenizeReport } from './report.ts';

export const PAD = '<pad>';
export const BOS = '<bos>';
export const EOS = '<eos>';
export const UNK = '<unk>';
const SPECIALS = [PAD, BOS, EOS, UNK];

export interface VocabularyJSON {
  /** Token strings by id; ids 0–3 are <pad>, <bos>, <eos>, <unk>. */
  words: string[];
  minCount: number;
}

export interface EncodeOptions {
  /** Maximum number of ids returned, counting <bos> and <eos>; longer reports are cut. */
  maxLength?: number;
  /** Put <bos> first; default false. */
  addBos?: boolean;
  /** Put <eos> last; default true. */
  addEos?: boolean;
}

export class Vocabulary {
  readonly padId = 0;
  readonly bosId = 1;
  readonly eosId = 2;
  readonly unkId = 3;
  private readonly ids: Map<string, number>;

  private constructor(readonly words: readonly string[], readonly minCount: number) {
    this.ids = new Map(words.map((word, id) => [word, id]));
  }

  /** Builds the vocabulary from report texts (cleaned here, so raw or cleaned text both work). */
  static build(reports: Iterable<string>, minCount = 3): Vocabulary {
    if (!(Number.isInteger(minCount) && minCount >= 1)) throw new Error(`Vocabulary.build: minCount must be an integer ≥ 1, got ${minCount}`);
    const counts = new Map<string, number>();
    for (const report of reports) {
      for (const token of tokenizeReport(report)) counts.set(token, (counts.get(token) ?? 0) + 1);
    }
    const kept = [...counts].filter(([word, count]) => count >= minCount && !SPECIALS.includes(word)).map(([word]) => word);
    kept.sort(); // by UTF-16 code units, independent of locale
    return new Vocabulary([...SPECIALS, ...kept], minCount);
  }

  static fromJSON(json: VocabularyJSON): Vocabulary {
    if (!json || !Array.isArray(json.words) || !json.words.every((word) => typeof word === 'string') || typeof json.minCount !== 'number') {
      throw new Error('Vocabulary.fromJSON: expected {words: string[], minCount: number}');
    }
    const head = json.words.slice(0, SPECIALS.length);
    if (SPECIALS.some((special, i) => head[i] !== special)) {
      throw new Error(`Vocabulary.fromJSON: the first words must be ${SPECIALS.join(', ')}, got ${head.join(', ')}`);
    }
    if (new Set(json.words).size !== json.words.length) throw new Error('Vocabulary.fromJSON: words contain duplicates');
    return new Vocabulary([...json.words], json.minCount);
  }

  toJSON(): VocabularyJSON {
    return { words: [...this.words], minCount: this.minCount };
  }

  get size(): number {
    return this.words.length;
  }

  /** Looks up a token's id, returning <unk>'s id for a token outside the vocabulary. */
  idOf(token: string): number {
    return this.ids.get(token) ?? this.unkId;
  }

  /** Cleans a report and maps its tokens to ids, with <bos> and <eos> as requested (kept when cut). */
  encode(report: string, options: EncodeOptions = {}): number[] {
    const { maxLength = Infinity, addBos = false, addEos = true } = options;
    const reserved = Number(addBos) + Number(addEos);
    if (!(maxLength >= reserved + 1)) {
      throw new Error(`Vocabulary.encode: maxLength ${maxLength} leaves no room for a token after <bos>/<eos>; use at least ${reserved + 1}`);
    }

    const ids = tokenizeReport(report)
      .slice(0, maxLength - reserved)
      .map((token) => this.idOf(token));
    if (addBos) ids.unshift(this.bosId);
    if (addEos) ids.push(this.eosId);
    return ids;
  }

  /** Maps ids back to text: stops at the first <eos> and leaves out <pad>, <bos> and <unk>. */
  decode(ids: ArrayLike<number>): string {
    const words: string[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (id === this.eosId) break;
      if (!(Number.isInteger(id) && id >= 0 && id < this.words.length)) {
        throw new Error(`Vocabulary.decode: id ${id} at position ${i} is outside the vocabulary (size ${this.words.length})`);
      }
      if (id < SPECIALS.length) continue;
      words.push(this.words[id]);
    }
    return words.join(' ');
  }
}
