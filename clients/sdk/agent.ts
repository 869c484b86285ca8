/**
 * HTTP(S) agents whose connections ride a sockgate gateway, so Node's own
 * http/https clients (and anything built on them) work unchanged.
 */
import { Agent as HttpAgent, type AgentOptions } from 'node:http';
import { Agent as HttpsAgent, type AgentOptions as HttpsAgentOptions } from 'node:https';
import type { Duplex } from 'node:stream';
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls';
import type { Gateway, ConnectOptions } from './gateway.js';

interface ConnOpts {
  host?: string | null;
  hostname?: string | null;
  port?: number | string | null;
  servername?: string;
}

function target(o: ConnOpts, defaultPort: number): { host: string; port: number } {
  return { host: (o.hostname ?? o.host ?? 'localhost').replace(/^\[|\]$/g, ''), port: Number(o.port ?? defaultPort) };
}

/** An http.Agent that opens every connection through `gateway` (keep-alive pooling as usual). */
export class GatewayHttpAgent extends HttpAgent {
  constructor(
    private readonly gateway: Gateway,
    options: AgentOptions = {},
    private readonly connectOptions: ConnectOptions = {},
  ) {
    super(options);
  }

  /** Returns the connecting socket at once, as net.createConnection does; errors reach the request through it. */
  override createConnection(options: ConnOpts): Duplex {
    return this.gateway.createConnection(target(options, 80), undefined, this.connectOptions);
  }
}

/** An https.Agent: TLS from this process to the destination, over a gateway socket. */
export class GatewayHttpsAgent extends HttpsAgent {
  constructor(
    private readonly gateway: Gateway,
    options: HttpsAgentOptions = {},
    private readonly connectOptions: ConnectOptions = {},
  ) {
    super(options);
  }

  /** TLS over a connecting gateway socket, returned at once like tls.connect. */
  override createConnection(options: ConnOpts & ConnectionOptions): Duplex {
    const t = target(options, 443);
    const raw = this.gateway.createConnection(t, undefined, this.connectOptions);
    const tls = tlsConnect({ ...options, socket: raw, servername: options.servername ?? (/^[0-9.:]+$/.test(t.host) ? undefined : t.host) } as ConnectionOptions);
    // The TLS socket does not own a socket it was handed: tie their lifetimes together.
    raw.once('error', (err) => tls.destroy(err));
    raw.once('close', () => tls.destroy());
    tls.once('close', () => raw.destroy());
    return tls;
  }
}
