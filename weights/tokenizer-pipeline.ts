// The text steps of a HF tokenizer.json around the model: `normalizer`, `pre_tokenizer` and
// `decoder`. Each section is compiled once into a plain function. The supported types are those
// that SentencePiece-style BPE (LLaMA-2, Mistral) and BERT WordPiece files use. Any other type
// raises an error that names the file, the section, the type and the supported ones.
// Browser-safe: no Node imports.
import { isObject, type JsonObject } from './tokenizer-common.ts';

export type Normalize = (text: string) => string;
/** Splits normalized text into words. `isFirst` is true for text at offset 0 of the input. */
export type PreTokenize = (text: string, isFirst: boolean) => string[];
/** Maps token strings to text pieces, which the caller joins without a separator. */
export type Decode = (tokens: string[]) => string[];

const SUPPORTED_NORMALIZERS = ['Sequence', 'Prepend', 'Replace', 'NFC', 'NFD', 'NFKC', 'NFKD', 'Lowercase', 'Strip', 'StripAccents', 'BertNormalizer'];
const SUPPORTED_PRE_TOKENIZERS = ['Sequence', 'Metaspace', 'BertPreTokenizer', 'WhitespaceSplit'];
const SUPPORTED_DECODERS = ['Sequence', 'Replace', 'ByteFallback', 'Fuse', 'Strip', 'Metaspace', 'WordPiece'];

function unsupported(name: string, section: string, type: unknown, supported: string[]): Error {
  return new Error(`${name}: ${section} type "${String(type)}" is not supported; supported: ${supported.join(', ')}`);
}

function stringField(spec: JsonObject, field: string, name: string, section: string, fallback?: string): string {
  const value = spec[field] ?? fallback;
  if (typeof value !== 'string') throw new Error(`${name}: ${section} "${String(spec.type)}" needs a string "${field}"`);
  return value;
}

/** Compiles a `pattern` ({String: s} or {Regex: r}) into a global RegExp. */
function compilePattern(pattern: unknown, name: string, section: string): RegExp {
  if (isObject(pattern) && typeof pattern.String === 'string') return new RegExp(escapeRegExp(pattern.String), 'gu');
  // NOTE: HF compiles Regex patterns with Oniguruma; JavaScript syntax agrees for common patterns only.
  if (isObject(pattern) && typeof pattern.Regex === 'string') return new RegExp(pattern.Regex, 'gu');
  throw new Error(`${name}: ${section} pattern ${JSON.stringify(pattern)} must be {"String": …} or {"Regex": …}`);
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

// ---- Character classes, as BERT's BasicTokenizer and HF's BertNormalizer define them ----

const WHITE_SPACE = /\p{White_Space}/u;
/** Unicode "Other" (Cc, Cf, Cs, Co, Cn) except tab, newline and carriage return, which count as whitespace. */
const CONTROL = /(?![\t\n\r])\p{C}/u;
/** ASCII punctuation (which includes $+<=>^`|~) and every Unicode P* category. */
const PUNCTUATION = /[!-/:-@[-`{-~]|\p{P}/u;
const NONSPACING_MARKS = /\p{Mn}/gu;

/** Checks for the CJK ideograph blocks that BERT splits into one word per character (Hangul and kana are not among them). */
export function isCjkIdeograph(codePoint: number): boolean {
  return (
    (codePoint >= 0x4e00 && codePoint <= 0x9fff) ||
    (codePoint >= 0x3400 && codePoint <= 0x4dbf) ||
    (codePoint >= 0x20000 && codePoint <= 0x2a6df) ||
    (codePoint >= 0x2a700 && codePoint <= 0x2b73f) ||
    (codePoint >= 0x2b740 && codePoint <= 0x2b81f) ||
    (codePoint >= 0x2b820 && codePoint <= 0x2ceaf) ||
    (codePoint >= 0xf900 && codePoint <= 0xfaff) ||
    (codePoint >= 0x2f800 && codePoint <= 0x2fa1f)
  );
}

export function isPunctuation(char: string): boolean {
  return PUNCTUATION.test(char);
}

/** NFD, then drops combining marks (category Mn): "Führer" → "Fuhrer". */
export function stripAccents(text: string): string {
  return text.normalize('NFD').replace(NONSPACING_MARKS, '');
}

export interface BertNormalizerOptions {
  /** Drops NUL, U+FFFD and control characters and turns every whitespace character into a space. */
  cleanText: boolean;
  /** Puts spaces around CJK ideographs so that each becomes its own word. */
  handleChineseChars: boolean;
  stripAccents: boolean;
  lowercase: boolean;
}

/** BERT's text cleanup, in HF's order: clean, space out CJK, strip accents, lower-case. */
export function bertNormalize(text: string, options: BertNormalizerOptions): string {
  let out = '';
  for (const char of text) {
    const codePoint = char.codePointAt(0)!;
    if (options.cleanText) {
      if (codePoint === 0 || codePoint === 0xfffd || CONTROL.test(char)) continue;
      if (WHITE_SPACE.test(char)) {
        out += ' ';
        continue;
      }
    }
    out += options.handleChineseChars && isCjkIdeograph(codePoint) ? ` ${char} ` : char;
  }
  if (options.stripAccents) out = stripAccents(out);
  if (options.lowercase) out = out.toLowerCase();
  return out;
}

/** Splits on whitespace (dropped) and makes every punctuation character a word of its own. */
export function bertPreTokenize(text: string): string[] {
  const words: string[] = [];
  let word = '';
  for (const char of text) {
    const isSpace = WHITE_SPACE.test(char);
    if (isSpace || isPunctuation(char)) {
      if (word) words.push(word);
      word = '';
      if (!isSpace) words.push(char);
      continue;
    }
    word += char;
  }
  if (word) words.push(word);
  return words;
}

// ---- normalizer ----

export function compileNormalizer(spec: unknown, name: string): Normalize {
  if (spec === null || spec === undefined) return (text) => text;
  if (!isObject(spec)) throw new Error(`${name}: normalizer must be an object or null`);
  const section = 'normalizer';

  switch (spec.type) {
    case 'Sequence': {
      if (!Array.isArray(spec.normalizers)) throw new Error(`${name}: normalizer "Sequence" needs a "normalizers" list`);
      const steps = spec.normalizers.map((step) => compileNormalizer(step, name));
      return (text) => steps.reduce((current, step) => step(current), text);
    }
    case 'Prepend': {
      const prepend = stringField(spec, 'prepend', name, section);
      // HF leaves empty text empty, so "" encodes to no tokens.
      return (text) => (text.length > 0 ? prepend + text : text);
    }
    case 'Replace': {
      const pattern = compilePattern(spec.pattern, name, section);
      const content = stringField(spec, 'content', name, section);
      return (text) => text.replace(pattern, () => content);
    }
    case 'NFC':
    case 'NFD':
    case 'NFKC':
    case 'NFKD': {
      const form = spec.type;
      return (text) => text.normalize(form);
    }
    case 'Lowercase':
      return (text) => text.toLowerCase();
    case 'Strip': {
      const left = spec.strip_left !== false;
      const right = spec.strip_right !== false;
      return (text) => {
        let stripped = text;
        if (left) stripped = stripped.trimStart();
        if (right) stripped = stripped.trimEnd();
        return stripped;
      };
    }
    case 'StripAccents':
      return stripAccents;
    case 'BertNormalizer': {
      const lowercase = spec.lowercase !== false;
      const options: BertNormalizerOptions = {
        cleanText: spec.clean_text !== false,
        handleChineseChars: spec.handle_chinese_chars !== false,
        // strip_accents null means "same as lowercase", as in BERT's uncased models.
        stripAccents: typeof spec.strip_accents === 'boolean' ? spec.strip_accents : lowercase,
        lowercase,
      };
      return (text) => bertNormalize(text, options);
    }
    default:
      throw unsupported(name, section, spec.type, SUPPORTED_NORMALIZERS);
  }
}

// ---- pre_tokenizer ----

export function compilePreTokenizer(spec: unknown, name: string): PreTokenize {
  if (spec === null || spec === undefined) return (text) => (text.length > 0 ? [text] : []);
  if (!isObject(spec)) throw new Error(`${name}: pre_tokenizer must be an object or null`);
  const section = 'pre_tokenizer';

  switch (spec.type) {
    case 'Sequence': {
      if (!Array.isArray(spec.pretokenizers)) throw new Error(`${name}: pre_tokenizer "Sequence" needs a "pretokenizers" list`);
      const steps = spec.pretokenizers.map((step) => compilePreTokenizer(step, name));
      return (text, isFirst) =>
        steps.reduce<string[]>((words, step) => words.flatMap((word, i) => step(word, isFirst && i === 0)), [text]);
    }
    case 'Metaspace': {
      const replacement = stringField(spec, 'replacement', name, section, '▁');
      // Older files carry add_prefix_space (true = "always"); newer ones prepend_scheme.
      let scheme = spec.add_prefix_space === false ? 'never' : 'always';
      if (typeof spec.prepend_scheme === 'string') scheme = spec.prepend_scheme;
      const split = spec.split !== false;
      return (text, isFirst) => {
        if (text.length === 0) return [];
        let replaced = text.replaceAll(' ', replacement);
        const prepend = scheme === 'always' || (scheme === 'first' && isFirst);
        if (prepend && !replaced.startsWith(replacement)) replaced = replacement + replaced;
        if (!split) return [replaced];
        // Each replacement character starts a new word and stays at its front.
        return replaced.split(new RegExp(`(?=${escapeRegExp(replacement)})`, 'u')).filter((word) => word.length > 0);
      };
    }
    case 'BertPreTokenizer':
      return (text) => bertPreTokenize(text);
    case 'WhitespaceSplit':
      return (text) => text.split(/\p{White_Space}+/u).filter((word) => word.length > 0);
    default:
      throw unsupported(name, section, spec.type, SUPPORTED_PRE_TOKENIZERS);
  }
}

// ---- decoder ----

const BYTE_TOKEN = /^<0x([0-9A-Fa-f]{2})>$/;
const UTF8_STRICT = new TextDecoder('utf-8', { fatal: true });

/** Joins runs of <0xXX> tokens into text; a run that is not valid UTF-8 becomes one U+FFFD per byte. */
function decodeByteFallback(tokens: string[]): string[] {
  const out: string[] = [];
  let bytes: number[] = [];
  const flush = () => {
    if (bytes.length === 0) return;
    try {
      out.push(UTF8_STRICT.decode(new Uint8Array(bytes)));
    } catch {
      for (let i = 0; i < bytes.length; i++) out.push('\uFFFD');
    }
    bytes = [];
  };
  for (const token of tokens) {
    const byte = BYTE_TOKEN.exec(token);
    if (byte) {
      bytes.push(parseInt(byte[1], 16));
      continue;
    }
    flush();
    out.push(token);
  }
  flush();
  return out;
}

/**
 * Removes the space that joining put before punctuation and English clitics: "don ' t" → "don't".
 * This is transformers' clean_up_tokenization, which its BERT decode runs on the joined text. The
 * Rust decoder runs a longer list per token, so it leaves "don ' t" as it is. Its list also turns
 * " do not" into " don't", which would change the words, so that rule is left out here.
 */
function cleanUpTokenization(text: string): string {
  return text
    .replaceAll(' .', '.')
    .replaceAll(' ?', '?')
    .replaceAll(' !', '!')
    .replaceAll(' ,', ',')
    .replaceAll(" ' ", "'")
    .replaceAll(" n't", "n't")
    .replaceAll(" 'm", "'m")
    .replaceAll(" 's", "'s")
    .replaceAll(" 've", "'ve")
    .replaceAll(" 're", "'re");
}

export function compileDecoder(spec: unknown, name: string): Decode {
  if (spec === null || spec === undefined) return (tokens) => [tokens.join(' ')];
  if (!isObject(spec)) throw new Error(`${name}: decoder must be an object or null`);
  const section = 'decoder';

  switch (spec.type) {
    case 'Sequence': {
      if (!Array.isArray(spec.decoders)) throw new Error(`${name}: decoder "Sequence" needs a "decoders" list`);
      const steps = spec.decoders.map((step) => compileDecoder(step, name));
      return (tokens) => steps.reduce((current, step) => step(current), tokens);
    }
    case 'Replace': {
      const pattern = compilePattern(spec.pattern, name, section);
      const content = stringField(spec, 'content', name, section);
      return (tokens) => tokens.map((token) => token.replace(pattern, () => content));
    }
    case 'ByteFallback':
      return decodeByteFallback;
    case 'Fuse':
      return (tokens) => [tokens.join('')];
    case 'Strip': {
      // Removes up to `start` copies of `content` from the front of each piece and `stop` from the back.
      const content = stringField(spec, 'content', name, section);
      const start = Number(spec.start ?? 0);
      const stop = Number(spec.stop ?? 0);
      return (tokens) =>
        tokens.map((token) => {
          const chars = Array.from(token);
          let from = 0;
          while (from < start && chars[from] === content) from += 1;
          let to = chars.length;
          while (chars.length - to < stop && to > from && chars[to - 1] === content) to -= 1;
          return chars.slice(from, to).join('');
        });
    }
    case 'Metaspace': {
      const replacement = stringField(spec, 'replacement', name, section, '▁');
      const stripFirstSpace = spec.prepend_scheme !== 'never' && spec.add_prefix_space !== false;
      return (tokens) =>
        tokens.map((token, i) => {
          const text = token.replaceAll(replacement, ' ');
          return i === 0 && stripFirstSpace && text.startsWith(' ') ? text.slice(1) : text;
        });
    }
    case 'WordPiece': {
      const prefix = stringField(spec, 'prefix', name, section, '##');
      const cleanup = spec.cleanup !== false;
      return (tokens) => {
        const pieces = tokens.map((token, i) => {
          if (i === 0) return token;
          return token.startsWith(prefix) ? token.slice(prefix.length) : ` ${token}`;
        });
        return cleanup ? [cleanUpTokenization(pieces.join(''))] : pieces;
      };
    }
    default:
      throw unsupported(name, section, spec.type, SUPPORTED_DECODERS);
  }
}
