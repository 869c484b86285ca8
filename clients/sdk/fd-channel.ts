/**
 * A data channel that is a real descriptor: a `net.Socket` over our end of a
 * Unix socketpair whose other end something else moves bytes for (the rdma
 * connection on the native I/O thread, or a JS bridge to a channel that has
 * no descriptor of its own).
 *
 * The catch with a socketpair: when the mover is done with its end it closes
 * it, and this side sees a clean EOF (or, with unread bytes, ECONNRESET)
 * whether the stream ended with a real FIN or was torn down by an error.
 * The mover tells us which, but on another path (pump events, a stream's
 * events) that may arrive before or after the EOF. So this socket holds an
 * EOF back until its mover `settle()`d how the read side ended: a clean end
 * releases it, an error destroys the socket with that error instead; a
 * system error (ECONNRESET) read meanwhile is replaced by the mover's error.
 * Neither is held forever: after FATE_WAIT_MS without word the EOF becomes
 * an error (never a silent clean end), the system error stays as it was.
 */
import { Socket } from 'node:net';
import { GatewayUnavailableError, SockgateError } from '../../proto/errors.js';

/** How long an EOF (or a reset) on the socketpair waits for the mover's account of how the stream ended. */
export const FATE_WAIT_MS = 3_000;

export interface FdChannelOptions {
  fd: number;
  /** Readable buffering of the JS side. */
  highWaterMark?: number;
  /** For messages: what this channel carries, e.g. "socket t1-abc (rdma slot 3)". */
  label: string;
}

export class FdChannel extends Socket {
  /** What this channel carries, for messages. */
  readonly label: string;
  /** The read side ended genuinely (the peer's FIN went through the mover). */
  #readClean = false;
  /** The mover's error, once it reported one. */
  #failure: SockgateError | undefined;
  /** An EOF arrived before the mover said how the stream ended. */
  #heldEof = false;
  /** Callbacks waiting for the mover's word (held EOF, held system error). */
  #waiters: (() => void)[] = [];
  #timer: NodeJS.Timeout | undefined;

  constructor(opts: FdChannelOptions) {
    super({ fd: opts.fd, allowHalfOpen: true, readable: true, writable: true, ...(opts.highWaterMark ? { highWaterMark: opts.highWaterMark } : {}) } as ConstructorParameters<typeof Socket>[0]);
    this.label = opts.label;
  }

  /** Whether the mover said how the read side ended. */
  get settled(): boolean {
    return this.#readClean || this.#failure !== undefined;
  }

  /**
   * The mover's word on the stream: no error = the read side ended cleanly
   * (an EOF is genuine); an error = the stream failed (the socket is destroyed
   * with it, unless it already closed). Later words only add an error.
   */
  settle(err?: SockgateError): void {
    if (err) this.#failure ??= err;
    else this.#readClean = true;
    if (this.#heldEof) {
      this.#heldEof = false;
      if (this.#readClean) {
        super.push(null);
        this.read(0);
      }
    }
    if (err && !this.destroyed) this.destroy(err);
    this.#wake();
  }

  /** The mover's error, if it reported one. */
  get failure(): SockgateError | undefined {
    return this.#failure;
  }

  override push(chunk: unknown, encoding?: BufferEncoding): boolean {
    if (chunk === null && !this.#readClean) {
      if (this.#failure) {
        this.destroy(this.#failure);
        return false;
      }
      if (!this.#heldEof) {
        this.#heldEof = true;
        this.#wait(() => {
          if (!this.#heldEof) return;
          this.#heldEof = false;
          this.destroy(new GatewayUnavailableError(`${this.label}: the stream ended but its data plane did not confirm the end within ${FATE_WAIT_MS} ms`));
        });
      }
      return false;
    }
    return super.push(chunk, encoding);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    // A reset read on the socketpair says only that the mover closed its end: report why it did.
    // Decided before the handle closes: net.Socket emits 'close' itself once it has.
    if (err && !(err instanceof SockgateError) && !this.settled) {
      this.#wait(() => super._destroy(this.#failure ?? err, cb));
      return;
    }
    super._destroy(err && !(err instanceof SockgateError) && this.#failure ? this.#failure : err, cb);
  }

  #wait(fn: () => void): void {
    this.#waiters.push(fn);
    // Ref'd: once the socketpair said EOF its handle no longer keeps the
    // process alive, and the verdict comes through the mover's (unref'd)
    // pump; with an unref'd timer the loop could run empty right here and
    // the process exit (or a test end "never resolved") before it arrives.
    // Bounded by FATE_WAIT_MS.
    this.#timer ??= setTimeout(() => this.#wake(), FATE_WAIT_MS);
  }

  #wake(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    for (const fn of this.#waiters.splice(0)) fn();
  }
}
