/**
 * Rate-limited logging for events an unauthenticated peer can trigger at will
 * (refused data-port connections, bad preambles): at most one line per
 * interval per key, carrying how many like it were suppressed since the last
 * line. Without it, a peer opening idle connections turns into a log flood.
 */
import type { Logger } from '../native/log.js';

/** Distinct keys remembered at once, so a peer rotating keys cannot grow the map. */
const MAX_KEYS = 64;

interface Window {
  /** When the last line for this key was written. */
  lastMs: number;
  /** Events dropped since then. */
  suppressed: number;
}

export class LogLimiter {
  private readonly windows = new Map<string, Window>();

  constructor(
    private readonly logger: Logger,
    /** At most one line per key per this many milliseconds. */
    private readonly intervalMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * Log `msg` at warn level unless a line with the same `key` went out within the
   * interval (then it is counted). The line carries `suppressed`: events not
   * logged since the previous line. Returns whether a line was written.
   */
  warn(key: string, fields: Record<string, unknown>, msg: string): boolean {
    const t = this.now();
    const w = this.windows.get(key);
    if (w && t - w.lastMs < this.intervalMs) {
      w.suppressed++;
      return false;
    }
    const suppressed = w?.suppressed ?? 0;
    this.windows.delete(key);
    this.windows.set(key, { lastMs: t, suppressed: 0 });
    // Evict the oldest key (its unreported count is lost; keys are few and fixed in practice).
    if (this.windows.size > MAX_KEYS) this.windows.delete(this.windows.keys().next().value as string);
    this.logger.warn(suppressed ? { ...fields, suppressed } : fields, msg);
    return true;
  }

  /** Events suppressed and not yet reported, over all keys (tests, debugging). */
  get pending(): number {
    let n = 0;
    for (const w of this.windows.values()) n += w.suppressed;
    return n;
  }
}
