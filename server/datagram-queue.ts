/**
 * The bound on datagrams a UDP socket holds for its readers (its data channel
 * and its RecvFrom streams), in bytes and in count. Readers are object-mode
 * streams whose writableLength counts messages, not bytes, so each write is
 * charged here and given back when the stream is done with it (its write
 * callback) or when the reader goes away. A datagram that does not fit is
 * dropped, as a kernel drops one for a full receive buffer. Queued bytes are
 * also bounded per identity and gateway-wide (ByteBudget), so many sockets
 * cannot multiply the per-socket bound.
 */
import type { Writable } from 'node:stream';

export interface QueueLimits {
  /** Bytes of payload queued for all readers of one socket. */
  maxBytes: number;
  /** Datagrams queued for all readers of one socket. */
  maxDatagrams: number;
}

/** One reader's share of its socket's queue; released in full when the reader ends. */
export class QueueReader {
  bytes = 0;
  count = 0;
  private ended = false;

  constructor(private readonly queue: DatagramQueue) {}

  /**
   * Write `message` (carrying `payloadBytes`) to `stream` if the socket's queue
   * has room; returns false (nothing written) when it has not.
   */
  write(stream: Writable, message: unknown, payloadBytes: number): boolean {
    if (this.ended || !this.queue.reserve(payloadBytes)) return false;
    this.bytes += payloadBytes;
    this.count++;
    let settled = false;
    stream.write(message, () => {
      if (settled || this.ended) return;
      settled = true;
      this.bytes -= payloadBytes;
      this.count--;
      this.queue.give(payloadBytes, 1);
    });
    return true;
  }

  /** The reader is gone: whatever it still held is free again (its write callbacks may never run). */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.queue.give(this.bytes, this.count);
    this.bytes = 0;
    this.count = 0;
  }
}

/**
 * Queued datagram bytes shared by many sockets (one identity's, or the whole
 * gateway's), with an optional parent that must have room too.
 */
export class ByteBudget {
  used = 0;

  constructor(
    readonly max: number,
    private readonly parent?: ByteBudget,
  ) {}

  take(n: number): boolean {
    if (this.used + n > this.max) return false;
    if (this.parent && !this.parent.take(n)) return false;
    this.used += n;
    return true;
  }

  give(n: number): void {
    this.used = Math.max(0, this.used - n);
    this.parent?.give(n);
  }
}

/** One ByteBudget per identity under one gateway-wide budget (limits.udp_queue_bytes_per_identity, _total). */
export class IdentityByteBudgets {
  private readonly total: ByteBudget;
  private readonly perIdentity = new Map<string, { budget: ByteBudget; sockets: number }>();

  constructor(
    private readonly maxPerIdentity: number,
    maxTotal: number,
  ) {
    this.total = new ByteBudget(maxTotal);
  }

  /** The budget of `identity`'s sockets; call the returned release when the socket closes. */
  acquire(identity: string): { budget: ByteBudget; release: () => void } {
    let entry = this.perIdentity.get(identity);
    if (!entry) this.perIdentity.set(identity, (entry = { budget: new ByteBudget(this.maxPerIdentity, this.total), sockets: 0 }));
    entry.sockets++;
    const e = entry;
    let released = false;
    return {
      budget: e.budget,
      release: () => {
        if (released) return;
        released = true;
        if (--e.sockets === 0 && e.budget.used === 0) this.perIdentity.delete(identity);
      },
    };
  }

  get totalUsed(): number {
    return this.total.used;
  }
}

export class DatagramQueue {
  bytes = 0;
  count = 0;

  constructor(
    readonly limits: QueueLimits,
    /** The identity's (and through it the gateway's) share, if bounded. */
    private readonly shared?: ByteBudget,
  ) {}

  reader(): QueueReader {
    return new QueueReader(this);
  }

  /** Take room for one datagram of `n` bytes, or return false. */
  reserve(n: number): boolean {
    if (this.count >= this.limits.maxDatagrams || this.bytes + n > this.limits.maxBytes) return false;
    if (this.shared && !this.shared.take(n)) return false;
    this.bytes += n;
    this.count++;
    return true;
  }

  give(bytes: number, count: number): void {
    const b = Math.min(bytes, this.bytes);
    this.bytes -= b;
    this.count = Math.max(0, this.count - count);
    this.shared?.give(b);
  }
}
