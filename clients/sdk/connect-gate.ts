/**
 * How many connects one SDK Gateway has in flight (Connect call through
 * attach): a burst beyond it waits here, first come first served, instead of
 * reaching the gateway, whose pending-socket and data-port bounds would refuse
 * it (limits.max_pending_sockets_per_identity, ..._data_connections_per_peer).
 * A waiter whose signal aborts leaves the queue at once. (p-queue's abort only
 * takes effect when a task is dequeued, hence this small gate.)
 */
import { AbortedError, LimitExceededError } from '../../proto/errors.js';

export class ConnectGate {
  /** Connects running now; never above `limit`. */
  #running = 0;
  /** Waiters in arrival order; each removes itself on abort. */
  readonly #waiting = new Set<() => void>();

  constructor(
    readonly limit: number,
    /** Most waiters held; one more is refused at once (a bound on the queue itself). */
    readonly maxWaiting: number,
  ) {}

  get running(): number {
    return this.#running;
  }

  get waiting(): number {
    return this.#waiting.size;
  }

  /** Run `fn` once fewer than `limit` connects run; the slot is released when it settles. */
  async run<T>(fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    await this.#acquire(signal);
    try {
      return await fn();
    } finally {
      this.#running--;
      const next = this.#waiting.values().next();
      if (!next.done) next.value();
    }
  }

  #acquire(signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(new AbortedError('connect aborted while waiting for a connect slot'));
    if (this.#running < this.limit) {
      this.#running++;
      return Promise.resolve();
    }
    if (this.#waiting.size >= this.maxWaiting) {
      return Promise.reject(new LimitExceededError(`${this.#waiting.size} connects already wait for one of ${this.limit} connect slots (maxWaitingConnects)`));
    }
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        this.#waiting.delete(wake);
        reject(new AbortedError('connect aborted while waiting for a connect slot'));
      };
      const wake = () => {
        this.#waiting.delete(wake);
        signal?.removeEventListener('abort', onAbort);
        this.#running++;
        resolve();
      };
      this.#waiting.add(wake);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}
