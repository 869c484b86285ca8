/**
 * The sockgate guest proxy: lets unmodified apps in a VM or container use the
 * gateway through local forwards, reverse forwards and a SOCKS5 server.
 *
 * ```ts
 * import { GuestProxy, resolveProxySettings } from 'sockgate/dist/clients/proxy/index.js';
 * const proxy = await GuestProxy.start(resolveProxySettings({ gateway: 'unix:/run/sockgate.sock', socks: '127.0.0.1:1080' }));
 * ```
 */
export { GuestProxy, type GuestProxyOptions, type ProxyAddresses } from './proxy.js';
export { registerProxyCommand } from './cli.js';
export { loadProxyConfig, resolveProxySettings, validateProxyConfig, proxyConfigSchema, type ProxyConfig, type ProxyFlags, type ProxySettings } from './config.js';
export {
  parseGatewayTarget,
  parseListenAddress,
  parseDialTarget,
  parseLocalForward,
  parseRemoteForward,
  VSOCK_CID_HOST,
  type GatewayTarget,
  type LocalEndpoint,
  type LocalForwardSpec,
  type RemoteForwardSpec,
} from './address.js';
export { connectGateway, type ProxyGateway } from './link.js';
export { VsockUnavailableError } from '../../proto/errors.js';
export { LocalForward, RemoteForward, type ForwardOptions, type ForwardStats } from './forward.js';
export { SocksServer, DEFAULT_UDP_BIND, type SocksServerOptions, type SocksStats, type SocksUser } from './socks-server.js';
export { dialVsockUds, connectLine, parseAck } from './vsock-uds.js';
export { splice, SessionSet, type Session } from './splice.js';
export { TransparentListener, type TransparentStats } from './transparent.js';
export { TransparentUdpRelay, type TransparentUdpOptions, type TransparentUdpStats } from './transparent-udp.js';
export { nftScript, policyRoutes, rulesScript, type RulesSpec } from './rules.js';
