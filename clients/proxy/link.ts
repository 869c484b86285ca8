/**
 * How the proxy reaches its gateway: the SDK over TCP, a Unix socket, or
 * AF_VSOCK from inside a VM (`vsock:2:7070`).
 *
 * Why vsock goes through the native addon: libuv wraps only INET, INET6 and
 * Unix stream fds, so Node cannot own an AF_VSOCK socket, and grpc-js cannot
 * dial one. The SDK's vsock bridge (clients/sdk/vsock.ts) connects AF_VSOCK
 * natively and relays it to a private Unix socket grpc-js dials; tcp-plane
 * data connections go to the port the gateway advertises as
 * TcpAttach.vsock_port through the same bridge. Where the addon or the kernel
 * lacks AF_VSOCK, a vsock target fails with VsockUnavailableError and the reason.
 */
import { Gateway, type GatewayOptions } from '../sdk/gateway.js';
import { vsockSupport } from '../sdk/vsock.js';
import { VsockUnavailableError } from '../../proto/errors.js';
import { grpcTarget, parseGatewayTarget, type GatewayTarget } from './address.js';

/** What the proxy needs of a gateway connection (the SDK's Gateway has it). */
export type ProxyGateway = Pick<Gateway, 'connect' | 'listen' | 'udp' | 'close'> & Partial<Pick<Gateway, 'link' | 'openForLink'>>;

/** Why a vsock target needs the addon: said in the error so the operator knows the way around it. */
const VSOCK_HINT =
  '(the native addon connects AF_VSOCK and hands the stream to Node as a Unix socket, since libuv cannot wrap an AF_VSOCK fd ' +
  'and grpc-js cannot dial one); reach the gateway with --gateway unix:/path or host:port instead';

/** Connect to the gateway at `target` (a string as --gateway takes it, or parsed). */
export async function connectGateway(target: string | GatewayTarget, options: GatewayOptions = {}): Promise<Gateway> {
  const t = typeof target === 'string' ? parseGatewayTarget(target) : target;
  if (t.kind === 'vsock') {
    if (!vsockSupport.available) throw new VsockUnavailableError(`gateway vsock:${t.cid}:${t.port}`, `${vsockSupport.reason} ${VSOCK_HINT}`);
    return Gateway.connect(`vsock:${t.cid}:${t.port}`, options);
  }
  return Gateway.connect(grpcTarget(t), options);
}
