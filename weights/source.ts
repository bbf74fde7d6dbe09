// Random-access byte sources, so checkpoints are read tensor by tensor instead of whole.
// Node files come from weights/node-files.ts. Browsers use a Blob/File, a URL served with
// HTTP range requests, or in-memory bytes.

export interface ByteSource {
  /** File name or URL, for error messages. */
  readonly name: string;
  readonly size: number;
  read(offset: number, length: number): Promise<Uint8Array>;
  close?(): Promise<void>;
}

/**
 * An invalid or unreadable checkpoint. `file` is the file name or URL, `key` the tensor or
 * entry concerned (when there is one). The message starts with the file and ends with what to do.
 */
export class CheckpointError extends Error {
  readonly file: string;
  readonly key: string | undefined;

  constructor(file: string, message: string, key?: string, options?: ErrorOptions) {
    super(key === undefined ? `${file}: ${message}` : `${file}: "${key}": ${message}`, options);
    this.name = new.target.name;
    this.file = file;
    this.key = key;
  }
}

/** An HTTP request for part of a file failed or returned something other than the requested bytes. */
export class ByteSourceError extends CheckpointError {}

export function bytesSource(bytes: Uint8Array, name = 'memory'): ByteSource {
  return {
    name,
    size: bytes.byteLength,
    async read(offset, length) {
      return bytes.subarray(offset, offset + length);
    },
  };
}

/** Wraps a Blob or File; the browser's `File.slice` reads only the requested range. */
export function blobSource(blob: Blob, name = (blob as File).name ?? 'blob'): ByteSource {
  return {
    name,
    size: blob.size,
    async read(offset, length) {
      return new Uint8Array(await blob.slice(offset, offset + length).arrayBuffer());
    },
  };
}

export interface UrlSourceOptions {
  /** Extra request headers, e.g. `Authorization`. */
  headers?: Record<string, string>;
  /** Time limit for each request, in milliseconds (default 60 000). */
  timeoutMs?: number;
  /** The fetch implementation (default: the global `fetch`). */
  fetch?: typeof fetch;
}

/**
 * Opens a file on an HTTP server that supports range requests (`Range: bytes=a-b` with a
 * 206 Partial Content response). One request for `bytes=0-0` reads the size from `Content-Range`,
 * and then every `read` is one request for exactly the bytes it needs.
 */
export async function urlSource(url: string | URL, options: UrlSourceOptions = {}): Promise<ByteSource> {
  const name = String(url);
  const fetchImpl = options.fetch ?? globalThis.fetch;
  const timeoutMs = options.timeoutMs ?? 60_000;

  const request = async (first: number, last: number): Promise<Response> => {
    const range = `bytes=${first}-${last}`;
    let response: Response;
    try {
      response = await fetchImpl(url, { headers: { ...options.headers, Range: range }, signal: AbortSignal.timeout(timeoutMs) });
    } catch (error) {
      const reason = (error as Error).name === 'TimeoutError' ? `timed out after ${timeoutMs} ms` : `failed (${(error as Error).message})`;
      throw new ByteSourceError(name, `request for ${range} ${reason}; check the URL and the network`, undefined, { cause: error });
    }
    if (response.status === 206) return response;
    await response.body?.cancel();
    if (response.status === 200) {
      throw new ByteSourceError(name, `the server ignored the Range header (status 200, whole file); serve the file from a server that supports range requests, or download it first`);
    }
    if (response.status === 416) {
      throw new ByteSourceError(name, `the server rejected ${range} as out of range (status 416); the file is shorter than expected, download it again`);
    }
    throw new ByteSourceError(name, `request for ${range} failed with HTTP status ${response.status}; check the URL and the access rights`);
  };

  // `Content-Range: bytes 0-0/12345` carries the full size.
  const probe = await request(0, 0);
  const contentRange = probe.headers.get('content-range') ?? '';
  await probe.body?.cancel();
  const total = /^bytes\s+\d+-\d+\/(\d+)$/i.exec(contentRange.trim());
  if (!total) {
    throw new ByteSourceError(name, `response has Content-Range ${JSON.stringify(contentRange)}, expected "bytes 0-0/SIZE"; serve the file from a server that reports the file size (a cross-origin server must list Content-Range in Access-Control-Expose-Headers)`);
  }
  const size = Number(total[1]);

  return {
    name,
    size,
    async read(offset, length) {
      if (length === 0) return new Uint8Array(0);
      if (offset < 0 || offset + length > size) {
        throw new ByteSourceError(name, `read of ${length} bytes at offset ${offset} lies outside the file (${size} bytes); check the offsets that the caller computed`);
      }
      const response = await request(offset, offset + length - 1);
      const contentRange = response.headers.get('content-range') ?? '';
      const start = /^bytes\s+(\d+)-/i.exec(contentRange.trim());
      if (!start || Number(start[1]) !== offset) {
        await response.body?.cancel();
        throw new ByteSourceError(name, `requested bytes from offset ${offset} but the response has Content-Range ${JSON.stringify(contentRange)}; serve the file from a server that handles range requests correctly`);
      }
      const bytes = new Uint8Array(await response.arrayBuffer());
      if (bytes.byteLength !== length) {
        throw new ByteSourceError(name, `requested ${length} bytes at offset ${offset} but received ${bytes.byteLength}; the file changed on the server or the server mishandles ranges, so download the file instead`);
      }
      return bytes;
    },
  };
}
