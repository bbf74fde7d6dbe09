// Training: decoder and text-encoder pretraining for presets without a pretrained checkpoint,
// then the Progressive Anatomical Grounding curriculum (stage 1 → 2 → 3 by default, or with
// stages joined into joint stages).
import { AdamW } from '../engine/optim.ts';
import { add, reshape, scale } from '../engine/ops/index.ts';
import { concat } from '../engine/ops/shape.ts';
import { crossEntropy } from '../engine/ops/loss.ts';
import { Random } from '../engine/random.ts';
import { cosineSchedule } from '../engine/schedule.ts';
import { fromHost, noGrad, tidy, type Tensor } from '../engine/tensor.ts';
import { batchesOf, decoderBatch, type DecoderBatch, type PreparedSample, type SpecialIds } from './batches.ts';
import { stageLabel, stageMembers, type StageConfig, type StageNumber } from './config.ts';
import { IGNORE_INDEX, tokenBatch, type S2DAlign } from './model.ts';
import type { Progress } from './progress.ts';

export interface StageResult {
  label: string;
  steps: number;
  finalTrainLoss: number;
  /** Training loss of every step, in order. */
  trainLosses: number[];
  /**
   * Validation loss with the stage's context. For a joint stage, the loss with C1, the image
   * context that inference uses.
   */
  valLoss: number;
  /** Validation loss of each member of a joint stage with that member's context. Absent for a single stage. */
  memberValLosses?: Array<{ stage: StageNumber; valLoss: number }>;
  seconds: number;
}

interface LoopOptions {
  label: string;
  epochs: number;
  peakLr: number;
  parameters: Tensor[];
  batches: (epoch: number) => Array<() => Tensor>;
}

/** Steps whose losses are read back together when training.lossReadInterval is not set. */
export const DEFAULT_LOSS_READ_INTERVAL = 8;

/**
 * Copies scalar tensors to the host with one readback (one concat and one map) and disposes
 * them. Returns their values in order.
 */
export async function readScalars(scalars: readonly Tensor[]): Promise<number[]> {
  if (scalars.length === 0) return [];
  const joined = noGrad(() => tidy(() => concat(scalars.map((scalar) => reshape(scalar, [1])), 0)));
  const values = Array.from(await joined.data());
  joined.dispose();
  for (const scalar of scalars) scalar.dispose();
  return values;
}

function lossReadInterval(model: S2DAlign): number {
  const interval = model.config.training.lossReadInterval ?? DEFAULT_LOSS_READ_INTERVAL;
  if (!(Number.isInteger(interval) && interval >= 1)) {
    throw new Error(`training.lossReadInterval = ${interval} is invalid; use a positive integer (1 reads the loss after every step)`);
  }
  return interval;
}

/**
 * Runs the shared loop: AdamW, linear warm-up then cosine decay. The loop does not wait for
 * each step's loss: it submits the step and reads the losses of `lossReadInterval` steps in
 * one batch, so the device always has queued work. A non-finite loss therefore stops the run
 * up to that many steps after the step that produced it.
 */
async function fit(model: S2DAlign, options: LoopOptions, progress: Progress): Promise<{ steps: number; lastLoss: number; losses: number[] }> {
  const { training } = model.config;
  const readInterval = lossReadInterval(model);
  const perEpoch = options.batches(0).length;
  const totalSteps = perEpoch * options.epochs;
  const schedule = cosineSchedule({ peak: options.peakLr, warmupSteps: Math.min(training.warmupSteps, Math.floor(totalSteps / 4)), totalSteps });
  const optimizer = new AdamW(options.parameters, { lr: options.peakLr, betas: training.betas, weightDecay: training.weightDecay });
  model.train(true);
  progress.start(options.label, totalSteps);
  let step = 0;
  let recent = 0;
  const losses: number[] = [];
  // Loss tensors of the steps whose values have not been read yet, with their learning rates.
  let pending: Array<{ loss: Tensor; lr: number }> = [];
  const readPending = async () => {
    const batch = pending;
    pending = [];
    const values = await readScalars(batch.map(({ loss }) => loss));
    values.forEach((value, i) => {
      const done = losses.length;
      if (!Number.isFinite(value)) {
        progress.stop();
        throw new Error(`${options.label}: loss became ${value} at step ${done + 1}; lower the learning rate (${options.peakLr})`);
      }
      losses.push(value);
      recent = done === 0 ? value : 0.9 * recent + 0.1 * value;
      progress.tick({ loss: recent, lr: batch[i].lr });
    });
  };

  try {
    for (let epoch = 0; epoch < options.epochs; epoch++) {
      const batches = epoch === 0 ? options.batches(0) : options.batches(epoch);
      for (const makeLoss of batches) {
        const lr = schedule(step);
        const loss = tidy(() => {
          const value = makeLoss();
          value.backward();
          optimizer.step(lr);
          optimizer.zeroGrad();
          return value;
        });
        // Start the step on the device now; its loss is read with the next batch of readbacks.
        loss.device.flush();
        pending.push({ loss, lr });
        step += 1;
        if (pending.length >= readInterval) await readPending();
      }
    }
    await readPending();
  } finally {
    // On an error (a non-finite loss), the unread losses and the moments are freed too.
    for (const { loss } of pending) loss.dispose();
    optimizer.dispose();
  }
  progress.stop();
  model.eval();
  return { steps: step, lastLoss: recent, losses };
}

/** Pretrains the decoder as a causal LM on report text (LoRA off, base weights trainable). */
export async function pretrainDecoder(model: S2DAlign, samples: PreparedSample[], ids: SpecialIds, epochs: number, lr: number, progress: Progress): Promise<void> {
  model.setRequiresGrad(false);
  model.decoder.setLoraEnabled(false);
  const base = model.decoder.parameters().filter((p) => !model.decoder.loraParameters().includes(p));
  for (const p of base) p.requiresGrad = true;
  const rng = new Random(model.config.training.seed + 1);
  await fit(
    model,
    {
      label: 'pretrain decoder (causal LM)',
      epochs,
      peakLr: lr,
      parameters: base,
      batches: () =>
        batchesOf(samples, model.config.training.batchSize, rng).map((group) => () => {
          const batch = decoderBatch(group, featureShapeOf(model), ids, rng, 0, 0);
          return model.reportLoss(null, batch.inputIds, batch.targets);
        }),
    },
    progress,
  );
  model.setRequiresGrad(false);
}

/** Pretrains the text encoder with masked-LM on report text (15 % of tokens masked). */
export async function pretrainTextEncoder(model: S2DAlign, texts: number[][], epochs: number, lr: number, progress: Progress): Promise<void> {
  const mlmHead = model.mlmHead;
  if (!mlmHead) throw new Error('pretrain text encoder: the model has no masked-LM head (its text encoder is a pretrained checkpoint); set pretrainTextEpochs to 0');
  model.setRequiresGrad(false);
  const parameters = [...model.textEncoder.parameters(), ...mlmHead.parameters()];
  for (const p of parameters) p.requiresGrad = true;
  const rng = new Random(model.config.training.seed + 2);
  const maxTokens = model.config.text.maxPositions;
  await fit(
    model,
    {
      label: 'pretrain text encoder (masked LM)',
      epochs,
      peakLr: lr,
      parameters,
      batches: () =>
        batchesOf(texts, model.config.training.batchSize, rng).map((group) => () => {
          const lists = group.map((t) => t.slice(0, maxTokens));
          const masked = lists.map((list) => list.map((id) => (rng.next() < 0.15 ? -1 - id : id)));
          // Guarantee one masked token per text so every row contributes.
          masked.forEach((list) => {
            if (list.length > 0 && list.every((id) => id >= 0)) list[0] = -1 - list[0];
          });
          const inputs = masked.map((list) => list.map((id) => (id < 0 ? model.maskTokenId : id)));
          const batch = tokenBatch(inputs);
          const [rows, length] = batch.ids.shape;
          const targets = new Int32Array(rows * length).fill(IGNORE_INDEX);
          masked.forEach((list, row) => list.forEach((id, col) => {
            if (id < 0) targets[row * length + col] = -1 - id;
          }));
          const hidden = model.textEncoder.forward(batch.ids, batch.lengths);
          const logits = mlmHead.forward(hidden);
          return crossEntropy(reshape(logits, [rows * length, model.vocabSize + 1]), fromHost(targets, [rows * length]), IGNORE_INDEX);
        }),
    },
    progress,
  );
  model.setRequiresGrad(false);
}

/** Returns the parameters a PAG stage trains. The decoder base, ViT and text encoder stay frozen. */
export function stageParameters(model: S2DAlign, stage: 1 | 2 | 3): Tensor[] {
  const parameters = [model.memoryBank, ...model.smaV.parameters()];
  if (stage >= 2) parameters.push(...model.smaT.parameters(), ...model.decoder.loraParameters());
  if (stage >= 3) parameters.push(...model.smaP.parameters());
  return parameters;
}

function checkStageEntry(entry: StageConfig): StageNumber[] {
  const members = stageMembers(entry);
  const ascending = members.every((m, i) => [1, 2, 3].includes(m) && (i === 0 || m > members[i - 1]));
  if (!(members.length > 0 && ascending && entry.stage === members[members.length - 1])) {
    const description = entry.joint ? `stage ${entry.stage} with joint members [${entry.joint.join(', ')}]` : `stage ${entry.stage}`;
    throw new Error(`PAG stage entry (${description}) is invalid; use stage 1, 2 or 3, list joint members in ascending order without repeats and set stage to the highest (parseStages builds such entries)`);
  }
  return members;
}

/**
 * Builds the decoder context of each of `stages` from one batch, as model.context
 * does: C1 = SMA_v(image), C2 = [C1 ; SMA_t(reference)], C3 = [C2 ; SMA_p(phrases)]. Each
 * adapter runs once and the contexts share its output.
 */
function stageContexts(model: S2DAlign, stages: StageNumber[], batch: DecoderBatch): Tensor[] {
  const highest = Math.max(...stages);
  const parts = [model.visualContext(batch.features)];
  if (highest >= 2) parts.push(model.textContext(model.smaT, batch.reference));
  if (highest >= 3) parts.push(model.textContext(model.smaP, batch.phrases));
  return stages.map((stage) => (stage === 1 ? parts[0] : concat(parts.slice(0, stage), 1)));
}

/**
 * Computes one training step's loss: the report loss with the stage's context, or for a joint
 * stage the mean of its members' report losses, each with its own context, on the same batch.
 */
export function stageLoss(model: S2DAlign, entry: StageConfig, batch: DecoderBatch): Tensor {
  const members = checkStageEntry(entry);
  const losses = stageContexts(model, members, batch).map((context) => model.reportLoss(context, batch.inputIds, batch.targets));
  if (losses.length === 1) return losses[0];
  return scale(losses.reduce((total, loss) => add(total, loss)), 1 / losses.length);
}

/**
 * Runs one PAG stage from the model's current weights and returns its validation loss. A joint
 * stage trains the union of its members' parameters (those of its highest member), with
 * LoRA on when any member is 2 or 3.
 */
export async function trainStage(model: S2DAlign, stage: StageConfig, train: PreparedSample[], val: PreparedSample[], ids: SpecialIds, progress: Progress): Promise<StageResult> {
  const started = performance.now();
  const members = checkStageEntry(stage);
  model.setRequiresGrad(false);
  // LoRA joins in stage 2 and stays on for every later stage and for inference.
  if (stage.stage >= 2) model.decoder.setLoraEnabled(true);
  const parameters = stageParameters(model, stage.stage);
  for (const p of parameters) p.requiresGrad = true;
  const rng = new Random(model.config.training.seed + 10 * stage.stage);
  const { keyPhrases, maxPhraseTokens } = model.config.data;
  const label = stageLabel(stage);
  // NOTE: a joint step keeps one decoder pass per member on the tape until backward, so its
  // activations are about that many times those of a single stage. The paper-mode memory plan
  // counts one pass.
  const { steps, lastLoss, losses } = await fit(
    model,
    {
      label,
      epochs: stage.epochs,
      peakLr: stage.peakLr,
      parameters,
      batches: () =>
        batchesOf(train, model.config.training.batchSize, rng).map((group) => () => {
          const batch = decoderBatch(group, featureShapeOf(model), ids, rng, keyPhrases, maxPhraseTokens);
          return stageLoss(model, stage, batch);
        }),
    },
    progress,
  );
  model.setRequiresGrad(false);
  const trained = { label, steps, finalTrainLoss: lastLoss, trainLosses: losses };
  const seconds = () => (performance.now() - started) / 1000;
  if (!stage.joint) return { ...trained, valLoss: await validationLoss(model, stage.stage, val, ids), seconds: seconds() };

  // Inference reads C1 alone, so the joint stage's validation loss is the C1 loss.
  const evaluated: StageNumber[] = members.includes(1) ? members : [1, ...members];
  const valLosses = await validationLosses(model, evaluated, val, ids);
  const memberValLosses = members.map((member) => ({ stage: member, valLoss: valLosses[evaluated.indexOf(member)] }));
  return { ...trained, valLoss: valLosses[0], memberValLosses, seconds: seconds() };
}

/** Token-weighted mean cross-entropy on `samples` with the stage's context. */
export async function validationLoss(model: S2DAlign, stage: StageNumber, samples: PreparedSample[], ids: SpecialIds): Promise<number> {
  const [loss] = await validationLosses(model, [stage], samples, ids);
  return loss;
}

/**
 * Computes the token-weighted mean cross-entropy on `samples` with the context of each of
 * `stages`, in one pass over the samples. Returns one loss per stage, in the order of `stages`.
 */
export async function validationLosses(model: S2DAlign, stages: StageNumber[], samples: PreparedSample[], ids: SpecialIds): Promise<number[]> {
  if (stages.length === 0) return [];
  const rng = new Random(model.config.training.seed + 99);
  const { keyPhrases, maxPhraseTokens } = model.config.data;
  const readInterval = lossReadInterval(model);
  const totals = stages.map(() => 0);
  let tokens = 0;
  let pending: Array<{ losses: Tensor[]; count: number }> = [];
  const readPending = async () => {
    const values = await readScalars(pending.flatMap(({ losses }) => losses));
    pending.forEach(({ count }, group) => {
      stages.forEach((_, i) => (totals[i] += values[group * stages.length + i] * count));
      tokens += count;
    });
    pending = [];
  };
  for (const group of batchesOf(samples, model.config.training.batchSize)) {
    const losses = noGrad(() =>
      tidy(() => {
        const batch = decoderBatch(group, featureShapeOf(model), ids, rng, keyPhrases, maxPhraseTokens);
        return stageContexts(model, stages, batch).map((context) => model.reportLoss(context, batch.inputIds, batch.targets));
      }),
    );
    losses[0].device.flush();
    pending.push({ losses, count: group.reduce((n, s) => n + s.reportIds.length + 1, 0) });
    if (pending.length >= readInterval) await readPending();
  }
  await readPending();
  return totals.map((total) => (tokens ? total / tokens : NaN));
}

export function featureShapeOf(model: S2DAlign): [number, number] {
  return [model.vision.patchCount + 1, model.config.vision.hiddenSize];
}
