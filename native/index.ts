/**
 * The one loader of the sockgate native addon (native/build/Release/sockgate_native.node).
 *
 * It declares the types of everything the addon exposes and wraps the raw
 * classes where that adds value: native errors become `NativeError` or
 * `RingCorruptError` (type errors stay `TypeError`), pump events are routed to
 * their link, and zero-copy loans become guard objects. The addon only offers
 * primitives; every decision (policy, sizes, when to grow a ring) stays in TS.
 *
 * Ownership: each class owns one OS resource. `close()` is the rule and
 * refuses (EBUSY) while the resource is in use; the native destructor is the
 * safety net.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NativeError, RingCorruptError, type SockgateError } from '../proto/errors.js';

// The raw binding's types live in binding-types.ts (re-exported here).
export type * from './binding-types.js';
import type { NativeBinding, PumpEvent, PumpStats, RawAttachResult, RawPump, RawPumpLink, RawSpliceLink, RawListener, RawRegion, RawEventfd, RingDir, SlotInfo, RegionLayout } from './binding-types.js';

function load(): NativeBinding {
  const here = dirname(fileURLToPath(import.meta.url));
  // SOCKGATE_NATIVE_BUILD=test: the tests' build with the test hooks; never a fallback either way.
  const file = process.env['SOCKGATE_NATIVE_BUILD'] === 'test' ? 'sockgate_native_test.node' : 'sockgate_native.node';
  // dist/native/index.js -> ../../native/build; native/index.ts (tsx) -> ./build
  const candidates = [resolve(here, `../../native/build/Release/${file}`), resolve(here, `build/Release/${file}`)];
  const path = candidates.find((p) => existsSync(p));
  if (!path) throw new NativeError(`sockgate native addon not built (looked in ${candidates.join(', ')}); run npm run build:native`);
  return createRequire(import.meta.url)(path) as NativeBinding;
}

/** The raw addon. Prefer the wrappers below; the raw surface is for tests and the loader. */
export const binding: NativeBinding = load();
export const constants = binding.constants;
export const rdma = binding.rdma;
/** AF_VSOCK primitives; the bridge to Node sockets is clients/sdk/vsock.ts. */
export const vsock = binding.vsock;
export const DIR_C2G = 0 as const;
export const DIR_G2C = 1 as const;

// ---- errors -------------------------------------------------------------------

/** The native error fields (errno name, negative errno) kept on the cause. */
export interface NativeErrorCause extends Error {
  code?: string;
  errno?: number;
  syscall?: string;
}

/** Translate a native exception: type/range errors stay, the rest become sockgate errors. */
export function translateError(err: unknown): unknown {
  if (err instanceof TypeError || err instanceof RangeError) return err;
  const e = err as NativeErrorCause;
  if (e && e.code === 'ERR_SOCKGATE_RING_CORRUPT') return new RingCorruptError(e.message, { cause: err });
  if (e instanceof Error) return new NativeError(e.message, { cause: err });
  return err;
}

/** The errno name of a translated native error (`EBUSY`, ...), if any. */
export function nativeCode(err: unknown): string | undefined {
  const c = (err as SockgateError)?.cause as NativeErrorCause | undefined;
  return c?.code ?? (err as NativeErrorCause)?.code;
}

function call<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw translateError(err);
  }
}

// ---- primitives ---------------------------------------------------------------

/** dup() a descriptor (close-on-exec). The caller owns the result. */
export function dupFd(fd: number): number {
  return call(() => binding.dupFd(fd));
}
export function closeFd(fd: number): void {
  call(() => binding.closeFd(fd));
}
/** Set an int socket option, e.g. `setsockopt(fd, 'SO_SNDBUF', 1 << 20)`. */
export function setsockopt(fd: number, name: 'SO_SNDBUF' | 'SO_RCVBUF', value: number): void {
  call(() => binding.setsockoptInt(fd, constants.SOL_SOCKET, constants[name], value));
}
export function getsockopt(fd: number, name: 'SO_SNDBUF' | 'SO_RCVBUF'): number {
  return call(() => binding.getsockoptInt(fd, constants.SOL_SOCKET, constants[name]));
}
/** A connected AF_UNIX stream pair (blocking, close-on-exec); the caller owns both fds. */
export function socketpair(): [number, number] {
  return call(() => binding.socketpair());
}
export function peerCred(fd: number): { pid: number; uid: number; gid: number } {
  return call(() => binding.peerCred(fd));
}
/** Gateway-wide cap on granted ring bytes (all regions); `Infinity` lifts it. */
export function setGatewayRingLimit(bytes: number): void {
  call(() => binding.setGatewayRingLimit(bytes));
}
export function gatewayRingBytes(): number {
  return binding.gatewayRingBytes();
}

// ---- eventfd ------------------------------------------------------------------

/** A doorbell: one eventfd. */
export class Eventfd {
  /** The native object; owns the fd. */
  readonly raw: RawEventfd;
  constructor(fd?: number) {
    this.raw = call(() => new binding.Eventfd(fd));
  }
  get fd(): number {
    return call(() => this.raw.fd);
  }
  get closed(): boolean {
    return this.raw.closed;
  }
  signal(): void {
    call(() => this.raw.signal());
  }
  drain(): number {
    return call(() => this.raw.drain());
  }
  /** Idempotent; EBUSY while a region or pump uses it (close the region first). */
  close(): void {
    call(() => this.raw.close());
  }
}

// ---- region -------------------------------------------------------------------

export interface RegionOptions {
  /** Socket slots in the session (each a pair of rings). */
  slots: number;
  /** Largest ring size a slot may grow to (power of two); reserves sparse address space only. */
  maxRingSize: number;
  /** Cap on granted ring bytes in this region. */
  byteLimit?: number;
}

/**
 * A zero-copy view into ring bytes, lent until `release()`. After release the
 * underlying ArrayBuffer is detached (stale Buffers have length 0) and `view`
 * throws: misuse is an error, never a read of reused ring memory.
 */
export class RingLoan {
  /** The lent ArrayBuffer; detached on release. */
  #ab: ArrayBuffer | undefined;
  /** Released loans are finished; the region is the lender. */
  readonly #region: RawRegion;
  readonly #view: Buffer;
  constructor(region: RawRegion, ab: ArrayBuffer) {
    this.#region = region;
    this.#ab = ab;
    this.#view = Buffer.from(ab);
  }
  get length(): number {
    return this.#ab ? this.#view.length : 0;
  }
  get released(): boolean {
    return this.#ab === undefined;
  }
  /** The lent bytes. Throws after release. */
  get view(): Buffer {
    if (!this.#ab) throw new NativeError('ring loan used after release');
    return this.#view;
  }
  /** Give the bytes back; `consumed` of them (default all) are freed in the ring. */
  release(consumed: number = this.length): void {
    const ab = this.#ab;
    if (!ab) throw new NativeError('ring loan released twice');
    this.#ab = undefined;
    call(() => this.#region.release(ab, consumed));
  }
}

/**
 * A shared-memory region: one sealed memfd, mapped once, with a ring pair per
 * socket slot. The gateway creates it; the client attaches the memfd it
 * received. Ring ops act on this side's rings: the gateway writes g2c and
 * reads c2g, the client the other way round.
 */
export class ShmRegion {
  readonly raw: RawRegion;
  private constructor(raw: RawRegion) {
    this.raw = raw;
  }
  static create(opts: RegionOptions): ShmRegion {
    return new ShmRegion(call(() => new binding.Region(opts)));
  }
  /** Map a memfd received from the gateway; takes ownership of it (even on failure). */
  static attach(memfd: number): ShmRegion {
    return new ShmRegion(call(() => new binding.Region(memfd)));
  }
  get id(): number {
    return call(() => this.raw.id);
  }
  get fd(): number {
    return call(() => this.raw.fd);
  }
  get size(): number {
    return call(() => this.raw.size);
  }
  get slotCount(): number {
    return call(() => this.raw.slotCount);
  }
  get maxRingSize(): number {
    return call(() => this.raw.maxRingSize);
  }
  get role(): 'gateway' | 'client' {
    return call(() => this.raw.role);
  }
  get closed(): boolean {
    return this.raw.closed;
  }
  get corrupt(): boolean {
    return call(() => this.raw.corrupt);
  }
  get grantedBytes(): number {
    return call(() => this.raw.grantedBytes);
  }
  get layout(): RegionLayout {
    return call(() => this.raw.layout);
  }
  /** `local` is the doorbell this side waits on, `peer` the one it rings. */
  setDoorbells(local: Eventfd, peer: Eventfd): void {
    call(() => this.raw.setDoorbells(local.raw, peer.raw));
  }
  openSlot(slot: number, ringSize: number): void {
    call(() => this.raw.openSlot(slot, ringSize));
  }
  /** Idempotent; gives the slot's ring pages back to the system. */
  closeSlot(slot: number): void {
    call(() => this.raw.closeSlot(slot));
  }
  /** Grant a new ring size; it takes effect when the ring is next empty. */
  requestResize(slot: number, dir: RingDir, ringSize: number): void {
    call(() => this.raw.requestResize(slot, dir, ringSize));
  }
  slotInfo(slot: number): SlotInfo {
    return call(() => this.raw.slotInfo(slot));
  }
  /** Copy once from `data` into the ring; returns bytes written (0 when full). */
  write(slot: number, data: Uint8Array, offset?: number, length?: number): number {
    return call(() => this.raw.write(slot, data, offset, length));
  }
  /** Copy into `target`; bytes read, 0 when empty, null at end of stream. */
  read(slot: number, target: Uint8Array, offset?: number, length?: number): number | null {
    const n = call(() => this.raw.read(slot, target, offset, length));
    return n < 0 ? null : n;
  }
  /** Half-close: end of stream after the bytes written so far. */
  shutdown(slot: number): void {
    call(() => this.raw.shutdown(slot));
  }
  /** Ask for a doorbell when data arrives; true if data (or EOF) is already there. */
  armRead(slot: number): boolean {
    return call(() => this.raw.armRead(slot));
  }
  /** Ask for a doorbell when space frees up; true if there is space already. */
  armWrite(slot: number): boolean {
    return call(() => this.raw.armWrite(slot));
  }
  /** Zero-copy read: a loan over readable bytes, null when empty, false at end of stream. */
  lend(slot: number): RingLoan | null | false {
    const ab = call(() => this.raw.lend(slot));
    if (ab === null || ab === false) return ab;
    return new RingLoan(this.raw, ab);
  }
  takeHints(): number[] {
    return call(() => this.raw.takeHints());
  }
  /** Idempotent; EBUSY while pump links or watches use it. Detaches outstanding loans. */
  close(): void {
    call(() => this.raw.close());
  }
}

// ---- pump ---------------------------------------------------------------------

export type LinkEnd = Extract<PumpEvent, { type: 'end' }>;

/** What the pump's event router needs of a link. */
interface RoutedLink {
  readonly id: number;
  /** Called with each event of this link (progress, EOFs), before the end. */
  deliver?(e: PumpEvent): void;
  settle(e: LinkEnd): void;
}

/** One ring pair <-> fd link on a pump. Owns the fd from construction on. */
export class PumpLink implements RoutedLink {
  readonly raw: RawPumpLink;
  readonly id: number;
  /** Settles with the link's end event. */
  readonly ended: Promise<LinkEnd>;
  /** Resolver of `ended`, called by the pump's event router. */
  settle!: (e: LinkEnd) => void;
  constructor(raw: RawPumpLink) {
    this.raw = raw;
    this.id = raw.id;
    this.ended = new Promise((res) => (this.settle = res));
  }
  /** Grant a ring size for one direction (applied when that ring is empty). */
  resize(dir: RingDir, ringSize: number): void {
    call(() => this.raw.resize(dir, ringSize));
  }
  /** setsockopt on the descriptor the link owns (EBADF once the link ended). */
  setHostSockopt(name: HostSockopt, value: number): void {
    call(() => this.raw.setHostSockopt(sockoptLevel(name), constants[name], value));
  }
  getHostSockopt(name: HostSockopt): number {
    return call(() => this.raw.getHostSockopt(sockoptLevel(name), constants[name]));
  }
  /**
   * Stop reading the fd (a graceful close): the ring's peer gets EOF after
   * the bytes already taken, the other direction drains until its own EOF.
   */
  shutdownRead(): void {
    call(() => this.raw.shutdownRead());
  }
  /**
   * shutdown(2) of the fd, in order with the rings: `write` sends FIN after
   * the bytes the inbound ring holds (later ones are dropped); `read` stops
   * reading it and ends the outbound ring after what was taken.
   */
  shutdownHost(read: boolean, write: boolean): void {
    call(() => this.raw.shutdownHost(read, write));
  }
  /** Abort the link (closes its fd; with `reset`, RST instead of FIN); resolves with the end event. Idempotent. */
  close(opts: { reset?: boolean } = {}): Promise<LinkEnd> {
    call(() => this.raw.close(opts.reset === true));
    return this.ended;
  }
}

export interface SpliceOptions {
  /** Bytes JS already read from the client: written to the host before anything else. */
  toHostPrefix?: Buffer[];
  /** Bytes for the client (e.g. read from the host, a protocol reply): written to it first. */
  toClientPrefix?: Buffer[];
  /**
   * Pipe size and watermark per direction, in bytes (default 1 MiB, clamped to
   * /proc/sys/fs/pipe-max-size): reading a side stops while its pipe holds this much.
   */
  pipeBytes?: number;
  /** Copy through a reused buffer instead of splice(2) (the fallback for descriptors that cannot splice; tests). */
  copy?: boolean;
  /** Batched byte counts since the last call: written to the host, written to the client (prefixes included). */
  onProgress?(toHost: number, toClient: number): void;
  /** The host sent EOF (the client gets FIN once the bytes before it are written). */
  onHostEof?(): void;
  /** The client sent EOF (the host gets FIN once the bytes before it are written). */
  onClientEof?(): void;
}

/** Why a splice link ended, with per-side totals (prefixes included). */
export interface SpliceEnd {
  reason: LinkEnd['reason'];
  errno: number;
  code?: string;
  totalToHost: number;
  totalToClient: number;
}

/** Host socket options a splice link applies to the descriptor it owns. */
export type HostSockopt = 'SO_SNDBUF' | 'SO_RCVBUF' | 'SO_KEEPALIVE' | 'TCP_NODELAY' | 'TCP_KEEPIDLE' | 'TCP_KEEPINTVL' | 'TCP_KEEPCNT';

function sockoptLevel(name: HostSockopt): number {
  return name.startsWith('TCP_') ? constants.IPPROTO_TCP : constants.SOL_SOCKET;
}

/**
 * A client fd <-> host fd relay on the pump's I/O thread: splice(2) through a
 * pipe per direction, so the payload never enters JS (see native/src/splice.h).
 * Owns both descriptors from construction on (it dup()s nothing: pass dups).
 * Ends by itself when both directions passed EOF, or on the first error: the
 * other side is then reset (RST), so its peer sees an abort, not a clean end.
 */
export class SpliceLink implements RoutedLink {
  readonly raw: RawSpliceLink;
  readonly id: number;
  /** Settles once, with the end (both directions done, an error, or close()). */
  readonly ended: Promise<SpliceEnd>;
  /** Resolver of `ended`. */
  #resolve!: (e: SpliceEnd) => void;
  /** Callbacks from the options; events arrive batched on the JS thread. */
  readonly #opts: SpliceOptions;
  constructor(raw: RawSpliceLink, opts: SpliceOptions) {
    this.raw = raw;
    this.id = raw.id;
    this.#opts = opts;
    this.ended = new Promise((res) => (this.#resolve = res));
  }
  /** The per-direction watermark in bytes. */
  get pipeBytes(): number {
    return this.raw.pipeBytes;
  }
  /** @internal Called by the pump's event router. */
  deliver(e: PumpEvent): void {
    if (e.type === 'progress') this.#opts.onProgress?.(e.toFd, e.toRing);
    else if (e.type === 'fdEof') this.#opts.onHostEof?.();
    else if (e.type === 'ringEof') this.#opts.onClientEof?.();
  }
  /** @internal Called by the pump's event router. */
  settle(e: LinkEnd): void {
    this.#resolve({ reason: e.reason, errno: e.errno, ...(e.code ? { code: e.code } : {}), totalToHost: e.totalToFd, totalToClient: e.totalToRing });
  }
  /**
   * shutdown(2) of the host socket, in order with the pipes: `write` sends FIN
   * to the host after the client bytes already read (later ones are dropped);
   * `read` drops host bytes from now on and ends the client's stream after
   * what was already read. Throws once closed.
   */
  shutdownHost(read: boolean, write: boolean): void {
    call(() => this.raw.shutdownHost(read, write));
  }
  /** Bytes held by the link: both pipes (FIONREAD) plus unwritten prefix bytes. 0 once ended. */
  bufferedBytes(): number {
    return this.raw.bufferedBytes();
  }
  /** setsockopt on the host descriptor (EBADF once the link ended). */
  setHostSockopt(name: HostSockopt, value: number): void {
    call(() => this.raw.setHostSockopt(sockoptLevel(name), constants[name], value));
  }
  getHostSockopt(name: HostSockopt): number {
    return call(() => this.raw.getHostSockopt(sockoptLevel(name), constants[name]));
  }
  /** Abort (idempotent): both descriptors close, with RST unless `reset` is false. Resolves with the end. */
  close(opts: { reset?: boolean } = {}): Promise<SpliceEnd> {
    call(() => this.raw.close(opts.reset ?? true));
    return this.ended;
  }
}

/** The attach listener on a Unix socket; accepts on the pump's I/O thread. */
export class AttachListener {
  readonly raw: RawListener;
  readonly path: string;
  constructor(raw: RawListener, path: string) {
    this.raw = raw;
    this.path = path;
  }
  get id(): number {
    return this.raw.id;
  }
  /** Send the session's memfd and doorbells to the client of `conn`. */
  accept(conn: number, region: ShmRegion, gatewayDoorbell: Eventfd, clientDoorbell: Eventfd): void {
    call(() => this.raw.accept(conn, region.raw, gatewayDoorbell.raw, clientDoorbell.raw));
  }
  /** Refuse with a status code (nonzero); the connection is closed. */
  reject(conn: number, status: number): void {
    call(() => this.raw.reject(conn, status));
  }
  closeConn(conn: number): void {
    call(() => this.raw.closeConn(conn));
  }
  close(): void {
    call(() => this.raw.close());
  }
}

export interface PumpOptions {
  /** Spin at most this long (µs, 0..1000, adaptive: native/SHM.md) before sleeping; 0 (default): never. */
  spinUs?: number;
  /** Gateway links: rings grown past their first size shrink back after this many ms without traffic; 0 (default): never. */
  shrinkIdleMs?: number;
  /**
   * Keep the process alive only while links are open (ref'd with links,
   * unref'd when idle); by default the pump keeps it alive until closed.
   */
  unrefWhenIdle?: boolean;
}

/**
 * The native I/O thread. Events arrive batched, through one ThreadSafeFunction,
 * to `onEvents`; link end events also settle `PumpLink.ended`.
 */
export class Pump {
  readonly raw: RawPump;
  /** Live links by id; removed on their end event. */
  readonly #links = new Map<number, RoutedLink>();
  /** With unrefWhenIdle: ref'd exactly while #links is not empty. */
  readonly #unrefWhenIdle: boolean;
  constructor(onEvents: (events: PumpEvent[]) => void = () => {}, opts: PumpOptions = {}) {
    this.#unrefWhenIdle = opts.unrefWhenIdle === true;
    this.raw = call(
      () =>
        new binding.Pump((events) => {
          for (const e of events) {
            if (e.type === 'end') {
              const l = this.#links.get(e.link);
              this.#links.delete(e.link);
              if (this.#unrefWhenIdle && this.#links.size === 0 && !this.raw.closed) this.raw.unref();
              l?.settle(e);
            } else if (e.type === 'progress' || e.type === 'fdEof' || e.type === 'ringEof') {
              this.#links.get(e.link)?.deliver?.(e);
            }
          }
          onEvents(events);
        }, { spinUs: opts.spinUs, shrinkIdleMs: opts.shrinkIdleMs }),
    );
    if (this.#unrefWhenIdle) this.raw.unref();
  }
  #track(l: RoutedLink): void {
    if (this.#unrefWhenIdle && this.#links.size === 0) this.raw.ref();
    this.#links.set(l.id, l);
  }
  /**
   * Pump between a slot's rings and `fd` (any stream fd; the link owns it).
   * `prefix` bytes go into the outbound ring before anything read from fd.
   */
  link(region: ShmRegion, slot: number, fd: number, prefix?: Buffer[]): PumpLink {
    const l = new PumpLink(call(() => new binding.PumpLink(this.raw, region.raw, slot, fd, prefix)));
    this.#track(l);
    return l;
  }
  /**
   * Relay between two stream sockets on the I/O thread (splice(2) through a
   * pipe per direction). The link owns both fds from here on; on a throw the
   * caller still owns them.
   */
  splice(clientFd: number, hostFd: number, opts: SpliceOptions = {}): SpliceLink {
    const raw = call(
      () =>
        new binding.SpliceLink(this.raw, clientFd, hostFd, opts.toHostPrefix, opts.toClientPrefix, {
          ...(opts.pipeBytes !== undefined ? { pipeBytes: opts.pipeBytes } : {}),
          ...(opts.copy !== undefined ? { copy: opts.copy } : {}),
        }),
    );
    const l = new SpliceLink(raw, opts);
    this.#track(l);
    return l;
  }
  listen(path: string, backlog?: number): AttachListener {
    return new AttachListener(call(() => new binding.Listener(this.raw, path, backlog)), path);
  }
  /** Client side: report hints for this region as `hints` events. */
  watch(region: ShmRegion): void {
    call(() => this.raw.watch(region.raw));
  }
  unwatch(region: ShmRegion): void {
    call(() => this.raw.unwatch(region.raw));
  }
  get activeLinks(): number {
    return call(() => this.raw.activeLinks);
  }
  /** The spin setting from now on (a client pump takes its gateway's). */
  setSpin(us: number): void {
    call(() => this.raw.setSpin(us));
  }
  stats(): PumpStats {
    return call(() => this.raw.stats());
  }
  ref(): void {
    call(() => this.raw.ref());
  }
  unref(): void {
    call(() => this.raw.unref());
  }
  /** Stop the thread. Idempotent; EBUSY while links, watches or listeners are open. */
  close(): void {
    call(() => this.raw.close());
  }
}

// ---- client attach ------------------------------------------------------------

/** What a client holds after attaching: the mapped region and both doorbells. */
export interface ClientSession {
  region: ShmRegion;
  /** The client waits on this one. */
  clientDoorbell: Eventfd;
  /** The client rings this one. */
  gatewayDoorbell: Eventfd;
  /** The attach connection; the gateway sees the session end when it closes. */
  conn: number;
  slotCount: number;
  peerPid: number;
  peerUid: number;
  /** Region, doorbells, then the connection. Idempotent; EBUSY while a pump still uses the region: retry once it let go. */
  close(): void;
}

/** Thrown when the gateway refuses an attach (status from the reply). */
export class AttachRefusedError extends NativeError {
  readonly status: number;
  constructor(status: number) {
    super(`attach refused by the gateway (status ${status})`);
    this.status = status;
  }
}

/**
 * Client side: connect to the gateway's attach socket, present the token,
 * receive the memfd and doorbells (SCM_RIGHTS) and map the region. Runs off
 * the JS thread.
 */
export async function attachClient(path: string, token: Uint8Array, timeoutMs = 5000): Promise<ClientSession> {
  let r: RawAttachResult;
  try {
    r = await binding.attach(path, token, timeoutMs);
  } catch (err) {
    throw translateError(err);
  }
  if (r.status !== 0) {
    closeFd(r.conn);
    throw new AttachRefusedError(r.status);
  }
  // Not yet owned by a wrapper (the memfd is owned by ShmRegion.attach, even on failure).
  const loose = new Set([r.conn, r.clientDoorbell, r.gatewayDoorbell]);
  let region: ShmRegion | undefined;
  let cl: Eventfd | undefined;
  let gw: Eventfd | undefined;
  try {
    region = ShmRegion.attach(r.memfd);
    cl = new Eventfd(r.clientDoorbell);
    loose.delete(r.clientDoorbell);
    gw = new Eventfd(r.gatewayDoorbell);
    loose.delete(r.gatewayDoorbell);
    region.setDoorbells(cl, gw);
    const [reg, clb, gwb] = [region, cl, gw];
    let closed = false;
    return {
      region: reg,
      clientDoorbell: clb,
      gatewayDoorbell: gwb,
      conn: r.conn,
      slotCount: r.slotCount,
      peerPid: r.peerPid,
      peerUid: r.peerUid,
      close() {
        if (closed) return;
        // Reverse order: the region references the doorbells. Closed only once all
        // let go: an EBUSY (a pump not yet done with the region) leaves it retryable.
        reg.close();
        gwb.close();
        clb.close();
        closed = true;
        closeFd(r.conn);
      },
    };
  } catch (err) {
    region?.close();
    gw?.close();
    cl?.close();
    for (const fd of loose) closeFd(fd);
    throw err;
  }
}
