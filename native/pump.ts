/** The pump thread and what runs on it: ring <-> fd links, fd <-> fd splices, and the shm attach listener. */
import { binding, constants } from './load-addon.js';
import { call } from './translate-error.js';
import type { Eventfd } from './eventfd.js';
import type { ShmRegion } from './shm-region.js';
import type { PumpEvent, PumpStats, RawPump, RawPumpLink, RawSpliceLink, RawListener, RingDir } from './binding-types.js';

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
