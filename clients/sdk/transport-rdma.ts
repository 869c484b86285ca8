/**
 * The rdma client transport: one RC connection per session with a gateway
 * (attach-rdma.ts), a socketpair end per socket. Its channel already is a
 * descriptor the connection pumps, so a caller's fd is relayed to it in JS
 * (link.ts); openStream() hands the descriptor itself to a peer gateway.
 */
import { AttachFailedError } from '../../proto/errors.js';
import { registerClientTransport, type ClientTransport, type ClientTransportContext } from './client-transport.js';
import { RdmaClient, rdmaSupport } from './attach-rdma.js';

export class RdmaTransport implements ClientTransport {
  #client: RdmaClient | undefined;
  constructor(private readonly ctx: ClientTransportContext) {}

  #rdma(): RdmaClient {
    this.#client ??= new RdmaClient(this.ctx.options.rdma ?? {});
    return this.#client;
  }

  offer(): ReturnType<ClientTransport['offer']> {
    return { $case: 'rdma', rdma: this.#rdma().offer() };
  }

  attach(...[accepted, mode, opts, label]: Parameters<ClientTransport['attach']>): ReturnType<ClientTransport['attach']> {
    // The gateway declines datagram sockets on rdma too; if one was accepted anyway, the next offer is used.
    if (mode !== 'stream') return Promise.reject(new AttachFailedError('rdma carries stream sockets only'));
    if (accepted.params?.$case !== 'rdma') return Promise.reject(new AttachFailedError('rdma attach: the gateway sent no rdma parameters'));
    return this.#rdma().attach(accepted.params.rdma, accepted.attachToken, label, opts.signal ? { signal: opts.signal } : {});
  }

  close(): void {
    this.#client?.close();
  }
}

registerClientTransport({
  name: 'rdma',
  unsupported: () => (rdmaSupport.available ? '' : rdmaSupport.reason),
  // Like the gateway would say: this host has no usable verbs device (or the addon was built without rdma-core).
  localDecline: () =>
    !rdmaSupport.available && rdmaSupport.addonLoaded ? { transport: 'rdma', reason: 'NO_RDMA_DEVICE', detail: `this host cannot attach with rdma: ${rdmaSupport.reason}` } : undefined,
  create: (ctx) => new RdmaTransport(ctx),
});
