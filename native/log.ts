/**
 * Structured logs: one JSON object per line, to stderr by default, every line
 * carrying `service: "sockgate"`. Operational events go here; developer tracing
 * goes through trace.ts (SOCKGATE_TRACE).
 */
import pino from 'pino';
import type { Logger } from 'pino';

export type { Logger };

/** File descriptor of stderr; stdout stays free for CLI output. */
const STDERR_FD = 2;

/**
 * Create the gateway logger.
 *
 * Lines look like `{"level":"info","time":"2024-...Z","service":"sockgate","pid":1,"msg":"..."}`:
 * the level is written as its label and the time as ISO-8601, so the lines read
 * well without pino-pretty and parse in any log pipeline.
 *
 * @param level a pino level name: trace, debug, info, warn, error, fatal or silent
 * @param destination where lines go; stderr (synchronous writes, so nothing is
 *   lost when the process exits right after logging) if unset
 */
export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  return pino(
    {
      level,
      base: { service: 'sockgate', pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: {
        level: (label) => ({ level: label }),
      },
    },
    destination ?? pino.destination({ fd: STDERR_FD, sync: true }),
  );
}

/**
 * Warnings that a hostile client could trigger at will (refused attaches):
 * at most `perWindow` lines per `windowMs`; the next line logged says how many
 * were suppressed in between. Counting them is the caller's business.
 */
export class RateLimitedWarn {
  #window = { start: 0, logged: 0, suppressed: 0 };

  constructor(
    private readonly logger: Logger,
    private readonly perWindow = 20,
    private readonly windowMs = 10_000,
  ) {}

  warn(fields: Record<string, unknown>, msg: string): void {
    const now = Date.now();
    if (now - this.#window.start >= this.windowMs) this.#window = { start: now, logged: 0, suppressed: this.#window.suppressed };
    if (this.#window.logged >= this.perWindow) {
      this.#window.suppressed++;
      return;
    }
    this.#window.logged++;
    const suppressed = this.#window.suppressed;
    this.#window.suppressed = 0;
    this.logger.warn({ ...fields, ...(suppressed ? { suppressed } : {}) }, msg);
  }
}
