/**
 * The proxy's sessions: two streams joined both ways (the JS relay lives in
 * the SDK, clients/sdk/js-relay.ts; native links in clients/sdk/link.ts), and
 * the set of them a listener drains on a graceful stop.
 */
import { splice, type Session } from '../sdk/js-relay.js';
import type { GatewayLink } from '../sdk/link.js';

export { splice, type Session };

/** A linked socket (native, or the SDK's JS relay) as a proxy session. */
export function linkSession(l: GatewayLink): Session {
  return {
    get bytes() {
      return { aToB: l.bytes.toTarget, bToA: l.bytes.fromTarget };
    },
    closed: l.ended.then(() => {}),
    destroy: (err?: Error) => l.destroy(err),
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
