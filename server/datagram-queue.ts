/**
 * The bound on datagrams a UDP socket holds for its readers (its data channel
 * and its RecvFrom streams), in bytes and in count. Readers are object-mode
 * streams whose writableLength counts messages, not bytes, so each write is
 * charged here and given back when the stream is done with it (its write
 * callback) or when the reader goes away. A datagram that does not fit is
 * dropped, as a kernel drops one for a full receive buffer.
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

export class DatagramQueue {
  bytes = 0;
  count = 0;

  constructor(readonly limits: QueueLimits) {}

  reader(): QueueReader {
    return new QueueReader(this);
  }

  /** Take room for one datagram of `n` bytes, or return false. */
  reserve(n: number): boolean {
    if (this.count >= this.limits.maxDatagrams || this.bytes + n > this.limits.maxBytes) return false;
    this.bytes += n;
    this.count++;
    return true;
  }

  give(bytes: number, count: number): void {
    this.bytes = Math.max(0, this.bytes - bytes);
    this.count = Math.max(0, this.count - count);
  }
}
