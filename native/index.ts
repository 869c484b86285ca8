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

// ---- raw binding types --------------------------------------------------------

/** Direction of a ring inside a slot. */
export type RingDir = 0 | 1;

export interface RegionLayout {
  headerSize: number;
  slotTableOffset: number;
  slotSize: number;
  ringCtlSize: number;
  notifyOffset: number;
  notifyBytes: number;
  ringAreaOffset: number;
}

export interface SlotInfo {
  open: boolean;
  claimed: boolean;
  outSize?: number;
  inSize?: number;
  outPending?: boolean;
  inPending?: boolean;
}

export interface RawEventfd {
  readonly fd: number;
  readonly closed: boolean;
  signal(): void;
  drain(): number;
  close(): void;
}

export interface RawRegion {
  readonly id: number;
  readonly fd: number;
  readonly size: number;
  readonly slotCount: number;
  readonly maxRingSize: number;
  readonly role: 'gateway' | 'client';
  readonly closed: boolean;
  readonly corrupt: boolean;
  readonly grantedBytes: number;
  readonly layout: RegionLayout;
  setDoorbells(local: RawEventfd, peer: RawEventfd): void;
  openSlot(slot: number, ringSize: number): void;
  closeSlot(slot: number): void;
  requestResize(slot: number, dir: RingDir, ringSize: number): void;
  slotInfo(slot: number): SlotInfo;
  /** Copies from `data` into this side's outbound ring; returns bytes written (0 when full). */
  write(slot: number, data: Uint8Array, offset?: number, length?: number): number;
  /** Copies from this side's inbound ring; bytes read, 0 when empty, -1 at end of stream. */
  read(slot: number, target: Uint8Array, offset?: number, length?: number): number;
  shutdown(slot: number): void;
  armRead(slot: number): boolean;
  armWrite(slot: number): boolean;
  /** ArrayBuffer over readable ring bytes, null when empty, false at end of stream. */
  lend(slot: number): ArrayBuffer | null | false;
  release(loan: ArrayBuffer, consumed: number): void;
  takeHints(): number[];
  prepareSleep(): boolean;
  clearSleeping(): void;
  /** Test build only (hostile-peer tests): store 8 bytes at an aligned offset of our own mapping. */
  unsafePoke64?(offset: number, value: bigint): void;
  /** Test hook: load 8 bytes at an aligned offset of our own mapping. */
  unsafePeek64(offset: number): bigint;
  close(): void;
}

export type PumpEvent =
  | { type: 'progress'; link: number; toFd: number; toRing: number; stalls: number }
  | { type: 'resized'; link: number; dir: RingDir; ringSize: number; errno: number }
  | { type: 'fdEof'; link: number }
  | { type: 'ringEof'; link: number }
  | {
      type: 'end';
      link: number;
      reason: 'ok' | 'error' | 'corrupt' | 'aborted';
      errno: number;
      code?: string;
      totalToFd: number;
      totalToRing: number;
    }
  | { type: 'corrupt'; region: number; code: 'ERR_SOCKGATE_RING_CORRUPT' }
  | { type: 'hints'; region: number; slots: number[] }
  | { type: 'attach'; listener: number; conn: number; pid: number; uid: number; gid: number; version: number; flags: number; token: Buffer }
  | { type: 'connClosed'; listener: number; conn: number; errno: number }
  | RdmaEvent;

export interface RawPump {
  readonly activeLinks: number;
  readonly closed: boolean;
  ref(): void;
  unref(): void;
  watch(region: RawRegion): void;
  unwatch(region: RawRegion): void;
  close(): void;
}

export interface RawPumpLink {
  readonly id: number;
  resize(dir: RingDir, ringSize: number): void;
  setHostSockopt(level: number, name: number, value: number): void;
  getHostSockopt(level: number, name: number): number;
  /** Stop reading the fd; the peer gets EOF after what the ring holds. */
  shutdownRead(): void;
  /** shutdown(2) of the fd in order with the rings (write: FIN after what the inbound ring holds; later bytes dropped). */
  shutdownHost(read: boolean, write: boolean): void;
  /** [bytes ring->fd, bytes fd->ring] as of the I/O thread's last round. */
  totals(): [number, number];
  /** No more progress events (totals() is read on demand instead). */
  mute(): void;
  close(reset?: boolean): void;
}

export interface RawSpliceLink {
  readonly id: number;
  readonly closed: boolean;
  /** The per-direction watermark (pipe size asked for), in bytes. */
  readonly pipeBytes: number;
  shutdownHost(read: boolean, write: boolean): void;
  bufferedBytes(): number;
  /** [bytes to the host, bytes to the client] as of the I/O thread's last round. */
  totals(): [number, number];
  /** No more progress events (totals() is read on demand instead). */
  mute(): void;
  setHostSockopt(level: number, name: number, value: number): void;
  getHostSockopt(level: number, name: number): number;
  close(reset?: boolean): void;
}

export interface RawListener {
  readonly id: number;
  accept(conn: number, region: RawRegion, gatewayDoorbell: RawEventfd, clientDoorbell: RawEventfd): void;
  reject(conn: number, status: number): void;
  closeConn(conn: number): void;
  close(): void;
}

export interface RawAttachResult {
  status: number;
  version: number;
  flags: number;
  regionSize: number;
  slotCount: number;
  conn: number;
  memfd: number;
  gatewayDoorbell: number;
  clientDoorbell: number;
  peerPid: number;
  peerUid: number;
}

export interface NativeConstants {
  SOL_SOCKET: number;
  SO_SNDBUF: number;
  SO_RCVBUF: number;
  SO_KEEPALIVE: number;
  IPPROTO_TCP: number;
  TCP_NODELAY: number;
  TCP_KEEPIDLE: number;
  TCP_KEEPINTVL: number;
  TCP_KEEPCNT: number;
  /** /proc/sys/fs/pipe-max-size: the largest pipe (splice watermark) an unprivileged process may ask for. */
  PIPE_MAX_SIZE: number;
  DIR_C2G: 0;
  DIR_G2C: 1;
  MIN_RING_SIZE: number;
  MAX_RING_SIZE: number;
  MAX_SLOTS: number;
  ATTACH_VERSION: number;
  ATTACH_STATUS_PROTOCOL: number;
  ATTACH_STATUS_VERSION: number;
  ATTACH_STATUS_TIMEOUT: number;
}

/** A listening AF_VSOCK socket; accepted descriptors arrive through the callback (see native/src/vsock.h). */
export interface RawVsockListener {
  /** The bound port (the kernel's choice with PORT_ANY). */
  readonly port: number;
  readonly closed: boolean;
  /** Keep the process alive while listening (the default) or not. */
  ref(): void;
  unref(): void;
  /** Stop accepting, join the accept thread, close the socket. Idempotent. */
  close(): void;
}

/** AF_VSOCK primitives (native/src/vsock.h). `available` is false, with the reason, where the kernel or the build lacks them. */
export interface RawVsock {
  available: boolean;
  reason: string;
  /** Connect off the JS thread; resolves with the connected (non-blocking) fd, which the caller owns. */
  connect(cid: number, port: number, timeoutMs?: number): Promise<number>;
  /** This machine's context id (/dev/vsock). */
  localCid(): number;
  Listener: new (
    cid: number,
    port: number,
    backlog: number,
    onAccept: (err: Error | null, fd?: number, peerCid?: number, peerPort?: number) => void,
  ) => RawVsockListener;
  CID_ANY: number;
  CID_LOCAL: number;
  CID_HOST: number;
  PORT_ANY: number;
}

/** Sizes of this side's receive region (native/RDMA.md "Connection parameters"). */
export interface RdmaRegionOptions {
  /** Each slot's receive ring is 1 << ringLog2 bytes (12..26; default 20 = 1 MiB). */
  ringLog2?: number;
  /** Slots (sockets) on the connection (1..4096; default 16). Every slot's ring is registered (pinned) for the connection's life. */
  slots?: number;
  /** Receive work requests posted for the peer (4..1024; default 64). */
  credits?: number;
  /** Idle keepalive interval; 3 silent intervals fail the connection (ERR_SOCKGATE_RDMA_TIMEOUT). 0 = off; default 5000. */
  keepaliveMs?: number;
  /** Print the flow state (credits, cursors) every keepalive tick: callers pass isTracerEnabled('rdma-flow'). */
  trace?: boolean;
}

export interface RdmaListenOptions extends RdmaRegionOptions {
  addr: string;
  /** 0 = any free port (read `port` back). */
  port?: number;
  backlog?: number;
}

export interface RdmaConnectOptions extends RdmaRegionOptions {
  addr: string;
  port: number;
  /** 16 bytes, sent in the connect private data. */
  token: Uint8Array;
  /** Resolve/route/connect deadline (default 10000 ms). */
  timeoutMs?: number;
  /**
   * Test build only (the product addon refuses it; native/src/rdma_conn.h has the modes): 1 = bursts
   * claim a wrap, 2 = protocol version 1, 3 = BIND tokens corrupted, 4 = RDMA writes with a wrong rkey.
   */
  hostile?: 0 | 1 | 2 | 3 | 4;
}

export interface RawRdmaListener {
  /** Routing id of the listener's events (`rdma` field). */
  readonly id: number;
  readonly port: number;
  /** Take a requested connection: creates its verbs resources and accepts. Events then come on the returned connection's id. */
  accept(conn: number, opts?: RdmaRegionOptions): RawRdmaConn;
  /** Refuse a requested connection (the client sees REJECTED -> PEER_DECLINED). */
  reject(conn: number): void;
  close(): void;
}

export interface RawRdmaConn {
  /** Routing id of the connection's events (`rdma` field). */
  readonly id: number;
  /**
   * Move bytes between slot `slot` and the stream socket `fd` on the I/O thread
   * (the connection takes ownership of fd). With `token` (client side, later
   * sockets), a BIND message carrying it goes first; the gateway answers it
   * with link() (BOUND: the client's `bound` event) or closeSlot() (CLOSE: its
   * `slotEnd`, reason reset).
   */
  link(slot: number, fd: number, token?: Uint8Array): void;
  /** Abort a slot: its fd is closed (RST when `reset`), CLOSE goes to the peer; `slotEnd` follows. */
  closeSlot(slot: number, reset?: boolean): void;
  /** shutdown(2) of the slot's fd, for Shutdown RPCs (read and/or write side). */
  shutdownSlot(slot: number, read: boolean, write: boolean): void;
  /** setsockopt(int) on a linked slot's fd; false when the slot has no fd. */
  setSlotSockopt(slot: number, level: number, name: number, value: number): boolean;
  /** Disconnect; every open slot ends with ECONNABORTED, then `closed`. */
  close(): void;
}

/**
 * Events of rdma listeners and connections, routed by `rdma` (the id).
 * Connection codes: ERR_SOCKGATE_RDMA_PROTOCOL (the peer broke the protocol),
 * ERR_SOCKGATE_RDMA_TIMEOUT (keepalive), ERR_SOCKGATE_RDMA_DEVICE_REMOVED,
 * ERR_SOCKGATE_RDMA_PORT_DOWN, ERR_SOCKGATE_RDMA_QP_FATAL (async events or a
 * failed work completion), ERR_SOCKGATE_RDMA_DISCONNECTED (the peer went away),
 * 'ok' (closed by close()).
 */
export type RdmaEvent =
  | { type: 'rdma'; rdma: number; event: 'request'; conn: number; token: Buffer; peer: string }
  | { type: 'rdma'; rdma: number; event: 'established' }
  /** Before established. code: ADDR_ERROR | ROUTE_ERROR | UNREACHABLE | REJECTED | CONNECT_ERROR | TIMEOUT | PROTOCOL | NO_DEVICE | RESOURCE */
  | { type: 'rdma'; rdma: number; event: 'failed'; code: string; errno: number; message: string }
  | { type: 'rdma'; rdma: number; event: 'closed'; code: string; errno: number; message: string }
  /** Gateway side: the client asks to bind `slot` with an attach token. */
  | { type: 'rdma'; rdma: number; event: 'bind'; slot: number; token: Buffer }
  /** Client side: the gateway linked the slot this client bound (its BOUND; a refusal is the slot's `slotEnd`). */
  | { type: 'rdma'; rdma: number; event: 'bound'; slot: number }
  /**
   * Bytes the slot moved since its last `progress`: at most one batch per
   * connection every 250 ms (never per burst: that would wake JS per message),
   * and a last one just before the slot's `slotEnd`.
   */
  | { type: 'rdma'; rdma: number; event: 'progress'; slot: number; toFd: number; toPeer: number }
  /** The slot's fd sent EOF; EOF went to the peer after the bytes before it. */
  | { type: 'rdma'; rdma: number; event: 'fdEof'; slot: number }
  /** The peer half-closed; shutdown(fd, SHUT_WR) done after its bytes. */
  | { type: 'rdma'; rdma: number; event: 'peerEof'; slot: number }
  /**
   * The slot is free again (both sides sent CLOSE, or the connection ended).
   * reason: ok (both directions finished) | reset (the peer aborted) | aborted (closeSlot) | error.
   */
  | { type: 'rdma'; rdma: number; event: 'slotEnd'; slot: number; reason: 'ok' | 'reset' | 'aborted' | 'error'; errno: number; code: string; totalToFd: number; totalToPeer: number };

/** One verbs device as `rdma.devices()` lists it. */
export interface RdmaDevice {
  name: string;
  nodeGuid: string;
  ports: Array<{ port: number; state: string; active: boolean; mtu: number; linkLayer: string; gids: string[] }>;
}

/** rdma_cm private data of a connect/accept (native/RDMA.md "Connection parameters"). */
export interface RdmaConnParams {
  version: number;
  flags: number;
  addr: bigint;
  rkey: number;
  ringLog2: number;
  slots: number;
  credits: number;
  /** The sender's keepalive interval (0 = none); both ends use the smaller non-zero one. */
  keepaliveMs: number;
  token: Uint8Array;
}

export interface RdmaLoopbackResult {
  data: Buffer;
  /** Where the verbs work ran: the pump's I/O thread (opts.pump) or a worker's own epoll loop. */
  ioThread: 'pump' | 'worker';
  cmEvents: string[];
  trace: string[];
  clientCqEvents: number;
  serverCqEvents: number;
  writes: number;
  wraps: number;
  imms: number;
  updates: number;
  blocked: number;
  creditMsgs: number;
}

/**
 * The verbs layer (native/src/rdma*.{h,cc}). Without the rdma-core headers at
 * build time only { built: false, available: false, reason } exists.
 */
export interface RdmaBinding {
  built: boolean;
  /** A verbs device with an active port was found when the addon loaded. */
  available: boolean;
  /** Why not available ('' when it is). */
  reason: string;
  devices?(): RdmaDevice[];
  /** Creates and destroys one of each resource on addr's device; returns "+pd" ... "-pd". */
  lifecycle?(addr: string): string[];
  /**
   * Client -> server stream over one RC connection on addr's device (RDMA
   * writes + immediates). With `pump`, the cm event channel and completion
   * channels are serviced by that pump's I/O thread.
   */
  loopback?(opts: {
    addr: string;
    pump?: RawPump;
    data: Uint8Array;
    port?: number;
    ringLog2?: number;
    chunk?: number;
    credits?: number;
    timeoutMs?: number;
    /** Test build only: after some valid bursts the client writes 1 = an empty burst, 2 = an unknown immediate flag, 3 = a bad slot. */
    hostile?: 0 | 1 | 2 | 3;
  }): Promise<RdmaLoopbackResult>;
  /**
   * The gateway's rdma_cm listener on `addr` (an address of a verbs device),
   * serviced by `pump`'s I/O thread. Each CONNECT_REQUEST becomes an
   * `{ event: 'request' }` on the listener's id (routed by `rdma`); JS answers
   * with `accept(conn)` (returns the connection) or `reject(conn)`.
   */
  listen?(pump: RawPump, opts: RdmaListenOptions): RawRdmaListener;
  /**
   * Client side: resolve, route and connect to a gateway's listener; the
   * private data carries `token` (the first socket's attach token). Events
   * come on the returned connection's id: `established`, or `failed`.
   */
  connect?(pump: RawPump, opts: RdmaConnectOptions): RawRdmaConn;
  encodeConnParams?(p: Partial<RdmaConnParams>): Buffer;
  decodeConnParams?(bytes: Uint8Array): RdmaConnParams;
  /**
   * The receiver's check of one burst (native/RDMA.md "Data"): how far a
   * write-with-immediate with `flags` and `byteLen` moves a ring's producer
   * cursor; throws (code EBADMSG) when the protocol forbids it.
   */
  burstAdvance?(prod: number, cons: number, ringSize: number, flags: number, byteLen: number): number;
  constants?: {
    VERSION: number;
    CONN_PARAMS_BYTES: number;
    MIN_RING_LOG2: number;
    MAX_RING_LOG2: number;
    MAX_SLOTS: number;
    FLAG_ACCEPT: number;
    IMM_BLOCKED: number;
    IMM_WRAP: number;
  };
}

export interface NativeBinding {
  abiVersion: number;
  /** The test build (SOCKGATE_NATIVE_BUILD=test: binding.gyp sockgate_native_test), with the test hooks. */
  testHooks: boolean;
  rdma: RdmaBinding;
  vsock: RawVsock;
  constants: NativeConstants;
  Region: { new (opts: { slots: number; maxRingSize: number; byteLimit?: number }): RawRegion; new (memfd: number): RawRegion };
  Eventfd: new (fd?: number) => RawEventfd;
  Pump: new (onEvents: (events: PumpEvent[]) => void, options?: { spinUs?: number }) => RawPump;
  PumpLink: new (pump: RawPump, region: RawRegion, slot: number, fd: number, prefix?: Uint8Array[]) => RawPumpLink;
  SpliceLink: new (
    pump: RawPump,
    clientFd: number,
    hostFd: number,
    toHostPrefix?: Uint8Array[],
    toClientPrefix?: Uint8Array[],
    options?: { pipeBytes?: number; copy?: boolean },
  ) => RawSpliceLink;
  Listener: new (pump: RawPump, path: string, backlog?: number) => RawListener;
  attach(path: string, token: Uint8Array, timeoutMs?: number, version?: number): Promise<RawAttachResult>;
  dupFd(fd: number): number;
  closeFd(fd: number): void;
  setsockoptInt(fd: number, level: number, name: number, value: number): void;
  getsockoptInt(fd: number, level: number, name: number): number;
  socketpair(): [number, number];
  peerCred(fd: number): { pid: number; uid: number; gid: number };
  setGatewayRingLimit(bytes: number): void;
  gatewayRingBytes(): number;
}

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
  /** Spin this long (µs, adaptive) before sleeping; 0 (default) on shared machines. */
  spinUs?: number;
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
        }, { spinUs: opts.spinUs }),
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
