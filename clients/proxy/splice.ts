/**
 * Two streams joined both ways: bytes flow with backpressure (a side that
 * cannot take more pauses the other's reading), an end in one direction is a
 * half-close passed to the other side, and an abort on either side aborts the
 * other (a reset where the stream supports it, as a TCP relay should).
 */
import type { Duplex } from 'node:stream';
import { ConnectionResetError } from '../../proto/errors.js';

/** A joined pair, as the proxy tracks it. */
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
function abort(s: Duplex, err?: Error): void {
  if (s.destroyed) return;
  const r = s as Resettable;
  if (typeof r.resetAndDestroy === 'function' && (s as { readyState?: string }).readyState !== undefined) {
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
function closedCleanly(s: Duplex): boolean {
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
  a.on('error', (err) => abort(b, err));
  b.on('error', (err) => abort(a, err));
  a.on('close', () => {
    if (!closedCleanly(a)) abort(b);
  });
  b.on('close', () => {
    if (!closedCleanly(b)) abort(a);
  });
  return {
    bytes,
    closed: Promise.all([closedPromise(a), closedPromise(b)]).then(() => {}),
    destroy(err?: Error) {
      abort(a, err);
      abort(b, err);
    },
  };
}

/** Resolves after `ms`, or at once when `p` settles, whichever is first. */
async function settledWithin(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p.then(() => {}, () => {}), new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
  clearTimeout(timer);
}

/**
 * The sessions of one listener, for graceful stop: work in flight (a connect
 * not yet spliced) may still become a session; drain waits for both, then
 * aborts what is left.
 */
export class SessionSet {
  /** Open sessions; each removes itself when both its streams have closed. */
  private readonly open = new Set<Session>();
  /** Work in flight and how to abort it; each removes itself when it settles. */
  private readonly inflight = new Map<Promise<unknown>, () => void>();

  get size(): number {
    return this.open.size + this.inflight.size;
  }

  add(s: Session): void {
    this.open.add(s);
    void s.closed.then(() => this.open.delete(s));
  }

  /** Track `work` (it should add its session, if any, before it settles) until it settles; `abort` cancels it. */
  pending(work: Promise<unknown>, abort: () => void): void {
    this.inflight.set(work, abort);
    const done = () => void this.inflight.delete(work);
    work.then(done, done);
  }

  /** Wait up to `ms` for work in flight and every session to finish by itself; then abort the rest. Resolves when all are closed. */
  async drain(ms: number): Promise<void> {
    const deadline = Date.now() + ms;
    if (this.inflight.size) await settledWithin(Promise.allSettled([...this.inflight.keys()]), ms);
    for (const abort of this.inflight.values()) abort();
    await Promise.allSettled([...this.inflight.keys()]);
    if (this.open.size) await settledWithin(Promise.all([...this.open].map((s) => s.closed)), Math.max(0, deadline - Date.now()));
    this.destroyAll();
    await Promise.all([...this.open].map((s) => s.closed));
  }

  /** Abort work in flight and every session. */
  destroyAll(err?: Error): void {
    for (const abort of this.inflight.values()) abort();
    for (const s of this.open) s.destroy(err);
  }
}
