/**
 * sockgate SDK: open sockets through a sockgate gateway.
 *
 * ```ts
 * import { Gateway } from 'sockgate';
 * const gw = await Gateway.connect('127.0.0.1:7070');
 * const sock = await gw.connect('tcp://127.0.0.1:5432');
 * sock.write('hello');
 * ```
 */
export { Gateway, GatewayServer, SDK_TRANSPORTS, type GatewayOptions, type ConnectOptions, type UdpOptions, type CallOpts } from './gateway.js';
export { type LinkableSocket } from './gateway.js';
export { type GatewayLink, type LinkEnded, type LinkOptions } from './link.js';
export { GatewayHttpAgent, GatewayHttpsAgent } from './agent.js';
export { GatewaySocket, GatewayDatagramSocket, type FallbackInfo, type TransportName } from './socket.js';
export { type DataConnectionInfo, type SmcDial } from './smc-dial.js';
export * from '../../proto/errors.js';
