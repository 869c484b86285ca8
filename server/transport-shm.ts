/**
 * The `shm` data plane: clients on this host move payload through shared-memory
 * rings that the native pump drains into (and fills from) the host sockets, so
 * no payload byte enters the gateway's JS heap (native/SHM.md has the layout).
 * This file negotiates slots, attaches sessions, binds later sockets over a
 * session's control slot and ends sessions; the session model is in
 * shm-session.ts, ring accounting and autotuning in shm-ring-budget.ts.
 *
 * A client that corrupts its shared memory ends its own session only
 * (ERR_SOCKGATE_RING_CORRUPT on its sockets, logged and counted).
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { whenReleased } from '../native/when-released.js';
import type { Counter, Meter } from '@opentelemetry/api';
import type { AttachListener, Eventfd, ShmRegion } from '../native/index.js';
import { DeclineReason, TransportKind, type TransportOffer } from '../proto/gen/sockgate/v1/transport.js';
import { SocketState } from '../proto/gen/sockgate/v1/sockgate.js';
import { AttachTokenError, type AttachRegistry } from './attach.js';
import type { Config } from './config.js';
import { RateLimitedWarn, type Logger } from '../native/log.js';
import type { Identity, Policy } from './policy.js';
import type { ListenerEvent, PumpHub, RegionEvent } from '../native/pump-hub.js';
import { StreamSocket, type GatewaySocket } from './socket-table.js';
import type { GatewayMetrics } from './telemetry.js';
import type { OfferContext, OfferOutcome, Transport } from './transport.js';
import { isLocalPeer } from './local-peer.js';
import { removeStaleSocket } from '../native/unix-socket-file.js';
import { listenAttachSocket } from './shm-attach-socket.js';
import { RingBudget } from './shm-ring-budget.js';
import { Session, Slot, sessionKey } from './shm-session.js';
import { slotChannel, type SlotChannelHost } from './shm-slot-channel.js';
import { sendCtl, startControl, type ControlHost } from './shm-control.js';
import {
  CONTROL_RING_BYTES,
  CONTROL_SLOT,
  SESSION_ID_RE,
  ShmStatus,
  decodeHello,
  encodeBound,
  readBootId,
  shmStatusName,
} from '../proto/shm-wire.js';
import { tracer } from '../native/trace.js';

export { isLocalPeer };

const trace = tracer('shm');

type NativeModule = typeof import('../native/index.js');
export type ShmConfig = Config['transports']['shm'];

/** A reserved slot outlives its token by this much (an attach may be in flight when the token expires). */
const RESERVATION_GRACE_MS = 2_000;
/** A session refused at attach is remembered this long, so further offers naming it are declined at once. */
const REFUSED_MEMORY_MS = 60_000;
/** How long ending a session waits for its last control messages to reach the client's ring. */
const CONTROL_FLUSH_MS = 500;
/** How long teardown waits for a link's end event before giving up on it. */
const LINK_END_WAIT_MS = 5_000;
/** Client input echoed in a decline detail is cut to this length. */
const MAX_ECHO = 64;

/** The shm plane's own metrics, declared once (served with the gateway's). */
export const SHM_METRICS = {
  corrupt: { name: 'sockgate.shm.corrupt_sessions', description: 'shm sessions ended because the client corrupted its shared memory', unit: '{session}' },
  refused: { name: 'sockgate.shm.refusals', description: 'shm attaches and binds refused, by reason', unit: '{attach}' },
  grows: { name: 'sockgate.shm.ring_grows', description: 'Ring growth grants issued by autotuning, by direction', unit: '{grant}' },
  sessions: { name: 'sockgate.shm.sessions', description: 'Attached shm client sessions', unit: '{session}' },
  ringBytes: { name: 'sockgate.shm.ring_bytes', description: 'Ring bytes granted (both directions, every session)', unit: 'By' },
} as const;

export type RefusalReason = 'token' | 'identity' | 'no_session' | 'resource' | 'not_waiting' | 'malformed' | 'protocol' | 'shutting_down';

export interface ShmTransportOptions {
  config: ShmConfig;
  /** Attach token lifetime (a reservation lives as long, plus a grace). */
  tokenTtlMs: number;
  native: NativeModule;
  hub: PumpHub;
  registry: AttachRegistry<GatewaySocket>;
  policy: Policy;
  metrics: GatewayMetrics;
  meter: Meter;
  logger: Logger;
}


function echo(s: string): string {
  return s.length > MAX_ECHO ? `${JSON.stringify(s.slice(0, MAX_ECHO))}...` : JSON.stringify(s);
}

export class ShmTransport implements Transport {
  readonly kind = TransportKind.TRANSPORT_KIND_SHM;
  readonly version = 1;
  /** Sessions by identity + id (pending, live and refused ones). */
  readonly #sessions = new Map<string, Session>();
  /** Live sessions by region id and by attach connection. */
  readonly #byRegion = new Map<number, Session>();
  readonly #byConn = new Map<number, Session>();
  /** TS-charged ring bytes per identity name, and in total. */
  readonly #budget: RingBudget;
  /** What the control slot and a slot's data channel need of this transport. */
  readonly #controlHost: ControlHost;
  readonly #channelHost: SlotChannelHost;
  #listener: AttachListener | undefined;
  #path = '';
  /** Inode of the socket file we bound, so stop() never removes a successor's file. */
  #pathIno = -1;
  #bootId = '';
  /** Set by close(): no new sessions, slots or attaches. */
  #closing = false;
  /** Refusal log rate limit: the current window, lines logged in it, and refusals not logged since the last line. */
  readonly #refusals: Counter;
  /** Refusals are all counted, but logged at most 20 times per 10 s: a hostile client must not flood the log. */
  readonly #refusalLog: RateLimitedWarn;
  readonly #corrupt: Counter;

  constructor(private readonly o: ShmTransportOptions) {
    const m = o.meter;
    this.#budget = new RingBudget(o.config);
    this.#refusals = m.createCounter(SHM_METRICS.refused.name, { description: SHM_METRICS.refused.description, unit: SHM_METRICS.refused.unit });
    this.#refusalLog = new RateLimitedWarn(o.logger);
    this.#corrupt = m.createCounter(SHM_METRICS.corrupt.name, { description: SHM_METRICS.corrupt.description, unit: SHM_METRICS.corrupt.unit });
    this.#controlHost = {
      native: o.native,
      hub: o.hub,
      config: o.config,
      refuse: (reason, detail, extra) => this.#refuse(reason, detail, extra),
      endSession: (s, why, level) => this.#endSession(s, why, level),
      bind: (s, slotNo, token) => this.#bind(s, slotNo, token),
      release: (s, slotNo, abort) => this.#release(s, slotNo, abort),
    };
    this.#channelHost = {
      kind: this.kind,
      native: o.native,
      hub: o.hub,
      config: o.config,
      budget: this.#budget,
      grows: m.createCounter(SHM_METRICS.grows.name, { description: SHM_METRICS.grows.description, unit: SHM_METRICS.grows.unit }),
      send: (s, msg) => sendCtl(this.#controlHost, s, msg),
      closeSlot: (s, slotNo, slot) => this.#closeSlot(s, slotNo, slot),
    };
    m.createObservableGauge(SHM_METRICS.sessions.name, { description: SHM_METRICS.sessions.description, unit: SHM_METRICS.sessions.unit }).addCallback((r) =>
      r.observe(this.#byRegion.size),
    );
    m.createObservableGauge(SHM_METRICS.ringBytes.name, { description: SHM_METRICS.ringBytes.description, unit: SHM_METRICS.ringBytes.unit }).addCallback((r) =>
      r.observe(this.#budget.bytes()),
    );
  }

  /** The attach socket's path, once started. */
  get path(): string {
    return this.#path;
  }

  /** Ring bytes charged (TS accounting): in total, or for one identity. */
  ringBytes(identity?: string): number {
    return this.#budget.bytes(identity);
  }

  /** Attached sessions right now. */
  get sessionCount(): number {
    return this.#byRegion.size;
  }

  async start(): Promise<void> {
    this.#bootId = readBootId((p) => readFileSync(p, 'utf8'));
    this.o.native.setGatewayRingLimit(this.o.config.max_ring_bytes_total);
    const { listener, path, ino } = await listenAttachSocket(this.o.config.path, this.o.hub, this.o.native);
    this.#pathIno = ino;
    this.#listener = listener;
    this.#path = path;
    this.o.hub.onListener(listener.id, (e) => this.#onListenerEvent(e));
    this.o.logger.info({ path, bootId: this.#bootId }, 'shm attach socket listening');
  }

  // ---- negotiation ----------------------------------------------------------

  accept(offer: TransportOffer, ctx: OfferContext): OfferOutcome {
    const decline = (reason: DeclineReason, detail: string): OfferOutcome => ({ ok: false, reason, detail });
    const cfg = this.o.config;
    if (this.#closing || !this.#listener) return decline(DeclineReason.DECLINE_REASON_UNSUPPORTED, 'shm is stopping on this gateway');
    if (ctx.socketKind !== 'stream') return decline(DeclineReason.DECLINE_REASON_KIND_UNSUPPORTED, 'shm carries stream sockets only');
    const shm = offer.params?.$case === 'shm' ? offer.params.shm : undefined;
    if (!isLocalPeer(ctx.peer)) {
      return decline(DeclineReason.DECLINE_REASON_NOT_COLOCATED, `the control call comes from ${echo(ctx.peer)}, not from loopback or a Unix socket`);
    }
    if (!shm || shm.hostId === '') return decline(DeclineReason.DECLINE_REASON_NOT_COLOCATED, 'the shm offer names no host (ShmOffer.host_id, the boot id)');
    if (this.#bootId === '' || shm.hostId !== this.#bootId) {
      return decline(DeclineReason.DECLINE_REASON_NOT_COLOCATED, `client host ${echo(shm.hostId)} is not this gateway's host (boot id ${this.#bootId || 'unknown'})`);
    }
    const offered = shm.sessionId;
    if (offered !== '' && !SESSION_ID_RE.test(offered)) {
      return decline(DeclineReason.DECLINE_REASON_PEER_DECLINED, `session id ${echo(offered)} is malformed (8..64 of [A-Za-z0-9_-])`);
    }
    const who = ctx.identity.name;
    let head = offered === '' ? undefined : this.#sessions.get(sessionKey(who, offered));
    if (head?.state === 'refused') return decline(DeclineReason.DECLINE_REASON_POLICY, head.refusal);
    // The first session in the client's chain with a free slot; a new one at the end otherwise.
    let session: Session | undefined;
    let slotNo = 0;
    let last: Session | undefined;
    for (let s = head; s && slotNo === 0; s = s.overflow) {
      if (s.state !== 'pending' && s.state !== 'live') continue;
      last = s;
      slotNo = s.freeSlot(cfg.slots_per_session);
      if (slotNo) session = s;
    }
    const initial = cfg.initial_ring_bytes;
    let cost = 2 * initial;
    let created: Session | undefined;
    if (!session) {
      const id = head ? randomBytes(12).toString('base64url') : offered || randomBytes(12).toString('base64url');
      created = new Session(sessionKey(who, id), id, ctx.identity);
      session = created;
      slotNo = created.freeSlot(cfg.slots_per_session);
      cost += 2 * CONTROL_RING_BYTES;
    }
    if (!this.#budget.charge(who, cost)) {
      return decline(
        DeclineReason.DECLINE_REASON_RESOURCE_LIMIT,
        `ring memory cap reached: identity "${who}" holds ${this.ringBytes(who)} of ${cfg.max_ring_bytes_per_identity} bytes, the gateway ${this.#budget.bytes()} of ${cfg.max_ring_bytes_total}; a socket needs ${cost}`,
      );
    }
    if (created) {
      created.charged += 2 * CONTROL_RING_BYTES;
      this.#sessions.set(created.key, created);
      if (last) last.overflow = created;
      else if (head) head.overflow = created;
      trace(`${who}: new pending session ${created.id}${head ? ` (overflow of ${head.id})` : ''}`);
    }
    const slot = new Slot(initial);
    session.charged += 2 * initial;
    session.slots.set(slotNo, slot);
    const s = session;
    slot.timer = setTimeout(() => this.#expireReservation(s, slotNo, slot), this.o.tokenTtlMs + RESERVATION_GRACE_MS);
    slot.timer.unref();
    return {
      ok: true,
      accepted: {
        kind: this.kind,
        version: this.version,
        params: { $case: 'shm', shm: { path: this.#path, ringBytes: initial, sessionId: session.id, slot: slotNo, newSession: session.state === 'pending', spinUs: this.o.config.spin_us } },
      },
    };
  }


  /** Free a slot's bookkeeping and charge (its rings are closed already, or were never opened). */
  #freeSlot(s: Session, slotNo: number, slot: Slot): void {
    if (s.slots.get(slotNo) !== slot) return;
    clearTimeout(slot.timer);
    s.slots.delete(slotNo);
    const bytes = slot.size[0] + slot.size[1] + slot.growing[0] + slot.growing[1];
    s.charged -= bytes;
    this.#budget.uncharge(s.identity.name, bytes);
    this.#maybeDropPending(s);
  }

  #expireReservation(s: Session, slotNo: number, slot: Slot): void {
    if (slot.state !== 'reserved') return;
    trace(`session ${s.id}: reservation of slot ${slotNo} expired`);
    this.#freeSlot(s, slotNo, slot);
  }

  /** A pending session without reservations is forgotten. */
  #maybeDropPending(s: Session): void {
    if (s.state !== 'pending' || s.slots.size > 0) return;
    s.state = 'closed';
    this.#sessions.delete(s.key);
    this.#budget.uncharge(s.identity.name, s.charged);
    s.charged = 0;
  }

  // ---- attach (new sessions) --------------------------------------------------

  #onListenerEvent(e: ListenerEvent): void {
    if (e.type === 'attach') this.#onAttach(e);
    else if (e.type === 'connClosed') {
      const s = this.#byConn.get(e.conn);
      if (s) {
        s.conn = undefined;
        void this.#endSession(s, 'the client closed its attach connection', 'debug');
      }
    }
  }

  #refuse(reason: RefusalReason, detail: string, extra: Record<string, unknown> = {}): void {
    this.#refusals.add(1, { reason });
    this.#refusalLog.warn({ reason, ...extra }, `shm attach refused: ${detail}`);
  }

  #onAttach(e: Extract<ListenerEvent, { type: 'attach' }>): void {
    const listener = this.#listener!;
    const peer = { pid: e.pid, uid: e.uid, gid: e.gid };
    const reject = (status: number, reason: RefusalReason, detail: string) => {
      this.#refuse(reason, detail, { peer, status: shmStatusName(status) });
      try {
        listener.reject(e.conn, status);
      } catch {
        // the listener is closing
      }
    };
    if (this.#closing) return reject(ShmStatus.SHUTTING_DOWN, 'shutting_down', 'the gateway is stopping');
    const hello = decodeHello(e.token);
    if (!hello) return reject(ShmStatus.MALFORMED, 'malformed', 'malformed hello token');
    let target: GatewaySocket;
    try {
      target = this.o.registry.redeem(hello.token, this.kind);
    } catch (err) {
      const failure = err instanceof AttachTokenError ? err.failure : 'wrong_token';
      this.o.metrics.recordAttach('shm', failure === 'wrong_transport' ? 'error' : failure);
      return reject(ShmStatus.TOKEN, 'token', (err as Error).message);
    }
    const s = this.#sessions.get(sessionKey(target.identity.name, hello.sessionId));
    const slot = s?.slots.get(hello.slot);
    const fail = (status: number, reason: RefusalReason, detail: string) => {
      this.o.metrics.recordAttach('shm', 'error');
      if (s && slot && slot.state === 'reserved') this.#freeSlot(s, hello.slot, slot);
      reject(status, reason, detail);
    };
    if (!s || s.state !== 'pending' || !slot || slot.state !== 'reserved') {
      return fail(ShmStatus.NO_SESSION, 'no_session', `no pending session ${hello.sessionId} with slot ${hello.slot} reserved for identity "${target.identity.name}"`);
    }
    if (!(target instanceof StreamSocket) || target.state !== SocketState.SOCKET_STATE_PENDING_ATTACH) {
      return fail(ShmStatus.NOT_WAITING, 'not_waiting', `socket ${target.id} is not waiting for an attach`);
    }
    // SO_PEERCRED: a uid that maps to an identity must map to the socket's.
    let byUid: Identity | undefined;
    try {
      byUid = this.o.policy.identify({ peerUid: e.uid });
    } catch {
      byUid = undefined;
    }
    if (byUid && byUid.source === 'peercred' && byUid.name !== target.identity.name) {
      const detail = `peer uid ${e.uid} (pid ${e.pid}) is identity "${byUid.name}", the socket belongs to "${target.identity.name}"`;
      this.o.metrics.recordAttach('shm', 'error');
      this.#refuseSession(s, `shm attach refused: ${detail}`);
      return reject(ShmStatus.POLICY, 'identity', detail);
    }
    const cfg = this.o.config;
    const native = this.o.native;
    let region: ShmRegion | undefined;
    let gwBell: Eventfd | undefined;
    let clBell: Eventfd | undefined;
    try {
      region = native.ShmRegion.create({ slots: cfg.slots_per_session, maxRingSize: cfg.max_ring_bytes, byteLimit: cfg.max_ring_bytes_per_identity });
      gwBell = new native.Eventfd();
      clBell = new native.Eventfd();
      region.setDoorbells(gwBell, clBell);
      region.openSlot(CONTROL_SLOT, CONTROL_RING_BYTES);
      region.openSlot(hello.slot, slot.size[0]);
      s.region = region;
      s.gwBell = gwBell;
      s.clBell = clBell;
      startControl(this.#controlHost, s);
    } catch (err) {
      // Reverse order of creation; the control link (if any) holds the region until it ends.
      s.region = undefined;
      s.ctlLink?.close().catch(() => {});
      s.ctlSock?.destroy();
      const cleanup = () => {
        try {
          region?.close();
          gwBell?.close();
          clBell?.close();
        } catch (e2) {
          this.o.logger.warn({ err: (e2 as Error).message }, 'shm: releasing a failed session');
        }
      };
      if (s.ctlLink) void s.ctlLink.ended.then(cleanup);
      else cleanup();
      s.ctlLink = undefined;
      s.ctlSock = undefined;
      return fail(ShmStatus.RESOURCE, 'resource', `cannot set up the session: ${(err as Error).message}`);
    }
    s.state = 'live';
    s.conn = e.conn;
    s.peer = peer;
    this.#byRegion.set(region.id, s);
    this.#byConn.set(e.conn, s);
    this.o.hub.onRegion(region.id, (ev) => this.#onRegionEvent(s, ev));
    listener.accept(e.conn, region, gwBell, clBell);
    this.o.logger.info({ session: s.id, identity: s.identity.name, peerPid: e.pid, peerUid: e.uid, peerGid: e.gid, socket: target.id }, 'shm session attached');
    this.#link(s, hello.slot, slot, target);
  }

  /** Remember a refused session for a while: offers naming it are declined at once. */
  #refuseSession(s: Session, why: string): void {
    for (const [n, slot] of [...s.slots]) this.#freeSlot(s, n, slot);
    s.state = 'refused';
    s.refusal = why;
    this.#budget.uncharge(s.identity.name, s.charged);
    s.charged = 0;
    this.#sessions.set(s.key, s);
    s.timer = setTimeout(() => {
      if (this.#sessions.get(s.key) === s) this.#sessions.delete(s.key);
    }, REFUSED_MEMORY_MS);
    s.timer.unref();
  }

  /** BIND: a later socket presents its token over the session. */
  #bind(s: Session, slotNo: number, token: Buffer): void {
    const reply = (status: number, reason: RefusalReason | undefined, detail: string) => {
      if (reason) {
        this.o.metrics.recordAttach('shm', 'error');
        this.#refuse(reason, detail, { session: s.id, slot: slotNo });
      }
      sendCtl(this.#controlHost, s, encodeBound(slotNo, status, detail));
    };
    const slot = s.slots.get(slotNo);
    if (this.#closing) return reply(ShmStatus.SHUTTING_DOWN, 'shutting_down', 'the gateway is stopping');
    if (!slot || slot.state !== 'reserved') return reply(ShmStatus.NO_SESSION, 'no_session', `slot ${slotNo} is not reserved in session ${s.id}`);
    const failSlot = (status: number, reason: RefusalReason, detail: string) => {
      this.#freeSlot(s, slotNo, slot);
      reply(status, reason, detail);
    };
    let target: GatewaySocket;
    try {
      target = this.o.registry.redeem(token, this.kind);
    } catch (err) {
      const failure = err instanceof AttachTokenError ? err.failure : 'wrong_token';
      this.o.metrics.recordAttach('shm', failure === 'wrong_transport' ? 'error' : failure);
      this.#refuse('token', (err as Error).message, { session: s.id, slot: slotNo });
      this.#freeSlot(s, slotNo, slot);
      return sendCtl(this.#controlHost, s, encodeBound(slotNo, ShmStatus.TOKEN, (err as Error).message));
    }
    if (target.identity.name !== s.identity.name) {
      return failSlot(ShmStatus.POLICY, 'identity', `socket ${target.id} belongs to identity "${target.identity.name}", the session to "${s.identity.name}"`);
    }
    if (!(target instanceof StreamSocket) || target.state !== SocketState.SOCKET_STATE_PENDING_ATTACH) {
      return failSlot(ShmStatus.NOT_WAITING, 'not_waiting', `socket ${target.id} is not waiting for an attach`);
    }
    try {
      s.region!.openSlot(slotNo, slot.size[0]);
    } catch (err) {
      return failSlot(ShmStatus.RESOURCE, 'resource', `cannot open slot ${slotNo}: ${(err as Error).message}`);
    }
    if (this.#link(s, slotNo, slot, target)) reply(ShmStatus.OK, undefined, '');
    else reply(ShmStatus.NOT_WAITING, 'not_waiting', `socket ${target.id} could not be linked`);
  }

  /** Hand the slot to the socket as its native data channel; false (slot freed) if the socket would not take it. */
  #link(s: Session, slotNo: number, slot: Slot, target: StreamSocket): boolean {
    clearTimeout(slot.timer);
    slot.timer = undefined;
    slot.state = 'open';
    slot.target = target;
    try {
      target.attach(slotChannel(this.#channelHost, s, slotNo, slot));
    } catch (err) {
      trace(`session ${s.id}: socket ${target.id} refused slot ${slotNo}: ${(err as Error).message}`);
      this.#closeSlot(s, slotNo, slot);
      return false;
    }
    this.o.metrics.recordAttach('shm', 'ok');
    trace(`session ${s.id}: slot ${slotNo} carries socket ${target.id}`);
    return true;
  }

  /** RELEASE / ABORT from the client. */
  #release(s: Session, slotNo: number, abort: boolean): void {
    const slot = s.slots.get(slotNo);
    if (!slot) return; // already closed (e.g. a RELEASE after an END): nothing to do
    slot.released = true;
    if (slot.state === 'reserved') return this.#freeSlot(s, slotNo, slot);
    if (slot.linkEnded) return this.#closeSlot(s, slotNo, slot);
    // A graceful release waits for the link to flush what the client sent; an abort closes it now.
    // An abort is a reset for the host peer too (the client's side was reset or dropped).
    if (abort) void slot.link?.close({ reset: true }).catch(() => {});
  }

  /** Close an open slot (pages punched out) and free it. */
  #closeSlot(s: Session, slotNo: number, slot: Slot): void {
    if (slot.state === 'open' && s.region && s.state === 'live') {
      try {
        s.region.closeSlot(slotNo);
      } catch (err) {
        this.o.logger.warn({ session: s.id, slot: slotNo, err: (err as Error).message }, 'shm: closing a slot failed');
      }
    }
    this.#freeSlot(s, slotNo, slot);
  }

  // ---- session end --------------------------------------------------------------

  #onRegionEvent(s: Session, e: RegionEvent): void {
    if (e.type !== 'corrupt') return;
    this.#corrupt.add(1);
    const sockets = [...s.slots.values()].flatMap((sl) => (sl.target ? [sl.target.id] : []));
    this.o.logger.error(
      { session: s.id, identity: s.identity.name, peerPid: s.peer.pid, peerUid: s.peer.uid, sockets, code: e.code },
      'shm session corrupted by its client: its sockets end with ERR_SOCKGATE_RING_CORRUPT',
    );
    void this.#endSession(s, 'its client corrupted the shared memory', 'debug');
  }

  /** End a session: abort its links, close its slots, control stream, connection, region and doorbells. Idempotent. */
  #endSession(s: Session, why: string, level: 'debug' | 'warn' | 'error'): Promise<void> {
    if (s.ended) return s.ended;
    const wasLive = s.state === 'live';
    s.state = 'closed';
    if (this.#sessions.get(s.key) === s) this.#sessions.delete(s.key);
    clearTimeout(s.timer);
    for (const slot of s.slots.values()) clearTimeout(slot.timer);
    s.ended = (async () => {
      if (wasLive) this.o.logger[level]({ session: s.id, identity: s.identity.name, peerPid: s.peer.pid }, `shm session ended: ${why}`);
      // Let the last control messages (END with the reason) reach the client's ring before the session goes.
      const flushBy = Date.now() + CONTROL_FLUSH_MS;
      while (wasLive && s.ctlLink && s.ctlDelivered < s.ctlWritten && Date.now() < flushBy) await new Promise((r) => setTimeout(r, 2));
      const links = [...s.slots.values()].flatMap((sl) => (sl.link ? [sl.link] : []));
      if (s.ctlLink) links.push(s.ctlLink);
      await Promise.all(
        links.map((l) =>
          Promise.race([
            l.close().catch(() => undefined),
            new Promise((r) => setTimeout(r, LINK_END_WAIT_MS).unref()),
          ]),
        ),
      );
      s.ctlSock?.destroy();
      if (s.conn !== undefined) {
        this.#byConn.delete(s.conn);
        try {
          this.#listener?.closeConn(s.conn);
        } catch {
          // the listener is closed
        }
        s.conn = undefined;
      }
      for (const [n, slot] of [...s.slots]) this.#freeSlot(s, n, slot);
      this.#budget.uncharge(s.identity.name, s.charged);
      s.charged = 0;
      if (s.region) {
        const id = s.region.id;
        this.#byRegion.delete(id);
        this.o.hub.offRegion(id);
        // The pump thread may still hold the region or a doorbell for a moment after the links and
        // offRegion (EBUSY): each close is retried, bounded, so none is skipped (a leak of their fds).
        const busy = (err: unknown) => this.o.native.nativeCode(err) === 'EBUSY';
        const { region, gwBell, clBell } = s;
        for (const close of [() => region.close(), () => gwBell?.close(), () => clBell?.close()]) {
          try {
            await whenReleased(close, busy);
          } catch (err) {
            this.o.logger.warn({ session: s.id, err: (err as Error).message }, 'shm: releasing a session failed');
          }
        }
      }
    })();
    return s.ended;
  }

  /** Stop taking new sessions, slots and attaches; running sockets keep their links (the socket table drains them). */
  async close(): Promise<void> {
    this.#closing = true;
  }

  /**
   * After the socket table drained (or was destroyed): end every session,
   * close the listener and remove its socket file. Idempotent.
   */
  async shutdown(): Promise<void> {
    this.#closing = true;
    await Promise.all([...new Set([...this.#sessions.values(), ...this.#byRegion.values()])].map((s) => this.#endSession(s, 'the gateway stopped', 'debug')));
    if (this.#listener) {
      this.o.hub.offListener(this.#listener.id);
      try {
        this.#listener.close();
      } catch (err) {
        this.o.logger.warn({ err: (err as Error).message }, 'shm: closing the attach listener failed');
      }
      this.#listener = undefined;
      removeStaleSocket(this.#path, this.#pathIno);
    }
  }
}