/** An eventfd doorbell (one OS resource, closed by close()). */
import { binding } from './load-addon.js';
import { call } from './translate-error.js';
import type { RawEventfd } from './binding-types.js';

/** A doorbell: one eventfd. */
export class Eventfd {
  /** The native object; owns the fd. */
  readonly raw: RawEventfd;
  constructor(fd?: number) {
    this.raw = call(() => new binding.Eventfd(fd));
  }
  get fd(): number {
    return call(() => this.raw.fd);
  }
  get closed(): boolean {
    return this.raw.closed;
  }
  signal(): void {
    call(() => this.raw.signal());
  }
  drain(): number {
    return call(() => this.raw.drain());
  }
  /** Idempotent; EBUSY while a region or pump uses it (close the region first). */
  close(): void {
    call(() => this.raw.close());
  }
}
