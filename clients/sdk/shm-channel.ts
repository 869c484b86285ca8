/**
 * One socket's data channel over a shm slot, as a Node Duplex: writes copy
 * once from the caller's Buffer into the slot's outbound ring; reads copy out
 * of the inbound ring into Buffers carved from a slab (or, opt-in, lend
 * zero-copy views of the ring itself). Nothing blocks the event loop and
 * nothing spins: a full or empty ring is armed (the gateway's pump then rings
 * the session doorbell) and the channel resumes on the slot's next hint.
 *
 * end() -> ring shutdown (half-close: the destination gets FIN after the
 * bytes before it); ring end of stream -> push(null); destroy() -> the slot is
 * given back (ABORT, or RELEASE once both directions finished).
 */
import { Duplex } from 'node:stream';
import type { LinkEnd, PumpLink, RingLoan, ShmRegion } from '../../native/index.js';
import {
  ConnectionResetError,
  ERROR_CLASSES,
  InvalidArgumentError,
  NativeError,
  RingCorruptError,
  SocketClosedError,
  SockgateError,
  WrongSocketKindError,
  fromSystemError,
} from '../../proto/errors.js';

/** Reads carve Buffers out of slabs this large (one allocation per many small reads). */
const SLAB_BYTES = 256 * 1024;
/** A slab with less room than this is retired (its slices stay valid; the next read gets a new slab). */
const SLAB_MIN_ROOM = 16 * 1024;
/** Ring reads per turn before yielding to the event loop (other sockets, timers). */
const READS_PER_TURN = 64;
/** Writable-side buffering on top of the ring (the ring is the real buffer). */
const WRITABLE_HIGH_WATERMARK = 64 * 1024;

/** A slot pumped natively between its rings and a caller's descriptor (link.ts). */
export interface ShmSlotLink {
  readonly link: PumpLink;
  /** Settles with the pump's end and, if the gateway or the session ended it, why. */
  readonly ended: Promise<{ end: LinkEnd; error?: Error }>;
}

/** What a channel needs from its session. */
export interface ShmChannelSession {
  /** The client is done with the slot: RELEASE (both directions finished) or ABORT. */
  release(slot: number, abort: boolean): void;
  /** A channel opened / closed (the session keeps its pump referenced while channels are open). */
  channelClosed(slot: number, channel: ShmChannel): void;
  /** Hand the channel's slot to a native link with `fd` (see ClientShmSession#linkSlot). */
  linkSlot?(channel: ShmChannel, fd: number, prefix: Buffer[]): ShmSlotLink;
}

/**
 * A zero-copy view of ring bytes, lent until `release()`. Using `view` after
 * release, or releasing twice, throws; the ring memory behind a released
 * view is detached (stale Buffers read as empty), never reused under it.
 */
export class ShmReadLoan {
  readonly #loan: RingLoan;
  readonly #onRelease: () => void;
  constructor(loan: RingLoan, onRelease: () => void) {
    this.#loan = loan;
    this.#onRelease = onRelease;
  }
  /** The lent bytes; throws after release. */
  get view(): Buffer {
    return this.#loan.view;
  }
  get length(): number {
    return this.#loan.length;
  }
  get released(): boolean {
    return this.#loan.released;
  }
  /** Give the bytes back; `consumed` of them (default all) are freed in the ring. Throws if already released. */
  release(consumed?: number): void {
    this.#loan.release(consumed);
    this.#onRelease();
  }
}

/** The error a gateway END code stands for. */
export function endError(code: string, what: string): SockgateError {
  const cls = ERROR_CLASSES.get(code);
  if (cls) return new cls(`${what}: ended by the gateway (${code})`);
  if (code === 'aborted') return new ConnectionResetError(`${what}: aborted by the gateway`);
  return fromSystemError(Object.assign(new Error(`${what}: ${code}`), { code }), what);
}

/** Map a native ring error to a sockgate error. */
function ringError(err: unknown, what: string): Error {
  if (err instanceof RingCorruptError) return err;
  const code = ((err as SockgateError)?.cause as { code?: string } | undefined)?.code;
  if (code === 'ENOTCONN') return new ConnectionResetError(`${what}: the gateway closed the slot`, { cause: err });
  if (err instanceof SockgateError) return err;
  return new NativeError(`${what}: ${(err as Error).message}`, { cause: err });
}

export class ShmChannel extends Duplex {
  readonly slot: number;
  readonly #region: ShmRegion;
  readonly #session: ShmChannelSession;
  /** Current slab and the offset of its free part. */
  #slab: Buffer = Buffer.alloc(0);
  #slabOff = 0;
  /** The consumer asked for data (_read) and has not said stop (push returned false). */
  #wantRead = false;
  /** Inside #pumpRead (push can re-enter through 'data' handlers). */
  #inRead = false;
  #readTurnScheduled = false;
  /** The inbound ring ended (null pushed, or seen by the loan iterator). */
  #eof = false;
  /** Our outbound ring is shut (after _final). */
  #shut = false;
  /** The slot was given back; nothing touches it any more. */
  #released = false;
  /** A write waiting for ring space: the chunk, how much of it is in, its callback. */
  #pending: { chunk: Buffer; off: number; cb: (err?: Error | null) => void } | undefined;
  /** Zero-copy mode: reads go through loans(), never push(). */
  #loanMode = false;
  /** The outstanding loan (it holds the slot: writes wait until it is released). */
  #loan: ShmReadLoan | undefined;
  /** Wakes loans() on the next hint. */
  #wake: (() => void) | undefined;
  /** Bytes delivered through the stream so far. */
  #delivered = 0;
  readonly #what: string;

  constructor(region: ShmRegion, slot: number, session: ShmChannelSession, label = `shm slot ${slot}`) {
    super({ allowHalfOpen: true, writableHighWaterMark: WRITABLE_HIGH_WATERMARK, readableHighWaterMark: SLAB_BYTES });
    this.#region = region;
    this.slot = slot;
    this.#session = session;
    this.#what = label;
  }

  /** The slot has news (data, space or end of stream): carry on where we stopped. */
  poke(): void {
    if (this.#released) return;
    this.#pumpWrite();
    this.#pumpRead();
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  /** The gateway ended the slot's link abnormally (END). */
  fail(code: string): void {
    if (this.destroyed || (this.#eof && this.#shut && !this.#pending)) return;
    this.destroy(endError(code, this.#what));
  }

  /**
   * Read what the inbound ring holds right now, bypassing the stream: a
   * session that ends takes the gateway's last control messages this way.
   */
  drainRing(): Buffer[] {
    const out: Buffer[] = [];
    if (this.#released || this.#eof) return out;
    try {
      for (let i = 0; i < READS_PER_TURN; i++) {
        const b = Buffer.allocUnsafe(SLAB_MIN_ROOM);
        const n = this.#region.read(this.slot, b);
        if (!n) break;
        out.push(b.subarray(0, n));
      }
    } catch {
      // the region is unusable: nothing more to take
    }
    return out;
  }

  /** Bytes this channel delivered through the stream or a loan, or holds for its reader. */
  get touched(): boolean {
    return this.#delivered > 0 || this.readableLength > 0 || this.#loanMode || this.#pending !== undefined || this.#shut;
  }

  /** Move this slot's bytes natively between its rings and `fd` from now on (link.ts); throws with fd still the caller's. */
  linkNative(fd: number, prefix: Buffer[]): ShmSlotLink {
    if (!this.#session.linkSlot) throw new WrongSocketKindError(`${this.#what}: this session cannot link natively`);
    return this.#session.linkSlot(this, fd, prefix);
  }

  /**
   * A native link took the slot over (it claimed the rings): this channel lets
   * go without giving the slot back (the link's end does that) and closes.
   */
  retire(): void {
    this.#released = true;
    this.destroy();
  }

  /** The session is gone: the slot is no longer ours. */
  lost(err: Error): void {
    this.#released = true;
    this.destroy(err);
  }

  // ---- writes -------------------------------------------------------------------

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.#pending = { chunk, off: 0, cb };
    this.#pumpWrite();
  }

  override _final(cb: (err?: Error | null) => void): void {
    if (this.#released) return cb(new SocketClosedError(`${this.#what}: the slot was given back`));
    try {
      this.#region.shutdown(this.slot);
    } catch (err) {
      return cb(ringError(err, this.#what));
    }
    this.#shut = true;
    cb();
    this.#maybeRelease();
  }

  #pumpWrite(): void {
    const w = this.#pending;
    if (!w || this.#released) return;
    if (this.#loan && !this.#loan.released) return; // the loan holds the slot; resumes on release
    try {
      while (w.off < w.chunk.length) {
        const n = this.#region.write(this.slot, w.chunk, w.off, w.chunk.length - w.off);
        if (n > 0) {
          w.off += n;
          continue;
        }
        // Full: ask for a doorbell when space frees; true if it freed meanwhile.
        if (this.#region.armWrite(this.slot)) continue;
        return;
      }
    } catch (err) {
      this.#pending = undefined;
      w.cb(ringError(err, this.#what));
      return;
    }
    this.#pending = undefined;
    w.cb();
  }

  // ---- reads --------------------------------------------------------------------

  override _read(): void {
    this.#wantRead = true;
    this.#pumpRead();
  }

  #pumpRead(): void {
    if (!this.#wantRead || this.#inRead || this.#eof || this.#loanMode || this.#released || this.destroyed) return;
    this.#inRead = true;
    try {
      for (let i = 0; i < READS_PER_TURN; i++) {
        if (this.#slab.length - this.#slabOff < SLAB_MIN_ROOM) {
          this.#slab = Buffer.allocUnsafe(SLAB_BYTES);
          this.#slabOff = 0;
        }
        const n = this.#region.read(this.slot, this.#slab, this.#slabOff, this.#slab.length - this.#slabOff);
        if (n === null) {
          this.#eof = true;
          this.push(null);
          this.#maybeRelease();
          return;
        }
        if (n === 0) {
          // Empty: ask for a doorbell when data comes; true if it came meanwhile.
          if (this.#region.armRead(this.slot)) continue;
          return;
        }
        const chunk = this.#slab.subarray(this.#slabOff, this.#slabOff + n);
        this.#slabOff += (n + 7) & ~7;
        this.#delivered += n;
        if (!this.push(chunk)) {
          this.#wantRead = false;
          return;
        }
      }
      // Still more: yield to the event loop, then go on.
      if (!this.#readTurnScheduled) {
        this.#readTurnScheduled = true;
        setImmediate(() => {
          this.#readTurnScheduled = false;
          this.#pumpRead();
        });
      }
    } catch (err) {
      this.destroy(ringError(err, this.#what));
    } finally {
      this.#inRead = false;
    }
  }

  /**
   * Zero-copy reads: yields loans over the inbound ring's bytes, each valid
   * until its `release()`, which must come before the next one is asked for.
   * The stream then delivers no data (its 'end' still comes at end of stream).
   * Writes on the socket wait while a loan is out (a loan holds the slot).
   * Must be called before any byte was read through the stream.
   */
  loans(): AsyncGenerator<ShmReadLoan, void, undefined> {
    if (this.#delivered > 0 || this.readableLength > 0) {
      throw new WrongSocketKindError(`${this.#what}: bytes were already read through the stream; zero-copy reads must start before any`);
    }
    if (this.#loanMode) throw new InvalidArgumentError(`${this.#what}: zero-copy reads are already in progress`);
    // From now on the stream pushes nothing (set here, not at the first next(): no byte may slip into the stream).
    this.#loanMode = true;
    return this.#lendLoop();
  }

  async *#lendLoop(): AsyncGenerator<ShmReadLoan, void, undefined> {
    for (;;) {
      if (this.destroyed || this.#released) throw this.errored ?? new SocketClosedError(`${this.#what} is closed`);
      if (this.#loan && !this.#loan.released) throw new InvalidArgumentError(`${this.#what}: release the previous loan before asking for the next`);
      this.#loan = undefined;
      let lent: RingLoan | null | false;
      try {
        lent = this.#region.lend(this.slot);
      } catch (err) {
        const e = ringError(err, this.#what);
        this.destroy(e);
        throw e;
      }
      if (lent === false) {
        this.#eof = true;
        this.push(null);
        this.resume(); // nothing to read: let 'end' fire
        this.#maybeRelease();
        return;
      }
      if (lent === null) {
        let armed: boolean;
        try {
          armed = this.#region.armRead(this.slot);
        } catch (err) {
          const e = ringError(err, this.#what);
          this.destroy(e);
          throw e;
        }
        if (!armed) await new Promise<void>((resolve) => (this.#wake = resolve));
        continue;
      }
      const loan = new ShmReadLoan(lent, () => this.#pumpWrite());
      this.#loan = loan;
      yield loan;
    }
  }

  // ---- end ------------------------------------------------------------------------

  /** Both directions finished: the slot goes back to the gateway. */
  #maybeRelease(): void {
    if (this.#released || !this.#eof || !this.#shut || this.#pending) return;
    this.#released = true;
    this.#session.release(this.slot, false);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    const loan = this.#loan;
    this.#loan = undefined;
    if (loan && !loan.released) {
      try {
        loan.release(0);
      } catch {
        // the region is gone
      }
    }
    const pending = this.#pending;
    this.#pending = undefined;
    pending?.cb(err ?? new SocketClosedError(`${this.#what} was destroyed`));
    if (!this.#released) {
      this.#released = true;
      this.#session.release(this.slot, !(this.#eof && this.#shut));
    }
    this.#wake?.();
    this.#session.channelClosed(this.slot, this);
    cb(err);
  }
}
