/**
 * The guest proxy: one gateway connection shared by every local forward,
 * reverse forward and the SOCKS5 server. `GuestProxy.start(settings)` connects
 * and opens every listener (all or nothing); `close()` stops listening and
 * drains; `destroy()` aborts. Both are idempotent.
 */
import type { Gateway } from '../sdk/gateway.js';
import { createLogger, type Logger } from '../../native/log.js';
import { formatEndpoint } from './address.js';
import type { ProxySettings } from './config.js';
import { LocalForward, RemoteForward, type ForwardOptions } from './forward.js';
import { connectGateway, type ProxyGateway } from './link.js';
import { SocksServer } from './socks-server.js';
import { TransparentListener } from './transparent.js';
import { TransparentUdpRelay } from './transparent-udp.js';

export interface GuestProxyOptions {
  /** Logger for operational events; a logger at settings.logLevel on stderr if unset. */
  logger?: Logger;
  /** Use this gateway connection instead of connecting to settings.gateway (tests, embedding); the proxy does not close it. */
  gateway?: ProxyGateway;
}

/** What the proxy listens on, with real ports: the ready line of the CLI. */
export interface ProxyAddresses {
  local: { listen: string; connect: string }[];
  remote: { listen: string; target: string }[];
  socks?: string;
  /** Transparent mode's TCP listener and, if on, its UDP (tproxy) socket. */
  transparent?: { tcp: string; udp?: string };
}

export class GuestProxy {
  readonly localForwards: LocalForward[] = [];
  readonly remoteForwards: RemoteForward[] = [];
  socks: SocksServer | undefined;
  transparent: TransparentListener | undefined;
  transparentUdp: TransparentUdpRelay | undefined;
  /** Set by the first close() or destroy(); later calls return it. */
  private stopping: Promise<void> | undefined;

  private constructor(
    readonly settings: ProxySettings,
    private readonly gw: ProxyGateway,
    /** Whether close() closes `gw` (the proxy opened it). */
    private readonly ownsGateway: boolean,
    readonly logger: Logger,
  ) {}

  /** Connect to the gateway and open every listener; on any failure, close what was opened and throw. */
  static async start(settings: ProxySettings, options: GuestProxyOptions = {}): Promise<GuestProxy> {
    const logger = options.logger ?? createLogger(settings.logLevel);
    let gw: ProxyGateway | undefined = options.gateway;
    if (!gw) {
      gw = (await connectGateway(settings.gateway, {
        ...(settings.token ? { token: settings.token } : {}),
        ...(settings.transports ? { transports: settings.transports } : {}),
      })) as Gateway;
    }
    const proxy = new GuestProxy(settings, gw, !options.gateway, logger);
    try {
      await proxy.open();
    } catch (err) {
      await proxy.destroy();
      throw err;
    }
    return proxy;
  }

  private async open(): Promise<void> {
    const fo: ForwardOptions = {
      logger: this.logger,
      ...(this.settings.transports ? { transports: this.settings.transports } : {}),
      ...(this.settings.connectTimeoutMs ? { connectTimeoutMs: this.settings.connectTimeoutMs } : {}),
    };
    for (const spec of this.settings.localForwards) {
      const f = new LocalForward(spec, this.gw, fo);
      this.localForwards.push(f);
      await f.start();
    }
    for (const spec of this.settings.remoteForwards) {
      const f = new RemoteForward(spec, this.gw, fo);
      this.remoteForwards.push(f);
      await f.start();
    }
    if (this.settings.socks) {
      this.socks = new SocksServer(this.gw, { ...fo, listen: this.settings.socks.listen, users: this.settings.socks.users, udpBind: this.settings.socks.udpBind });
      await this.socks.start();
    }
    const tp = this.settings.transparent;
    if (tp) {
      this.transparent = new TransparentListener(tp.listen, this.gw, fo);
      await this.transparent.start();
      if (tp.udp) {
        this.transparentUdp = new TransparentUdpRelay(tp.listen.host, this.transparent.port, this.gw, {
          logger: this.logger,
          maxFlows: tp.udpMaxFlows,
          idleMs: tp.udpIdleMs,
          ...(this.settings.transports ? { transports: this.settings.transports } : {}),
        });
        this.transparentUdp.start();
      }
    }
  }

  get addresses(): ProxyAddresses {
    const a: ProxyAddresses = {
      local: this.localForwards.map((f) => ({ listen: f.address, connect: f.spec.connect })),
      remote: this.remoteForwards.map((f) => ({ listen: f.address, target: formatEndpoint(f.spec.target) })),
    };
    if (this.socks) a.socks = this.socks.address;
    if (this.transparent) a.transparent = { tcp: this.transparent.address, ...(this.transparentUdp ? { udp: this.transparentUdp.address } : {}) };
    return a;
  }

  /** Stop every listener, let open connections finish for up to settings.drainTimeoutMs, then abort the rest and disconnect. */
  close(): Promise<void> {
    this.stopping ??= this.shutdown(this.settings.drainTimeoutMs);
    return this.stopping;
  }

  /** Abort every connection at once and disconnect. */
  destroy(): Promise<void> {
    this.stopping ??= this.shutdown(0);
    return this.stopping;
  }

  private async shutdown(drainMs: number): Promise<void> {
    await Promise.all([
      ...this.localForwards.map((f) => f.close(drainMs)),
      ...this.remoteForwards.map((f) => f.close(drainMs)),
      this.socks?.close(drainMs),
      this.transparent?.close(drainMs),
    ]);
    this.transparentUdp?.close();
    if (this.ownsGateway) this.gw.close();
    this.logger.info('proxy stopped');
  }
}
