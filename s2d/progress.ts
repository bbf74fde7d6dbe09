// The progress interface of long-running work. Library code calls it and never prints, and the
// CLI implements it with progress bars.

export interface Progress {
  /** A phase of `total` steps begins. */
  start(label: string, total: number): void;
  /** One step finished; `values` are shown next to the bar (e.g. the loss). */
  tick(values?: Record<string, number>): void;
  stop(): void;
  /** A line of information between phases. */
  log(message: string): void;
}

export const silentProgress: Progress = {
  start() {},
  tick() {},
  stop() {},
  log() {},
};
