/**
 * The SDK's rdma client (native/RDMA.md): one reliable-connected RDMA
 * connection per session with a gateway, every stream socket of the session
 * multiplexed over it by slot (the gateway allocates the slot).
 *
 * - The first socket of a session (`RdmaAttach.new_session`) opens the
 *   connection: rdma_connect to the gateway's listener with its attach token
 *   in the private data; the gateway links its slot when it accepts.
 * - Later sockets wait for that connection (a concurrent first socket may
 *   still be connecting) and present their token with BIND on their slot;
 *   the attach completes when the gateway answers BOUND. Its CLOSE instead
 *   (a token it cannot redeem, an expired reservation, a gateway stopping)
 *   fails the attach with PEER_DECLINED, so the socket falls back to the
 *   next transport before anyone wrote to it.
 * - Each socket's bytes move between its slot and our end of a Unix
 *   socketpair on the native I/O thread; the SDK reads and writes the other
 *   end as a `net.Socket` (an FdChannel, which holds an EOF back until the
 *   connection said whether the slot ended cleanly or with an error).
 *
 * A process-wide native pump services every connection; it never keeps the
 * process alive by itself (ref'd only while a connection is being opened:
 * open sockets keep the process alive through their own descriptors).
 *
 * Offered only where `rdmaSupport.available` (the addon loaded, was built with
 * rdma-core and found an active verbs port).
 */
import { randomBytes } from 'node:crypto';
import type { RawRdmaConn, RdmaConnectOptions } from '../../native/index.js';
import { DeclineReason, type RdmaAttach, type RdmaOffer } from '../../proto/gen/sockgate/v1/transport.js';
import {
  AbortedError,
  AttachFailedError,
  ConnectionResetError,
  ERROR_CLASSES,
  GatewayUnavailableError,
  SocketClosedError,
  SockgateError,
  fromSystemError,
  type SockgateErrorOptions,
} from '../../proto/errors.js';
import { PumpHub, type RdmaEvent } from '../../native/pump-hub.js';
import { SESSION_ID_RE } from '../../proto/shm-wire.js';
import { isTracerEnabled, tracer } from '../../native/trace.js';
import { FdChannel } from './fd-channel.js';
import { native, nativeError, type NativeModule } from './native-optional.js';

/** SOCKGATE_TRACE=rdma: the SDK's rdma sessions, slots and attach steps on stderr. */
const trace = tracer('rdma');
const tracing = isTracerEnabled('rdma');

/** How long an attach (connect, or waiting for the session's connection) may take by default. */
const ATTACH_TIMEOUT_MS = 10_000;
/** How long closing waits for the pump to let go of the connections it serviced. */
const RELEASE_WAIT_MS = 2_000;
/** Receive ring bytes per slot this client registers by default (as the gateway's transports.rdma.ring_bytes and the native default): about bandwidth x round trip. */
const DEFAULT_RING_BYTES = 1 << 20;
/** Ring sizes the native side accepts for a connection's receive rings. */
const MIN_RING_LOG2 = 12;
const MAX_RING_LOG2 = 26;
const MAX_SLOTS = 4096;
/**
 * What the rdma handshakes carry of an attach token: its first 16 bytes (the
 * gateway redeems this short form, server/attach.ts SHORT_TOKEN_BYTES; rdma_cm
 * private data and BIND have room for no more).
 */
const RDMA_TOKEN_BYTES = 16;
/** Per-direction buffering of the JS side of a socket's socketpair. */
const CHANNEL_HIGH_WATERMARK = 1 << 20;

function unavailableReason(n: NativeModule | undefined): string {
  if (!n) return `the native addon did not load: ${nativeError}`;
  if (!n.rdma.available) return n.rdma.reason || 'no RDMA device with an active port';
  if (typeof n.rdma.connect !== 'function') return 'this build of the native addon has no rdma connections';
  return '';
}

/**
 * Whether this process can attach with rdma, and why not. `addonLoaded`
 * tells a host without RDMA (NO_RDMA_DEVICE) from an SDK without the addon.
 */
export const rdmaSupport: { readonly available: boolean; readonly reason: string; readonly addonLoaded: boolean } = {
  available: unavailableReason(native) === '',
  reason: unavailableReason(native),
  addonLoaded: native !== undefined,
};

/**
 * An attach that failed for a reason the gateway should record (the SDK's
 * retry reports `declineReason` in its Negotiate, instead of CONNECT_FAILED).
 */
export class RdmaAttachError extends AttachFailedError {
  constructor(
    message: string,
    readonly declineReason: DeclineReason,
    options?: SockgateErrorOptions,
  ) {
    super(message, options);
  }
}

/** ENODEV: rdma_cm found no RDMA device for the address (none, or one being removed). */
const ENODEV = 19;

/**
 * The decline reason of an rdma `failed` event (native/index.ts RdmaEvent):
 * by its code, except that an address or route error whose status is ENODEV
 * means this host has no device to reach the gateway with.
 */
export function declineReasonOfRdmaFailure(code: string, errno = 0): DeclineReason {
  if (Math.abs(errno) === ENODEV && (code === 'ADDR_ERROR' || code === 'ROUTE_ERROR')) return DeclineReason.DECLINE_REASON_NO_RDMA_DEVICE;
  switch (code) {
    case 'REJECTED':
      return DeclineReason.DECLINE_REASON_PEER_DECLINED;
    case 'ADDR_ERROR':
    case 'ROUTE_ERROR':
    case 'UNREACHABLE':
      return DeclineReason.DECLINE_REASON_ROUTE_ERROR;
    case 'NO_DEVICE':
      return DeclineReason.DECLINE_REASON_NO_RDMA_DEVICE;
    case 'RESOURCE':
      return DeclineReason.DECLINE_REASON_RESOURCE_LIMIT;
    case 'VERSION_MISMATCH':
      return DeclineReason.DECLINE_REASON_VERSION_MISMATCH;
    default:
      return DeclineReason.DECLINE_REASON_CONNECT_FAILED;
  }
}

/** The error a slot or connection end code stands for: an ERR_SOCKGATE_* class, else the errno's. */
export function rdmaEndError(code: string, errno: number, what: string): SockgateError {
  const cls = ERROR_CLASSES.get(code);
  if (cls) return new cls(`${what}: ${code}`);
  const name = code || (errno ? `errno ${errno}` : 'error');
  return fromSystemError(Object.assign(new Error(name), { code: code || undefined, errno }), what);
}

// ---- the process-wide pump ------------------------------------------------------

interface ClientHub {
  hub: PumpHub;
  /** Connections started and not yet ended (failed/closed): the pump closes when none remain. */
  conns: number;
  /** Connections being opened: the pump keeps the process alive while there are some. */
  opening: number;
}
let clientHub: ClientHub | undefined;

function acquireHub(n: NativeModule): ClientHub {
  if (!clientHub) {
    // unrefWhenIdle: the pump never holds the process by itself (rdma connections are not links it tracks).
    const hub = new PumpHub(n, { unrefWhenIdle: true });
    clientHub = { hub, conns: 0, opening: 0 };
  }
  return clientHub;
}

function opening(h: ClientHub, delta: 1 | -1): void {
  const before = h.opening;
  h.opening += delta;
  if (h.hub.closed) return;
  if (before === 0 && h.opening > 0) h.hub.pump.ref();
  else if (before > 0 && h.opening === 0) h.hub.pump.unref();
}

function releaseHubIfIdle(): void {
  const h = clientHub;
  if (!h || h.conns > 0) return;
  clientHub = undefined;
  const deadline = Date.now() + RELEASE_WAIT_MS;
  const attempt = () => {
    try {
      h.hub.close();
    } catch (err) {
      // EBUSY: the I/O thread has not let go of the last connection yet.
      if (Date.now() < deadline && native?.nativeCode(err) === 'EBUSY') setTimeout(attempt, 5).unref();
    }
  };
  // Never from inside the pump's own event callback (closing joins its thread): on the next turn.
  setImmediate(attempt).unref();
}

function newSessionId(): string {
  return randomBytes(16).toString('base64url');
}

// ---- one socket -----------------------------------------------------------------

/**
 * A socket's data channel: a net.Socket over our end of the slot's socketpair.
 * An abort (`resetAndDestroy`, which the SDK socket uses on errors) closes the
 * slot both ways (CLOSE to the gateway, RST-like) instead of sending EOF.
 */
export class RdmaSocket extends FdChannel {
  /** Settles when the slot ended: undefined for a clean end, else why it failed. */
  readonly ended: Promise<SockgateError | undefined>;
  #resolveEnded!: (err: SockgateError | undefined) => void;
  #done = false;

  constructor(
    fd: number,
    readonly slot: number,
    readonly sessionId: string,
    private readonly abortSlot: () => void,
    label: string,
  ) {
    super({ fd, highWaterMark: CHANNEL_HIGH_WATERMARK, label });
    this.ended = new Promise((resolve) => (this.#resolveEnded = resolve));
  }

  /** @internal The gateway half-closed (its EOF came after its last byte): our EOF is genuine. */
  peerEnded(): void {
    this.settle();
  }

  /** @internal The slot ended (clean when `err` is undefined). */
  slotEnded(err: SockgateError | undefined): void {
    if (this.#done) return;
    this.#done = true;
    this.settle(err);
    this.#resolveEnded(err);
  }

  /** Abort: the slot is closed both ways (the gateway resets the host socket). */
  override resetAndDestroy(): this {
    if (!this.destroyed && !this.#done) {
      try {
        this.abortSlot();
      } catch {
        // the slot or connection is already gone
      }
    }
    this.destroy();
    return this;
  }
}

// ---- a session ------------------------------------------------------------------

type SessionState = 'waiting' | 'connecting' | 'established' | 'closed';

/** One session: its RC connection (once opened) and its sockets by slot. */
class RdmaSession {
  state: SessionState = 'waiting';
  conn: RawRdmaConn | undefined;
  /** Sockets by slot, until their slot ended. */
  readonly slots = new Map<number, RdmaSocket>();
  /** Resolves once the connection is established; rejects if it failed, or never started in time. */
  readonly ready: Promise<RawRdmaConn>;
  #resolveReady!: (c: RawRdmaConn) => void;
  #rejectReady!: (err: Error) => void;
  /** Why the connection ended, once it did. */
  closedError: SockgateError | undefined;
  #hub: ClientHub | undefined;
  #waitTimer: NodeJS.Timeout | undefined;
  /** Slots linked with BIND whose BOUND (or refusal) has not come yet. */
  readonly #binds = new Map<number, { resolve: () => void; reject: (err: Error) => void }>();

  constructor(
    readonly id: string,
    private readonly onGone: (s: RdmaSession) => void,
    waitMs: number,
  ) {
    this.ready = new Promise((resolve, reject) => {
      this.#resolveReady = resolve;
      this.#rejectReady = reject;
    });
    // Nobody awaits it when no socket does; a rejection is then nobody's to report.
    this.ready.catch(() => {});
    // A session a later socket named but whose first socket never opened it.
    this.#waitTimer = setTimeout(() => {
      if (this.state === 'waiting') this.#end(new RdmaAttachError(`rdma session ${this.id}: the connection was not opened within ${waitMs} ms`, DeclineReason.DECLINE_REASON_CONNECT_FAILED));
    }, waitMs);
    this.#waitTimer.unref();
  }

  /** Open the connection (the session's first socket). */
  start(n: NativeModule, opts: RdmaConnectOptions): void {
    if (this.state !== 'waiting') throw new AttachFailedError(`rdma session ${this.id} is already ${this.state}`);
    clearTimeout(this.#waitTimer);
    const h = acquireHub(n);
    let conn: RawRdmaConn;
    try {
      conn = n.rdma.connect!(h.hub.pump.raw, opts);
    } catch (err) {
      releaseHubIfIdle();
      const e = n.translateError(err) as Error;
      const reason = n.nativeCode(e) === 'ENODEV' ? DeclineReason.DECLINE_REASON_NO_RDMA_DEVICE : DeclineReason.DECLINE_REASON_CONNECT_FAILED;
      const failure = new RdmaAttachError(`rdma connect to ${opts.addr}:${opts.port} failed: ${e.message}`, reason, { cause: e });
      this.#end(failure);
      throw failure;
    }
    this.#hub = h;
    this.conn = conn;
    h.conns++;
    opening(h, 1);
    this.state = 'connecting';
    h.hub.onRdma(conn.id, (e) => this.#onEvent(e, opts.addr, opts.port));
  }

  #onEvent(e: RdmaEvent, addr: string, port: number): void {
    if (tracing && e.event !== 'progress') trace(`session ${this.id}: ${e.event} ${JSON.stringify(e)}`);
    switch (e.event) {
      case 'established':
        if (this.state !== 'connecting') return;
        this.state = 'established';
        if (this.#hub) opening(this.#hub, -1);
        this.#resolveReady(this.conn!);
        return;
      case 'failed': {
        const reason = declineReasonOfRdmaFailure(e.code, e.errno);
        this.#end(new RdmaAttachError(`rdma connect to ${addr}:${port} failed: ${e.code}${e.message ? ` (${e.message})` : ''}`, reason));
        return;
      }
      case 'closed':
        this.#end(e.code === 'ok' ? new SocketClosedError(`rdma session ${this.id} closed`) : rdmaEndError(e.code, e.errno, `rdma session ${this.id} with ${addr}:${port} ended${e.message ? ` (${e.message})` : ''}`));
        return;
      case 'peerEof':
        this.slots.get(e.slot)?.peerEnded();
        return;
      case 'bound': {
        const b = this.#binds.get(e.slot);
        this.#binds.delete(e.slot);
        b?.resolve();
        return;
      }
      case 'slotEnd': {
        const b = this.#binds.get(e.slot);
        if (b) {
          this.#binds.delete(e.slot);
          // reset: the gateway answered our BIND with CLOSE. Otherwise our own abort, or the connection went down.
          b.reject(
            e.reason === 'reset'
              ? new RdmaAttachError(`rdma slot ${e.slot} of session ${this.id}: the gateway refused the bind`, DeclineReason.DECLINE_REASON_PEER_DECLINED)
              : new RdmaAttachError(`rdma slot ${e.slot} of session ${this.id} ended before the gateway answered its bind (${e.reason}${e.code ? ` ${e.code}` : ''})`, DeclineReason.DECLINE_REASON_CONNECT_FAILED),
          );
          // Nobody holds that socket yet (the attach that waits destroys it): no error to emit.
          const unbound = this.slots.get(e.slot);
          this.slots.delete(e.slot);
          unbound?.slotEnded(undefined);
          return;
        }
        const sock = this.slots.get(e.slot);
        if (!sock) return;
        this.slots.delete(e.slot);
        const what = `${sock.label} (rdma slot ${e.slot})`;
        if (e.reason === 'ok') return sock.slotEnded(undefined);
        if (e.reason === 'aborted') return sock.slotEnded(new SocketClosedError(`${what} was closed`));
        if (e.code.startsWith('ERR_SOCKGATE_')) return sock.slotEnded(rdmaEndError(e.code, e.errno, what));
        // A plain errno (ECONNABORTED when the connection goes down): if the connection's own end
        // comes in the same batch of events, its code says more. Decide once the batch is through.
        queueMicrotask(() => {
          if (this.closedError) return sock.slotEnded(this.closedError);
          sock.slotEnded(e.reason === 'reset' && (!e.code || e.code === 'ECONNRESET') ? new ConnectionResetError(`${what} was reset by the gateway`) : rdmaEndError(e.code, e.errno, what));
        });
        return;
      }
      default:
        // progress, fdEof: nothing to do here; request/bind are the gateway's.
        return;
    }
  }

  /** Wait until slot `slot` is free here (the gateway may reuse a slot whose end event we have not yet seen). */
  async slotFree(slot: number, timeoutMs: number): Promise<void> {
    const prior = this.slots.get(slot);
    if (!prior) return;
    trace(`session ${this.id}: slot ${slot} still held here, waiting for its end`);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([prior.ended, new Promise((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
    if (this.slots.get(slot) === prior) throw new AttachFailedError(`rdma slot ${slot} of session ${this.id} is still in use here`);
  }

  /**
   * Link a slot to a new socketpair; with `token`, BIND it (later sockets:
   * `bound` then settles with the gateway's answer, BOUND or its CLOSE, which
   * rejects with PEER_DECLINED). The connection owns our end from here on.
   */
  link(n: NativeModule, slot: number, token: Uint8Array | undefined, label: string): { sock: RdmaSocket; bound: Promise<void> } {
    const conn = this.conn;
    if (this.state !== 'established' || !conn) throw new AttachFailedError(`rdma session ${this.id} is ${this.state}`);
    if (this.slots.has(slot)) throw new AttachFailedError(`rdma slot ${slot} of session ${this.id} is already in use here`);
    const [a, b] = n.socketpair();
    let sock: RdmaSocket;
    try {
      sock = new RdmaSocket(b, slot, this.id, () => conn.closeSlot(slot, true), label);
    } catch (err) {
      n.closeFd(a);
      n.closeFd(b);
      throw err;
    }
    try {
      if (token) conn.link(slot, a, token);
      else conn.link(slot, a);
    } catch (err) {
      n.closeFd(a);
      sock.destroy();
      throw new AttachFailedError(`rdma link of slot ${slot} failed: ${(n.translateError(err) as Error).message}`, { cause: err });
    }
    this.slots.set(slot, sock);
    if (!token) return { sock, bound: Promise.resolve() };
    const bound = new Promise<void>((resolve, reject) => this.#binds.set(slot, { resolve, reject }));
    // A refusal after the attach gave up waiting is nobody's to report.
    bound.catch(() => {});
    return { sock, bound };
  }

  /** Release a slot the gateway linked for a socket that will not use it (an aborted first attach). */
  abandon(slot: number): void {
    void this.ready.then(
      (conn) => {
        try {
          conn.closeSlot(slot, true);
        } catch {
          // gone already
        }
      },
      () => {},
    );
  }

  /** Disconnect (every slot ends, then `closed`). */
  close(err: SockgateError): void {
    if (this.state === 'closed') return;
    if (this.conn && (this.state === 'established' || this.state === 'connecting')) {
      try {
        this.conn.close();
        // The `closed` event finishes the job; say why meanwhile.
        this.closedError ??= err;
        return;
      } catch {
        // the native side is gone already: finish here
      }
    }
    this.#end(err);
  }

  /** The connection ended (or never came up): fail what waits and every socket, let go of the pump. */
  #end(err: SockgateError): void {
    if (this.state === 'closed') return;
    const wasOpening = this.state === 'connecting';
    this.state = 'closed';
    this.closedError = this.closedError && !(err instanceof SocketClosedError) ? err : (this.closedError ?? err);
    clearTimeout(this.#waitTimer);
    this.#rejectReady(err);
    const binds = new Map(this.#binds);
    this.#binds.clear();
    for (const b of binds.values()) b.reject(err);
    this.onGone(this);
    const socks = [...this.slots.values()];
    this.slots.clear();
    // A socket still waiting for BOUND was never handed out: its attach fails instead (no error event nobody listens to).
    for (const s of socks) s.slotEnded(binds.has(s.slot) ? undefined : this.closedError);
    const h = this.#hub;
    if (h && this.conn) {
      this.#hub = undefined;
      h.hub.offRdma(this.conn.id);
      if (wasOpening) opening(h, -1);
      h.conns--;
      releaseHubIfIdle();
    }
  }
}

// ---- the client -----------------------------------------------------------------

export interface RdmaClientOptions {
  /** Receive ring bytes per socket this client registers (power of two, 4 KiB..64 MiB; default 1 MiB). */
  ringBytes?: number;
  /** Receive work requests posted for the gateway (4..1024; native default 64). */
  credits?: number;
  /** Idle keepalive interval in ms (0 = off; native default 5000). */
  keepaliveMs?: number;
  /** @internal Tests only (native RdmaConnectOptions.hostile): 3 = every BIND carries a token the gateway cannot redeem. */
  hostile?: 3;
}

/** The rdma side of one SDK Gateway object. */
export class RdmaClient {
  /** The session id offered with every rdma socket; a new one once that session ended. */
  #sessionId = newSessionId();
  /** Sessions by id: opened (or being opened), or named by the gateway and awaited. */
  readonly #sessions = new Map<string, RdmaSession>();
  readonly #ringLog2: number;
  readonly #opts: RdmaClientOptions;
  #closed = false;

  constructor(opts: RdmaClientOptions = {}) {
    if (!rdmaSupport.available) throw new RdmaAttachError(`rdma is not available: ${rdmaSupport.reason}`, DeclineReason.DECLINE_REASON_NO_RDMA_DEVICE);
    const ringBytes = opts.ringBytes ?? DEFAULT_RING_BYTES;
    const log2 = Math.log2(ringBytes);
    if (!Number.isInteger(log2) || log2 < MIN_RING_LOG2 || log2 > MAX_RING_LOG2) {
      throw new AttachFailedError(`rdma ringBytes must be a power of two from ${1 << MIN_RING_LOG2} to ${2 ** MAX_RING_LOG2}, got ${ringBytes}`);
    }
    this.#ringLog2 = log2;
    this.#opts = opts;
  }

  /** The session id the next offer carries. */
  get sessionId(): string {
    return this.#sessionId;
  }

  /** The RdmaOffer for a socket (the gateway never dials us: no address). */
  offer(): RdmaOffer {
    return { address: '', ringBytes: 2 ** this.#ringLog2, sessionId: this.#sessionId };
  }

  /** Sessions and their sockets by slot (tests, diagnostics). */
  get sessions(): ReadonlyMap<string, { state: SessionState; slots: ReadonlyMap<number, RdmaSocket> }> {
    return this.#sessions;
  }

  /** Attach one stream socket as the gateway said; resolves with its data channel. */
  async attach(p: RdmaAttach, token: Uint8Array, label: string, opts: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<RdmaSocket> {
    const n = native!;
    const timeoutMs = opts.timeoutMs ?? ATTACH_TIMEOUT_MS;
    if (this.#closed) throw new AttachFailedError('the gateway connection is closed');
    if (!p.address || !(p.port >= 1 && p.port <= 65535)) throw new AttachFailedError(`rdma attach: the gateway gave no usable listener (${JSON.stringify(p.address.slice(0, 64))}:${p.port})`);
    if (!(p.slots >= 1 && p.slots <= MAX_SLOTS) || !(p.slot < p.slots)) throw new AttachFailedError(`rdma attach: slot ${p.slot} of ${p.slots} is out of range`);
    if (!SESSION_ID_RE.test(p.sessionId)) throw new AttachFailedError('rdma attach: malformed session id from the gateway');
    if (token.length < RDMA_TOKEN_BYTES) throw new AttachFailedError(`rdma attach: the attach token is ${token.length} bytes, at least ${RDMA_TOKEN_BYTES} are needed`);
    const shortToken = new Uint8Array(token.subarray(0, RDMA_TOKEN_BYTES));
    if (opts.signal?.aborted) throw new AbortedError('attach aborted');
    let s = this.#sessions.get(p.sessionId);
    if (p.newSession) {
      // The gateway has no connection for this id: one we still hold is dead on its side.
      if (s && s.state !== 'waiting') {
        s.close(new GatewayUnavailableError(`rdma session ${s.id}: the gateway opened it anew`));
        s = undefined;
      }
      s ??= this.#session(p.sessionId, timeoutMs);
      s.start(n, {
        addr: p.address,
        port: p.port,
        token: shortToken,
        slots: p.slots,
        ringLog2: this.#ringLog2,
        timeoutMs,
        ...(this.#opts.credits !== undefined ? { credits: this.#opts.credits } : {}),
        ...(this.#opts.keepaliveMs !== undefined ? { keepaliveMs: this.#opts.keepaliveMs } : {}),
        ...(this.#opts.hostile !== undefined ? { hostile: this.#opts.hostile } : {}),
      });
    } else {
      // The session's connection exists or an earlier socket is opening it (its answer may even come after ours).
      s ??= this.#session(p.sessionId, timeoutMs);
    }
    const session = s;
    trace(`attach ${label}: session ${session.id} (${session.state}), slot ${p.slot}, new ${p.newSession}`);
    try {
      await within(session.ready, timeoutMs, opts.signal, `rdma attach: the session's connection to ${p.address}:${p.port} was not up within ${timeoutMs} ms`);
      await session.slotFree(p.slot, timeoutMs);
    } catch (err) {
      // The gateway linked the first socket's slot on accept: give it back.
      if (p.newSession && err instanceof AbortedError) session.abandon(p.slot);
      throw err;
    }
    trace(`attach ${label}: session ${session.id} up, linking slot ${p.slot}`);
    const { sock, bound } = session.link(n, p.slot, p.newSession ? undefined : shortToken, label);
    // The first socket's slot was linked when the gateway accepted the connection; a later one waits for BOUND.
    if (p.newSession) return sock;
    try {
      await within(bound, timeoutMs, opts.signal, `rdma attach: the gateway did not answer the bind of slot ${p.slot} within ${timeoutMs} ms`);
    } catch (err) {
      trace(`attach ${label}: slot ${p.slot} not bound: ${(err as Error).message}`);
      sock.resetAndDestroy();
      throw err;
    }
    trace(`attach ${label}: slot ${p.slot} bound`);
    return sock;
  }

  #session(id: string, waitMs: number): RdmaSession {
    const s = new RdmaSession(
      id,
      (gone) => {
        if (this.#sessions.get(gone.id) === gone) this.#sessions.delete(gone.id);
        // The next socket starts a new session (the gateway may still hold the old id for a moment).
        if (gone.id === this.#sessionId) this.#sessionId = newSessionId();
      },
      waitMs,
    );
    this.#sessions.set(id, s);
    return s;
  }

  /** Disconnect every session (their sockets end). */
  close(): void {
    this.#closed = true;
    for (const s of [...this.#sessions.values()]) s.close(new SocketClosedError('the gateway connection was closed'));
  }
}

/** `p` with a deadline and an AbortSignal. */
function within<T>(p: Promise<T>, ms: number, signal: AbortSignal | undefined, message: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => done(new AttachFailedError(message)), ms);
    const onAbort = () => done(new AbortedError('attach aborted'));
    const done = (err?: Error, v?: T) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve(v as T);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => done(undefined, v),
      (err: Error) => done(err),
    );
  });
}
