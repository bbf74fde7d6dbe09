// Learning-rate schedules: functions from the step number (0-based) to a learning rate.

export interface CosineScheduleOptions {
  /** Learning rate at the end of warm-up. */
  peak: number;
  /** Steps of linear warm-up from 0 to `peak`. */
  warmupSteps: number;
  /** Step at which the cosine decay reaches `min`; later steps stay at `min`. */
  totalSteps: number;
  /** Final learning rate; default 0. */
  min?: number;
}

/**
 * Linear warm-up from 0 to `peak` over `warmupSteps`, then a half cosine from `peak` down to
 * `min` at `totalSteps`: lr(t) = min + (peak − min)·½(1 + cos(π·(t − warmup)/(total − warmup))).
 */
export function cosineSchedule({ peak, warmupSteps, totalSteps, min = 0 }: CosineScheduleOptions): (step: number) => number {
  if (!(peak >= 0) || !(min >= 0) || min > peak) {
    throw new Error(`cosineSchedule: peak = ${peak} and min = ${min} are invalid; use 0 <= min <= peak`);
  }
  if (!Number.isInteger(warmupSteps) || !Number.isInteger(totalSteps) || warmupSteps < 0 || totalSteps < warmupSteps) {
    throw new Error(`cosineSchedule: warmupSteps = ${warmupSteps} and totalSteps = ${totalSteps} are invalid; use integers with 0 <= warmupSteps <= totalSteps`);
  }
  return (step: number) => {
    if (step < warmupSteps) return (peak * step) / warmupSteps;
    if (step >= totalSteps) return min;
    const progress = (step - warmupSteps) / (totalSteps - warmupSteps);
    return min + (peak - min) * 0.5 * (1 + Math.cos(Math.PI * progress));
  };
}
