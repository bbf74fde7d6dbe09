#!/usr/bin/env node
// The `s2d` command: runs s2d/cli.ts through the TypeScript loader.
import { register } from 'node:module';

register('./ts-loader.mjs', import.meta.url);
const { main } = await import('../s2d/cli.ts');
process.exitCode = await main(process.argv.slice(2));
