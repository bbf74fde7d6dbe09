import type { FileSource } from './files.ts';

// R2Gen annotation files: {"train": [...], "val": [...], "test": [...]}, each entry
// {"id", "report", "image_path": [...]} plus dataset-specific keys (MIMIC-CXR adds study_id and
// subject_id; the COVID-CXR sample adds license, source_url, views, patientid, ...).

export const SPLITS = ['train', 'val', 'test'] as const;
export type SplitName = (typeof SPLITS)[number];

/** One study, with the file's own keys; keys beyond the three checked ones are kept unchanged. */
export interface AnnotationEntry {
  id: string;
  /** The report text as stored in the file, before cleaning. */
  report: string;
  /** Image paths relative to the dataset's image folder. */
  image_path: string[];
  [key: string]: unknown;
}

export type Annotation = Record<SplitName, AnnotationEntry[]>;

/**
 * Parses and validates the text of an R2Gen annotation.json. `source` names the file in errors.
 * Each split must be an array, possibly empty, and ids must be unique across splits.
 */
export function parseAnnotation(text: string, source: string): Annotation {
  let root: unknown;
  try {
    root = JSON.parse(text);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new Error(`annotation file ${source}: invalid JSON (${reason})`);
  }
  if (!isRecord(root)) {
    throw new Error(`annotation file ${source}: expected an object with "train", "val" and "test" arrays, got ${describe(root)}`);
  }

  const annotation = {} as Annotation;
  const seen = new Map<string, string>();
  for (const split of SPLITS) {
    const list = root[split];
    if (list === undefined) {
      throw new Error(`annotation file ${source}: missing "${split}" (expected keys "train", "val", "test"; use [] for a split without studies)`);
    }
    if (!Array.isArray(list)) {
      throw new Error(`annotation file ${source}: "${split}" must be an array of entries, got ${describe(list)}`);
    }
    annotation[split] = list.map((item, index) => {
      const entry = parseEntry(item, `${source}: ${split}[${index}]`);
      const earlier = seen.get(entry.id);
      if (earlier !== undefined) {
        throw new Error(`annotation file ${source}: id "${entry.id}" appears twice (${earlier} and ${split}[${index}]); ids must be unique`);
      }
      seen.set(entry.id, `${split}[${index}]`);
      return entry;
    });
  }
  return annotation;
}

/** Reads and validates an annotation file through `files`. */
export async function loadAnnotation(files: FileSource, path: string): Promise<Annotation> {
  return parseAnnotation(await files.readText(path, 'annotation file'), path);
}

function parseEntry(item: unknown, where: string): AnnotationEntry {
  if (!isRecord(item)) throw new Error(`annotation file ${where}: expected an object, got ${describe(item)}`);

  const { id, report, image_path: imagePath } = item;
  if (typeof id !== 'string' || id === '') {
    throw new Error(`annotation file ${where}: "id" must be a non-empty string, got ${describe(id)}`);
  }
  if (typeof report !== 'string') {
    throw new Error(`annotation file ${where} (id "${id}"): "report" must be a string, got ${describe(report)}`);
  }
  if (!Array.isArray(imagePath) || imagePath.length === 0) {
    throw new Error(`annotation file ${where} (id "${id}"): "image_path" must be a non-empty array of paths relative to the image folder, got ${describe(imagePath)}`);
  }
  imagePath.forEach((path, i) => {
    if (typeof path !== 'string' || path === '') {
      throw new Error(`annotation file ${where} (id "${id}"): image_path[${i}] must be a non-empty string, got ${describe(path)}`);
    }
  });

  return item as AnnotationEntry;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  if (value === undefined) return 'nothing (key missing)';
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  if (value === null) return 'null';
  if (typeof value === 'object') return 'an object';
  const text = JSON.stringify(value);
  return `${typeof value} ${text.length > 40 ? `${text.slice(0, 40)}…` : text}`;
}
