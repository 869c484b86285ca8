/**
 * One proxied connection: a downstream socket (the app's) joined to an
 * upstream stream (through the gateway). Bytes flow both ways with
 * backpressure: when a side's write buffer is above its high watermark the
 * other side stops reading until 'drain', so nothing buffers without bound.
 * A FIN passes through (half-close), an error or reset on one side aborts the
 * other, and an idle timer closes both after `idleTimeoutMs` without a byte.
 *
 * The session owns both sockets once constructed; it reports exactly one
 * close reason, after both sockets have closed.
 */
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { tracer } from '../../native/trace.js';
import { resetSocket } from '../sdk/reset-socket.js';
import type { Endpoint } from './endpoint.js';

const TRACER = 'sidecar_session';
const trace = tracer(TRACER);

/**
 * After one side closed cleanly the other has both directions finished and
 * closes by itself; if it has not within this, it is destroyed (safety net).
 */
const LINGER_AFTER_CLOSE_MS = 10_000;

/** Why a downstream connection ended. A closed set, reported once per connection. */
export type CloseReason =
  /** The app closed first (FIN), then the upstream finished. */
  | 'downstream_closed'
  /** The upstream closed first (FIN), then the app finished. */
  | 'upstream_closed'
  | 'downstream_error'
  | 'upstream_error'
  | 'idle_timeout'
  /** The sidecar stopped and the drain time ran out. */
  | 'shutdown'
  /** Refused by a circuit breaker. */
  | 'overflow_connections'
  | 'overflow_pending'
  /** No endpoint could be tried. */
  | 'no_healthy_upstream'
  /** Every connect attempt failed. */
  | 'connect_failed'
  /** The app left before an upstream was connected. */
  | 'downstream_aborted';

export const CLOSE_REASONS: readonly CloseReason[] = [
  'downstream_closed',
  'upstream_closed',
  'downstream_error',
  'upstream_error',
  'idle_timeout',
  'shutdown',
  'overflow_connections',
  'overflow_pending',
  'no_healthy_upstream',
  'connect_failed',
  'downstream_aborted',
];

/** S: the session kind that reports its close (ProxySession, or LinkedSession in linked-session.ts; generic so this file needs no import of it). */
export interface SessionOptions<S = ProxySession> {
  /** Close both sides after this long without a byte either way; 0 disables. */
  idleTimeoutMs: number;
  /** Bytes the listener read from the downstream while the upstream connected; sent first. */
  early?: readonly Buffer[];
  /** The downstream's FIN arrived while the upstream connected. */
  earlyEnd?: boolean;
  /** Called once, after both sockets closed. */
  onClose(session: S, reason: CloseReason): void;
}

export class ProxySession {
  /** Bytes from the app to the endpoint. */
  bytesUp = 0;
  /** Bytes from the endpoint to the app. */
  bytesDown = 0;
  /** Set by the first abortive event (error, idle, shutdown); never changed after. */
  private reason: CloseReason | undefined;
  /** Which side sent the first FIN; the reason of a clean close. */
  private firstFin: CloseReason | undefined;
  /** A FIN was read from each side. */
  private downEnded = false;
  private upEnded = false;
  private downClosed = false;
  private upClosed = false;
  private finished = false;
  /** ms timestamp of the last byte either way (idle detection). */
  private lastActivity = Date.now();
  private idleTimer: NodeJS.Timeout | undefined;
  private lingerTimer: NodeJS.Timeout | undefined;
  readonly startedAt = Date.now();

  constructor(
    readonly downstream: Socket,
    readonly upstream: Duplex,
    readonly endpoint: Endpoint,
    private readonly options: SessionOptions,
  ) {
    const ep = endpoint.stats;
    downstream.on('data', (chunk: Buffer) => {
      this.lastActivity = Date.now();
      this.bytesUp += chunk.length;
      ep.bytesOut += chunk.length;
      if (!upstream.write(chunk)) downstream.pause();
    });
    upstream.on('drain', () => downstream.resume());
    upstream.on('data', (chunk: Buffer) => {
      this.lastActivity = Date.now();
      this.bytesDown += chunk.length;
      ep.bytesIn += chunk.length;
      if (!downstream.write(chunk)) upstream.pause();
    });
    downstream.on('drain', () => upstream.resume());

    downstream.on('end', () => {
      this.downEnded = true;
      this.firstFin ??= 'downstream_closed';
      upstream.end();
    });
    upstream.on('end', () => {
      this.upEnded = true;
      this.firstFin ??= 'upstream_closed';
      downstream.end();
    });
    downstream.on('error', (err) => {
      trace(`downstream ${downstream.remoteAddress}:${downstream.remotePort} error: ${err.message}`);
      this.setReason('downstream_error');
      if (!upstream.destroyed) upstream.destroy();
    });
    upstream.on('error', (err) => {
      trace(`upstream ${endpoint.uri} error: ${err.message}`);
      this.setReason('upstream_error');
      // Pass the abort on: the app sees a reset, not a clean end.
      resetSocket(downstream);
    });
    downstream.on('close', () => {
      this.downClosed = true;
      this.onSideClosed(upstream, this.upClosed);
    });
    upstream.on('close', () => {
      this.upClosed = true;
      this.onSideClosed(downstream, this.downClosed);
    });

    let writable = true;
    for (const chunk of options.early ?? []) {
      this.bytesUp += chunk.length;
      ep.bytesOut += chunk.length;
      writable = upstream.write(chunk);
    }
    if (options.earlyEnd) {
      this.downEnded = true;
      this.firstFin = 'downstream_closed';
      upstream.end();
    }
    if (options.idleTimeoutMs > 0) this.idleTimer = setTimeout(this.onIdleCheck, options.idleTimeoutMs);
    // The listener paused the app's socket once the upstream was ready; if the
    // early bytes filled the upstream's buffer, 'drain' resumes it instead.
    if (!options.earlyEnd && writable) downstream.resume();
  }

  private setReason(r: CloseReason): void {
    this.reason ??= r;
  }

  private onIdleCheck = (): void => {
    const idle = Date.now() - this.lastActivity;
    if (idle < this.options.idleTimeoutMs) {
      this.idleTimer = setTimeout(this.onIdleCheck, this.options.idleTimeoutMs - idle);
      return;
    }
    this.idleTimer = undefined;
    trace(`idle for ${idle} ms: closing ${this.downstream.remoteAddress}:${this.downstream.remotePort} <-> ${this.endpoint.uri}`);
    this.close('idle_timeout');
  };

  private onSideClosed(other: Duplex, otherClosed: boolean): void {
    if (otherClosed) {
      this.finish();
      return;
    }
    if (this.downEnded && this.upEnded) {
      // Clean close of both directions: the other side finishes by itself.
      this.lingerTimer = setTimeout(() => other.destroy(), LINGER_AFTER_CLOSE_MS);
      this.lingerTimer.unref();
      return;
    }
    other.destroy();
  }

  /** Bytes this session holds in user space right now (both directions); bounded by the watermarks. */
  bufferedBytes(): number {
    return this.downstream.readableLength + this.downstream.writableLength + this.upstream.readableLength + this.upstream.writableLength;
  }

  /** Close both sides now (idle timeout, shutdown). Idempotent. */
  close(reason: CloseReason): void {
    this.setReason(reason);
    if (!this.upstream.destroyed) this.upstream.destroy();
    if (!this.downstream.destroyed) this.downstream.destroy();
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    clearTimeout(this.idleTimer);
    clearTimeout(this.lingerTimer);
    this.options.onClose(this, this.reason ?? this.firstFin ?? 'downstream_closed');
  }
}
