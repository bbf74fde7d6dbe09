// Node-only file access for checkpoints: ranged reads through a file handle, and atomic
// writes (temporary file in the same folder, then rename), so a crash never leaves a
// half-written checkpoint under the final name.
import { open, rename, rm, writeFile } from 'node:fs/promises';
import type { ByteSource } from './source.ts';

export async function fileSource(path: string): Promise<ByteSource> {
  let handle;
  try {
    handle = await open(path, 'r');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new Error(`${path}: file not found; check the checkpoint path`);
    throw error;
  }
  const { size } = await handle.stat();
  return {
    name: path,
    size,
    async read(offset, length) {
      const buffer = new Uint8Array(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await handle.read(buffer, done, length - done, offset + done);
        if (bytesRead === 0) throw new Error(`${path}: unexpected end of file at byte ${offset + done} (file has ${size} bytes); the file is truncated`);
        done += bytesRead;
      }
      return buffer;
    },
    async close() {
      await handle.close();
    },
  };
}

export async function writeFileAtomic(path: string, chunks: Uint8Array[]): Promise<void> {
  const temporary = `${path}.tmp-${process.pid}-${Date.now()}`;
  try {
    const handle = await open(temporary, 'w');
    try {
      for (const chunk of chunks) await handle.write(chunk);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temporary, path);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
}

export async function writeTextAtomic(path: string, text: string): Promise<void> {
  const temporary = `${path}.tmp-${process.pid}-${Date.now()}`;
  await writeFile(temporary, text);
  await rename(temporary, path);
}
