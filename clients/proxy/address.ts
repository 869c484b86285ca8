/**
 * The address forms the proxy takes on its command line and in its config:
 * where the gateway is (`--gateway`), where to listen locally (`-L`, `--socks`),
 * and where a reverse forward delivers (`-R`). Every parse error names the
 * flag or key and what was expected.
 */
import { isIP } from 'node:net';
import { InvalidArgumentError } from '../../proto/errors.js';
import { parseUri } from '../../proto/uri.js';

/** The host's context id in AF_VSOCK (VMADDR_CID_HOST): where a guest reaches its host. */
export const VSOCK_CID_HOST = 2;
/** Largest vsock port; 0xFFFFFFFF is VMADDR_PORT_ANY. */
const VSOCK_PORT_MAX = 0xfffffffe;

/** How the proxy reaches its gateway. */
export type GatewayTarget =
  | { readonly kind: 'tcp'; readonly host: string; readonly port: number }
  | { readonly kind: 'unix'; readonly path: string }
  | { readonly kind: 'vsock'; readonly cid: number; readonly port: number };

/** A local stream endpoint: where the proxy listens, or what a reverse forward dials. */
export type LocalEndpoint =
  | { readonly kind: 'tcp'; readonly host: string; readonly port: number }
  | { readonly kind: 'unix'; readonly path: string }
  /** A guest's vsock port, reached from the VMM host through `<udsPath>` + `CONNECT <port>\n` (Firecracker, Cloud Hypervisor). */
  | { readonly kind: 'vsock-uds'; readonly udsPath: string; readonly port: number };

function fail(what: string, input: string, expected: string): never {
  throw new InvalidArgumentError(`${what}: ${JSON.stringify(input)} is not valid: expected ${expected}`);
}

function parsePort(text: string, allowZero: boolean): number | undefined {
  if (!/^[0-9]{1,5}$/.test(text)) return undefined;
  const n = Number(text);
  return n <= 65535 && (allowZero || n > 0) ? n : undefined;
}

/** `host:port`, `[v6]:port`; undefined if `s` is neither. */
function splitHostPort(s: string, allowZero: boolean): { host: string; port: number } | undefined {
  const m = /^(?:\[([^\]]+)\]|([^:[\]\s]+)):([0-9]+)$/.exec(s);
  if (!m) return undefined;
  if (m[1] !== undefined && isIP(m[1]) !== 6) return undefined;
  const port = parsePort(m[3]!, allowZero);
  return port === undefined ? undefined : { host: m[1] ?? m[2]!, port };
}

/** Format host and port as `host:port` or `[v6]:port`. */
export function joinHostPort(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * Parse `--gateway`: `host:port`, `[v6]:port`, `unix:/path`, or `vsock:<cid>:<port>`
 * (`vsock:2:7070` is the host seen from a VM guest; `vsock:7070` means CID 2).
 */
export function parseGatewayTarget(input: string, what = '--gateway'): GatewayTarget {
  const expected = 'host:port, [ipv6]:port, unix:/path or vsock:<cid>:<port> (e.g. vsock:2:7070)';
  if (input.startsWith('unix:')) {
    const path = input.slice('unix:'.length);
    if (!path) fail(what, input, expected);
    return { kind: 'unix', path };
  }
  if (input.startsWith('vsock:')) {
    const parts = input.slice('vsock:'.length).split(':');
    if (parts.length < 1 || parts.length > 2 || parts.some((p) => !/^[0-9]{1,10}$/.test(p))) fail(what, input, expected);
    const cid = parts.length === 2 ? Number(parts[0]) : VSOCK_CID_HOST;
    const port = Number(parts[parts.length - 1]);
    if (cid > 0xffffffff || port < 1 || port > VSOCK_PORT_MAX) fail(what, input, `${expected}; the port is 1..${VSOCK_PORT_MAX}`);
    return { kind: 'vsock', cid, port };
  }
  const hp = splitHostPort(input, false);
  if (!hp) fail(what, input, expected);
  return { kind: 'tcp', ...hp };
}

/** The gRPC target string of a tcp or unix gateway target. */
export function grpcTarget(t: Exclude<GatewayTarget, { kind: 'vsock' }>): string {
  return t.kind === 'unix' ? `unix:${t.path}` : joinHostPort(t.host, t.port);
}

/**
 * Parse a local listen address: `host:port`, `[v6]:port`, a bare `port`
 * (on `defaultHost`), or `unix:/path`. Port 0 lets the kernel choose.
 */
export function parseListenAddress(input: string, what: string, defaultHost = '127.0.0.1'): LocalEndpoint {
  const expected = 'host:port, [ipv6]:port, port or unix:/path';
  if (input.startsWith('unix:')) {
    const path = input.slice('unix:'.length);
    if (!path) fail(what, input, expected);
    return { kind: 'unix', path };
  }
  const bare = parsePort(input, true);
  if (bare !== undefined) return { kind: 'tcp', host: defaultHost, port: bare };
  const hp = splitHostPort(input, true);
  if (!hp) fail(what, input, expected);
  return { kind: 'tcp', ...hp };
}

/**
 * Parse what a reverse forward dials: `host:port`, `[v6]:port`, a bare `port`
 * (on 127.0.0.1), `unix:/path`, or `vsock-uds:<uds_path>:<port>` (a guest's
 * vsock port, dialed from the VMM host through the VMM's Unix socket).
 */
export function parseDialTarget(input: string, what: string): LocalEndpoint {
  const expected = 'host:port, [ipv6]:port, port, unix:/path or vsock-uds:/path/to/v.sock:<port>';
  if (input.startsWith('vsock-uds:')) {
    const rest = input.slice('vsock-uds:'.length);
    const colon = rest.lastIndexOf(':');
    const udsPath = rest.slice(0, colon);
    const portText = rest.slice(colon + 1);
    if (colon <= 0 || !/^[0-9]{1,10}$/.test(portText)) fail(what, input, expected);
    const port = Number(portText);
    if (port < 1 || port > VSOCK_PORT_MAX) fail(what, input, `${expected}; the port is 1..${VSOCK_PORT_MAX}`);
    return { kind: 'vsock-uds', udsPath, port };
  }
  const ep = parseListenAddress(input, what);
  if (ep.kind === 'tcp' && ep.port === 0) fail(what, input, `${expected} with a port other than 0`);
  return ep;
}

/** One `-L listen=uri`: listen locally, open a gateway socket to `uri` per connection. */
export interface LocalForwardSpec {
  readonly listen: LocalEndpoint;
  /** A `tcp://` or `tcp6://` URI the gateway connects to. */
  readonly connect: string;
}

/** One `-R uri=target`: the gateway listens on `uri`; each inbound connection is piped to `target`. */
export interface RemoteForwardSpec {
  /** A `tcp://` or `tcp6://` URI the gateway listens on (port 0: the gateway's host picks). */
  readonly listen: string;
  readonly target: LocalEndpoint;
}

/** Split `a=b` at the `=` (URIs and addresses never contain one). */
function splitSpec(input: string, what: string, expected: string): [string, string] {
  const eq = input.indexOf('=');
  if (eq <= 0 || eq === input.length - 1 || input.indexOf('=', eq + 1) >= 0) fail(what, input, expected);
  return [input.slice(0, eq), input.slice(eq + 1)];
}

/** Parse `-L 127.0.0.1:5432=tcp://db:5432` (also `5432=...`, `[::1]:5432=...`, `unix:/run/db.sock=...`). */
export function parseLocalForward(input: string, what = '-L'): LocalForwardSpec {
  const expected = 'listen=uri, e.g. 127.0.0.1:5432=tcp://db:5432';
  const [l, r] = splitSpec(input, what, expected);
  const listen = parseListenAddress(l, `${what} ${input} (listen address)`);
  try {
    parseUri(r, { protocol: 'tcp' });
  } catch (err) {
    throw new InvalidArgumentError(`${what}: ${JSON.stringify(input)}: ${(err as Error).message}`, { cause: err });
  }
  return { listen, connect: r };
}

/** Parse `-R tcp://0.0.0.0:8080=127.0.0.1:80` (target also `unix:/path` or `vsock-uds:/path:port`). */
export function parseRemoteForward(input: string, what = '-R'): RemoteForwardSpec {
  const expected = 'uri=target, e.g. tcp://0.0.0.0:8080=127.0.0.1:80';
  const [l, r] = splitSpec(input, what, expected);
  try {
    parseUri(l, { protocol: 'tcp', allowPortZero: true });
  } catch (err) {
    throw new InvalidArgumentError(`${what}: ${JSON.stringify(input)}: ${(err as Error).message}`, { cause: err });
  }
  return { listen: l, target: parseDialTarget(r, `${what} ${input} (target)`) };
}

/** Human form of an endpoint, for logs and the ready line. */
export function formatEndpoint(ep: LocalEndpoint): string {
  switch (ep.kind) {
    case 'tcp':
      return joinHostPort(ep.host, ep.port);
    case 'unix':
      return `unix:${ep.path}`;
    case 'vsock-uds':
      return `vsock-uds:${ep.udsPath}:${ep.port}`;
  }
}
