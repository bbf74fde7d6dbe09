// Report-generation samples per split, built from an R2Gen annotation and a word vocabulary.
//
// Reference reports for stage 2 are not chosen here. They must come from a different study of
// the same patient, but the COVID-CXR and IU X-Ray samples have one study per patient, so the
// trainer picks them from image features over the train split.
import { SPLITS, type Annotation, type AnnotationEntry, type SplitName } from './annotation.ts';
import { joinPath } from './files.ts';
import { findKeyPhrases } from './keyphrases.ts';
import { cleanReport } from './report.ts';
import { Vocabulary } from './vocab.ts';

export interface ReportSample {
  id: string;
  split: SplitName;
  /** Image paths joined to the image folder, in annotation order (frontal first in the sample). */
  imagePaths: string[];
  /** The cleaned report (see cleanReport). */
  report: string;
  /** Vocabulary ids of the cleaned report, ending with <eos>. */
  tokens: number[];
  /** Every key phrase of the original report text; the trainer samples `l` of them. */
  keyPhrases: string[];
  /** The annotation entry, with the report text as stored in the file. */
  entry: AnnotationEntry;
}

export interface DatasetOptions {
  /** Folder that the annotation's image paths are relative to. */
  imageRoot: string;
  /** Vocabulary to encode with; by default one is built from the train reports. */
  vocabulary?: Vocabulary;
  /** Minimum count of a word in the train reports for the built vocabulary; default 3. */
  minCount?: number;
  /** Maximum number of token ids per report, counting <eos>; by default no limit. */
  maxLength?: number;
}

export interface ReportDataset {
  vocabulary: Vocabulary;
  splits: Record<SplitName, ReportSample[]>;
}

/** Builds the samples of every split. A vocabulary built here counts train reports only. */
export function buildDataset(annotation: Annotation, options: DatasetOptions): ReportDataset {
  const { imageRoot, minCount = 3, maxLength } = options;
  const vocabulary = options.vocabulary ?? Vocabulary.build(annotation.train.map((entry) => entry.report), minCount);

  const splits = {} as Record<SplitName, ReportSample[]>;
  for (const split of SPLITS) {
    splits[split] = annotation[split].map((entry) => ({
      id: entry.id,
      split,
      imagePaths: entry.image_path.map((path) => joinPath(imageRoot, path)),
      report: cleanReport(entry.report),
      tokens: vocabulary.encode(entry.report, { maxLength }),
      keyPhrases: findKeyPhrases(entry.report),
      entry,
    }));
  }
  return { vocabulary, splits };
}
