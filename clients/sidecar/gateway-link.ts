/**
 * The sidecar's way upstream: every upstream connection (traffic and health
 * checks alike) is opened through a sockgate gateway with the SDK. A reload
 * that changes the `gateway` section opens a new SDK connection for new
 * sockets; the old one stays until the last socket opened through it closes,
 * because closing an SDK Gateway destroys its sockets.
 */
import type { Duplex } from 'node:stream';
import { Gateway as SdkGateway, type GatewayOptions } from '../sdk/gateway.js';
import type { TransportName } from '../sdk/socket.js';
import { tracer } from '../../native/trace.js';
import type { GatewayLinkConfig } from './sidecar-config.js';
import { LinkableUpstream } from './linked-session.js';

const TRACER = 'sidecar_gateway';
const trace = tracer(TRACER);

/** How long start or reload waits for the gateway's control channel. */
const GATEWAY_READY_TIMEOUT_MS = 15_000;
/**
 * The Connect call's gRPC deadline runs this long past the connect timeout: the cluster's own timer
 * (cluster.ts attempt) decides a timeout; a deadline expiring with it raced that timer under load and
 * miscounted an endpoint's timeout as the gateway's.
 */
const CONNECT_DEADLINE_MARGIN_MS = 1_000;

export interface DialOptions {
  /** Host-side connect timeout the gateway applies (the control-call deadline runs CONNECT_DEADLINE_MARGIN_MS longer). */
  timeoutMs: number;
  /** Aborts the whole dial (control call and data-plane attach). */
  signal: AbortSignal;
}

function connectOptions(opts: DialOptions) {
  return { timeoutMs: opts.timeoutMs, deadlineMs: opts.timeoutMs + CONNECT_DEADLINE_MARGIN_MS, signal: opts.signal, noDelay: true };
}

/** Opens upstream byte streams. The gateway link is the real one; tests may substitute. */
export interface UpstreamDialer {
  /** A connected Duplex to `uri` (tcp://host:port); rejects with a typed SockgateError. */
  dial(uri: string, opts: DialOptions): Promise<Duplex>;
  /** Like dial(), for proxied traffic: a socket to link natively to the downstream one (linked-session.ts). */
  dialForLink?(uri: string, opts: DialOptions): Promise<Duplex>;
}

/** One SDK connection and the sockets still open through it. */
interface Link {
  readonly gw: SdkGateway;
  /** JSON of the config it was opened with; equal configs share a link. */
  readonly key: string;
  /** Sockets opened through it and not yet closed, dials in flight included. */
  open: number;
  /** Replaced by a newer link: close once `open` reaches 0. */
  retired: boolean;
}

export class GatewayLink implements UpstreamDialer {
  /** The link new dials use. */
  private current: Link;
  /** Retired links with sockets still open. */
  private readonly draining = new Set<Link>();
  private closed = false;

  private constructor(link: Link) {
    this.current = link;
  }

  /** Connect to the gateway; resolves once its control channel is ready. */
  static async connect(cfg: GatewayLinkConfig): Promise<GatewayLink> {
    return new GatewayLink(await GatewayLink.open(cfg));
  }

  private static async open(cfg: GatewayLinkConfig): Promise<Link> {
    const options: GatewayOptions = {};
    if (cfg.token) options.token = cfg.token;
    if (cfg.transports) options.transports = cfg.transports as TransportName[];
    const gw = await SdkGateway.connect(cfg.target, options, { deadlineMs: GATEWAY_READY_TIMEOUT_MS });
    trace(`connected to gateway ${cfg.target}`);
    return { gw, key: JSON.stringify(cfg), open: 0, retired: false };
  }

  /** The gateway target new connections use. */
  get target(): string {
    return this.current.gw.target;
  }

  /** Switch new dials to `cfg` if it differs; existing sockets keep their link. */
  async update(cfg: GatewayLinkConfig): Promise<void> {
    if (JSON.stringify(cfg) === this.current.key) return;
    const next = await GatewayLink.open(cfg);
    if (this.closed) {
      next.gw.close();
      return;
    }
    const old = this.current;
    this.current = next;
    old.retired = true;
    this.draining.add(old);
    this.release(old, 0);
  }

  async dial(uri: string, opts: DialOptions): Promise<Duplex> {
    const link = this.current;
    link.open++;
    let sock: Duplex;
    try {
      sock = await link.gw.connect(uri, connectOptions(opts));
    } catch (err) {
      this.release(link, 1);
      throw err;
    }
    sock.once('close', () => this.release(link, 1));
    return sock;
  }

  async dialForLink(uri: string, opts: DialOptions): Promise<Duplex> {
    const link = this.current;
    link.open++;
    let sock: LinkableUpstream;
    try {
      sock = new LinkableUpstream(await link.gw.openForLink(uri, connectOptions(opts)));
    } catch (err) {
      this.release(link, 1);
      throw err;
    }
    sock.once('close', () => this.release(link, 1));
    return sock;
  }

  private release(link: Link, n: number): void {
    link.open -= n;
    if (link.retired && link.open <= 0 && this.draining.delete(link)) {
      trace(`closing retired gateway link ${link.gw.target}`);
      link.gw.close();
    }
  }

  /** Close every SDK connection; sockets still open through them are destroyed. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const l of this.draining) l.gw.close();
    this.draining.clear();
    this.current.gw.close();
  }
}
