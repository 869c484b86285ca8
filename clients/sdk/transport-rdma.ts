/**
 * The rdma client transport: one RC connection per session with a gateway
 * (attach-rdma.ts), a socketpair end per socket. Its channel already is a
 * descriptor the connection pumps, so a caller's fd is relayed to it in JS
 * (link.ts); openStream() hands the descriptor itself to a peer gateway.
 */
import type { RdmaAttach, RdmaOffer } from '../../proto/gen/sockgate/v1/transport.js';
import { SessionClientTransport, registerClientTransport, type ClientTransportContext } from './client-transport.js';
import { RdmaClient, rdmaSupport } from './attach-rdma.js';

/** The rdma transport of one Gateway object. */
export class RdmaTransport extends SessionClientTransport<RdmaAttach, RdmaOffer, RdmaClient> {
  constructor(ctx: ClientTransportContext) {
    super(
      'rdma',
      () => new RdmaClient(ctx.options.rdma ?? {}),
      (a) => (a.params?.$case === 'rdma' ? a.params.rdma : undefined),
      (rdma) => ({ $case: 'rdma', rdma }),
    );
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
