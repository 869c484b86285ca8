/**
 * How the proxy reaches its gateway: the SDK over TCP or a Unix socket today;
 * AF_VSOCK from inside a VM once the native addon has its vsock bridge.
 *
 * Why vsock needs native code: libuv wraps only INET, INET6 and Unix stream
 * fds, so Node cannot own an AF_VSOCK socket, and grpc-js cannot dial one. The
 * plan, for when native/ has it: the bridge connects AF_VSOCK (CID 2, the
 * gateway's `vsock_uds.control_port`) and relays it to a private Unix socket
 * the SDK dials as `unix:<path>`; data connections go to the port the gateway
 * advertises as TcpAttach.vsock_port the same way (the SDK then needs a hook
 * to dial the data plane through the bridge instead of host:port). Everything
 * above this file stays as it is.
 */
import { Gateway, type GatewayOptions } from '../sdk/gateway.js';
import { NativeError } from '../../server/errors.js';
import { grpcTarget, parseGatewayTarget, type GatewayTarget } from './address.js';

/** What the proxy needs of a gateway connection (the SDK's Gateway has it). */
export type ProxyGateway = Pick<Gateway, 'connect' | 'listen' | 'udp' | 'close'>;

/** The error for a vsock target until the native addon's vsock bridge exists. */
export class VsockUnsupportedError extends NativeError {
  constructor(target: Extract<GatewayTarget, { kind: 'vsock' }>) {
    super(
      `gateway vsock:${target.cid}:${target.port}: AF_VSOCK needs the native addon's vsock bridge ` +
        '(native/: connect AF_VSOCK and hand the stream to Node as a Unix socket, since libuv cannot wrap an AF_VSOCK fd ' +
        'and grpc-js cannot dial one), which is not built yet; reach the gateway with --gateway unix:/path or host:port instead',
    );
  }
}

/** Connect to the gateway at `target` (a string as --gateway takes it, or parsed). */
export async function connectGateway(target: string | GatewayTarget, options: GatewayOptions = {}): Promise<Gateway> {
  const t = typeof target === 'string' ? parseGatewayTarget(target) : target;
  if (t.kind === 'vsock') throw new VsockUnsupportedError(t);
  return Gateway.connect(grpcTarget(t), options);
}
