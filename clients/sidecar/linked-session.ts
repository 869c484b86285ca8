/**
 * One proxied connection joined by a gateway link (clients/sdk/link.ts): the
 * payload moves on the SDK's native I/O thread where it can (shm ring pump,
 * tcp splice), or through the SDK's JS relay, which says why. The session
 * keeps what ProxySession reports: one close reason after both sides ended,
 * byte counters (read on demand from the link), an idle timeout (checked on
 * the counters, no event per chunk), and close(reason).
 */
import type { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { tracer } from '../../native/trace.js';
import type { LinkableSocket } from '../sdk/gateway.js';
import type { GatewayLink } from '../sdk/link.js';
import type { Endpoint } from './endpoint.js';
import type { CloseReason, SessionOptions } from './proxy-session.js';

const trace = tracer('sidecar_session');

/**
 * An upstream socket opened for a link, not yet linked: a placeholder Duplex
 * (cluster bookkeeping sees it like any upstream: destroy() and 'close'). It
 * carries no bytes itself; a LinkedSession links it to the downstream socket.
 */
export class LinkableUpstream extends Duplex {
  constructor(readonly linkable: LinkableSocket) {
    super();
  }
  override _read(): void {}
  override _write(_c: Buffer, _e: BufferEncoding, cb: (err?: Error | null) => void): void {
    cb(new Error('a linkable upstream carries no bytes itself: link it'));
  }
  /** Linked: the link owns the gateway socket now; destroying the placeholder only reports 'close'. */
  linked = false;
  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (!this.linked) this.linkable.destroy();
    cb(err);
  }
}

export class LinkedSession {
  readonly startedAt = Date.now();
  readonly link: GatewayLink;
  private reason: CloseReason | undefined;
  private idleTimer: NodeJS.Timeout | undefined;
  private lastBytes = -1;

  constructor(
    readonly downstream: Socket,
    readonly upstream: LinkableUpstream,
    readonly endpoint: Endpoint,
    private readonly options: SessionOptions<LinkedSession>,
  ) {
    // What the listener read while the upstream connected goes first (its FIN, if it came, is still at the descriptor).
    upstream.linked = true;
    this.link = upstream.linkable.link(downstream, { prefix: options.early ?? [] });
    trace(`${endpoint.uri}: ${this.link.native ? 'native' : `JS relay (${this.link.relayReason})`} link ${this.link.socketId} over ${this.link.transport}`);
    if (options.idleTimeoutMs > 0) this.idleTimer = setTimeout(this.onIdleCheck, options.idleTimeoutMs);
    void this.link.ended.then((end) => {
      clearTimeout(this.idleTimer);
      const ep = endpoint.stats;
      ep.bytesOut += this.link.bytes.toTarget;
      ep.bytesIn += this.link.bytes.fromTarget;
      // The link knows whether the end was clean, not who sent the first FIN: a clean close counts as the app's.
      const why: CloseReason = end.reason === 'ok' ? 'downstream_closed' : /gateway|END|reset by the gateway/i.test(String(end.error?.message)) ? 'upstream_error' : 'downstream_error';
      this.reason ??= why;
      upstream.destroy();
      options.onClose(this as never, this.reason);
    });
  }

  get bytesUp(): number {
    return this.link.bytes.toTarget;
  }

  get bytesDown(): number {
    return this.link.bytes.fromTarget;
  }

  /** Bytes in user space: none on a native link (kernel buffers, rings and pipes are bounded by their sizes). */
  bufferedBytes(): number {
    return 0;
  }

  private onIdleCheck = (): void => {
    const now = this.bytesUp + this.bytesDown;
    if (now !== this.lastBytes) {
      this.lastBytes = now;
      this.idleTimer = setTimeout(this.onIdleCheck, this.options.idleTimeoutMs);
      return;
    }
    this.idleTimer = undefined;
    trace(`idle for ${this.options.idleTimeoutMs} ms: closing link ${this.link.socketId} to ${this.endpoint.uri}`);
    this.close('idle_timeout');
  };

  /** Close both sides now (idle timeout, shutdown). Idempotent. */
  close(reason: CloseReason): void {
    this.reason ??= reason;
    this.link.destroy();
  }
}
