/**
 * The control-plane listeners, owned by the gateway rather than by grpc-js:
 * each accepted connection is admitted (control-admission.ts), its peer
 * credentials recorded (control-peer.ts; SO_PEERCRED on a Unix control
 * socket), and only then handed to grpc-js through its connection injector
 * (@grpc/grpc-js >= 1.12 `Server.createConnectionInjector`).
 */
import { createServer, type Server as NetServer, type Socket } from 'node:net';
import type { Server as GrpcServer, ServerCredentials } from '@grpc/grpc-js';
import { splitListenAddress } from './config.js';
import type { ControlAdmission } from './control-admission.js';
import type { PeerCredentials, PeerRegistry } from './control-peer.js';
import type { Logger } from '../native/log.js';

/** What a control listener serves: the gateway's own control address, a VMM's vsock Unix socket, or native AF_VSOCK (guests behind both). */
export type ControlRole = 'control' | 'vmm' | 'vsock';

/** One listener, closed on its own (a VM removed while the gateway runs). */
export interface ControlListenerHandle {
  /** Stop accepting and close the connections it accepted. */
  close(): void;
}

export interface ControlListenersOptions {
  grpc: GrpcServer;
  credentials: ServerCredentials;
  /** TLS on the control plane: grpc-js then reports no address for Unix peers, so their calls cannot be matched to the connection. */
  tls: boolean;
  admission: ControlAdmission;
  registry: PeerRegistry;
  /** SO_PEERCRED of a connected Unix socket (native addon); undefined when the addon did not load. */
  peerCred: ((fd: number) => { pid: number; uid: number; gid: number }) | undefined;
  logger: Logger;
}

type Injector = ReturnType<GrpcServer['createConnectionInjector']>;
/** How a listener's peers are identified: TCP address, SO_PEERCRED, or a VMM's socket (by path). */
type PeerKind = 'tcp' | 'unix' | { vmm: string };

export class ControlListeners {
  private readonly servers: NetServer[] = [];
  private readonly injectors: Injector[] = [];
  /** Accepted connections still open (destroyed by close()). */
  private readonly sockets = new Set<Socket>();

  constructor(private readonly o: ControlListenersOptions) {}

  /** Listen on `address` (host:port or unix:/path); resolves with the bound TCP port (0 for Unix). */
  async listen(address: string, role: ControlRole): Promise<number> {
    return (await this.open(address, role)).port;
  }

  /** Listen on a VMM's `<uds_path>_<port>`: its guests are the VM `vmmPath`, whatever path the socket has. */
  async listenVmm(socketPath: string, vmmPath: string): Promise<ControlListenerHandle> {
    return (await this.open(`unix:${socketPath}`, 'vmm', vmmPath)).handle;
  }

  /**
   * Take a connection accepted elsewhere (a native AF_VSOCK connection bridged
   * to a Unix socketpair end) with the credentials the kernel gave for it.
   */
  inject(sock: Socket, creds: PeerCredentials, role: ControlRole): void {
    this.onConnection(sock, this.sharedInjector(), creds, role);
  }

  private shared: Injector | undefined;

  private sharedInjector(): Injector {
    if (!this.shared) {
      this.shared = this.o.grpc.createConnectionInjector(this.o.credentials);
      this.injectors.push(this.shared);
    }
    return this.shared;
  }

  private async open(address: string, role: ControlRole, vmmPath?: string): Promise<{ port: number; handle: ControlListenerHandle }> {
    const where = splitListenAddress(address);
    const injector = this.o.grpc.createConnectionInjector(this.o.credentials);
    this.injectors.push(injector);
    const unix = 'path' in where;
    // A VMM's socket carries guests: its peer (the VMM) is no identity of theirs.
    const kind: PeerKind = !unix ? 'tcp' : role === 'vmm' ? { vmm: vmmPath ?? where.path } : 'unix';
    const mine = new Set<Socket>();
    const server = createServer((sock) => {
      mine.add(sock);
      sock.once('close', () => mine.delete(sock));
      this.onConnection(sock, injector, this.credentialsOf(sock, kind), role);
    });
    this.servers.push(server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const done = () => {
        server.removeListener('error', reject);
        resolve();
      };
      if (unix) server.listen(where.path, done);
      else server.listen({ host: where.host, port: where.port }, done);
    });
    server.on('error', (err) => this.o.logger.error({ err: err.message, address }, 'control listener error'));
    const bound = server.address();
    const handle: ControlListenerHandle = {
      close: () => {
        server.close();
        const i = this.servers.indexOf(server);
        if (i >= 0) this.servers.splice(i, 1);
        for (const s of mine) s.destroy();
      },
    };
    return { port: typeof bound === 'object' && bound ? bound.port : 0, handle };
  }

  private credentialsOf(sock: Socket, kind: PeerKind): PeerCredentials {
    if (kind === 'tcp') return { kind: 'tcp', address: sock.remoteAddress ?? '', port: sock.remotePort ?? 0 };
    if (kind !== 'unix') return { kind: 'vmm', path: kind.vmm };
    const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (!this.o.peerCred || typeof fd !== 'number' || fd < 0) return { kind: 'unix-unknown' };
    try {
      const c = this.o.peerCred(fd);
      return { kind: 'unix', uid: c.uid, gid: c.gid, pid: c.pid };
    } catch {
      return { kind: 'unix-unknown' };
    }
  }

  private onConnection(sock: Socket, injector: Injector, creds: PeerCredentials, name: string): void {
    sock.on('error', () => {}); // a peer that resets before grpc-js takes the socket must not crash the gateway
    // Over TLS grpc-js reports a Unix peer as "unknown": its calls are never matched, so no first-call timer (the TLS handshake timeout and the idle timeout still apply).
    const matchable = creds.kind === 'tcp' || !this.o.tls;
    const admitted = this.o.admission.admit(sock, creds, matchable);
    if (!admitted.admitted) return;
    this.sockets.add(sock);
    sock.once('close', () => this.sockets.delete(sock));
    const entry = this.o.registry.register(sock, creds, name);
    if (entry) entry.onIdentified = admitted.identified;
    injector.injectConnection(sock);
  }

  /** Stop accepting (existing connections are left to grpc-js's shutdown). */
  stopAccepting(): void {
    for (const s of this.servers) s.close();
  }

  /** Stop accepting, close the injectors and every connection still open. */
  close(): void {
    this.stopAccepting();
    for (const i of this.injectors) i.destroy();
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    this.o.admission.close();
  }
}
