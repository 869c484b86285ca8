/**
 * Native AF_VSOCK on the gateway (`vsock:`), for vhost-vsock hosts (QEMU/KVM,
 * libvirt, Kata, crosvm): a guest's connection to host CID 2, port P arrives
 * on an AF_VSOCK socket of the host. Node cannot own one (libuv wraps only
 * INET, INET6 and Unix stream descriptors), so the addon's VsockListener
 * accepts on its own thread and hands over the descriptor with the peer's
 * CID; each connection is spliced on the gateway's pump (I/O thread) to one
 * end of a Unix socketpair, and the other end is what Node sees:
 *
 * - control port: injected into grpc-js with the peer CID as the connection's
 *   credentials (control-listeners.ts, control-peer.ts): the VM is the identity;
 * - data port: the tcp data plane's own handling (preamble, attach), held to
 *   the VM's own sockets; once attached, the socketpair end is spliced to
 *   the host socket, so the payload never enters JS.
 */
import { Socket } from 'node:net';
import { NativeError } from '../proto/errors.js';
import type { Logger } from '../native/log.js';
import type { Pump, RawVsockListener, SpliceLink } from '../native/index.js';
import type { Config } from './config.js';
import type { ControlListeners } from './control-listeners.js';
import type { GatewaySocket } from './socket-table.js';
import type { TcpTransport } from './transport-tcp.js';

/** Splice pipe per direction of a bridged vsock connection: about bandwidth x round trip, like the data plane's. */
const BRIDGE_PIPE_BYTES = 1 << 20;

export type VsockConfig = NonNullable<Config['vsock']>;

export interface VsockListenersOptions {
  config: VsockConfig;
  native: typeof import('../native/index.js');
  pump: Pump;
  control: ControlListeners;
  tcp: TcpTransport;
  /** The identity a CID's guests are (policy), or undefined. */
  identityOf: (cid: number) => string | undefined;
  logger: Logger;
}

export class VsockListeners {
  private readonly listeners: RawVsockListener[] = [];
  /** Live bridges (each a splice link on the pump): ended before the pump closes. */
  private readonly bridges = new Set<SpliceLink>();
  /** Connections accepted so far, per port role (tests, status). */
  readonly accepted = { control: 0, data: 0 };

  constructor(private readonly o: VsockListenersOptions) {}

  /** Listen on the control and data ports; throws a NativeError naming the key when AF_VSOCK cannot be used. */
  start(): { control: number; data: number } {
    const { native, config } = this.o;
    if (!native.vsock.available) throw new NativeError(`vsock: AF_VSOCK listeners configured but unavailable: ${native.vsock.reason}`);
    const cid = config.cid === 'any' ? native.vsock.CID_ANY : config.cid;
    const control = this.listen(cid, config.control_port, 'control', (sock, peerCid, peerPort) =>
      this.o.control.inject(sock, { kind: 'vsock', cid: peerCid, port: peerPort }, 'vsock'),
    );
    const data = this.listen(cid, config.data_port, 'data', (sock, peerCid) => {
      const identity = this.o.identityOf(peerCid);
      this.o.tcp.handleConnection(sock, {
        peerKey: `vsock:${peerCid}`,
        // A VM attaches only its own identity's sockets, whoever's token it holds.
        mayAttach: (target: GatewaySocket) =>
          identity !== undefined && target.identity.name !== identity ? `the token is for another identity's socket, not vsock CID ${peerCid}'s (${identity})` : undefined,
      });
    });
    return { control, data };
  }

  private listen(cid: number, port: number, role: 'control' | 'data', take: (sock: Socket, peerCid: number, peerPort: number) => void): number {
    const { native, logger } = this.o;
    let listener: RawVsockListener;
    try {
      listener = new native.vsock.Listener(cid, port, this.o.config.backlog, (err, fd, peerCid, peerPort) => {
        if (err || fd === undefined) return logger.warn({ err: err?.message, port }, 'vsock accept failed');
        if (listener.closed) return native.closeFd(fd);
        this.accepted[role]++;
        let sock: Socket;
        try {
          sock = this.bridge(fd, `vsock ${peerCid}:${peerPort} -> ${role} port ${port}`);
        } catch (e) {
          return logger.warn({ err: (e as Error).message, peerCid }, 'vsock connection not bridged');
        }
        take(sock, peerCid ?? 0, peerPort ?? 0);
      });
    } catch (err) {
      const key = role === 'control' ? 'vsock.control_port' : 'vsock.data_port';
      throw new NativeError(`${key}: cannot listen on vsock ${cid}:${port}: ${(err as Error).message}`, { cause: err });
    }
    listener.unref();
    this.listeners.push(listener);
    return listener.port;
  }

  /**
   * A Node socket for the AF_VSOCK descriptor `fd` (which this takes over):
   * a Unix socketpair whose other end the pump splices to `fd`. An abort on
   * either side aborts the other (the link resets the survivor).
   */
  private bridge(fd: number, what: string): Socket {
    const { native, pump } = this.o;
    let pair: [number, number];
    try {
      pair = native.socketpair();
    } catch (err) {
      native.closeFd(fd);
      throw err;
    }
    const [mine, theirs] = pair;
    try {
      const link = pump.splice(theirs, fd, { pipeBytes: BRIDGE_PIPE_BYTES });
      this.bridges.add(link);
      link.ended.then(
        (e) => {
          this.bridges.delete(link);
          if (e.reason === 'error') this.o.logger.debug({ what, code: e.code }, 'vsock bridge ended with an error');
        },
        () => this.bridges.delete(link),
      );
    } catch (err) {
      native.closeFd(mine);
      native.closeFd(theirs);
      native.closeFd(fd);
      throw err;
    }
    return new Socket({ fd: mine, readable: true, writable: true, allowHalfOpen: true });
  }

  /** Stop accepting; connections already bridged go on. */
  stopAccepting(): void {
    for (const l of this.listeners) l.close();
    this.listeners.length = 0;
  }

  /** Stop accepting and abort every bridged connection; resolves once their links ended (the pump may then close). */
  async close(): Promise<void> {
    this.stopAccepting();
    await Promise.all([...this.bridges].map((l) => l.close().catch(() => undefined)));
  }
}
