// Node-only file access for the data layer (the rest of s2d/data stays browser-safe and reads
// files through the FileSource interface).
import { readFile } from 'node:fs/promises';
import { loadAnnotation, type Annotation } from './annotation.ts';
import { buildDataset, type DatasetOptions, type ReportDataset } from './dataset.ts';
import { joinPath, type FileSource } from './files.ts';

/** Reads from the local file system; a missing file raises "<description> not found: <path>". */
export const nodeFiles: FileSource = {
  async readBytes(path, description = 'file') {
    const buffer = await readLocal(path, description);
    return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  },
  async readText(path, description = 'file') {
    return (await readLocal(path, description)).toString('utf8');
  },
};

async function readLocal(path: string, description: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new Error(`${description} not found: ${path}; check the path`);
    if (code === 'EISDIR') throw new Error(`${description} ${path} is a directory, expected a file`);
    throw error;
  }
}

/** Reads and validates an R2Gen annotation.json. */
export async function readAnnotationFile(path: string): Promise<Annotation> {
  return loadAnnotation(nodeFiles, path);
}

/**
 * Reads a dataset folder in the R2Gen layout (FOLDER/annotation.json, images under FOLDER/images)
 * and builds its samples.
 */
export async function readDatasetFolder(folder: string, options: Omit<DatasetOptions, 'imageRoot'> = {}): Promise<ReportDataset> {
  const annotation = await readAnnotationFile(joinPath(folder, 'annotation.json'));
  return buildDataset(annotation, { ...options, imageRoot: joinPath(folder, 'images') });
}
