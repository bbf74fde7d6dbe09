// Registers a module loader hook so Node runs the project's TypeScript sources directly.
import { register } from 'node:module';

register('./ts-loader.mjs', import.meta.url);
