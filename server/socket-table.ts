/**
 * The table of the gateway's sockets: owns every open socket (stream-socket.ts,
 * datagram-socket.ts, listener-socket.ts, their base in gateway-socket.ts, all
 * re-exported here), counts them per identity, keeps byte totals for telemetry
 * and the final info of recently closed ones.
 */
import { randomBytes } from 'node:crypto';
import { PolicyDeniedError, LimitExceededError, SocketNotFoundError, SockgateError } from '../proto/errors.js';
import type { Identity } from './policy.js';
import type { SocketInfo } from '../proto/gen/sockgate/v1/sockgate.js';
import { GatewaySocket, OWNERSHIP_RULE, transportName, type SocketAccess, type SocketKindName } from './gateway-socket.js';

export { GatewaySocket, OWNERSHIP_RULE, reasonName, transportName, type SocketAccess, type SocketKindName, type SocketLimits } from './gateway-socket.js';
export { StreamSocket } from './stream-socket.js';
export { DatagramSocket } from './datagram-socket.js';
export { ListenerSocket } from './listener-socket.js';

/** How long a closed socket's final info is kept: a client confirming its end of stream asks for it. */
const TOMBSTONE_MS = 60_000;
/** At most this many tombstones, so churn cannot grow memory. */
const MAX_TOMBSTONES = 16_384;

export interface ByteTotal {
  transport: string;
  direction: 'in' | 'out';
  bytes: number;
}

/**
 * Every open socket, by id. Enforces the gateway-wide and per-identity socket
 * limits and remembers byte totals of closed sockets for the metrics.
 */
export class SocketTable {
  private readonly sockets = new Map<string, GatewaySocket>();
  /** Open sockets per identity name. */
  private readonly perIdentity = new Map<string, number>();
  /** Bytes of closed sockets, by `${transport}/${direction}`. */
  private readonly closedBytes = new Map<string, number>();
  /** Final info of recently closed sockets, insertion-ordered for eviction: GetInfo answers for them. */
  private readonly tombstones = new Map<string, { info: SocketInfo; at: number }>();
  /** Called for every socket that leaves the table (the gateway revokes its attach tokens). */
  private readonly removedHooks: ((s: GatewaySocket) => void)[] = [];
  private nextId = 1;
  /** Open sockets plus reservations not yet added. */
  private totalReserved = 0;
  /** Random per-process part of socket ids, so an id from an earlier gateway process never names a new socket. */
  private readonly instance = randomBytes(3).readUIntBE(0, 3).toString(36).padStart(5, '0');

  constructor(
    private readonly maxSockets: number,
    /** Fallbacks each socket keeps (limits.max_fallbacks_per_socket). */
    private readonly maxFallbacksPerSocket = Number.POSITIVE_INFINITY,
  ) {}

  /** Run `fn` for every socket that leaves the table. */
  onRemoved(fn: (s: GatewaySocket) => void): void {
    this.removedHooks.push(fn);
  }

  /** Reserve a slot for `identity`, or throw LimitExceededError. Release with `release` if the socket never materialises. */
  reserve(identity: Identity): void {
    if (this.totalReserved >= this.maxSockets) {
      throw new LimitExceededError(`gateway socket limit reached (limits.max_sockets = ${this.maxSockets})`);
    }
    const n = this.perIdentity.get(identity.name) ?? 0;
    if (n >= identity.maxSockets) {
      throw new LimitExceededError(`identity "${identity.name}" has ${n} open sockets, its limit is ${identity.maxSockets}`);
    }
    this.perIdentity.set(identity.name, n + 1);
    this.totalReserved++;
  }

  release(identity: Identity): void {
    const n = (this.perIdentity.get(identity.name) ?? 1) - 1;
    if (n <= 0) this.perIdentity.delete(identity.name);
    else this.perIdentity.set(identity.name, n);
    this.totalReserved--;
  }

  newId(kind: SocketKindName): string {
    const prefix = kind === 'stream' ? 't' : kind === 'datagram' ? 'u' : 'l';
    return `${prefix}${(this.nextId++).toString(36)}-${this.instance}`;
  }

  /** Add a socket whose slot was reserved; it leaves the table (and frees the slot) when it closes. */
  add(socket: GatewaySocket): void {
    socket.maxFallbacks = this.maxFallbacksPerSocket;
    socket.setFallbacks(socket.fallbacks);
    this.sockets.set(socket.id, socket);
    void socket.closed.then(() => {
      this.sockets.delete(socket.id);
      this.release(socket.identity);
      const t = transportName(socket.transport);
      this.closedBytes.set(`${t}/in`, (this.closedBytes.get(`${t}/in`) ?? 0) + socket.bytesIn);
      this.closedBytes.set(`${t}/out`, (this.closedBytes.get(`${t}/out`) ?? 0) + socket.bytesOut);
      this.bury(socket);
      for (const fn of this.removedHooks) fn(socket);
    });
  }

  private bury(socket: GatewaySocket): void {
    const now = Date.now();
    this.tombstones.set(socket.id, { info: socket.info(), at: now });
    for (const [id, t] of this.tombstones) {
      if (this.tombstones.size <= MAX_TOMBSTONES && now - t.at < TOMBSTONE_MS) break;
      this.tombstones.delete(id);
    }
  }

  /** Info of a live socket, or of one that closed within TOMBSTONE_MS (state CLOSED), for `identity` (its own, or any for an admin). */
  info(id: string, identity: Identity): SocketInfo {
    const live = this.sockets.get(id);
    if (live) return this.get(id, identity, 'admin-read').info();
    const t = this.tombstones.get(id);
    if (t && Date.now() - t.at < TOMBSTONE_MS && (t.info.identity === identity.name || identity.admin)) return t.info;
    return this.get(id, identity, 'admin-read').info();
  }

  /**
   * Look a socket up for what `identity` means to do with it (`access`). A
   * socket belongs to the identity that opened it, for good: only its owner
   * acts on it ('owner'); an admin may also read its info ('admin-read') and
   * close it ('admin-close'). Another identity's socket is "not found" to a
   * non-admin (its existence is not revealed); an admin asking for 'owner'
   * access to it is denied.
   */
  get(id: string, identity: Identity, access: SocketAccess): GatewaySocket {
    const s = this.sockets.get(id);
    if (s && s.identity.name === identity.name) return s;
    if (s && identity.admin) {
      if (access !== 'owner') return s;
      throw new PolicyDeniedError(`socket ${s.id} belongs to identity "${s.identity.name}": an admin may list and close it, not act on its data`, { rule: OWNERSHIP_RULE });
    }
    throw new SocketNotFoundError(`no socket "${Array.from(String(id)).slice(0, 64).join('')}" for identity "${identity.name}"`);
  }

  /** Every socket, or those of identity `owner`. */
  list(owner?: string): GatewaySocket[] {
    const all = [...this.sockets.values()];
    return owner ? all.filter((s) => s.identity.name === owner) : all;
  }

  get size(): number {
    return this.sockets.size;
  }

  /** Cumulative bytes by transport and direction, closed and open sockets together. */
  byteTotals(): ByteTotal[] {
    const totals = new Map(this.closedBytes);
    for (const s of this.sockets.values()) {
      const t = transportName(s.transport);
      totals.set(`${t}/in`, (totals.get(`${t}/in`) ?? 0) + s.bytesIn);
      totals.set(`${t}/out`, (totals.get(`${t}/out`) ?? 0) + s.bytesOut);
    }
    return [...totals].map(([k, bytes]) => {
      const [transport, direction] = k.split('/') as [string, 'in' | 'out'];
      return { transport, direction, bytes };
    });
  }

  /** Open sockets by kind and transport. */
  openCounts(): { kind: string; transport: string; count: number }[] {
    const counts = new Map<string, number>();
    for (const s of this.sockets.values()) {
      const k = `${s.kind}/${transportName(s.transport)}`;
      counts.set(k, (counts.get(k) ?? 0) + 1);
    }
    return [...counts].map(([k, count]) => {
      const [kind, transport] = k.split('/') as [string, string];
      return { kind, transport, count };
    });
  }

  /** Wait until the table is empty or `ms` passed; returns whether it emptied. */
  async drain(ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (this.sockets.size > 0 && Date.now() < deadline) {
      await Promise.race([Promise.all([...this.sockets.values()].map((s) => s.closed)), new Promise((r) => setTimeout(r, Math.min(250, Math.max(1, deadline - Date.now()))))]);
    }
    return this.sockets.size === 0;
  }

  async destroyAll(err?: SockgateError): Promise<void> {
    await Promise.all([...this.sockets.values()].map((s) => s.destroy(err)));
  }
}
