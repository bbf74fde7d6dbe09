// Activation checkpointing: trade compute for memory by not keeping a block's intermediate
// tensors for the backward pass.
//
// The forward runs the block without recording its graph and frees its intermediates at once,
// so only the block's inputs and output stay alive. The backward runs the block again with
// recording on, from the same inputs and with the same dropout seeds, and back-propagates the
// output gradient through that recomputation. Every block then costs one extra forward.
import { dropoutSeedState, setDropoutSeedState } from './nn/layers.ts';
import { accumulateGrad, enableGrad, isGradEnabled, noGrad, Tensor, tidy } from './tensor.ts';

/**
 * Returns `fn(...inputs)`, computed without keeping `fn`'s intermediate tensors; the backward
 * recomputes them. Gradients reach `inputs` and the parameters `fn` uses, as without
 * checkpointing.
 *
 * `parameters` lists the trainable tensors `fn` uses. When given, the output needs a gradient
 * only if an input or one of these parameters requires one. When omitted, the output always
 * needs one, which is correct but makes the backward recompute blocks with nothing to train.
 *
 * `fn` must reach every tensor that requires a gradient through `inputs` or as a leaf
 * (a parameter). A tensor it captures from the surrounding graph that requires a gradient
 * would receive its gradient after that graph's backward has passed it. `fn` must be
 * deterministic apart from dropout, whose seeds are replayed.
 */
export function checkpoint(fn: (...inputs: Tensor[]) => Tensor, inputs: readonly Tensor[], parameters?: readonly Tensor[]): Tensor {
  if (!isGradEnabled()) return fn(...inputs);
  const needsGrad = inputs.some((input) => input.requiresGrad) || (parameters ? parameters.some((p) => p.requiresGrad) : true);
  if (!needsGrad) return fn(...inputs);

  const seedState = dropoutSeedState();
  let out = noGrad(() => tidy(() => fn(...inputs)));
  // An output that is an input or a parameter gets its own tensor object, so the graph node
  // attached below does not replace theirs.
  if (inputs.includes(out) || out.kept) out = out.view(out.shape);

  out.requiresGrad = true;
  out.parents = [...inputs];
  out.backwardFn = (grad) => recompute(fn, inputs, seedState, grad);
  return out;
}

/** Runs `fn` again with recording on and sends `grad` (dL/d output) back through it. */
function recompute(fn: (...inputs: Tensor[]) => Tensor, inputs: readonly Tensor[], seedState: number, grad: Tensor): void {
  const stateAfterForward = dropoutSeedState();
  setDropoutSeedState(seedState);
  // Views of the inputs are leaves of the recomputed graph, so its backward stops there and
  // leaves their gradients for this function to pass on.
  const leaves = inputs.map((input) => {
    const leaf = input.view(input.shape);
    leaf.requiresGrad = input.requiresGrad;
    return leaf;
  });
  try {
    enableGrad(() =>
      tidy(() => {
        const out = fn(...leaves);
        // The backward takes over its seed gradient, and the caller still owns `grad`.
        out.backward(grad.view(grad.shape));
      }),
    );
    leaves.forEach((leaf, i) => {
      const leafGrad = leaf.grad;
      if (!leafGrad) return;
      leaf.grad = null;
      // accumulateGrad copies a tensor that is already some leaf's gradient, so it gets a
      // plain view, and the leaf's own reference is dropped here.
      const passed = leafGrad.view(leafGrad.shape);
      leafGrad.dispose();
      accumulateGrad(inputs[i], passed);
      if (inputs[i].grad !== passed) passed.dispose();
    });
  } finally {
    setDropoutSeedState(stateAfterForward);
    for (const leaf of leaves) leaf.dispose();
  }
}
