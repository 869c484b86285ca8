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
import { isTracerEnabled, tracer } from '../../native/trace.js';
import { DeclineReason, type RdmaAttach, type RdmaOffer } from '../../proto/gen/sockgate/v1/transport.js';
import { AbortedError, AttachFailedError, GatewayUnavailableError, SocketClosedError } from '../../proto/errors.js';
import { ATTACH_TIMEOUT_MS, SHORT_TOKEN_BYTES } from '../../proto/attach-limits.js';
import { SESSION_ID_RE } from '../../proto/shm-wire.js';
import { native } from './native-optional.js';
import { PREISSUE_SLOTS, PreissuedSlots, nameSlot, type NamedSlot, within } from './client-slot-session.js';
import { newSessionId, RdmaClientSession, RdmaSocket, type SessionState } from './rdma-client-session.js';
import { RdmaAttachError, rdmaSupport } from './rdma-support.js';
import { resumeToken } from '../../proto/resume-wire.js';

export { RdmaSocket } from './rdma-client-session.js';
export { declineReasonOfRdmaFailure, RdmaAttachError, rdmaEndError, rdmaSupport } from './rdma-support.js';

/** SOCKGATE_TRACE=rdma: the SDK's rdma sessions, slots and attach steps on stderr. */
const trace = tracer('rdma');
/** SOCKGATE_TRACE=rdma-flow: the native connection prints its flow state (credits, cursors) every keepalive tick. */
const FLOW_TRACE = isTracerEnabled('rdma-flow');

/** Receive ring bytes per slot this client registers by default (as the gateway's transports.rdma.ring_bytes and the native default): about bandwidth x round trip. */
const DEFAULT_RING_BYTES = 1 << 20;
/** Ring sizes the native side accepts for a connection's receive rings. */
const MIN_RING_LOG2 = 12;
const MAX_RING_LOG2 = 26;
const MAX_SLOTS = 4096;

export interface RdmaClientOptions {
  /** Receive ring bytes per socket this client registers (power of two, 4 KiB..64 MiB; default 1 MiB). */
  ringBytes?: number;
  /** Receive work requests posted for the gateway (4..1024; native default 64). */
  credits?: number;
  /** Idle keepalive interval in ms (0 = off; native default 5000). */
  keepaliveMs?: number;
  /** Busy-poll the connection's completion queue up to this many µs (adaptive) before sleeping (0..1000; default 0 = off; native/RDMA.md "Polling"). */
  pollUs?: number;
  /** Live failover when the gateway offers it (default true): a socket whose connection fails resumes on the tcp data port (native/RDMA.md "Live failover"). */
  failover?: boolean;
  /** Slots to keep pre-issued per connected session (default 16, the gateway bounds them: transports.rdma.max_preissued_slots); 0: never ask (every socket BINDs after its Connect). */
  preissue?: number;
  /**
   * @internal Tests only, the test build of the addon (native RdmaConnectOptions.hostile): 3 = every BIND carries a
   * token the gateway cannot redeem; 4 = every RDMA write uses a wrong key (an injected QP fatal at the first write);
   * 5 = the same once a slot has posted 1 MiB.
   */
  hostile?: 3 | 4 | 5;
  /** @internal Tests only: the hostile mode of a failover's new rdma connection (2 = an old protocol version, 3 = RESUME BINDs the gateway cannot match). */
  moveHostile?: 2 | 3;
}

/** The rdma side of one SDK Gateway object. */
export class RdmaClient {
  /** The session id offered with every rdma socket; a new one once that session ended. */
  #sessionId = newSessionId();
  /** Sessions by id: opened (or being opened), or named by the gateway and awaited. */
  readonly #sessions = new Map<string, RdmaClientSession>();
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

  /** The RdmaOffer for a socket (the gateway never dials us: no address); it asks for pre-issued slots while its connected session holds fewer than wanted. */
  offer(): RdmaOffer {
    const s = this.#sessions.get(this.#sessionId);
    const want = Math.max(0, Math.min(this.#opts.preissue ?? PREISSUE_SLOTS, MAX_SLOTS));
    const preissue = s?.state === 'established' ? Math.max(0, want - (s.preissued?.size ?? 0)) : 0;
    return { address: '', ringBytes: 2 ** this.#ringLog2, sessionId: this.#sessionId, preissue };
  }

  /** `offer` naming a slot pre-issued to one of our connected sessions (the primary first), if one is held and free here. */
  name(offer: RdmaOffer): NamedSlot<RdmaOffer> | undefined {
    const primary = this.#sessions.get(this.#sessionId);
    for (const s of primary ? [primary, ...this.#sessions.values()] : this.#sessions.values()) {
      if (s.state !== 'established') continue;
      const no = s.preissued?.take((n) => !s.slots.has(n));
      if (no === undefined) continue;
      // Unknown outcome: CLOSE stands in for shm's ABORT.
      return nameSlot(offer, s.id, no, s.preissued!, () => s.state === 'established', (n) => s.giveBack(native!, n));
    }
    return undefined;
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
    if (token.length < SHORT_TOKEN_BYTES) throw new AttachFailedError(`rdma attach: the attach token is ${token.length} bytes, at least ${SHORT_TOKEN_BYTES} are needed`);
    const shortToken = new Uint8Array(token.subarray(0, SHORT_TOKEN_BYTES));
    if (opts.signal?.aborted) throw new AbortedError('attach aborted');
    let s = this.#sessions.get(p.sessionId);
    if (p.linked) return this.#linked(s, p, shortToken, label);
    const resume = p.resumePort >= 1 && p.resumePort <= 65535 && p.resumeHost && p.resumeMs > 0 && this.#opts.failover !== false ? { host: p.resumeHost, port: p.resumePort, ms: p.resumeMs } : undefined;
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
        ...(this.#opts.pollUs !== undefined ? { pollUs: this.#opts.pollUs } : {}),
        ...(this.#opts.hostile !== undefined ? { hostile: this.#opts.hostile } : {}),
        trace: FLOW_TRACE,
        // Live failover only with a gateway that offers it (an older one refuses the RESUME flag).
        resume: resume !== undefined,
      });
      s.resume = resume;
    } else {
      // The session's connection exists or an earlier socket is opening it (its answer may even come after ours).
      s ??= this.#session(p.sessionId, timeoutMs);
      s.resume ??= resume;
    }
    const session = s;
    (session.preissued ??= new PreissuedSlots(p.slots)).add(p.preissuedSlots);
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
    const { sock, bound } = session.link(n, p.slot, p.newSession ? undefined : shortToken, label, session.resume ? resumeToken(shortToken) : undefined);
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

  /**
   * The gateway linked the pre-issued slot we named before it answered: link
   * our end, no BIND (bytes a server that speaks first sent meanwhile wait in
   * the slot's ring: the connection opens a slot on its first data).
   */
  #linked(s: RdmaClientSession | undefined, p: RdmaAttach, shortToken: Uint8Array, label: string): RdmaSocket {
    if (!s || s.state !== 'established') throw new AttachFailedError(`rdma attach: the gateway linked slot ${p.slot} of session ${p.sessionId}, which this client does not hold connected`);
    (s.preissued ??= new PreissuedSlots(p.slots)).add(p.preissuedSlots);
    trace(`attach ${label}: session ${s.id}, pre-issued slot ${p.slot} linked by the gateway`);
    return s.link(native!, p.slot, undefined, label, s.resume ? resumeToken(shortToken) : undefined).sock;
  }

  #session(id: string, waitMs: number): RdmaClientSession {
    const s = new RdmaClientSession(
      id,
      (gone) => {
        if (this.#sessions.get(gone.id) === gone) this.#sessions.delete(gone.id);
        // The next socket starts a new session (the gateway may still hold the old id for a moment).
        if (gone.id === this.#sessionId) this.#sessionId = newSessionId();
      },
      waitMs,
      // Live failover onto a new rdma connection: a session never offered (its id stays ours), closed with the others.
      () => {
        if (this.#closed) throw new SocketClosedError('the gateway connection is closed');
        return this.#session(newSessionId(), waitMs);
      },
    );
    s.moveHostile = this.#opts.moveHostile;
    this.#sessions.set(id, s);
    return s;
  }

  /** Disconnect every session (their sockets end). */
  close(): void {
    this.#closed = true;
    for (const s of [...this.#sessions.values()]) s.close(new SocketClosedError('the gateway connection was closed'));
  }
}
