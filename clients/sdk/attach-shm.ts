/**
 * The SDK's shm client: one session per Gateway object (one region mapped
 * once, attached with the first shm socket's token), and a ShmChannel per
 * socket over its slot. Later sockets present their token over the session's
 * control slot (BIND), so connecting one costs no new mapping, fd passing or
 * connection; or, once the gateway pre-issued slots to the session
 * (client-slot-session.ts), name one in their Connect and find it linked when the
 * Connect answers: no BIND at all. A process-wide native pump watches every
 * session's doorbell and delivers the hints that wake the channels.
 *
 * The native addon is optional for the SDK: without it `shmSupport.available`
 * is false and the SDK offers tcp and grpc only.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { dirname } from 'node:path';
import type { ClientSession, Pump, PumpLink, PumpStats, ShmRegion } from '../../native/index.js';
import { shmDirProblem } from '../../native/shm-dir.js';
import { whenReleased as whenReleasedNative } from '../../native/when-released.js';
import type { ShmAttach, ShmOffer } from '../../proto/gen/sockgate/v1/transport.js';
import { AbortedError, AttachFailedError, GatewayUnavailableError, ProtocolError, SocketClosedError } from '../../proto/errors.js';
import {
  CONTROL_SLOT,
  CtlParser,
  CtlType,
  SESSION_ID_RE,
  ShmStatus,
  decodeBound,
  encodeCtl,
  encodeHello,
  readBootId,
  shmStatusName,
} from '../../proto/shm-wire.js';
import { ATTACH_TIMEOUT_MS } from '../../proto/attach-limits.js';
import { ShmChannel, endError, type ShmChannelSession, type ShmSlotLink } from './shm-channel.js';
import { Holds, PREISSUE_SLOTS, PreissuedSlots, SharedPump, SlotBinds, nameSlot, type NamedSlot, within } from './client-slot-session.js';
import { native, nativeError, type NativeModule } from './native-optional.js';

/** The largest spin a gateway may ask of this process's pump (µs; the native pump's own limit). */
const MAX_SPIN_US = 1000;

/** Whether this process can attach with shm, and why not. */
export const shmSupport: { readonly available: boolean; readonly reason: string } = {
  available: native !== undefined && process.platform === 'linux',
  reason: native === undefined ? `the native addon did not load: ${nativeError}` : process.platform !== 'linux' ? 'shm needs Linux' : '',
};

// ---- the process-wide client pump ------------------------------------------------

/** The pump watching every client session in this process, and who listens to which region. */
interface ClientPump {
  pump: Pump;
  /** Hint handlers by region id. */
  regions: Map<number, (slots: number[]) => void>;
  /** Open data channels across sessions: the pump keeps the process alive only while there are some. */
  channels: Holds;
  /** Each session's gateway spin setting (ShmAttach.spin_us), by region id: the pump spins the largest. */
  spins: Map<number, number>;
}

/** The pump takes the spin its gateways advertise (one setting governs both ends; native/SHM.md). */
function applySpin(p: ClientPump): void {
  if (!p.pump.raw.closed) p.pump.setSpin(Math.max(0, ...p.spins.values()));
}
/** Retry `fn` while it throws EBUSY (the pump thread has not yet let go), bounded (native/when-released.ts). */
function whenReleased(fn: () => void): Promise<void> {
  return whenReleasedNative(fn, (err) => native?.nativeCode(err) === 'EBUSY');
}

const clientPump = new SharedPump<ClientPump>(
  (p) => p.pump.close(),
  (err) => native?.nativeCode(err) === 'EBUSY',
);

function makePump(n: NativeModule): ClientPump {
  const regions = new Map<number, (slots: number[]) => void>();
  const pump = new n.Pump((events) => {
    for (const e of events) if (e.type === 'hints') regions.get(e.region)?.(e.slots);
  });
  pump.unref();
  return { pump, regions, channels: new Holds(pump), spins: new Map() };
}

/** The process-wide client pump's counters and spin (tests, diagnostics); undefined while no session is attached. */
export function clientPumpStats(): PumpStats | undefined {
  return clientPump.current?.pump.stats();
}

// ---- a session ------------------------------------------------------------------

export type { ShmSlotLink } from './shm-channel.js';

/** One attached session: region, doorbells, control stream, channels by slot. */
class ClientShmSession implements ShmChannelSession {
  readonly channels = new Map<number, ShmChannel>();
  /** Slots the gateway pre-issued to this session, unused. */
  readonly preissued: PreissuedSlots;
  /** Control messages sent, by type (tests assert the protocol: a named slot sends no BIND). */
  readonly sent = new Map<CtlType, number>();
  /** BINDs waiting for their BOUND, by slot. */
  readonly #binds = new SlotBinds();
  /** Slots pumped natively (link.ts), by slot: an END or the session's loss resets them. */
  readonly #links = new Map<number, { link: PumpLink; error?: Error }>();
  readonly #control: ShmChannel;
  readonly #parser: CtlParser;
  readonly #watcher: Socket;
  readonly #pump: ClientPump;
  readonly region: ShmRegion;
  #closed = false;
  /** Inside lost(): the last control messages are being read. */
  #losing = false;

  constructor(
    readonly id: string,
    readonly cs: ClientSession,
    private readonly onGone: (s: ClientShmSession) => void,
    n: NativeModule,
    spinUs = 0,
  ) {
    this.region = cs.region;
    this.preissued = new PreissuedSlots(cs.slotCount, CONTROL_SLOT + 1);
    this.#pump = clientPump.acquire(() => makePump(n));
    this.#pump.regions.set(this.region.id, (slots) => this.#hints(slots));
    this.#pump.spins.set(this.region.id, spinUs);
    applySpin(this.#pump);
    this.#control = new ShmChannel(this.region, CONTROL_SLOT, { release: () => {}, channelClosed: () => {} }, `shm session ${id} control`);
    this.#parser = new CtlParser(new Set([CtlType.BOUND, CtlType.END]), cs.slotCount);
    this.#control.on('data', (chunk: Buffer) => this.#onControl(chunk));
    this.#control.on('error', (err) => this.lost(err));
    this.#control.on('end', () => this.lost(new GatewayUnavailableError(`shm session ${id}: the gateway ended the control stream`)));
    // The attach connection stays open for the session's life: its hang-up means the gateway is gone (or dropped us).
    this.#watcher = new Socket({ fd: n.dupFd(cs.conn), readable: true, writable: false });
    this.#watcher.on('data', () => {});
    this.#watcher.on('error', () => {});
    this.#watcher.on('close', () => this.lost(new GatewayUnavailableError(`shm session ${id}: the gateway closed the session (it stopped, or dropped this client)`)));
    this.#watcher.unref();
    this.#pump.pump.watch(this.region);
  }

  /** Messages from the gateway on the control slot. */
  #onControl(chunk: Buffer): void {
    let msgs;
    try {
      msgs = this.#parser.push(chunk);
    } catch (err) {
      return this.lost(err as Error);
    }
    for (const m of msgs) {
      if (m.type === CtlType.BOUND) {
        let st;
        try {
          st = decodeBound(m.payload);
        } catch (err) {
          return this.lost(err as Error);
        }
        this.#binds.settle(m.slot, st.status === ShmStatus.OK ? undefined : new AttachFailedError(`shm bind of slot ${m.slot} refused: ${shmStatusName(st.status)}${st.detail ? `: ${st.detail}` : ''}`));
      } else {
        const code = m.payload.toString('utf8');
        const l = this.#links.get(m.slot);
        if (l) {
          // The gateway's side failed (the host reset, ...): a reset for the caller too.
          l.error ??= endError(code, `shm slot ${m.slot}`);
          void l.link.close({ reset: true });
        } else this.channels.get(m.slot)?.fail(code);
      }
    }
  }

  #hints(slots: number[]): void {
    for (const slot of slots) {
      if (slot === CONTROL_SLOT) this.#control.poke();
      else this.channels.get(slot)?.poke();
    }
  }

  /** A channel for a slot the gateway has opened for us. */
  open(slot: number, label: string): ShmChannel {
    if (this.#closed) throw new SocketClosedError(`shm session ${this.id} is closed`);
    const ch = new ShmChannel(this.region, slot, this, label);
    this.channels.set(slot, ch);
    this.#pump.channels.add();
    // Data may already be there (the gateway links before it answers).
    queueMicrotask(() => ch.poke());
    return ch;
  }

  /** Present a socket's token over the session; resolves once the gateway linked the slot. */
  bind(slot: number, token: Uint8Array, signal: AbortSignal | undefined, timeoutMs: number): Promise<void> {
    if (this.#closed) return Promise.reject(new AttachFailedError(`shm session ${this.id} is closed`));
    if (this.#binds.has(slot) || this.channels.has(slot)) return Promise.reject(new AttachFailedError(`shm slot ${slot} of session ${this.id} is already in use here`));
    if (token.length > 1024) return Promise.reject(new AttachFailedError('attach token too long'));
    const answer = this.#binds.expect(slot);
    this.#send(CtlType.BIND, slot, Buffer.from(token.buffer, token.byteOffset, token.byteLength));
    return within(answer, timeoutMs, signal, `shm bind of slot ${slot}: no answer within ${timeoutMs} ms`, () => this.#binds.forget(slot));
  }

  /**
   * Hand `ch`'s slot to a native link with `fd` on the session's pump (the
   * pump that watches this region: the hints of a linked slot go to the link).
   * Takes `fd` on success; throws (fd still the caller's, channel intact) if
   * the link cannot start. At its end the slot is given back: RELEASE after a
   * clean end, ABORT otherwise.
   */
  linkSlot(ch: ShmChannel, fd: number, prefix: Buffer[]): ShmSlotLink {
    if (this.#closed) throw new SocketClosedError(`shm session ${this.id} is closed`);
    if (this.channels.get(ch.slot) !== ch || ch.touched) throw new SocketClosedError(`shm slot ${ch.slot}: its channel was used from JS already`);
    const link = this.#pump.pump.link(this.region, ch.slot, fd, prefix);
    link.raw.mute();
    const entry: { link: PumpLink; error?: Error } = { link };
    const slot = ch.slot;
    this.#links.set(slot, entry);
    this.#pump.channels.add();
    ch.retire();
    const ended = link.ended.then((end) => {
      this.#links.delete(slot);
      this.#pump.channels.drop();
      this.release(slot, end.reason !== 'ok' || entry.error !== undefined);
      return entry.error ? { end, error: entry.error } : { end };
    });
    return { link, ended };
  }

  release(slot: number, abort: boolean): void {
    if (this.#closed) return;
    this.#send(abort ? CtlType.ABORT : CtlType.RELEASE, slot);
  }

  #send(type: CtlType, slot: number, payload?: Buffer): void {
    this.sent.set(type, (this.sent.get(type) ?? 0) + 1);
    this.#control.write(encodeCtl(type, slot, payload));
  }

  /** Whether slot `no` is free here for a new socket (no channel, link or BIND of an earlier one left on it). */
  idle(no: number): boolean {
    return !this.#closed && !this.channels.has(no) && !this.#links.has(no) && !this.#binds.has(no);
  }

  get closed(): boolean {
    return this.#closed;
  }

  channelClosed(slot: number, ch: ShmChannel): void {
    if (this.channels.get(slot) !== ch) return;
    this.channels.delete(slot);
    this.#pump.channels.drop();
  }

  /** The session died under us: every channel and bind fails with `err`. */
  lost(err: Error): void {
    if (this.#closed || this.#losing) return;
    this.#losing = true;
    // What the gateway said last (END with the reason) is still in our mapping: hear it before giving up.
    for (let c = this.#control.read() as Buffer | null; c !== null && !this.#closed; c = this.#control.read() as Buffer | null) this.#onControl(c);
    for (const c of this.#control.drainRing()) if (!this.#closed) this.#onControl(c);
    void this.close(err);
  }

  /** Destroy the channels (with `err`) and let go of the region, doorbells and connection. Idempotent. */
  async close(err?: Error): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.onGone(this);
    const why = err ?? new SocketClosedError(`shm session ${this.id} closed`);
    this.#binds.failAll(() => new AttachFailedError(`shm session ${this.id} ended before the bind was answered`, { cause: why }));
    for (const ch of [...this.channels.values()]) ch.lost(why);
    for (const l of this.#links.values()) {
      l.error ??= why;
      void l.link.close({ reset: true });
    }
    this.#control.lost(why);
    this.#watcher.destroy();
    this.#pump.pump.unwatch(this.region);
    this.#pump.regions.delete(this.region.id);
    this.#pump.spins.delete(this.region.id);
    applySpin(this.#pump);
    try {
      await whenReleased(() => this.cs.close());
    } finally {
      clientPump.release();
    }
  }
}

// ---- the client -----------------------------------------------------------------

export interface ShmClientOptions {
  /** Host id to offer instead of this host's boot id (tests; unusual setups). */
  hostId?: string;
  /** Slots to keep pre-issued per session (default PREISSUE_SLOTS); 0: never ask (every socket BINDs after its Connect). */
  preissue?: number;
}

/** The shm side of one SDK Gateway object. */
export class ShmClient {
  /** The session id this client offers with every shm socket. */
  readonly sessionId = randomBytes(16).toString('base64url');
  readonly hostId: string;
  /** Attached sessions by id (the primary one and the gateway's overflow ones). */
  readonly #sessions = new Map<string, ClientShmSession>();
  /** Sessions being attached, by id: concurrent sockets wait for the one attach. */
  readonly #attaching = new Map<string, Promise<ClientShmSession>>();
  #closed = false;
  readonly #preissue: number;

  constructor(options: ShmClientOptions = {}) {
    if (!native) throw new AttachFailedError(`shm is not available: ${shmSupport.reason}`);
    this.hostId = options.hostId ?? readBootId((p) => readFileSync(p, 'utf8'));
    this.#preissue = Math.max(0, Math.min(options.preissue ?? PREISSUE_SLOTS, 1024));
  }

  /** The ShmOffer for a socket: it asks for pre-issued slots while its attached session holds fewer than wanted. */
  offer(): ShmOffer {
    const s = this.#sessions.get(this.sessionId);
    return { ringBytes: 0, hostId: this.hostId, sessionId: this.sessionId, preissue: s ? Math.max(0, this.#preissue - s.preissued.size) : 0, slot: 0 };
  }

  /** `offer` naming a slot pre-issued to one of our sessions (the primary first), if one is held and idle. */
  name(offer: ShmOffer): NamedSlot<ShmOffer> | undefined {
    const primary = this.#sessions.get(this.sessionId);
    for (const s of primary ? [primary, ...this.#sessions.values()] : this.#sessions.values()) {
      const no = s.preissued.take((n) => s.idle(n));
      if (no === undefined) continue;
      return nameSlot(offer, s.id, no, s.preissued, () => !s.closed, (n) => s.release(n, true));
    }
    return undefined;
  }

  /** Attached sessions (tests and diagnostics). */
  get sessions(): ReadonlyMap<string, { region: ShmRegion; channels: ReadonlyMap<number, ShmChannel> }> {
    return this.#sessions;
  }

  /** Attach one socket as the gateway said: attach the session it names, or bind into the one we hold. */
  async attach(p: ShmAttach, token: Uint8Array, label: string, opts: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<ShmChannel> {
    const n = native!;
    const timeoutMs = opts.timeoutMs ?? ATTACH_TIMEOUT_MS;
    if (this.#closed) throw new AttachFailedError('the gateway connection is closed');
    if (!p.path.startsWith('/')) throw new AttachFailedError(`shm attach: the gateway gave no usable socket path (${JSON.stringify(p.path.slice(0, 64))})`);
    if (!SESSION_ID_RE.test(p.sessionId) || p.slot === CONTROL_SLOT) throw new AttachFailedError('shm attach: malformed session or slot from the gateway');
    let s = this.#sessions.get(p.sessionId);
    if (p.linked) {
      // The slot we named carries the socket already: no BIND.
      s ??= await this.#attaching.get(p.sessionId);
      if (!s) throw new AttachFailedError(`shm attach: the gateway linked slot ${p.slot} of session ${p.sessionId}, which this client does not hold`);
      s.preissued.add(p.preissuedSlots);
      return s.open(p.slot, label);
    }
    if (!s) {
      let attaching = this.#attaching.get(p.sessionId);
      if (!attaching) {
        if (!p.newSession) throw new AttachFailedError(`shm attach: the gateway expects session ${p.sessionId}, which this client does not hold`);
        // The hello carries the attach token: never to a socket in a directory someone else could have swapped it in.
        const problem = shmDirProblem(dirname(p.path));
        if (problem) throw new AttachFailedError(`shm attach: refusing the socket ${p.path}: ${problem}`);
        // This socket attaches the session; its slot is linked by then.
        const hello = encodeHello({ sessionId: p.sessionId, slot: p.slot, token: Buffer.from(token) });
        attaching = this.#attachSession(n, p.path, p.sessionId, hello, timeoutMs, p.spinUs);
        this.#attaching.set(p.sessionId, attaching);
        try {
          s = await attaching;
        } finally {
          this.#attaching.delete(p.sessionId);
        }
        if (opts.signal?.aborted) {
          s.release(p.slot, true);
          throw new AbortedError('attach aborted');
        }
        return s.open(p.slot, label);
      }
      s = await attaching;
    }
    s.preissued.add(p.preissuedSlots);
    await s.bind(p.slot, token, opts.signal, timeoutMs);
    return s.open(p.slot, label);
  }

  async #attachSession(n: NativeModule, path: string, id: string, hello: Buffer, timeoutMs: number, spinUs: number): Promise<ClientShmSession> {
    let cs: ClientSession;
    try {
      cs = await n.attachClient(path, hello, timeoutMs);
    } catch (err) {
      if (err instanceof n.AttachRefusedError) throw new AttachFailedError(`shm attach refused by the gateway: ${shmStatusName(err.status)}`, { cause: err });
      throw new AttachFailedError(`shm attach to ${path} failed: ${(err as Error).message}`, { cause: err });
    }
    if (this.#closed) {
      cs.close();
      throw new AttachFailedError('the gateway connection closed during the attach');
    }
    let s: ClientShmSession;
    try {
      s = new ClientShmSession(id, cs, (gone) => {
        if (this.#sessions.get(gone.id) === gone) this.#sessions.delete(gone.id);
      }, n, Math.min(Math.max(spinUs, 0), MAX_SPIN_US));
    } catch (err) {
      cs.close();
      throw new ProtocolError(`shm session setup failed: ${(err as Error).message}`, { cause: err });
    }
    this.#sessions.set(id, s);
    return s;
  }

  /** Close every session (their channels are destroyed). */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all([...this.#sessions.values()].map((s) => s.close()));
  }
}
