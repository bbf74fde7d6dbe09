// Fits a one-layer linear model with AdamW on the current device: a minimal use of the engine
// without S2D-Align. Run from the repository root:
//   node --import ./scripts/register-ts.mjs examples/engine/fit-linear.ts
import { AdamW, Linear, Random, initDevice, fromHost, mean, square, sub, tidy } from '../../engine/index.ts';

await initDevice('auto', { warn: console.warn });
const layer = new Linear(3, 1, new Random(1));
const optimizer = new AdamW(layer.parameters(), { lr: 0.05 });
const x = fromHost(new Float32Array([1, 2, 3, 4, 5, 6]), [2, 3]);
const target = fromHost(new Float32Array([1, -1]), [2, 1]);
for (let step = 0; step < 100; step++) {
  // backward() runs inside the tidy() that built the graph; tidy frees the rest.
  const loss = tidy(() => {
    const value = mean(square(sub(layer.forward(x), target)));
    value.backward();
    optimizer.step();
    optimizer.zeroGrad();
    return value;
  });
  if (step % 25 === 0) console.log(`step ${step}: loss ${(await loss.item()).toFixed(4)}`);
  loss.dispose();
}
