// Draws SMA_v's grounding map ([P] weights over a G×G patch grid, row-major, G² = P) as a
// smooth heatmap on a canvas laid over the X-ray, and describes where it peaks in words.

// Five anchor colours of matplotlib's "magma" colour map, from low to high (the page's legend
// uses the same stops).
const MAGMA: ReadonlyArray<readonly [number, number, number]> = [
  [0, 0, 4],
  [81, 18, 124],
  [183, 55, 121],
  [252, 137, 97],
  [252, 253, 191],
];

/** Linear interpolation between the colour-map anchors for t in [0, 1]. */
function colorAt(t: number): [number, number, number] {
  const position = Math.min(Math.max(t, 0), 1) * (MAGMA.length - 1);
  const lower = Math.min(Math.floor(position), MAGMA.length - 2);
  const fraction = position - lower;
  const [r0, g0, b0] = MAGMA[lower];
  const [r1, g1, b1] = MAGMA[lower + 1];
  return [r0 + (r1 - r0) * fraction, g0 + (g1 - g0) * fraction, b0 + (b1 - b0) * fraction];
}

/** Returns the side G of the square patch grid; throws when P is not a perfect square. */
export function gridSide(patches: number): number {
  const side = Math.round(Math.sqrt(patches));
  if (side * side !== patches) throw new Error(`grounding map: ${patches} patches do not form a square grid`);
  return side;
}

/**
 * Draws `weights` [G²] min-max scaled over the whole canvas: colour from the magma map and
 * alpha rising with the weight, so low-attention regions leave the X-ray visible. The G×G
 * image is scaled up with the canvas's bilinear smoothing.
 */
export function drawHeatmap(canvas: HTMLCanvasElement, weights: ArrayLike<number>): void {
  const side = gridSide(weights.length);
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < weights.length; i++) {
    min = Math.min(min, weights[i]);
    max = Math.max(max, weights[i]);
  }
  const range = max - min;

  const cells = new ImageData(side, side);
  for (let i = 0; i < weights.length; i++) {
    const t = range > 0 ? (weights[i] - min) / range : 0;
    const [r, g, b] = colorAt(t);
    cells.data.set([r, g, b, Math.round(255 * (0.25 + 0.75 * t))], i * 4);
  }
  const small = document.createElement('canvas');
  small.width = side;
  small.height = side;
  small.getContext('2d')!.putImageData(cells, 0, 0);

  const context = canvas.getContext('2d')!;
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = 'high';
  context.drawImage(small, 0, 0, canvas.width, canvas.height);
}

/** Describes in one sentence the grid cell with the largest weight, for the canvas's text alternative. */
export function describePeak(weights: ArrayLike<number>): string {
  const side = gridSide(weights.length);
  let best = 0;
  for (let i = 1; i < weights.length; i++) if (weights[i] > weights[best]) best = i;
  const row = Math.floor(best / side);
  const column = best % side;
  const third = (index: number, names: [string, string, string]) => names[Math.min(2, Math.floor((3 * index) / side))];
  const vertical = third(row, ['upper', 'middle', 'lower']);
  const horizontal = third(column, ['left', 'centre', 'right']);
  return (
    `Attention heatmap over a ${side}×${side} patch grid; strongest at row ${row + 1}, column ${column + 1} ` +
    `(${vertical} ${horizontal} of the image as displayed).`
  );
}
