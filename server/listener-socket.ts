/** A TCP listener socket of the gateway: inbound connections wait, paused, for the guest's Accept stream. */
import type { Socket as NetSocket, Server as NetServer } from 'node:net';
import { SockgateError, WrongSocketKindError } from '../proto/errors.js';
import type { Identity } from './policy.js';
import { SocketState } from '../proto/gen/sockgate/v1/sockgate.js';
import { GatewaySocket } from './gateway-socket.js';

/** A TCP listener: inbound connections wait (paused) until the guest's Accept stream takes them. */
export class ListenerSocket extends GatewaySocket {
  readonly kind = 'listener' as const;
  /** The Accept stream's handler; undefined while nobody accepts. */
  private acceptor: ((host: NetSocket) => void) | undefined;
  /** Inbound connections that arrived while no Accept stream was open (paused; at most `backlog`). */
  private readonly queued: NetSocket[] = [];

  constructor(
    id: string,
    identity: Identity,
    readonly server: NetServer,
    localUri: string,
    private readonly backlog: number,
  ) {
    super(id, identity, localUri, '');
    this.state = SocketState.SOCKET_STATE_LISTENING;
    server.on('connection', (host: NetSocket) => {
      if (this.acceptor) return this.acceptor(host);
      if (this.queued.length >= this.backlog) return void host.destroy();
      host.on('error', () => {});
      this.queued.push(host);
    });
    server.on('close', () => this.transitionTo([SocketState.SOCKET_STATE_LISTENING], SocketState.SOCKET_STATE_CLOSED, this.error?.code ?? 'closed'));
  }

  bufferedBytes(): number {
    return 0;
  }

  acceptsAttach(): boolean {
    return false;
  }

  get hasAcceptor(): boolean {
    return this.acceptor !== undefined;
  }

  /** Install the Accept stream's handler; one at a time. Returns the uninstall. */
  setAcceptor(fn: (host: NetSocket) => void): () => void {
    if (this.acceptor) throw new WrongSocketKindError(`listener ${this.id} already has an Accept stream`);
    this.acceptor = fn;
    for (const host of this.queued.splice(0)) {
      if (!host.destroyed) fn(host);
    }
    return () => {
      if (this.acceptor === fn) this.acceptor = undefined;
    };
  }

  async close(): Promise<void> {
    return this.destroy();
  }

  async destroy(err?: SockgateError): Promise<void> {
    if (this.isClosed) return this.closed;
    this.error ??= err;
    this.acceptor = undefined;
    for (const host of this.queued.splice(0)) host.destroy();
    this.server.close();
    return this.closed;
  }
}
