// Node-only access to a checkpoint folder on the local file system (the rest of s2d/hf reads
// folders through the CheckpointFolder interface and stays browser-safe).
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileSource } from '../../weights/node-files.ts';
import type { CheckpointFolder } from './checkpoint.ts';

export function nodeFolder(path: string): CheckpointFolder {
  const root = resolve(path);
  return {
    name: root,
    async readText(file) {
      try {
        return await readFile(join(root, file), 'utf8');
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
        throw error;
      }
    },
    open: (file) => fileSource(join(root, file)),
  };
}
