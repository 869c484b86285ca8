/**
 * The proxy's SOCKS5 server (RFC 1928, with RFC 1929 username/password):
 * CONNECT to IPv4, IPv6 and domain-name destinations (names are resolved on the
 * gateway side: they travel in the URI), UDP ASSOCIATE relayed through a gateway
 * UDP socket, and BIND answered "command not supported". Failures become the
 * reply codes of socks5.ts's one table.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram';
import { once } from 'node:events';
import { isIP, type Server, type Socket } from 'node:net';
import { SockgateError, SocksProtocolError } from '../../proto/errors.js';
import { tracer } from '../../native/trace.js';
import type { GatewayDatagramSocket, GatewaySocket } from '../sdk/socket.js';
import type { ConnectOptions, LinkableSocket } from '../sdk/gateway.js';
import { formatEndpoint, type LocalEndpoint } from './address.js';
import { resetLocal, type ForwardOptions } from './forward.js';
import type { ProxyGateway } from './link.js';
import { boundAddress, closeServer, listenLocal } from './local.js';
import {
  AddressType,
  Command,
  Method,
  REPLY_NAMES,
  Reply,
  destinationUri,
  encodeAuthStatus,
  encodeMethodChoice,
  encodeReply,
  encodeUdpDatagram,
  parseGreeting,
  parseRequest,
  parseUdpDatagram,
  parseUserPass,
  replyForError,
  type Parsed,
  type SocksAddress,
} from './socks5.js';
import { SessionSet, linkSession, splice } from './splice.js';

const trace = tracer('socks');

/** Greeting, authentication and request must arrive within this time (slowloris guard). */
const HANDSHAKE_TIMEOUT_MS = 10_000;
/** Where UDP ASSOCIATE binds its gateway socket unless configured: every interface of the gateway's host, any port. */
export const DEFAULT_UDP_BIND = 'udp://0.0.0.0:0';

export interface SocksUser {
  readonly username: string;
  readonly password: string;
}

export interface SocksServerOptions extends ForwardOptions {
  /** Where to listen; loopback by default in the CLI. */
  listen: LocalEndpoint;
  /** If non-empty, RFC 1929 username/password is required and must match one of these. */
  users?: readonly SocksUser[];
  /** Gateway URI that UDP ASSOCIATE binds its relay socket to (default udp://0.0.0.0:0). */
  udpBind?: string;
}

/** Counters of the SOCKS server; `replies` counts failure replies by code. */
export interface SocksStats {
  connects: number;
  udpAssociations: number;
  /** Datagrams dropped by the relay: from a stranger, malformed, or fragmented (FRAG != 0). */
  udpDropped: number;
  authFailures: number;
  replies: Record<number, number>;
}


/** SHA-256 of a credential, so comparisons are constant-time whatever the lengths. */
function digest(b: Buffer | string): Buffer {
  return createHash('sha256').update(b).digest();
}

/** Drop the IPv4-mapped prefix (`::ffff:127.0.0.1` → `127.0.0.1`) so addresses compare and encode as the client sees them. */
function plainAddress(a: string | undefined): string {
  if (!a) return '';
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(a);
  return m ? m[1]! : a;
}

/** An all-zero address in a UDP ASSOCIATE request means "not known yet". */
function isUnspecified(host: string): boolean {
  return host === '0.0.0.0' || host === '::';
}

/**
 * Reads the handshake from a socket message by message. The socket is paused
 * between reads; release() hands back bytes read past the request.
 */
class HandshakeReader {
  /** Bytes received and not yet consumed by a parser. */
  private buf: Buffer = Buffer.alloc(0);
  /** Wakes the pending next() when bytes arrive or the socket ends. */
  private wake: (() => void) | undefined;
  /** Set once the socket ended or failed: no more bytes will come. */
  private ended: Error | undefined;

  constructor(private readonly sock: Socket) {
    sock.on('data', this.onData);
    sock.on('end', this.onEnd);
    sock.on('close', this.onEnd);
  }

  private readonly onData = (c: Buffer): void => {
    this.buf = this.buf.length ? Buffer.concat([this.buf, c]) : c;
    this.wake?.();
  };

  private readonly onEnd = (): void => {
    this.ended ??= new SocksProtocolError('client closed the connection during the handshake');
    this.wake?.();
  };

  /** Parse the next message with `parse`, waiting for bytes as needed. */
  async next<T>(parse: (b: Buffer) => Parsed<T>): Promise<T> {
    for (;;) {
      const r = parse(this.buf);
      if (r.ok) {
        this.buf = this.buf.subarray(r.used);
        this.sock.pause();
        return r.value;
      }
      if ('error' in r) throw new SocksProtocolError(r.error, { reply: r.reply });
      if (this.ended) throw this.ended;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        this.sock.resume();
      });
      this.wake = undefined;
    }
  }

  /** Stop reading; the socket stays paused. Returns bytes received past the last message. */
  release(): Buffer {
    this.sock.removeListener('data', this.onData);
    this.sock.removeListener('end', this.onEnd);
    this.sock.removeListener('close', this.onEnd);
    this.sock.pause();
    const rest = this.buf;
    this.buf = Buffer.alloc(0);
    return rest;
  }
}

export class SocksServer {
  readonly stats: SocksStats = { connects: 0, udpAssociations: 0, udpDropped: 0, authFailures: 0, replies: {} };
  /** The listener; undefined until start() and after close(). */
  private server: Server | undefined;
  /** CONNECT sessions spliced until both sides close, and control connections still in the handshake or connecting. */
  private readonly sessions = new SessionSet();
  /** Live UDP associations, each ended by its control connection's close. */
  private readonly associations = new Set<() => void>();
  /** Digests of the accepted credentials; empty means no authentication. */
  private readonly users: ReadonlyArray<{ user: Buffer; pass: Buffer }>;
  private boundValue = '';

  constructor(
    private readonly gw: ProxyGateway,
    private readonly options: SocksServerOptions,
  ) {
    this.users = (options.users ?? []).map((u) => ({ user: digest(u.username), pass: digest(u.password) }));
  }

  /** The address listened on, with the real port. */
  get address(): string {
    return this.boundValue;
  }

  async start(): Promise<void> {
    this.server = await listenLocal(this.options.listen, (sock) => this.onConnection(sock), `--socks ${formatEndpoint(this.options.listen)}`);
    this.boundValue = boundAddress(this.server);
    this.options.logger.info({ listen: this.boundValue, auth: this.users.length ? 'username/password' : 'none' }, 'SOCKS5 server listening');
  }

  private onConnection(sock: Socket): void {
    sock.on('error', () => {});
    const timer = setTimeout(() => {
      trace(`handshake from ${sock.remoteAddress}:${sock.remotePort} timed out`);
      sock.destroy();
    }, HANDSHAKE_TIMEOUT_MS);
    const work = this.handshake(sock, timer).catch((err: unknown) => {
      clearTimeout(timer);
      const reply = err instanceof SocksProtocolError ? err.reply : undefined;
      trace(`connection from ${sock.remoteAddress}:${sock.remotePort}: ${(err as Error).message}`);
      if (reply !== undefined && !sock.destroyed) this.fail(sock, reply);
      else sock.destroy();
    });
    // Aborting a handshake or a connect in flight: reset the client; the close aborts the gateway connect.
    this.sessions.pending(work, () => resetLocal(sock));
  }

  private checkUser(username: Buffer, password: Buffer): boolean {
    const u = digest(username);
    const p = digest(password);
    let ok = false;
    // Compare against every entry so the time taken does not say which name exists.
    for (const e of this.users) ok = (timingSafeEqual(u, e.user) && timingSafeEqual(p, e.pass)) || ok;
    return ok;
  }

  private async handshake(sock: Socket, timer: NodeJS.Timeout): Promise<void> {
    const reader = new HandshakeReader(sock);
    const { methods } = await reader.next(parseGreeting);
    const method = this.users.length ? Method.USERNAME_PASSWORD : Method.NO_AUTH;
    if (!methods.includes(method)) {
      clearTimeout(timer);
      trace(`client offers methods [${methods.join(',')}], server needs ${method}`);
      sock.end(encodeMethodChoice(Method.NO_ACCEPTABLE));
      return;
    }
    sock.write(encodeMethodChoice(method));
    if (method === Method.USERNAME_PASSWORD) {
      const { username, password } = await reader.next(parseUserPass);
      if (!this.checkUser(username, password)) {
        clearTimeout(timer);
        this.stats.authFailures++;
        this.options.logger.warn({ peer: `${sock.remoteAddress}:${sock.remotePort}`, username: username.toString('utf8') }, 'SOCKS5 authentication failed');
        sock.end(encodeAuthStatus(false));
        return;
      }
      sock.write(encodeAuthStatus(true));
    }
    const { command, address } = await reader.next(parseRequest);
    clearTimeout(timer);
    switch (command) {
      case Command.CONNECT:
        return this.connect(sock, reader, address);
      case Command.UDP_ASSOCIATE:
        return this.associate(sock, reader, address);
      default:
        // BIND (0x02) and anything unknown.
        reader.release();
        this.fail(sock, Reply.COMMAND_NOT_SUPPORTED);
    }
  }

  /** Send a failure reply and close. */
  private fail(sock: Socket, reply: Reply): void {
    this.stats.replies[reply] = (this.stats.replies[reply] ?? 0) + 1;
    sock.end(encodeReply(reply));
    setTimeout(() => sock.destroy(), 2_000).unref();
  }

  private async connect(sock: Socket, reader: HandshakeReader, address: SocksAddress): Promise<void> {
    if (this.gw.openForLink) return this.connectLinked(sock, reader, address);
    const uri = destinationUri('tcp', address);
    const ac = new AbortController();
    const onClose = () => ac.abort();
    sock.once('close', onClose);
    let gsock: GatewaySocket;
    try {
      gsock = await this.gw.connect(uri, this.connectOptions(ac.signal));
    } catch (err) {
      sock.removeListener('close', onClose);
      this.connectFailed(sock, reader, uri, err);
      return;
    }
    sock.removeListener('close', onClose);
    const rest = reader.release();
    if (sock.destroyed) {
      gsock.destroy();
      return;
    }
    this.stats.connects++;
    trace(`CONNECT ${uri} via ${gsock.transport} (${gsock.socketId})`);
    sock.write(encodeReply(Reply.SUCCEEDED, plainAddress(gsock.localAddress) || '0.0.0.0', gsock.localPort ?? 0));
    if (rest.length) sock.unshift(rest);
    this.sessions.add(splice(sock, gsock));
  }

  /** What a CONNECT asks of the gateway, linked or not. */
  private connectOptions(signal: AbortSignal): ConnectOptions {
    return {
      signal,
      noDelay: true,
      ...(this.options.transports ? { transports: this.options.transports } : {}),
      ...(this.options.connectTimeoutMs ? { timeoutMs: this.options.connectTimeoutMs } : {}),
    };
  }

  /** A CONNECT the gateway refused or could not open: logged, and the SOCKS reply that says why. */
  private connectFailed(sock: Socket, reader: HandshakeReader, uri: string, err: unknown): void {
    reader.release();
    const reply = replyForError(err);
    const e = err as SockgateError;
    this.options.logger.info({ peer: `${sock.remoteAddress}:${sock.remotePort}`, uri, code: e.code, reply: REPLY_NAMES[reply], err: e.message }, 'SOCKS5 CONNECT failed');
    if (!sock.destroyed) this.fail(sock, reply);
  }

  /** CONNECT through a link: the reply goes out, then the client's socket is joined natively where the SDK can. */
  private async connectLinked(sock: Socket, reader: HandshakeReader, address: SocksAddress): Promise<void> {
    const uri = destinationUri('tcp', address);
    const ac = new AbortController();
    const onClose = () => ac.abort();
    sock.once('close', onClose);
    let pending: LinkableSocket;
    try {
      pending = await this.gw.openForLink!(uri, this.connectOptions(ac.signal));
    } catch (err) {
      sock.removeListener('close', onClose);
      this.connectFailed(sock, reader, uri, err);
      return;
    }
    const rest = reader.release();
    if (sock.destroyed) {
      sock.removeListener('close', onClose);
      pending.destroy();
      return;
    }
    this.stats.connects++;
    const local = /^[a-z0-9]+:\/\/(\[([^\]]+)\]|([^:]+)):([0-9]+)$/.exec(pending.meta.localUri);
    // The reply is written (flushed) before the descriptor changes hands.
    const written = await new Promise<boolean>((res) => sock.write(encodeReply(Reply.SUCCEEDED, plainAddress(local?.[2] ?? local?.[3]) || '0.0.0.0', Number(local?.[4] ?? 0)), (err) => res(!err)));
    sock.removeListener('close', onClose);
    if (!written || sock.destroyed) {
      pending.destroy();
      return;
    }
    sock.pause();
    if (rest.length) sock.unshift(rest);
    const link = pending.link(sock);
    trace(`CONNECT ${uri} via ${link.transport} (${link.socketId}) ${link.native ? 'native' : `JS relay: ${link.relayReason}`}`);
    this.sessions.add(linkSession(link));
  }

  /**
   * UDP ASSOCIATE: a local UDP relay socket for the client, a gateway UDP socket
   * for the far side; both live as long as the control connection.
   */
  private async associate(sock: Socket, reader: HandshakeReader, requested: SocksAddress): Promise<void> {
    const localIp = plainAddress(sock.localAddress) || '127.0.0.1';
    const relay: UdpSocket = createSocket(isIP(localIp) === 6 ? 'udp6' : 'udp4');
    relay.on('error', () => {});
    let gudp: GatewayDatagramSocket;
    try {
      relay.bind(0, localIp);
      await once(relay, 'listening');
      gudp = await this.gw.udp(this.options.udpBind ?? DEFAULT_UDP_BIND, this.options.transports ? { transports: this.options.transports } : {});
    } catch (err) {
      relay.close();
      reader.release();
      const reply = replyForError(err);
      const e = err as SockgateError;
      this.options.logger.info({ peer: `${sock.remoteAddress}:${sock.remotePort}`, code: e.code, reply: REPLY_NAMES[reply], err: e.message }, 'SOCKS5 UDP ASSOCIATE failed');
      if (!sock.destroyed) this.fail(sock, reply);
      return;
    }
    reader.release();
    this.stats.udpAssociations++;
    // RFC 1928 section 7: only datagrams from the client's address (as given, else the control connection's) are relayed.
    const clientIp =
      requested.type !== AddressType.DOMAIN && !isUnspecified(requested.host) ? plainAddress(requested.host) : plainAddress(sock.remoteAddress);
    /** The client's UDP port: as requested, else learned from its first datagram. */
    let clientPort: number | undefined = requested.port || undefined;
    const drop = (why: string) => {
      this.stats.udpDropped++;
      trace(`UDP relay ${gudp.socketId}: drop: ${why}`);
    };
    relay.on('message', (msg: Buffer, from: RemoteInfo) => {
      if (plainAddress(from.address) !== clientIp) return drop(`from a stranger ${from.address}:${from.port}`);
      if (clientPort === undefined) clientPort = from.port;
      else if (from.port !== clientPort) return drop(`from port ${from.port}, the client's is ${clientPort}`);
      const d = parseUdpDatagram(msg);
      if (!d) return drop('malformed SOCKS UDP header');
      if (d.frag !== 0) return drop(`fragment ${d.frag} (fragmentation is not supported)`);
      gudp.send(d.data, destinationUri('udp', d.address)).catch((err: Error) => drop(`gateway send failed: ${err.message}`));
    });
    gudp.on('message', (payload: Buffer, from: { address?: string; port?: number }) => {
      if (clientPort === undefined || from.address === undefined || from.port === undefined) return;
      relay.send(encodeUdpDatagram(plainAddress(from.address), from.port, payload), clientPort, clientIp);
    });
    let ended = false;
    const end = () => {
      if (ended) return;
      ended = true;
      this.associations.delete(end);
      relay.close();
      void gudp.close();
      sock.destroy();
      trace(`UDP association ${gudp.socketId} ended`);
    };
    this.associations.add(end);
    gudp.on('error', (err: Error) => {
      this.options.logger.info({ socket: gudp.socketId, err: err.message }, 'SOCKS5 UDP association: gateway socket failed');
      end();
    });
    gudp.on('close', end);
    sock.on('close', end);
    sock.on('end', () => sock.end());
    const bound = relay.address();
    trace(`UDP ASSOCIATE for ${clientIp}:${clientPort ?? '*'}: relay ${bound.address}:${bound.port}, gateway ${gudp.socketId} ${gudp.localUri}`);
    sock.write(encodeReply(Reply.SUCCEEDED, bound.address, bound.port));
    // The control connection carries nothing more; read (and discard) so its close is seen.
    sock.resume();
  }

  /** Stop listening; let CONNECT sessions finish for up to `drainMs`; end every UDP association and handshake. */
  async close(drainMs = 0): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (server) await closeServer(server);
    for (const end of [...this.associations]) end();
    await this.sessions.drain(drainMs);
  }
}
