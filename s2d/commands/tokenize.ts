// `s2d tokenize`: encodes text to token ids, or decodes ids to text, with a real tokenizer file
// (HF tokenizer.json with a BPE or WordPiece model, or a BERT vocab.txt). Node only.
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadTokenizer, type BpeEncodeOptions, type Tokenizer } from '../../weights/tokenizer.ts';

const USAGE = `Usage:
  s2d tokenize --tokenizer PATH --text STRING [--bos] [--eos] [--special] [--max-length N] [--pad-to N] [--pad-id ID]
      Prints the token ids of STRING as one JSON array, e.g. [15043,3186].
  s2d tokenize --tokenizer PATH --decode (--ids JSON | --text JSON) [--skip-special]
      Prints the text of a JSON array of ids, e.g. --ids '[15043,3186]'.

  --tokenizer     a tokenizer.json (model type BPE or WordPiece), a BERT vocab.txt, or a folder
                  containing one of them (tokenizer.json is preferred)
  --bos, --eos    put the BOS (<s>) or EOS (</s>) token first or last; BPE tokenizers only
  --special       add the tokenizer's template of special tokens ([CLS] … [SEP] for BERT)
  --max-length    maximum number of ids, counting the special tokens; longer text is cut
  --pad-to        right-pad the ids to this length with the pad token (or --pad-id)
  --skip-special  leave special tokens such as <s> or [CLS] out of the decoded text
`;

const TOKENIZER_FILES = ['tokenizer.json', 'vocab.txt'];

function fail(message: string): number {
  process.stderr.write(`s2d tokenize: ${message}\n`);
  return 2;
}

/** Reads the tokenizer at `path`: a file, or the first of TOKENIZER_FILES inside a folder. */
async function readTokenizer(path: string): Promise<Tokenizer> {
  const info = await stat(path).catch(() => {
    throw new Error(`${path}: file or folder not found; pass a tokenizer.json, a vocab.txt or a folder containing one`);
  });
  let file = path;
  if (info.isDirectory()) {
    const found = await firstExisting(TOKENIZER_FILES.map((name) => join(path, name)));
    if (!found) throw new Error(`${path}: the folder contains neither ${TOKENIZER_FILES.join(' nor ')}`);
    file = found;
  }
  return loadTokenizer(await readFile(file, 'utf8'), file);
}

async function firstExisting(paths: string[]): Promise<string | undefined> {
  for (const path of paths) {
    const info = await stat(path).catch(() => undefined);
    if (info?.isFile()) return path;
  }
  return undefined;
}

/** Parses an optional non-negative integer option; throws with the option's name when invalid. */
function integerOption(value: string | undefined, option: string): number | undefined {
  if (value === undefined) return undefined;
  const number = Number(value);
  if (!(Number.isInteger(number) && number >= 0)) throw new Error(`${option} ${value} is invalid; use a non-negative integer`);
  return number;
}

/** Parses a JSON array of non-negative integer ids. */
function parseIds(text: string, option: string): number[] {
  let ids: unknown;
  try {
    ids = JSON.parse(text);
  } catch {
    throw new Error(`${option} ${text} is not valid JSON; pass an array of ids such as '[1,15043]'`);
  }
  if (!Array.isArray(ids) || !ids.every((id) => Number.isInteger(id) && id >= 0)) {
    throw new Error(`${option} ${text} is invalid; pass a JSON array of non-negative integer ids such as '[1,15043]'`);
  }
  return ids;
}

export async function tokenizeCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      tokenizer: { type: 'string' },
      text: { type: 'string' },
      ids: { type: 'string' },
      decode: { type: 'boolean', default: false },
      bos: { type: 'boolean', default: false },
      eos: { type: 'boolean', default: false },
      special: { type: 'boolean', default: false },
      'max-length': { type: 'string' },
      'pad-to': { type: 'string' },
      'pad-id': { type: 'string' },
      'skip-special': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (!values.tokenizer) return fail(`missing --tokenizer PATH\n\n${USAGE}`);

  if (values.decode) {
    const source = values.ids ?? values.text;
    if (source === undefined) return fail(`--decode needs --ids '[1,2,3]' (or the JSON array as --text)\n\n${USAGE}`);
    const ids = parseIds(source, values.ids !== undefined ? '--ids' : '--text');
    const tokenizer = await readTokenizer(values.tokenizer);
    process.stdout.write(`${tokenizer.decode(ids, { skipSpecialTokens: values['skip-special'] })}\n`);
    return 0;
  }

  if (values.text === undefined) return fail(`missing --text STRING\n\n${USAGE}`);
  const tokenizer = await readTokenizer(values.tokenizer);
  if ((values.bos || values.eos) && tokenizer.modelType !== 'BPE') {
    return fail(`--bos and --eos apply to BPE tokenizers; ${tokenizer.name} is ${tokenizer.modelType}, so use --special for its [CLS] … [SEP]`);
  }
  const options: BpeEncodeOptions = {
    addSpecialTokens: values.special,
    maxLength: integerOption(values['max-length'], '--max-length'),
    padTo: integerOption(values['pad-to'], '--pad-to'),
    padId: integerOption(values['pad-id'], '--pad-id'),
  };
  if (options.padTo !== undefined && options.padId === undefined && tokenizer.specialIds.pad === undefined) {
    return fail(`--pad-to needs --pad-id ID because ${tokenizer.name} has no pad token`);
  }
  if (values.bos) options.addBos = true;
  if (values.eos) options.addEos = true;
  process.stdout.write(`${JSON.stringify(tokenizer.encode(values.text, options))}\n`);
  return 0;
}
