#!/usr/bin/env node
// A small static file server for the built browser page (dist/web by default), on 127.0.0.1
// only. It serves GET and HEAD requests and rejects paths that resolve outside the root.
//
// Usage: node scripts/serve-web.mjs [--port N] [--root DIR]
//   --port  TCP port on 127.0.0.1 (default 8080; 0 picks a free port)
//   --root  folder to serve (default dist/web)
// Prints "serving ROOT at http://127.0.0.1:PORT/" once listening.
import { createReadStream } from 'node:fs';
import { realpath, stat } from 'node:fs/promises';
import { createServer } from 'node:http';
import { dirname, extname, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const HOST = '127.0.0.1';

const MIME_TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
  '.md': 'text/markdown; charset=utf-8',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
  '.wasm': 'application/wasm',
  '.safetensors': 'application/octet-stream',
  '.zip': 'application/zip',
};

function log(message) {
  process.stderr.write(`serve-web: ${message}\n`);
}

/** Maps a request path to a file under `root`, or returns an HTTP status for the rejection. */
async function resolveRequest(root, rawUrl) {
  let pathname;
  try {
    pathname = decodeURIComponent(new URL(rawUrl, 'http://localhost').pathname);
  } catch {
    return { status: 400 };
  }
  if (pathname.includes('\0')) return { status: 400 };

  let path = resolve(root, `.${pathname}`);
  if (path !== root && !path.startsWith(root + sep)) return { status: 403 };
  let info;
  try {
    info = await stat(path);
    if (info.isDirectory()) {
      path = join(path, 'index.html');
      info = await stat(path);
    }
  } catch {
    return { status: 404 };
  }
  if (!info.isFile()) return { status: 404 };

  // A symbolic link inside the root may point outside it.
  const real = await realpath(path);
  if (!real.startsWith(root + sep)) return { status: 403 };
  return { status: 200, path: real, size: info.size };
}

/** Creates the server for `root` (an absolute, symlink-free path); call listen() on it. */
export function createStaticServer(root) {
  return createServer(async (request, response) => {
    const fail = (status, text) => {
      log(`${status} ${request.method} ${request.url}`);
      response.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' });
      response.end(`${status} ${text}\n`);
    };
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      response.setHeader('allow', 'GET, HEAD');
      fail(405, 'method not allowed');
      return;
    }
    try {
      const found = await resolveRequest(root, request.url ?? '/');
      if (found.status === 400) return fail(400, 'bad request');
      if (found.status === 403) return fail(403, 'forbidden');
      if (found.status === 404) return fail(404, 'not found');

      response.writeHead(200, {
        'content-type': MIME_TYPES[extname(found.path).toLowerCase()] ?? 'application/octet-stream',
        'content-length': found.size,
        'cache-control': 'no-cache',
        'x-content-type-options': 'nosniff',
      });
      if (request.method === 'HEAD') {
        response.end();
        return;
      }
      const stream = createReadStream(found.path);
      stream.on('error', (error) => {
        log(`read failed for ${found.path}: ${error.message}`);
        response.destroy(error);
      });
      stream.pipe(response);
    } catch (error) {
      log(`request ${request.url} failed: ${error.message}`);
      if (!response.headersSent) fail(500, 'internal server error');
      else response.destroy(error);
    }
  });
}

async function main() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        port: { type: 'string', default: '8080' },
        root: { type: 'string' },
      },
    }));
  } catch (error) {
    log(`${error.message}; usage: npm run serve:web -- [--port N] [--root DIR] (the server always binds ${HOST})`);
    return 2;
  }
  const port = Number(values.port);
  if (!(Number.isInteger(port) && port >= 0 && port <= 65535)) {
    log(`--port ${values.port} is invalid; use an integer from 0 to 65535`);
    return 2;
  }
  const projectRoot = join(dirname(fileURLToPath(import.meta.url)), '..');
  const requested = resolve(values.root ?? join(projectRoot, 'dist', 'web'));
  let root;
  try {
    root = await realpath(requested);
  } catch {
    log(`${requested} not found; run "npm run build:web" first or pass --root DIR`);
    return 1;
  }

  const server = createStaticServer(root);
  server.on('error', (error) => {
    const hint = error.code === 'EADDRINUSE' ? '; pass --port N to use another port' : '';
    log(`server error: ${error.message}${hint}`);
    process.exit(1);
  });
  server.listen(port, HOST, () => {
    const address = server.address();
    process.stdout.write(`serving ${root} at http://${HOST}:${address.port}/\n`);
  });
  const stop = (signal) => {
    log(`${signal} received, stopping`);
    server.close(() => process.exit(0));
    server.closeAllConnections();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  return 0;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const code = await main();
  if (code !== 0) process.exitCode = code;
}
