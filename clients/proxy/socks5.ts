/**
 * SOCKS5 wire format (RFC 1928) and username/password sub-negotiation
 * (RFC 1929): constants, parsers of what a client sends, encoders of what the
 * server answers, the UDP relay header, and the one table from sockgate errors
 * to reply codes. No I/O here.
 */
import { isIP } from 'node:net';
import {
  ConnectRefusedError,
  ConnectTimeoutError,
  DnsError,
  HostUnreachableError,
  InvalidUriError,
  PolicyDeniedError,
  SockgateError,
  UnauthenticatedError,
} from '../../proto/errors.js';

export const SOCKS_VERSION = 0x05;
/** RFC 1929's sub-negotiation version. */
export const AUTH_VERSION = 0x01;

export enum Method {
  NO_AUTH = 0x00,
  USERNAME_PASSWORD = 0x02,
  NO_ACCEPTABLE = 0xff,
}

export enum Command {
  CONNECT = 0x01,
  BIND = 0x02,
  UDP_ASSOCIATE = 0x03,
}

export enum AddressType {
  IPV4 = 0x01,
  DOMAIN = 0x03,
  IPV6 = 0x04,
}

/** Reply codes (RFC 1928 section 6). */
export enum Reply {
  SUCCEEDED = 0x00,
  GENERAL_FAILURE = 0x01,
  NOT_ALLOWED = 0x02,
  NETWORK_UNREACHABLE = 0x03,
  HOST_UNREACHABLE = 0x04,
  CONNECTION_REFUSED = 0x05,
  TTL_EXPIRED = 0x06,
  COMMAND_NOT_SUPPORTED = 0x07,
  ADDRESS_TYPE_NOT_SUPPORTED = 0x08,
}

/** A SOCKS address: an IP literal (v4 or v6) or a domain name the gateway resolves. */
export interface SocksAddress {
  readonly type: AddressType;
  /** Dotted IPv4, IPv6 text, or the domain name as sent. */
  readonly host: string;
  readonly port: number;
}

/** A parse step's outcome: a value and the bytes it used, more bytes needed, or a protocol error. */
export type Parsed<T> = { ok: true; value: T; used: number } | { ok: false; need: number } | { ok: false; error: string; reply?: Reply };

const need = (n: number): Parsed<never> => ({ ok: false, need: n });

/** VER NMETHODS METHODS... */
export function parseGreeting(b: Buffer): Parsed<{ methods: number[] }> {
  if (b.length < 2) return need(2);
  if (b[0] !== SOCKS_VERSION) return { ok: false, error: `not SOCKS5 (version byte ${b[0]})` };
  const n = b[1]!;
  if (b.length < 2 + n) return need(2 + n);
  return { ok: true, value: { methods: [...b.subarray(2, 2 + n)] }, used: 2 + n };
}

/** VER(1) ULEN UNAME PLEN PASSWD (RFC 1929). */
export function parseUserPass(b: Buffer): Parsed<{ username: Buffer; password: Buffer }> {
  if (b.length < 2) return need(2);
  if (b[0] !== AUTH_VERSION) return { ok: false, error: `username/password sub-negotiation version ${b[0]}, expected 1` };
  const ulen = b[1]!;
  if (b.length < 2 + ulen + 1) return need(2 + ulen + 1);
  const plen = b[2 + ulen]!;
  const total = 3 + ulen + plen;
  if (b.length < total) return need(total);
  return { ok: true, value: { username: b.subarray(2, 2 + ulen), password: b.subarray(3 + ulen, total) }, used: total };
}

/** ATYP DST.ADDR DST.PORT, from `offset`. */
function parseAddress(b: Buffer, offset: number): Parsed<SocksAddress> {
  if (b.length < offset + 1) return need(offset + 1);
  const type = b[offset]!;
  let host: string;
  let at: number;
  switch (type) {
    case AddressType.IPV4:
      if (b.length < offset + 7) return need(offset + 7);
      host = [...b.subarray(offset + 1, offset + 5)].join('.');
      at = offset + 5;
      break;
    case AddressType.IPV6: {
      if (b.length < offset + 19) return need(offset + 19);
      const groups: string[] = [];
      for (let i = 0; i < 8; i++) groups.push(b.readUInt16BE(offset + 1 + 2 * i).toString(16));
      host = compressV6(groups);
      at = offset + 17;
      break;
    }
    case AddressType.DOMAIN: {
      if (b.length < offset + 2) return need(offset + 2);
      const len = b[offset + 1]!;
      if (b.length < offset + 2 + len + 2) return need(offset + 2 + len + 2);
      if (len === 0) return { ok: false, error: 'empty domain name', reply: Reply.HOST_UNREACHABLE };
      host = b.subarray(offset + 2, offset + 2 + len).toString('latin1');
      at = offset + 2 + len;
      break;
    }
    default:
      return { ok: false, error: `address type ${type} not supported`, reply: Reply.ADDRESS_TYPE_NOT_SUPPORTED };
  }
  return { ok: true, value: { type, host, port: b.readUInt16BE(at) }, used: at + 2 - offset };
}

/** The shortest text form of eight hex groups (RFC 5952: the longest run of two or more zero groups becomes `::`). */
function compressV6(groups: string[]): string {
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

/** VER CMD RSV ATYP DST.ADDR DST.PORT. */
export function parseRequest(b: Buffer): Parsed<{ command: number; address: SocksAddress }> {
  if (b.length < 4) return need(4);
  if (b[0] !== SOCKS_VERSION) return { ok: false, error: `request version ${b[0]}, expected 5` };
  const addr = parseAddress(b, 3);
  if (!addr.ok) return 'need' in addr ? need(addr.need) : addr;
  return { ok: true, value: { command: b[1]!, address: addr.value }, used: 3 + addr.used };
}

/** The encoded ATYP + address + port of `host` (an IP literal, else a domain name). */
export function encodeAddress(host: string, port: number): Buffer {
  const family = isIP(host);
  let head: Buffer;
  if (family === 4) {
    head = Buffer.from([AddressType.IPV4, ...host.split('.').map(Number)]);
  } else if (family === 6) {
    head = Buffer.concat([Buffer.from([AddressType.IPV6]), ipv6Bytes(host)]);
  } else {
    const name = Buffer.from(host, 'latin1');
    if (name.length > 255) throw new RangeError(`domain name longer than 255 bytes: ${host.slice(0, 40)}...`);
    head = Buffer.concat([Buffer.from([AddressType.DOMAIN, name.length]), name]);
  }
  const p = Buffer.alloc(2);
  p.writeUInt16BE(port);
  return Buffer.concat([head, p]);
}

/** 16 bytes of an IPv6 literal (with optional embedded IPv4 and zone id, which is dropped). */
function ipv6Bytes(text: string): Buffer {
  let s = text.replace(/%.*$/, '');
  const out = Buffer.alloc(16);
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (v4) {
    const [a, b, c, d] = v4[1]!.split('.').map(Number) as [number, number, number, number];
    s = s.slice(0, -v4[1]!.length) + `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [left, right] = s.includes('::') ? (s.split('::') as [string, string]) : [s, undefined];
  const l = left ? left.split(':') : [];
  const r = right ? right.split(':') : [];
  const groups = right === undefined ? l : [...l, ...Array<string>(8 - l.length - r.length).fill('0'), ...r];
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), 2 * i));
  return out;
}

export function encodeMethodChoice(method: Method): Buffer {
  return Buffer.from([SOCKS_VERSION, method]);
}

export function encodeAuthStatus(ok: boolean): Buffer {
  return Buffer.from([AUTH_VERSION, ok ? 0x00 : 0x01]);
}

/** VER REP RSV ATYP BND.ADDR BND.PORT; the bound address defaults to 0.0.0.0:0. */
export function encodeReply(reply: Reply, bindHost = '0.0.0.0', bindPort = 0): Buffer {
  const host = isIP(bindHost) ? bindHost : '0.0.0.0';
  return Buffer.concat([Buffer.from([SOCKS_VERSION, reply, 0x00]), encodeAddress(host, bindPort)]);
}

/** The gateway URI for a SOCKS destination: IPv6 literals as `tcp6://[...]`, names as given (the gateway resolves them). */
export function destinationUri(protocol: 'tcp' | 'udp', a: SocksAddress): string {
  return a.type === AddressType.IPV6 ? `${protocol}6://[${a.host}]:${a.port}` : `${protocol}://${a.host}:${a.port}`;
}

/** A datagram through the UDP relay: RSV(2) FRAG(1) ATYP DST.ADDR DST.PORT DATA. */
export interface UdpRelayDatagram {
  readonly frag: number;
  readonly address: SocksAddress;
  readonly data: Buffer;
}

/** Parse a client's UDP relay datagram; undefined if malformed. */
export function parseUdpDatagram(b: Buffer): UdpRelayDatagram | undefined {
  if (b.length < 4) return undefined;
  const addr = parseAddress(b, 3);
  if (!addr.ok) return undefined;
  return { frag: b[2]!, address: addr.value, data: b.subarray(3 + addr.used) };
}

/** Wrap a datagram from `host:port` for the client. */
export function encodeUdpDatagram(host: string, port: number, data: Buffer): Buffer {
  return Buffer.concat([Buffer.from([0x00, 0x00, 0x00]), encodeAddress(host, port), data]);
}

/** The errno code behind a sockgate error, if its cause was a system error. */
function causeCode(err: SockgateError): string | undefined {
  const cause = err.cause as NodeJS.ErrnoException | undefined;
  return typeof cause?.code === 'string' ? cause.code : undefined;
}

/**
 * The reply code for a failed CONNECT: the one table.
 * - denied by policy, or an unknown caller: 0x02 connection not allowed by ruleset
 * - refused: 0x05; network unreachable (ENETUNREACH, ENETDOWN): 0x03; other unreachable: 0x04
 * - name not resolved: 0x04 host unreachable (what RFC 1928 clients expect for DNS failures)
 * - connect timeout: 0x06 TTL expired (as Tor does; the closest code to "timed out")
 * - a destination the gateway cannot parse: 0x08 address type not supported
 * - anything else (gateway unavailable, limits, internal): 0x01 general failure
 */
export function replyForError(err: unknown): Reply {
  if (!(err instanceof SockgateError)) return Reply.GENERAL_FAILURE;
  if (err instanceof PolicyDeniedError || err instanceof UnauthenticatedError) return Reply.NOT_ALLOWED;
  if (err instanceof ConnectRefusedError) return Reply.CONNECTION_REFUSED;
  if (err instanceof HostUnreachableError) {
    const code = causeCode(err);
    return code === 'ENETUNREACH' || code === 'ENETDOWN' || /network is unreachable|ENETUNREACH/i.test(err.message) ? Reply.NETWORK_UNREACHABLE : Reply.HOST_UNREACHABLE;
  }
  if (err instanceof DnsError) return Reply.HOST_UNREACHABLE;
  if (err instanceof ConnectTimeoutError) return Reply.TTL_EXPIRED;
  if (err instanceof InvalidUriError) return Reply.ADDRESS_TYPE_NOT_SUPPORTED;
  return Reply.GENERAL_FAILURE;
}

export const REPLY_NAMES: Readonly<Record<number, string>> = {
  0x00: 'succeeded',
  0x01: 'general SOCKS server failure',
  0x02: 'connection not allowed by ruleset',
  0x03: 'network unreachable',
  0x04: 'host unreachable',
  0x05: 'connection refused',
  0x06: 'TTL expired',
  0x07: 'command not supported',
  0x08: 'address type not supported',
};
