/**
 * The grpc-plane client transport: a Data stream per socket on the Gateway's
 * own channel, the token in its first frame (attach-plane.ts). No native link:
 * link.ts relays it in JS.
 */
import { AttachFailedError } from '../../proto/errors.js';
import { attachGrpc } from './attach-plane.js';
import { registerClientTransport, type ClientTransport, type ClientTransportContext } from './client-transport.js';

export class GrpcTransport implements ClientTransport {
  constructor(private readonly ctx: ClientTransportContext) {}

  offer(): ReturnType<ClientTransport['offer']> {
    return undefined;
  }

  attach(...[accepted, mode, opts]: Parameters<ClientTransport['attach']>): ReturnType<ClientTransport['attach']> {
    if (accepted.params?.$case !== undefined && accepted.params.$case !== 'grpc') return Promise.reject(new AttachFailedError('grpc attach: unexpected parameters from the gateway'));
    return attachGrpc(this.ctx.grpcData, accepted.attachToken, mode, opts.signal);
  }

  close(): void {}
}

registerClientTransport({ name: 'grpc', unsupported: () => '', create: (ctx) => new GrpcTransport(ctx) });
