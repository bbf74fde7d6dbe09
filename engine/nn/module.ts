// Module: a tree of named parameters and submodules, addressed by dotted names that match
// checkpoint keys (e.g. `layers.0.attention.q_proj.weight`).
import type { Tensor } from '../tensor.ts';

export abstract class Module {
  /** Dropout and other training-only behaviour are on when true. */
  training = false;
  private readonly ownParameters = new Map<string, Tensor>();
  private readonly ownChildren = new Map<string, Module>();

  protected addParameter(name: string, value: Tensor): Tensor {
    this.ownParameters.set(name, value);
    return value;
  }

  protected addModule<M extends Module>(name: string, module: M): M {
    this.ownChildren.set(name, module);
    return module;
  }

  /** Replaces a registered parameter (used when loading weights of a different origin). */
  replaceParameter(name: string, value: Tensor): void {
    if (!this.ownParameters.has(name)) throw new Error(`module has no parameter named '${name}'`);
    this.ownParameters.set(name, value);
  }

  namedParameters(prefix = ''): Array<[string, Tensor]> {
    const out: Array<[string, Tensor]> = [];
    for (const [name, value] of this.ownParameters) out.push([prefix + name, value]);
    for (const [name, child] of this.ownChildren) out.push(...child.namedParameters(`${prefix}${name}.`));
    return out;
  }

  parameters(): Tensor[] {
    return this.namedParameters().map(([, value]) => value);
  }

  /** Parameters whose `requiresGrad` is set. */
  trainableParameters(): Tensor[] {
    return this.parameters().filter((p) => p.requiresGrad);
  }

  setRequiresGrad(requiresGrad: boolean): this {
    for (const p of this.parameters()) p.requiresGrad = requiresGrad;
    return this;
  }

  train(training = true): this {
    this.training = training;
    for (const child of this.ownChildren.values()) child.train(training);
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  dispose(): void {
    for (const p of this.parameters()) p.dispose();
  }
}

/** A list of modules registered as `0`, `1`, ... */
export class ModuleList<M extends Module> extends Module {
  readonly items: M[];

  constructor(items: M[]) {
    super();
    this.items = items;
    items.forEach((item, i) => this.addModule(String(i), item));
  }
}
