/**
 * Transparent mode, UDP (nftables `tproxy`): one transparent UDP socket
 * (IP_TRANSPARENT + IP_RECVORIGDSTADDR, native) receives every redirected
 * datagram with its original destination. Each (client, destination) pair is a
 * flow: a connected gateway UDP socket to the destination (opened under the
 * gateway's policy) and a reply socket bound transparently to the destination's
 * address, so the application sees replies from the address it sent to.
 *
 * Bounded: at most `maxFlows` flows (a new flow beyond that evicts the one idle
 * longest) and each ends after `idleMs` without traffic; datagrams that arrive
 * while a flow's gateway socket opens wait in a short queue (PENDING_DATAGRAMS).
 */
import type { Logger } from '../../native/log.js';
import type { RawTransparentUdp, SockAddr } from '../../native/binding-types.js';
import { tracer } from '../../native/trace.js';
import type { GatewayDatagramSocket, TransportName } from '../sdk/socket.js';
import { joinHostPort } from './address.js';
import type { ProxyGateway } from './link.js';
import { transparentNative } from './transparent.js';

const trace = tracer('proxy');

/** Datagrams a flow queues while its gateway socket opens (UDP may drop; the queue only covers the first round trip). */
const PENDING_DATAGRAMS = 16;
/** How often idle flows are looked for: a tenth of the idle limit, at least this. */
const SWEEP_MIN_MS = 100;

export interface TransparentUdpOptions {
  logger: Logger;
  transports?: readonly TransportName[];
  /** Flows open at once (transparent.udp_max_flows). */
  maxFlows: number;
  /** A flow without datagrams either way for this long is closed (transparent.udp_idle_timeout_ms). */
  idleMs: number;
}

export interface TransparentUdpStats {
  flows: number;
  /** Flows closed to make room for a new one (maxFlows reached). */
  evicted: number;
  /** Flows the gateway refused (policy, unreachable). */
  refused: number;
  toGateway: number;
  toClient: number;
  dropped: number;
}

interface Flow {
  key: string;
  client: SockAddr;
  dest: SockAddr;
  last: number;
  gsock: GatewayDatagramSocket | undefined;
  pending: Buffer[];
  replyFd: number;
  closed: boolean;
}

export class TransparentUdpRelay {
  readonly stats: TransparentUdpStats = { flows: 0, evicted: 0, refused: 0, toGateway: 0, toClient: 0, dropped: 0 };
  private sock: RawTransparentUdp | undefined;
  /** Flows by `client|dest`, in least-recently-used order (Map keeps insertion order; a touch re-inserts). */
  private readonly flows = new Map<string, Flow>();
  private sweepTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly host: string,
    readonly port: number,
    private readonly gw: ProxyGateway,
    private readonly options: TransparentUdpOptions,
  ) {}

  get address(): string {
    return joinHostPort(this.host, this.sock?.port ?? this.port);
  }

  get flowsOpen(): number {
    return this.flows.size;
  }

  start(): void {
    this.sock = transparentNative().transparentUdp(this.host, this.port, (data, from, to) => this.onDatagram(data, from, to));
    const every = Math.max(SWEEP_MIN_MS, Math.floor(this.options.idleMs / 10));
    this.sweepTimer = setInterval(() => this.sweep(), every);
    this.sweepTimer.unref();
    this.options.logger.info({ listen: this.address, maxFlows: this.options.maxFlows, idleMs: this.options.idleMs }, 'transparent UDP (tproxy) listening');
  }

  private onDatagram(data: Buffer, from: SockAddr, to: SockAddr): void {
    const key = `${joinHostPort(from.address, from.port)}|${joinHostPort(to.address, to.port)}`;
    let flow = this.flows.get(key);
    if (flow) {
      this.flows.delete(key);
      this.flows.set(key, flow);
    } else {
      flow = this.openFlow(key, from, to);
      if (!flow) return;
    }
    flow.last = Date.now();
    if (!flow.gsock) {
      if (flow.pending.length >= PENDING_DATAGRAMS) return void this.stats.dropped++;
      flow.pending.push(data);
      return;
    }
    this.toGateway(flow, data);
  }

  private toGateway(flow: Flow, data: Buffer): void {
    this.stats.toGateway++;
    flow.gsock!.send(data).catch(() => this.stats.dropped++);
  }

  private openFlow(key: string, client: SockAddr, dest: SockAddr): Flow | undefined {
    if (this.flows.size >= this.options.maxFlows) {
      const oldest = this.flows.values().next().value as Flow;
      this.stats.evicted++;
      trace(`transparent udp: ${this.options.maxFlows} flows open: closing the least recent ${oldest.key}`);
      this.closeFlow(oldest);
    }
    let replyFd: number;
    try {
      replyFd = transparentNative().udpReplySocket(dest.address, dest.port);
    } catch (err) {
      this.stats.dropped++;
      this.options.logger.warn({ dest: joinHostPort(dest.address, dest.port), err: (err as Error).message }, 'transparent udp: cannot bind a reply socket to the original destination');
      return undefined;
    }
    const flow: Flow = { key, client, dest, last: Date.now(), gsock: undefined, pending: [], replyFd, closed: false };
    this.flows.set(key, flow);
    this.stats.flows++;
    const uri = `udp://${joinHostPort(dest.address, dest.port)}`;
    this.gw.udp(uri, { mode: 'connect', ...(this.options.transports ? { transports: this.options.transports } : {}) }).then(
      (gsock) => {
        if (flow.closed) return void gsock.close();
        flow.gsock = gsock;
        gsock.on('message', (payload: Buffer) => {
          if (flow.closed) return;
          flow.last = Date.now();
          try {
            transparentNative().udpSendTo(flow.replyFd, payload, client.address, client.port);
            this.stats.toClient++;
          } catch {
            this.stats.dropped++;
          }
        });
        gsock.on('error', () => {});
        gsock.on('close', () => this.closeFlow(flow));
        trace(`transparent udp ${key} via ${gsock.transport} (${gsock.socketId})`);
        for (const d of flow.pending.splice(0)) this.toGateway(flow, d);
      },
      (err: unknown) => {
        this.stats.refused++;
        this.stats.dropped += flow.pending.length;
        const e = err as Error & { code?: string };
        this.options.logger.warn({ client: joinHostPort(client.address, client.port), connect: uri, code: e.code, err: e.message }, 'transparent udp: gateway refused the flow');
        this.closeFlow(flow);
      },
    );
    return flow;
  }

  private closeFlow(flow: Flow): void {
    if (flow.closed) return;
    flow.closed = true;
    if (this.flows.get(flow.key) === flow) this.flows.delete(flow.key);
    flow.pending.length = 0;
    void flow.gsock?.close().catch(() => {});
    try {
      transparentNative().closeFd(flow.replyFd);
    } catch {
      /* already closed */
    }
  }

  private sweep(): void {
    const cutoff = Date.now() - this.options.idleMs;
    for (const flow of [...this.flows.values()]) if (flow.last < cutoff) this.closeFlow(flow);
  }

  close(): void {
    clearInterval(this.sweepTimer);
    this.sock?.close();
    this.sock = undefined;
    for (const flow of [...this.flows.values()]) this.closeFlow(flow);
  }
}
