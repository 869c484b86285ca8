/** Shared helpers for the native tests: in-process gateway/client pairs, hashing, deadlines. */
import { createHash } from 'node:crypto';
import { dupFd, Eventfd, ShmRegion, type RegionOptions } from '../../native/index.js';

export interface Pair {
  gw: ShmRegion;
  cl: ShmRegion;
  gwBell: Eventfd;
  clBell: Eventfd;
  close(): void;
}

/** A gateway region and a client mapping of the same memfd, in this process. */
export function regionPair(opts: RegionOptions): Pair {
  const gw = ShmRegion.create(opts);
  const cl = ShmRegion.attach(dupFdOf(gw));
  const gwBell = new Eventfd();
  const clBell = new Eventfd();
  gw.setDoorbells(gwBell, clBell);
  cl.setDoorbells(clBell, gwBell);
  return {
    gw,
    cl,
    gwBell,
    clBell,
    close() {
      cl.close();
      gw.close();
      gwBell.close();
      clBell.close();
    },
  };
}

function dupFdOf(r: ShmRegion): number {
  return dupFd(r.fd);
}

/** Deterministic pseudo-random bytes (xorshift), so both ends can hash the same stream. */
export function prng(seed: number, len: number): Buffer {
  const b = Buffer.allocUnsafe(len);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < len; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    if (i + 4 <= len) b.writeUInt32LE(x, i);
    else for (let k = i; k < len; k++) b[k] = (x >>> (8 * (k - i))) & 0xff;
  }
  return b;
}

export function sha256(...parts: Buffer[]): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest('hex');
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Poll `cond` until true or throw after `ms`. */
export async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(2);
  }
}

/**
 * Drives the client end of one slot from JS the way the SDK will: copy in,
 * copy out, arm, and wait for doorbell hints (delivered by a watching pump).
 * Sends `payload` then half-closes (unless `shutdownAfterSend` is false).
 */
export class ClientDriver {
  readonly #region: ShmRegion;
  readonly #slot: number;
  readonly #payload: Buffer;
  readonly #buf = Buffer.allocUnsafe(256 * 1024);
  readonly #hash = createHash('sha256');
  sent = 0;
  received = 0;
  eof = false;
  shut = false;
  error: unknown;
  digest: string | undefined;
  readonly #shutdownAfterSend: boolean;
  #scheduled = false;

  constructor(region: ShmRegion, slot: number, payload: Buffer, shutdownAfterSend = true) {
    this.#region = region;
    this.#slot = slot;
    this.#payload = payload;
    this.#shutdownAfterSend = shutdownAfterSend;
  }

  get done(): boolean {
    return this.error !== undefined || (this.eof && (this.shut || !this.#shutdownAfterSend) && this.sent === this.#payload.length);
  }

  kick = (): void => {
    this.#scheduled = false;
    if (this.error !== undefined) return;
    try {
      for (let round = 0; round < 64; round++) {
        let progress = false;
        if (this.sent < this.#payload.length) {
          const n = this.#region.write(this.#slot, this.#payload, this.sent, Math.min(1 << 20, this.#payload.length - this.sent));
          if (n > 0) {
            this.sent += n;
            progress = true;
          }
        } else if (!this.shut && this.#shutdownAfterSend) {
          this.#region.shutdown(this.#slot);
          this.shut = true;
        }
        if (!this.eof) {
          const n = this.#region.read(this.#slot, this.#buf);
          if (n === null) {
            this.eof = true;
            this.digest = this.#hash.digest('hex');
          } else if (n > 0) {
            this.#hash.update(this.#buf.subarray(0, n));
            this.received += n;
            progress = true;
          }
        }
        if (!progress) break;
      }
      let again = false;
      if (this.sent < this.#payload.length && this.#region.armWrite(this.#slot)) again = true;
      if (!this.eof && this.#region.armRead(this.#slot)) again = true;
      if (again) this.schedule();
    } catch (err) {
      this.error = err;
    }
  };

  schedule(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(this.kick);
  }
}
