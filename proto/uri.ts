/**
 * Socket URIs: `tcp://host:port`, `udp://host:port`, `tcp6://[addr]:port`,
 * `udp6://[addr]:port`. The URI is the only address form on the control plane.
 */
import { isIP } from 'node:net';
import { InvalidUriError } from './errors.js';

export type L4Protocol = 'tcp' | 'udp';
export type Scheme = 'tcp' | 'udp' | 'tcp6' | 'udp6';

export interface SocketUri {
  scheme: Scheme;
  protocol: L4Protocol;
  /** 6 for tcp6/udp6 (IPv6 only), 0 for tcp/udp (either family). */
  family: 0 | 6;
  /** Host name or address literal, without brackets. */
  host: string;
  /** 0 only where `allowPortZero` was given (listen/bind). */
  port: number;
  /** 4 or 6 if `host` is an address literal, 0 for a host name. */
  hostIsIp: 0 | 4 | 6;
}

const SCHEMES: ReadonlySet<string> = new Set(['tcp', 'udp', 'tcp6', 'udp6']);
/** RFC 1123 host names; also accepts single labels such as `localhost`. */
const HOSTNAME = /^(?=.{1,253}$)([a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9])?)*\.?$/;
const MAX_URI_LENGTH = 1024;
/**
 * A last label that is a number (decimal, or 0x hex): the name is then an
 * IPv4 address in one of inet_aton's legacy forms (`2130706433`, `0x7f.1`,
 * `1.2.3`) or a malformed one (`999.1.1.1`), which getaddrinfo would turn into
 * an address rather than look up. Refused, as the WHATWG URL host parser does.
 */
const NUMERIC_LAST_LABEL = /(^|\.)([0-9]+|0x[0-9a-f]*)\.?$/i;

export interface ParseUriOptions {
  /** Accept port 0 (the kernel picks), for listen and bind. */
  allowPortZero?: boolean;
  /** Restrict to one protocol; the error names what was expected. */
  protocol?: L4Protocol;
}

/** Parse and validate a socket URI; every failure names the problem. */
export function parseUri(input: unknown, options: ParseUriOptions = {}): SocketUri {
  if (typeof input !== 'string' || input.length === 0) {
    throw new InvalidUriError('URI is empty: expected scheme://host:port, e.g. tcp://example.com:443');
  }
  if (input.length > MAX_URI_LENGTH) throw new InvalidUriError(`URI is longer than ${MAX_URI_LENGTH} characters`);
  const shown = JSON.stringify(input.length > 80 ? `${input.slice(0, 80)}...` : input);
  const sep = input.indexOf('://');
  if (sep < 0) throw new InvalidUriError(`URI ${shown} has no scheme: expected tcp://, udp://, tcp6:// or udp6://`);
  const scheme = input.slice(0, sep).toLowerCase();
  if (!SCHEMES.has(scheme)) {
    throw new InvalidUriError(`URI ${shown} has unknown scheme "${input.slice(0, sep)}": expected tcp, udp, tcp6 or udp6`);
  }
  const protocol: L4Protocol = scheme.startsWith('tcp') ? 'tcp' : 'udp';
  if (options.protocol && options.protocol !== protocol) {
    throw new InvalidUriError(`URI ${shown} is ${protocol}, but this call needs a ${options.protocol} URI`);
  }
  let rest = input.slice(sep + 3);
  const slash = rest.search(/[/?#]/);
  if (slash >= 0) {
    if (rest.slice(slash) !== '/') throw new InvalidUriError(`URI ${shown} has a path, query or fragment: only host:port is allowed`);
    rest = rest.slice(0, slash);
  }
  if (rest.includes('@')) throw new InvalidUriError(`URI ${shown} has user info: only host:port is allowed`);
  let host: string;
  let portText: string | undefined;
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']');
    if (close < 0) throw new InvalidUriError(`URI ${shown} has an unterminated IPv6 literal: missing "]"`);
    host = rest.slice(1, close);
    const after = rest.slice(close + 1);
    if (after === '') portText = undefined;
    else if (after.startsWith(':')) portText = after.slice(1);
    else throw new InvalidUriError(`URI ${shown} has unexpected text after the IPv6 literal`);
    if (isIP(host) !== 6) throw new InvalidUriError(`URI ${shown} has an invalid IPv6 address "${host}"`);
  } else {
    const colon = rest.lastIndexOf(':');
    if (colon < 0) {
      host = rest;
      portText = undefined;
    } else {
      host = rest.slice(0, colon);
      portText = rest.slice(colon + 1);
    }
    if (host.includes(':')) throw new InvalidUriError(`URI ${shown}: IPv6 addresses must be in brackets, e.g. tcp6://[::1]:80`);
  }
  if (host === '') throw new InvalidUriError(`URI ${shown} is missing a host`);
  if (portText === undefined || portText === '') throw new InvalidUriError(`URI ${shown} is missing a port`);
  if (!/^[0-9]{1,5}$/.test(portText)) throw new InvalidUriError(`URI ${shown} has a port that is not a number: "${portText}"`);
  const port = Number(portText);
  if (port > 65535) throw new InvalidUriError(`URI ${shown} has port ${port}, above the maximum 65535`);
  if (port === 0 && !options.allowPortZero) throw new InvalidUriError(`URI ${shown} has port 0: a destination port must be 1-65535`);
  const ipVersion = isIP(host);
  const hostIsIp = (ipVersion === 4 ? 4 : ipVersion === 6 ? 6 : 0) as 0 | 4 | 6;
  if (hostIsIp === 0 && !HOSTNAME.test(host)) throw new InvalidUriError(`URI ${shown} has an invalid host name "${host}"`);
  if (hostIsIp === 0 && NUMERIC_LAST_LABEL.test(host)) {
    throw new InvalidUriError(`URI ${shown} has "${host}", which is neither a valid IP address nor a host name`);
  }
  const family: 0 | 6 = scheme.endsWith('6') ? 6 : 0;
  if (family === 6 && hostIsIp === 4) throw new InvalidUriError(`URI ${shown} is ${scheme} but names an IPv4 address`);
  return { scheme: scheme as Scheme, protocol, family, host: hostIsIp === 0 ? host.replace(/\.$/, '').toLowerCase() : host, port, hostIsIp };
}

/** Format an address as a URI; IPv6 addresses get the `6` scheme and brackets. */
export function formatUri(protocol: L4Protocol, host: string, port: number): string {
  if (isIP(host) === 6) return `${protocol}6://[${host}]:${port}`;
  return `${protocol}://${host}:${port}`;
}
