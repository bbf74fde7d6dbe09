// Random-access byte sources, so checkpoints are read tensor by tensor instead of whole.
// Node files come from weights/node-files.ts; browsers use a Blob/File or in-memory bytes.

export interface ByteSource {
  /** File name or URL, for error messages. */
  readonly name: string;
  readonly size: number;
  read(offset: number, length: number): Promise<Uint8Array>;
  close?(): Promise<void>;
}

export function bytesSource(bytes: Uint8Array, name = 'memory'): ByteSource {
  return {
    name,
    size: bytes.byteLength,
    async read(offset, length) {
      return bytes.subarray(offset, offset + length);
    },
  };
}

/** A Blob or File (browser `File.slice` reads only the requested range). */
export function blobSource(blob: Blob, name = (blob as File).name ?? 'blob'): ByteSource {
  return {
    name,
    size: blob.size,
    async read(offset, length) {
      return new Uint8Array(await blob.slice(offset, offset + length).arrayBuffer());
    },
  };
}
