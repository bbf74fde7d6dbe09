// Chest X-ray preprocessing: PNG/JPEG bytes → grayscale → S×S → normalised → [3, S, S].
//
// Shapes: a decoded image is [H, W] grayscale in [0, 1]; the model input is channel-first
// [3, S, S] with the gray plane copied to all three channels, because the ViT encoders take RGB.
// Each channel is normalised with its own mean and standard deviation.
//
// Decoders: pngjs's browserified build (pngjs/browser.js; the same `PNG.sync.read` as the Node
// build, without Node's zlib, so this file also loads in a browser) and jpeg-js. In Node the
// browser build took twice as long as the Node build on the COVID-CXR sample's 38 full-size PNGs.
import pngjs from 'pngjs/browser.js';
import { decode as decodeJpeg } from 'jpeg-js';
import type { FileSource } from './files.ts';

const { PNG } = pngjs;

/** A grayscale image, row-major [height, width], values in [0, 1]. */
export interface GrayImage {
  width: number;
  height: number;
  pixels: Float32Array;
}

export type ImageFormat = 'png' | 'jpeg';

export interface ImageOptions {
  /** Side S of the square model input, in pixels. */
  size: number;
  /** Mean subtracted after scaling to [0, 1]: one for all channels or one per RGB channel; default 0.5. */
  mean?: number | readonly number[];
  /** Standard deviation divided by after subtracting the mean, one or one per channel; default 0.25. */
  std?: number | readonly number[];
}

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const JPEG_SIGNATURE = [0xff, 0xd8, 0xff];

// ITU-R BT.601 luma weights, the ones PIL's convert('L') uses.
const LUMA_R = 0.299;
const LUMA_G = 0.587;
const LUMA_B = 0.114;

/** Detects PNG or JPEG from the leading signature bytes; null when neither matches. */
export function detectImageFormat(bytes: Uint8Array): ImageFormat | null {
  const startsWith = (signature: number[]) => bytes.length >= signature.length && signature.every((b, i) => bytes[i] === b);
  if (startsWith(PNG_SIGNATURE)) return 'png';
  if (startsWith(JPEG_SIGNATURE)) return 'jpeg';
  return null;
}

/**
 * Decodes PNG (gray, gray+alpha, RGB, RGBA, paletted; 1 to 16 bit) or JPEG bytes to grayscale
 * in [0, 1]. RGB becomes BT.601 luma and alpha is ignored. `path` only names the file in errors.
 */
export function decodeGray(bytes: Uint8Array, path: string): GrayImage {
  const format = detectImageFormat(bytes);
  if (format === null) {
    const head = Array.from(bytes.subarray(0, 8), (b) => b.toString(16).padStart(2, '0')).join(' ');
    throw new Error(`image ${path}: unknown format (first bytes: ${head || 'none, the file is empty'}); expected PNG or JPEG`);
  }

  let rgba: ArrayLike<number>;
  let width: number;
  let height: number;
  let maxValue: number;
  try {
    if (format === 'png') {
      const png = PNG.sync.read(toPngjsBuffer(bytes), { skipRescale: true });
      ({ width, height } = png);
      rgba = png.data;
      // With skipRescale, samples keep their bit depth, except that palette entries are 8 bit.
      // (The type declarations omit colour type 3, paletted, which pngjs does report.)
      maxValue = (png.colorType as number) === 3 ? 255 : 2 ** png.depth - 1;
    } else {
      const jpeg = decodeJpeg(bytes, { useTArray: true, formatAsRGBA: true });
      ({ width, height } = jpeg);
      rgba = jpeg.data;
      maxValue = 255;
    }
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new Error(`image ${path}: invalid ${format.toUpperCase()} data (${reason}); the file may be truncated or corrupt`);
  }
  if (!(width > 0 && height > 0) || rgba.length < width * height * 4) {
    throw new Error(`image ${path}: invalid ${format.toUpperCase()} data (decoded ${width}×${height} with ${rgba.length} samples); the file may be truncated or corrupt`);
  }

  const pixels = new Float32Array(width * height);
  const scale = 1 / maxValue;
  for (let i = 0; i < pixels.length; i++) {
    const r = rgba[4 * i];
    const g = rgba[4 * i + 1];
    const b = rgba[4 * i + 2];
    pixels[i] = (LUMA_R * r + LUMA_G * g + LUMA_B * b) * scale;
  }
  return { width, height, pixels };
}

/**
 * Converts RGBA bytes (a canvas ImageData, for example) to grayscale in [0, 1], the same way
 * decodeGray does.
 */
export function grayFromRgba(rgba: Uint8Array | Uint8ClampedArray, width: number, height: number): GrayImage {
  if (rgba.length !== width * height * 4) {
    throw new Error(`grayFromRgba: expected ${width}×${height}×4 = ${width * height * 4} bytes, got ${rgba.length}`);
  }
  const pixels = new Float32Array(width * height);
  for (let i = 0; i < pixels.length; i++) {
    pixels[i] = (LUMA_R * rgba[4 * i] + LUMA_G * rgba[4 * i + 1] + LUMA_B * rgba[4 * i + 2]) / 255;
  }
  return { width, height, pixels };
}

// pngjs reads Buffer methods (readUInt32BE, ...) from its input, and in a browser there is no
// global Buffer, so the input is wrapped in the Buffer class bundled inside pngjs/browser.js,
// reached through the value that its encoder returns. The wrap shares memory with `bytes`.
let PngjsBuffer: { from(buffer: ArrayBufferLike, byteOffset: number, length: number): unknown } | null = null;

function toPngjsBuffer(bytes: Uint8Array): Parameters<typeof PNG.sync.read>[0] {
  PngjsBuffer ??= PNG.sync.write(new PNG({ width: 1, height: 1 })).constructor as unknown as typeof PngjsBuffer;
  return PngjsBuffer!.from(bytes.buffer, bytes.byteOffset, bytes.byteLength) as Parameters<typeof PNG.sync.read>[0];
}

/** Input indices and weights of one output pixel along one axis. */
interface Taps {
  indices: number[];
  weights: number[];
}

// Shrinking averages the input pixels that each output pixel covers, weighted by the covered
// length (area filter, no aliasing). Enlarging interpolates linearly between the two nearest
// input pixel centres (bilinear, pixel centres at +0.5 as in align_corners=false).
function axisTaps(inSize: number, outSize: number): Taps[] {
  const taps: Taps[] = [];
  const scale = inSize / outSize;
  for (let o = 0; o < outSize; o++) {
    const indices: number[] = [];
    const weights: number[] = [];
    if (scale >= 1) {
      const start = o * scale;
      const end = (o + 1) * scale;
      for (let i = Math.floor(start); i < Math.min(Math.ceil(end), inSize); i++) {
        const covered = Math.min(i + 1, end) - Math.max(i, start);
        if (covered <= 0) continue;
        indices.push(i);
        weights.push(covered / scale);
      }
    } else {
      const source = Math.min(Math.max((o + 0.5) * scale - 0.5, 0), inSize - 1);
      const i0 = Math.floor(source);
      const i1 = Math.min(i0 + 1, inSize - 1);
      const fraction = source - i0;
      indices.push(i0, i1);
      weights.push(1 - fraction, fraction);
    }
    taps.push({ indices, weights });
  }
  return taps;
}

/** Resizes to outWidth × outHeight: area filter when shrinking, bilinear when enlarging, per axis. */
export function resizeGray(image: GrayImage, outWidth: number, outHeight: number): GrayImage {
  const { width, height, pixels } = image;
  if (!(Number.isInteger(outWidth) && Number.isInteger(outHeight) && outWidth > 0 && outHeight > 0)) {
    throw new Error(`resizeGray: output size must be positive integers, got ${outWidth}×${outHeight}`);
  }
  const columnTaps = axisTaps(width, outWidth);
  const rowTaps = axisTaps(height, outHeight);

  // Horizontal pass: [height, width] → [height, outWidth].
  const wide = new Float32Array(height * outWidth);
  for (let y = 0; y < height; y++) {
    const row = y * width;
    for (let x = 0; x < outWidth; x++) {
      const { indices, weights } = columnTaps[x];
      let sum = 0;
      for (let t = 0; t < indices.length; t++) sum += weights[t] * pixels[row + indices[t]];
      wide[y * outWidth + x] = sum;
    }
  }

  // Vertical pass: [height, outWidth] → [outHeight, outWidth].
  const out = new Float32Array(outHeight * outWidth);
  for (let y = 0; y < outHeight; y++) {
    const { indices, weights } = rowTaps[y];
    for (let x = 0; x < outWidth; x++) {
      let sum = 0;
      for (let t = 0; t < indices.length; t++) sum += weights[t] * wide[indices[t] * outWidth + x];
      out[y * outWidth + x] = sum;
    }
  }
  return { width: outWidth, height: outHeight, pixels: out };
}

/** Expands a normalisation value to three channels, checking its length. */
function perChannel(value: number | readonly number[], name: string): number[] {
  const values = typeof value === 'number' ? [value, value, value] : [...value];
  if (values.length !== 3 || !values.every(Number.isFinite)) throw new Error(`image ${name} must be one number or three (R, G, B), got ${JSON.stringify(value)}`);
  return values;
}

/**
 * Builds the model input [3, S, S] from a grayscale image: direct resize to S×S (the aspect
 * ratio is not kept), the plane copied to three channels, and channel c normalised as
 * (x − mean[c]) / std[c].
 */
export function toModelInput(image: GrayImage, options: ImageOptions): Float32Array {
  const { size } = options;
  const mean = perChannel(options.mean ?? 0.5, 'mean');
  const std = perChannel(options.std ?? 0.25, 'std');
  if (!(Number.isInteger(size) && size > 0)) throw new Error(`image size must be a positive integer, got ${size}`);
  if (!std.every((s) => s > 0)) throw new Error(`image std must be positive, got ${JSON.stringify(options.std)}`);

  const plane = size * size;
  const resized = resizeGray(image, size, size).pixels;
  const out = new Float32Array(3 * plane);
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < plane; i++) out[c * plane + i] = (resized[i] - mean[c]) / std[c];
  }
  return out;
}

/** Decodes image bytes and returns the model input [3, S, S]. */
export function preprocessImage(bytes: Uint8Array, path: string, options: ImageOptions): Float32Array {
  return toModelInput(decodeGray(bytes, path), options);
}

/** Reads an image file through `files` and returns the model input [3, S, S]. */
export async function loadImage(files: FileSource, path: string, options: ImageOptions): Promise<Float32Array> {
  const bytes = await files.readBytes(path, 'image');
  return preprocessImage(bytes, path, options);
}
