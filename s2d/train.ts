// Training: decoder and text-encoder pretraining for presets without a pretrained checkpoint,
// then the Progressive Anatomical Grounding curriculum (stage 1 → 2 → 3 by default).
import { AdamW } from '../engine/optim.ts';
import { reshape } from '../engine/ops/index.ts';
import { crossEntropy } from '../engine/ops/loss.ts';
import { Random } from '../engine/random.ts';
import { cosineSchedule } from '../engine/schedule.ts';
import { fromHost, noGrad, tidy, type Tensor } from '../engine/tensor.ts';
import { batchesOf, decoderBatch, type PreparedSample, type SpecialIds } from './batches.ts';
import type { StageConfig } from './config.ts';
import { IGNORE_INDEX, tokenBatch, type S2DAlign } from './model.ts';
import type { Progress } from './progress.ts';

export interface StageResult {
  label: string;
  steps: number;
  finalTrainLoss: number;
  valLoss: number;
  seconds: number;
}

interface LoopOptions {
  label: string;
  epochs: number;
  peakLr: number;
  parameters: Tensor[];
  batches: (epoch: number) => Array<() => Tensor>;
}

/** Runs the shared loop: AdamW, linear warm-up then cosine decay, one loss readback per step. */
async function fit(model: S2DAlign, options: LoopOptions, progress: Progress): Promise<{ steps: number; lastLoss: number }> {
  const { training } = model.config;
  const perEpoch = options.batches(0).length;
  const totalSteps = perEpoch * options.epochs;
  const schedule = cosineSchedule({ peak: options.peakLr, warmupSteps: Math.min(training.warmupSteps, Math.floor(totalSteps / 4)), totalSteps });
  const optimizer = new AdamW(options.parameters, { lr: options.peakLr, betas: training.betas, weightDecay: training.weightDecay });
  model.train(true);
  progress.start(options.label, totalSteps);
  let step = 0;
  let recent = 0;
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
      const value = await loss.item();
      loss.dispose();
      if (!Number.isFinite(value)) {
        progress.stop();
        throw new Error(`${options.label}: loss became ${value} at step ${step + 1}; lower the learning rate (${options.peakLr})`);
      }
      recent = step === 0 ? value : 0.9 * recent + 0.1 * value;
      step += 1;
      progress.tick({ loss: recent, lr });
    }
  }
  progress.stop();
  optimizer.dispose();
  model.eval();
  return { steps: step, lastLoss: recent };
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

// TODO: joint training (stages 1, 2 and 3 mixed in one stage) is not implemented. Schedules
// run stages one after another, in any order or subset.
/** Runs one PAG stage from the model's current weights and returns its validation loss. */
export async function trainStage(model: S2DAlign, stage: StageConfig, train: PreparedSample[], val: PreparedSample[], ids: SpecialIds, progress: Progress): Promise<StageResult> {
  const started = performance.now();
  model.setRequiresGrad(false);
  // LoRA joins in stage 2 and stays on for every later stage and for inference.
  if (stage.stage >= 2) model.decoder.setLoraEnabled(true);
  const parameters = stageParameters(model, stage.stage);
  for (const p of parameters) p.requiresGrad = true;
  const rng = new Random(model.config.training.seed + 10 * stage.stage);
  const { keyPhrases, maxPhraseTokens } = model.config.data;
  const label = `PAG stage ${stage.stage}`;
  const { steps, lastLoss } = await fit(
    model,
    {
      label,
      epochs: stage.epochs,
      peakLr: stage.peakLr,
      parameters,
      batches: () =>
        batchesOf(train, model.config.training.batchSize, rng).map((group) => () => {
          const batch = decoderBatch(group, featureShapeOf(model), ids, rng, keyPhrases, maxPhraseTokens);
          const context = model.context(stage.stage, batch.features, batch.reference, batch.phrases);
          return model.reportLoss(context, batch.inputIds, batch.targets);
        }),
    },
    progress,
  );
  model.setRequiresGrad(false);
  const valLoss = await validationLoss(model, stage.stage, val, ids);
  return { label, steps, finalTrainLoss: lastLoss, valLoss, seconds: (performance.now() - started) / 1000 };
}

/** Token-weighted mean cross-entropy on `samples` with the stage's context. */
export async function validationLoss(model: S2DAlign, stage: 1 | 2 | 3, samples: PreparedSample[], ids: SpecialIds): Promise<number> {
  const rng = new Random(model.config.training.seed + 99);
  const { keyPhrases, maxPhraseTokens } = model.config.data;
  let total = 0;
  let tokens = 0;
  for (const group of batchesOf(samples, model.config.training.batchSize)) {
    const loss = noGrad(() =>
      tidy(() => {
        const batch = decoderBatch(group, featureShapeOf(model), ids, rng, keyPhrases, maxPhraseTokens);
        return model.reportLoss(model.context(stage, batch.features, batch.reference, batch.phrases), batch.inputIds, batch.targets);
      }),
    );
    const count = group.reduce((n, s) => n + s.reportIds.length + 1, 0);
    total += (await loss.item()) * count;
    tokens += count;
    loss.dispose();
  }
  return tokens ? total / tokens : NaN;
}

export function featureShapeOf(model: S2DAlign): [number, number] {
  return [model.vision.patchCount + 1, model.config.vision.hiddenSize];
}
