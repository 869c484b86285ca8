/**
 * Two streams joined both ways in JS: bytes flow with backpressure (a side
 * that cannot take more pauses the other's reading), an end in one direction
 * is a half-close passed to the other side, and an abort on either side
 * aborts the other (a reset where the stream supports it, as a TCP relay
 * should). The fallback of a native link (link.ts) and the proxy's relay
 * where no native link can be made.
 */
import type { Duplex } from 'node:stream';
import { ConnectionResetError } from '../../proto/errors.js';

/** A joined pair. */
export interface Session {
  /** Bytes from `a` to `b` and from `b` to `a` so far. */
  readonly bytes: { aToB: number; bToA: number };
  /** Resolves when both streams have closed. */
  readonly closed: Promise<void>;
  /** Abort both streams. */
  destroy(err?: Error): void;
}

type Resettable = Duplex & { resetAndDestroy?: () => unknown };

/** Abort `s`: a TCP reset if it is a socket that can send one, else destroy. */
export function abortStream(s: Duplex, err?: Error): void {
  if (s.destroyed) return;
  const r = s as Resettable;
  // Not while our end() is in flight: Node would leak the handle (see reset-socket.ts).
  if (typeof r.resetAndDestroy === 'function' && (s as { readyState?: string }).readyState !== undefined && !(s.writableEnded && !s.writableFinished)) {
    try {
      r.resetAndDestroy();
      return;
    } catch {
      // Not connected yet, or already gone: plain destroy below.
    }
  }
  // With an error, the SDK's socket tells the gateway to abort its host socket too.
  s.destroy(err ?? new ConnectionResetError('the other side of the relay aborted'));
}

/** Did `s` close after both directions finished (end read, end written), rather than abort? */
export function closedCleanly(s: Duplex): boolean {
  return s.readableEnded && s.writableFinished && !s.errored;
}

function closedPromise(s: Duplex): Promise<void> {
  if (s.closed) return Promise.resolve();
  return new Promise((resolve) => s.once('close', () => resolve()));
}

/**
 * Join `a` and `b`. Both should allow half-open (net sockets with
 * `allowHalfOpen: true`, the SDK's GatewaySocket). `a` is resumed by the pipe.
 */
export function splice(a: Duplex, b: Duplex): Session {
  const bytes = { aToB: 0, bToA: 0 };
  a.on('data', (c: Buffer) => (bytes.aToB += c.length));
  b.on('data', (c: Buffer) => (bytes.bToA += c.length));
  // pipe(): write() false pauses the source until 'drain'; the source's end ends the destination (half-close).
  a.pipe(b);
  b.pipe(a);
  // Errors abort the other side; listeners here also keep an error from being unhandled.
  a.on('error', (err) => abortStream(b, err));
  b.on('error', (err) => abortStream(a, err));
  a.on('close', () => {
    if (!closedCleanly(a)) abortStream(b);
  });
  b.on('close', () => {
    if (!closedCleanly(b)) abortStream(a);
  });
  return {
    bytes,
    closed: Promise.all([closedPromise(a), closedPromise(b)]).then(() => {}),
    destroy(err?: Error) {
      abortStream(a, err);
      abortStream(b, err);
    },
  };
}
