// Progress bars for the CLI (cli-progress): loss and steps per second next to each bar.
import cliProgress from 'cli-progress';
import type { Progress } from './progress.ts';

export class TerminalProgress implements Progress {
  private bar: cliProgress.SingleBar | null = null;
  private started = 0;
  private count = 0;
  private readonly interactive = Boolean(process.stderr.isTTY);
  private label = '';
  private total = 0;
  private lastLine = 0;

  start(label: string, total: number): void {
    this.stop();
    this.label = label;
    this.total = total;
    this.started = performance.now();
    this.count = 0;
    this.lastLine = 0;
    if (this.interactive) {
      this.bar = new cliProgress.SingleBar(
        { format: `${label.padEnd(34)} [{bar}] {value}/{total} {extra}`, stream: process.stderr, hideCursor: true, barsize: 24 },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(total, 0, { extra: '' });
    } else {
      process.stderr.write(`${label}: ${total} steps\n`);
    }
  }

  tick(values: Record<string, number> = {}): void {
    this.count += 1;
    const seconds = (performance.now() - this.started) / 1000;
    const rate = this.count / Math.max(seconds, 1e-9);
    const parts = Object.entries(values).map(([k, v]) => `${k} ${formatValue(v)}`);
    parts.push(rate >= 1 ? `${rate.toFixed(2)} step/s` : `${(1 / rate).toFixed(2)} s/step`);
    const extra = parts.join('  ');
    if (this.bar) {
      this.bar.update(this.count, { extra });
    } else if (this.count === this.total || seconds - this.lastLine >= 15) {
      // Without a terminal (CI logs), print a line every 15 s instead of redrawing a bar.
      this.lastLine = seconds;
      process.stderr.write(`${this.label}: ${this.count}/${this.total}  ${extra}\n`);
    }
  }

  stop(): void {
    if (this.bar) {
      this.bar.stop();
      this.bar = null;
    }
  }

  log(message: string): void {
    this.stop();
    process.stdout.write(`${message}\n`);
  }
}

function formatValue(value: number): string {
  if (value !== 0 && Math.abs(value) < 1e-2) return value.toExponential(2);
  return value.toFixed(4);
}
