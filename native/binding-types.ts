/**
 * The types of everything the native addon exposes (the raw surface
 * native/index.ts loads and wraps; it re-exports all of these).
 */
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

/** What a pump's I/O thread did since it started (read on demand; tests and diagnostics). */
export interface PumpStats {
  /** Sleeps in epoll_wait that ended with news (thread wake-ups). */
  wakeups: number;
  /** Spins before sleeping, and how many found news (no sleep, no doorbell). */
  spins: number;
  spinHits: number;
  /** Doorbells its ring links rang (the others were suppressed: the peer was awake). */
  doorbells: number;
  /** readv / writev calls of its ring links that moved bytes. */
  fdReads: number;
  fdWrites: number;
  /** Rings shrunk back to their first size after an idle spell. */
  shrinks: number;
  /** The adaptive spin budget now, and the setting (µs). */
  spinBudgetUs: number;
  spinUs: number;
}

export type PumpEvent =
  | { type: 'progress'; link: number; toFd: number; toRing: number; stalls: number }
  /** The answer to PumpLink.resize(), or (`idle`) the pump's own shrink of an idle ring back to its first size. */
  | { type: 'resized'; link: number; dir: RingDir; ringSize: number; errno: number; idle?: true }
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
  /** The spin setting from now on (µs, 0..1000). */
  setSpin(us: number): void;
  stats(): PumpStats;
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

/** An IP socket address as the transparent primitives report it. */
export interface SockAddr {
  address: string;
  port: number;
  family: 4 | 6;
}

/** A transparent UDP socket read on the JS loop (native/src/wrap_transparent.cc). */
export interface RawTransparentUdp {
  readonly port: number;
  readonly fd: number;
  ref(): void;
  unref(): void;
  /** Stop reading and close the socket. Idempotent. */
  close(): void;
}

/** Transparent-proxy primitives (native/src/wrap_transparent.cc; wrapped by native/transparent.ts). */
export interface RawTransparent {
  originalDst(fd: number): SockAddr & { source: 'conntrack' | 'local' };
  setTransparent(fd: number): void;
  udpReplySocket(address: string, port: number): number;
  udpSendTo(fd: number, data: Uint8Array, address: string, port: number): number;
  TransparentUdp: new (address: string, port: number, onMessage: (data: Buffer, from: SockAddr, to: SockAddr) => void) => RawTransparentUdp;
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
  /** Busy-poll the completion queue up to this many µs (adaptive) before arming it and sleeping (0..1000; default 0 = off). */
  pollUs?: number;
  /** Print the flow state (credits, cursors) every keepalive tick: callers pass isTracerEnabled('rdma-flow'). */
  trace?: boolean;
  /**
   * Live failover (native/RDMA.md "Live failover"): ask for the RESUME flag; when
   * both ends set it, a failing connection suspends its open slots (`suspended`
   * events hand over each fd, positions and unacknowledged bytes) instead of closing them.
   */
  resume?: boolean;
  /**
   * Client, with `resume`: this connection carries sockets moved off a failed
   * one (flag MOVE; `token` is one of their resume tokens). A gateway without
   * MOVE fails it with VERSION_MISMATCH (native/RDMA.md "Moving to a new RDMA connection").
   */
  move?: boolean;
}

/** link()'s resume options: the slot resumes a moved socket on a MOVE connection (native/RDMA.md "Moving to a new RDMA connection"). */
export interface RdmaLinkResume {
  /** Client: bytes of the gateway's stream already on the fd (BIND's value). Gateway: bytes of the client's stream on the host (BOUND's value). */
  position: bigint;
  /** Client: the gateway's position must lie in [acked, sent]. */
  acked?: bigint;
  sent?: bigint;
  /** Gateway: the client's position (where `bytes` start in our stream). */
  outBase?: bigint;
  /** Client: our unacked bytes from `acked` on. Gateway: the bytes to send first. At most the peer's ring. */
  bytes?: Buffer;
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
   * claim a wrap, 2 = protocol version 1, 3 = BIND tokens corrupted, 4 = RDMA writes with a wrong rkey,
   * 5 = the same once a slot posted 1 MiB (a QP fatal mid-stream).
   */
  hostile?: 0 | 1 | 2 | 3 | 4 | 5;
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
  link(slot: number, fd: number, token?: Uint8Array, resume?: RdmaLinkResume): void;
  /** Abort a slot: its fd is closed (RST when `reset`), CLOSE goes to the peer; `slotEnd` follows. */
  closeSlot(slot: number, reset?: boolean): void;
  /** shutdown(2) of the slot's fd, for Shutdown RPCs (read and/or write side). */
  shutdownSlot(slot: number, read: boolean, write: boolean): void;
  /** setsockopt(int) on a linked slot's fd; false when the slot has no fd. */
  setSlotSockopt(slot: number, level: number, name: number, value: number): boolean;
  /**
   * Disconnect; every open slot ends with ECONNABORTED, then `closed`. With
   * `fail` the connection fails instead (ERR_SOCKGATE_RDMA_DISCONNECTED): the
   * open slots of a resumable connection suspend (live failover).
   */
  close(fail?: boolean): void;
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
  | { type: 'rdma'; rdma: number; event: 'request'; conn: number; token: Buffer; peer: string; /** MOVE: `token` is a resume token */ move?: boolean }
  | { type: 'rdma'; rdma: number; event: 'established' }
  /** Before established. code: ADDR_ERROR | ROUTE_ERROR | UNREACHABLE | REJECTED | CONNECT_ERROR | TIMEOUT | PROTOCOL | NO_DEVICE | RESOURCE */
  | { type: 'rdma'; rdma: number; event: 'failed'; code: string; errno: number; message: string }
  | { type: 'rdma'; rdma: number; event: 'closed'; code: string; errno: number; message: string }
  /** Gateway side: the client asks to bind `slot` with an attach token. */
  | { type: 'rdma'; rdma: number; event: 'bind'; slot: number; token: Buffer; /** A RESUME BIND (moved socket, `token` = its resume token): the client's position. */ position?: bigint }
  /** Client side: the gateway linked the slot this client bound (its BOUND; a refusal is the slot's `slotEnd`). */
  | { type: 'rdma'; rdma: number; event: 'bound'; slot: number; /** Where the gateway resumes our stream (0 for a new socket). */ position?: bigint }
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
  /**
   * Live failover: the connection failed (`code`) under an open slot of a
   * resumable connection. The slot's socket `fd` is now the caller's (open,
   * out of the pump); `inPos` = bytes of the peer's stream written to it,
   * `outAcked` = the peer's last CONSUMED, `outSent` = bytes posted to the
   * peer, `outPos` = bytes read from fd; `tail` = those read bytes from
   * outAcked on (outPos - outAcked of them). fdEof: fd gave EOF; peerEof: the
   * peer's EOF arrived; wrShut: shutdown(fd, SHUT_WR) done. The slot's
   * `slotEnd` (reason suspended) follows.
   */
  | {
      type: 'rdma';
      rdma: number;
      event: 'suspended';
      slot: number;
      code: string;
      fd: number;
      inPos: bigint;
      outAcked: bigint;
      outSent: bigint;
      outPos: bigint;
      fdEof: boolean;
      peerEof: boolean;
      wrShut: boolean;
      tail: Buffer;
    }
  | { type: 'rdma'; rdma: number; event: 'slotEnd'; slot: number; reason: 'ok' | 'reset' | 'aborted' | 'error' | 'suspended'; errno: number; code: string; totalToFd: number; totalToPeer: number };

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
    FLAG_RESUME: number;
    IMM_BLOCKED: number;
    IMM_WRAP: number;
  };
}

/** Kernel SMC primitives (native/src/smc.h); descriptors returned are the caller's. */
export interface RawSmc {
  available: boolean;
  reason: string;
  /** Connect off the JS thread (TCP, then the kernel's CLC handshake or its fallback). */
  connect(family: 4 | 6, address: string, port: number, timeoutMs: number): Promise<{ fd: number; kind: 'af_smc' | 'ipproto_smc' }>;
  listen(family: 4 | 6, address: string, port: number, backlog: number, v6only: boolean): { fd: number; port: number; kind: 'af_smc' | 'ipproto_smc' };
  /** Raw SMC_DIAG dump (native/smc-diag.ts parses it). */
  diagDump(): Buffer;
  addUeid(ueid: string): void;
  addPnet(pnetid: string, eth: string, ib: string, ibPort: number): void;
}

export interface NativeBinding {
  abiVersion: number;
  /** The test build (SOCKGATE_NATIVE_BUILD=test: binding.gyp sockgate_native_test), with the test hooks. */
  testHooks: boolean;
  rdma: RdmaBinding;
  vsock: RawVsock;
  transparent: RawTransparent;
  smc: RawSmc;
  constants: NativeConstants;
  Region: { new (opts: { slots: number; maxRingSize: number; byteLimit?: number }): RawRegion; new (memfd: number): RawRegion };
  Eventfd: new (fd?: number) => RawEventfd;
  Pump: new (onEvents: (events: PumpEvent[]) => void, options?: { spinUs?: number; shrinkIdleMs?: number }) => RawPump;
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
  /** close(2); with `reset`, SO_LINGER 0 first (a TCP peer sees RST, not a clean FIN). */
  closeFd(fd: number, reset?: boolean): void;
  setsockoptInt(fd: number, level: number, name: number, value: number): void;
  getsockoptInt(fd: number, level: number, name: number): number;
  socketpair(): [number, number];
  peerCred(fd: number): { pid: number; uid: number; gid: number };
  setGatewayRingLimit(bytes: number): void;
  gatewayRingBytes(): number;
}

