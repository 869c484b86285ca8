/**
 * Host policy: who the caller is, and where that identity may open sockets.
 * Guests are untrusted; the host's rules decide.
 *
 * Everything that can be worked out from the configuration is worked out once,
 * in the constructor: token digests, identity objects, and each rule compiled
 * into sets, port ranges and address prefixes. `identify()` and `check()` then
 * only look things up. A configuration the policy cannot make sense of is
 * refused at construction with an InvalidArgumentError naming the key.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { addressBytes, formatAddress, isV4Mapped, parseAddress, type Address } from './address.js';
import { splitListenAddress, type Config, type RuleConfig, type TransportName } from './config.js';
import { InvalidArgumentError, PolicyDeniedError, UnauthenticatedError } from '../proto/errors.js';
import { isTracerEnabled, tracer } from '../native/trace.js';
import { formatUri, type L4Protocol } from '../proto/uri.js';
import { VmIdentities, type VmOrigin } from './vm-identity.js';

/** Tracer name: SOCKGATE_TRACE=policy logs every decision. */
const TRACER = 'policy';
/** Name of the identity given to callers without credentials; reserved, so no configured identity may take it. */
const ANONYMOUS_NAME = 'anonymous';
/** Rule-identity entry that matches every identity. */
const ANY_IDENTITY = '*';
/** Rule name reported when no rule matched; reserved, so no configured rule may take it. */
const DEFAULT_DENY_RULE = 'default-deny';
/**
 * Rule name reported when the destination is in the always-denied set (below)
 * and no rule lists it itself; reserved like default-deny.
 */
const ALWAYS_DENIED_RULE = 'always-denied';
/**
 * Always denied unless a rule lists the address itself: link-local ranges
 * (cloud metadata services, on-link neighbours). Host-name entries never
 * reach them, nor the gateway host's own addresses (DNS rebinding).
 */
const LINK_LOCAL_NETWORKS = ['169.254.0.0/16', 'fe80::/10'];
/** The host's loopback networks: always the gateway host's own addresses. */
const LOOPBACK_NETWORKS = ['127.0.0.0/8', '::1/128'];
/** Longest presented bearer token we hash; anything longer is malformed (grpc-js caps metadata at 8 KiB anyway). */
const MAX_TOKEN_LENGTH = 4096;
/** Longest DNS name without the trailing dot (RFC 1035). */
const MAX_HOSTNAME_LENGTH = 253;
/** Highest TCP/UDP port. */
const MAX_PORT = 65535;

/** `Bearer <token>`; the scheme is case-insensitive (RFC 7235), the token is one run of non-space characters. */
const BEARER = /^bearer[ \t]+(\S+)[ \t]*$/i;
/** One DNS label as sockgate accepts it (same alphabet as uri.ts: letters, digits, `_`, inner `-`). */
const LABEL = /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?$/;
/** A numeric label (decimal or 0x hex): a name ending in one is an address in disguise (`1.2.3`, `0x7f.1`), not a host name. */
const NUMERIC_LABEL = /^([0-9]+|0x[0-9a-f]*)$/;
/** 64 hex digits: a SHA-256 digest as configured in `tokens_sha256`. */
const SHA256_HEX = /^[0-9a-f]{64}$/i;

const trace = tracer(TRACER);
const tracing = isTracerEnabled(TRACER);

export type IdentitySource = 'token' | 'mtls' | 'anonymous' | 'peercred' | 'vm';

export interface Identity {
  readonly name: string;
  readonly admin: boolean;
  /** Open-socket limit for this identity. */
  readonly maxSockets: number;
  readonly source: IdentitySource;
  /** Transports this identity may attach with. */
  readonly transports: ReadonlySet<TransportName>;
}

/** What the service edge extracted from a call. */
export interface CallerCredentials {
  /** The `authorization` metadata value, e.g. `Bearer abc...`. */
  authorization?: string;
  /** Common name of a verified TLS client certificate. */
  tlsCommonName?: string;
  /** SO_PEERCRED uid of a same-host Unix-socket client. */
  peerUid?: number;
  /** The VM a guest's connection came from (vsock CID or VMM socket), as the hypervisor tells it. */
  vm?: VmOrigin;
}

export type Direction = 'connect' | 'listen' | 'bind';

export interface DestinationCheck {
  direction: Direction;
  protocol: L4Protocol;
  /** The host as the guest wrote it (name or address literal). */
  host: string;
  /** The address it resolved to, which the socket will really use. */
  address: string;
  port: number;
}

/** One of the gateway's own listening endpoints (control, data, metrics, rdma), which guests never reach through it. */
export interface GatewayEndpoint {
  /** What it is, for the denial message: "control", "data", ... */
  readonly name: string;
  /** The address it is bound to (0.0.0.0, :: or a host name: every local address). */
  readonly host: string;
  readonly port: number;
}

/** A compiled GatewayEndpoint: `address` undefined means every address of this host. */
interface SelfEndpoint {
  readonly name: string;
  readonly address: Address | undefined;
  readonly port: number;
}

/** An address prefix: the first `bits` bits of `bytes` must match. */
interface Network extends Address {
  readonly bits: number;
}

/** One configured rule, compiled for matching. */
interface CompiledRule {
  readonly name: string;
  readonly allow: boolean;
  /** True when the rule's identities contain "*"; `identities` is then not consulted. */
  readonly anyIdentity: boolean;
  readonly identities: ReadonlySet<string>;
  readonly protocols: ReadonlySet<L4Protocol>;
  readonly directions: ReadonlySet<Direction>;
  /** Inclusive [lo, hi] pairs, lo <= hi, both within 0-65535. */
  readonly ports: readonly (readonly [number, number])[];
  readonly networks: readonly Network[];
  /** Exact host names, lowercased, without a trailing dot. */
  readonly hosts: ReadonlySet<string>;
  /** From `*.example.com` entries: ".example.com", lowercased. */
  readonly suffixes: readonly string[];
  readonly smc: boolean;
}

/** A bearer token known to the policy, by digest only. */
interface TokenEntry {
  /** SHA-256 of the token, 32 bytes. */
  readonly digest: Buffer;
  readonly identity: Identity;
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

/** Lowercase and drop one trailing dot: the form host names are compared in. */
function normalizeHost(host: string): string {
  const lower = host.toLowerCase();
  return lower.endsWith('.') ? lower.slice(0, -1) : lower;
}

/** Is `name` (already normalized) a syntactically valid host name? */
function isHostname(name: string): boolean {
  if (name.length === 0 || name.length > MAX_HOSTNAME_LENGTH) return false;
  const labels = name.split('.');
  if (!labels.every((l) => LABEL.test(l))) return false;
  return !NUMERIC_LABEL.test(labels[labels.length - 1]!);
}

/** True when every byte is zero: 0.0.0.0 or ::. */
function isUnspecified(addr: Address): boolean {
  return addr.bytes.every((b) => b === 0);
}

/** The loopback address of `family`, which is where connect() to the unspecified address really goes. */
function loopbackOf(family: 4 | 6): Address {
  const bytes = new Uint8Array(family === 4 ? 4 : 16);
  if (family === 4) bytes.set([127, 0, 0, 1]);
  else bytes[15] = 1;
  return { family, bytes };
}

function inNetwork(addr: Address, net: Network): boolean {
  if (addr.family !== net.family) return false;
  const whole = net.bits >> 3;
  for (let i = 0; i < whole; i++) if (addr.bytes[i] !== net.bytes[i]) return false;
  const rest = net.bits & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (addr.bytes[whole]! & mask) === (net.bytes[whole]! & mask);
}

/** Is `net` exactly one address (a /32, a /128, or a bare address entry)? */
function isSingleAddress(net: Network): boolean {
  return net.bits === net.bytes.length * 8;
}

function sameAddress(a: Address, b: Address): boolean {
  return a.family === b.family && a.bytes.every((x, i) => x === b.bytes[i]);
}

/** Compile endpoints: an unspecified address or a host name (e.g. localhost) stands for every local address. */
function compileEndpoints(endpoints: readonly GatewayEndpoint[]): SelfEndpoint[] {
  return endpoints
    .filter((e) => e.port > 0)
    .map((e) => {
      const addr = parseAddress(e.host);
      return { name: e.name, port: e.port, address: addr && !isUnspecified(addr) ? addr : undefined };
    });
}

/** The endpoints named by the configuration with a fixed port (port 0 ones are told later, see setGatewayEndpoints). */
function configuredEndpoints(config: Config): GatewayEndpoint[] {
  const out: GatewayEndpoint[] = [];
  for (const name of ['control', 'data', 'metrics'] as const) {
    const a = splitListenAddress(config.listen[name]);
    if ('host' in a) out.push({ name, host: a.host, port: a.port });
  }
  const rdma = config.transports.rdma;
  if (rdma.address !== '') out.push({ name: 'rdma', host: rdma.address, port: rdma.port });
  return out;
}

/** Every address of this host's interfaces (as the kernel reports them now). */
function hostAddresses(): Network[] {
  const out: Network[] = [];
  let interfaces: ReturnType<typeof networkInterfaces>;
  try {
    interfaces = networkInterfaces();
  } catch {
    return out; // no interface list (sandboxed): loopback is still covered by LOOPBACK_NETWORKS
  }
  for (const list of Object.values(interfaces)) {
    for (const i of list ?? []) {
      const addr = parseAddress(i.address);
      if (addr) out.push({ ...addr, bits: addr.bytes.length * 8 });
    }
  }
  return out;
}

/**
 * Does a rule's network cover binding the unspecified address (0.0.0.0, ::)?
 * That binds every interface, so only a whole-family network (0.0.0.0/0, ::/0)
 * or an entry naming exactly 0.0.0.0 / :: covers it, never a narrower range
 * that happens to contain all-zero bits (0.0.0.0/8).
 */
function coversWildcardBind(addr: Address, net: Network): boolean {
  if (addr.family !== net.family) return false;
  return net.bits === 0 || (net.bits === net.bytes.length * 8 && net.bytes.every((b) => b === 0));
}

function compileNetwork(entry: string, key: string): Network {
  const slash = entry.lastIndexOf('/');
  const addrText = slash < 0 ? entry : entry.slice(0, slash);
  const family = isIP(addrText);
  const maxBits = family === 4 ? 32 : 128;
  let bits = maxBits;
  if (slash >= 0) {
    const bitsText = entry.slice(slash + 1);
    bits = /^[0-9]{1,3}$/.test(bitsText) ? Number(bitsText) : NaN;
  }
  if (family === 0 || !(bits >= 0 && bits <= maxBits)) {
    throw new InvalidArgumentError(`${key}: ${JSON.stringify(entry)} is not a valid CIDR`);
  }
  const addr = addressBytes(addrText)!;
  // An IPv4-mapped prefix (::ffff:10.0.0.0/104) is an IPv4 prefix: addresses are folded the same way.
  if (isV4Mapped(addr) && bits >= 96) return { family: 4, bytes: addr.bytes.slice(12), bits: bits - 96 };
  return { ...addr, bits };
}

type PortRange = readonly [number, number];

function compilePort(spec: number | string, key: string, connect: boolean): PortRange {
  let lo: number;
  let hi: number;
  if (typeof spec === 'number') {
    lo = hi = spec;
  } else {
    const m = /^([0-9]{1,5})(?:-([0-9]{1,5}))?$/.exec(spec);
    if (!m) throw new InvalidArgumentError(`${key}: ${JSON.stringify(spec)} is not a port or a range like 1024-65535`);
    lo = Number(m[1]);
    hi = m[2] === undefined ? lo : Number(m[2]);
  }
  const shown = JSON.stringify(spec);
  if (!Number.isInteger(lo) || !Number.isInteger(hi) || lo < 0 || hi > MAX_PORT || lo > MAX_PORT) {
    throw new InvalidArgumentError(`${key}: ${shown} is outside the port range 0-${MAX_PORT}`);
  }
  if (lo > hi) throw new InvalidArgumentError(`${key}: ${shown} is an empty range (${lo} > ${hi})`);
  if (lo === 0 && connect) {
    throw new InvalidArgumentError(
      `${key}: ${shown} includes port 0, which is never a destination for connect; start the range at 1, or restrict the rule's directions to listen and bind`,
    );
  }
  return [lo, hi];
}

function nonEmpty<T>(list: readonly T[], key: string): readonly T[] {
  if (list.length === 0) throw new InvalidArgumentError(`${key}: is empty, so the rule could never match`);
  return list;
}

function compileRule(rule: RuleConfig, index: number, knownIdentities: { has(name: string): boolean }): CompiledRule {
  const key = `rules[${index}]`;
  const identities = nonEmpty(rule.identities, `${key}.identities`);
  identities.forEach((name, j) => {
    if (name !== ANY_IDENTITY && name !== ANONYMOUS_NAME && !knownIdentities.has(name)) {
      throw new InvalidArgumentError(`${key}.identities[${j}]: unknown identity ${JSON.stringify(name)}`);
    }
  });
  const directions = new Set(nonEmpty(rule.directions, `${key}.directions`));
  const connect = directions.has('connect');
  const ports = nonEmpty(rule.ports, `${key}.ports`).map((p, j) => compilePort(p, `${key}.ports[${j}]`, connect));
  const networks: Network[] = [];
  const hosts = new Set<string>();
  const suffixes: string[] = [];
  nonEmpty(rule.destinations, `${key}.destinations`).forEach((entry, j) => {
    const entryKey = `${key}.destinations[${j}]`;
    if (entry.includes('/') || isIP(entry) !== 0) {
      networks.push(compileNetwork(entry, entryKey));
    } else if (entry.startsWith('*.')) {
      const domain = normalizeHost(entry.slice(2));
      if (!isHostname(domain)) {
        throw new InvalidArgumentError(`${entryKey}: ${JSON.stringify(entry)} is not a valid wildcard: expected *.domain`);
      }
      suffixes.push(`.${domain}`);
    } else {
      const host = normalizeHost(entry);
      if (!isHostname(host)) {
        throw new InvalidArgumentError(
          `${entryKey}: ${JSON.stringify(entry)} is not a valid CIDR, IP address, host name or *.domain wildcard`,
        );
      }
      hosts.add(host);
    }
  });
  return {
    name: rule.name,
    allow: rule.action === 'allow',
    anyIdentity: identities.includes(ANY_IDENTITY),
    identities: new Set(identities),
    protocols: new Set(nonEmpty(rule.protocols, `${key}.protocols`)),
    directions,
    ports,
    networks,
    hosts,
    suffixes,
    smc: rule.smc === 'prefer',
  };
}

/** Host policy compiled from one configuration: authentication and destination rules. */
export class Policy {
  /** Every configured token (clear ones hashed here), each digest unique across identities. */
  readonly #tokens: readonly TokenEntry[];
  /** mtls_cn → identity (source 'mtls'); each CN belongs to one identity. */
  readonly #byCommonName: ReadonlyMap<string, Identity>;
  /** SO_PEERCRED uid → identity (source 'peercred'); each uid belongs to one identity. */
  readonly #byUid: ReadonlyMap<number, Identity>;
  /** The anonymous identity, or undefined when anonymous access is disabled. */
  readonly #anonymous: Identity | undefined;
  /** VM guests by vsock CID or VMM socket (vm-identity.ts). */
  readonly #vms: VmIdentities<Identity>;
  /** Rules in configuration order; the first match decides. */
  readonly #rules: readonly CompiledRule[];
  /** The gateway's own listening endpoints: a connect to one matches only a rule listing that exact address and port. */
  #self: readonly SelfEndpoint[];
  /** Loopback, link-local, and this host's interface addresses: never reached by a host-name entry, never by default. */
  #hostNetworks: readonly Network[];
  readonly #linkLocal: readonly Network[] = LINK_LOCAL_NETWORKS.map((n) => compileNetwork(n, 'always-denied'));
  readonly #loopback: readonly Network[] = LOOPBACK_NETWORKS.map((n) => compileNetwork(n, 'always-denied'));

  /** Compile `config`; throws InvalidArgumentError naming the key of anything it cannot use. */
  constructor(config: Config) {
    const enabled = new Set(config.transports.enabled);
    const defaultMax = config.limits.max_sockets_per_identity;
    const make = (name: string, admin: boolean, maxSockets: number, source: IdentitySource, wanted: readonly TransportName[]): Identity =>
      Object.freeze({ name, admin, maxSockets, source, transports: new Set(wanted.filter((t) => enabled.has(t))) });

    const names = new Map<string, number>();
    const tokenOwner = new Map<string, string>();
    const tokens: TokenEntry[] = [];
    const byCommonName = new Map<string, Identity>();
    const byUid = new Map<number, Identity>();
    config.identities.forEach((id, i) => {
      const key = `identities[${i}]`;
      if (id.name === ANONYMOUS_NAME || id.name === ANY_IDENTITY) {
        throw new InvalidArgumentError(`${key}.name: ${JSON.stringify(id.name)} is reserved`);
      }
      const earlier = names.get(id.name);
      if (earlier !== undefined) {
        throw new InvalidArgumentError(`${key}.name: duplicate identity name ${JSON.stringify(id.name)} (also identities[${earlier}])`);
      }
      names.set(id.name, i);
      const wanted = id.transports ?? config.transports.enabled;
      const maxSockets = id.max_sockets ?? defaultMax;
      const asToken = make(id.name, id.admin, maxSockets, 'token', wanted);
      const addToken = (digest: Buffer, tokenKey: string): void => {
        const hex = digest.toString('hex');
        const owner = tokenOwner.get(hex);
        if (owner === id.name) return; // listed twice for the same identity: harmless
        if (owner !== undefined) {
          // Never echo the token: the message may end up in logs.
          throw new InvalidArgumentError(`${tokenKey}: this token is already assigned to identity ${JSON.stringify(owner)}`);
        }
        tokenOwner.set(hex, id.name);
        tokens.push({ digest, identity: asToken });
      };
      id.tokens.forEach((t, j) => addToken(sha256(t), `${key}.tokens[${j}]`));
      id.tokens_sha256.forEach((h, j) => {
        if (!SHA256_HEX.test(h)) throw new InvalidArgumentError(`${key}.tokens_sha256[${j}]: expected 64 hex digits`);
        addToken(Buffer.from(h, 'hex'), `${key}.tokens_sha256[${j}]`);
      });
      if (id.mtls_cn !== undefined) {
        if (id.mtls_cn === '') throw new InvalidArgumentError(`${key}.mtls_cn: must not be empty`);
        const other = byCommonName.get(id.mtls_cn);
        if (other) throw new InvalidArgumentError(`${key}.mtls_cn: ${JSON.stringify(id.mtls_cn)} already maps to identity ${JSON.stringify(other.name)}`);
        byCommonName.set(id.mtls_cn, make(id.name, id.admin, maxSockets, 'mtls', wanted));
      }
      if (id.uids.length) {
        const asPeer = make(id.name, id.admin, maxSockets, 'peercred', wanted);
        id.uids.forEach((uid, j) => {
          const other = byUid.get(uid);
          if (other && other.name !== id.name) {
            throw new InvalidArgumentError(`${key}.uids[${j}]: uid ${uid} already maps to identity ${JSON.stringify(other.name)}`);
          }
          byUid.set(uid, asPeer);
        });
      }
    });

    const ruleNames = new Map<string, number>();
    const rules = config.rules.map((r, i) => {
      if (r.name === DEFAULT_DENY_RULE || r.name === ALWAYS_DENIED_RULE) throw new InvalidArgumentError(`rules[${i}].name: ${JSON.stringify(r.name)} is reserved`);
      const earlier = ruleNames.get(r.name);
      if (earlier !== undefined) {
        throw new InvalidArgumentError(`rules[${i}].name: duplicate rule name ${JSON.stringify(r.name)} (also rules[${earlier}])`);
      }
      ruleNames.set(r.name, i);
      return compileRule(r, i, names);
    });

    this.#tokens = tokens;
    this.#byCommonName = byCommonName;
    this.#byUid = byUid;
    this.#vms = new VmIdentities(config, new Set(names.keys()), (id) => make(id.name, id.admin, id.max_sockets ?? defaultMax, 'vm', id.transports ?? config.transports.enabled));
    this.#anonymous = config.anonymous.enabled
      ? make(ANONYMOUS_NAME, config.anonymous.admin, defaultMax, 'anonymous', config.transports.enabled)
      : undefined;
    this.#rules = rules;
    this.#self = compileEndpoints(configuredEndpoints(config));
    this.#hostNetworks = hostAddresses();
    if (tracing) trace(`compiled ${config.identities.length} identities, ${tokens.length} tokens, ${rules.length} rules`);
  }

  /**
   * Tell the policy where the gateway really listens (ports the kernel chose
   * for port 0 included), once it is bound; also re-reads the host's
   * interface addresses. Connects to these endpoints are always denied unless
   * a rule lists the exact address and the port by itself.
   */
  setGatewayEndpoints(endpoints: readonly GatewayEndpoint[]): void {
    this.#self = compileEndpoints(endpoints);
    this.#hostNetworks = hostAddresses();
  }

  /**
   * Who is calling: a bearer token first, then the mTLS common name, then the
   * SO_PEERCRED uid, then anonymous if enabled. Throws UnauthenticatedError,
   * also for a client certificate whose CN maps to no identity.
   */
  identify(creds: CallerCredentials): Identity {
    if (!creds.vm) return this.identifyCaller(creds);
    const sent = creds.authorization !== undefined || creds.tlsCommonName !== undefined;
    return this.#vms.identify(creds.vm, sent ? this.identifyCaller(creds) : undefined, this.#anonymous);
  }

  /** The identity a VM's guests are, if its CID or VMM socket maps to one. */
  vmIdentityName(o: VmOrigin): string | undefined {
    return this.#vms.nameOf(o);
  }

  private identifyCaller(creds: CallerCredentials): Identity {
    if (creds.authorization !== undefined) {
      const m = creds.authorization.length <= MAX_TOKEN_LENGTH + 16 ? BEARER.exec(creds.authorization) : null;
      if (!m || m[1]!.length > MAX_TOKEN_LENGTH) {
        throw new UnauthenticatedError('malformed authorization metadata: expected "Bearer <token>"');
      }
      const presented = sha256(m[1]!);
      let found: Identity | undefined;
      // Compare against every digest, without stopping early, so timing does not depend on which entry matched.
      for (const t of this.#tokens) {
        if (timingSafeEqual(t.digest, presented)) found = t.identity;
      }
      if (!found) throw new UnauthenticatedError('unknown bearer token');
      return found;
    }
    if (creds.tlsCommonName !== undefined) {
      const id = this.#byCommonName.get(creds.tlsCommonName);
      if (id) return id;
      // A verified certificate names someone: never let it fall through to the uid or anonymous.
      throw new UnauthenticatedError(
        `client certificate CN ${JSON.stringify(Array.from(creds.tlsCommonName).slice(0, 64).join(''))} maps to no identity (set identities[].mtls_cn)`,
      );
    }
    if (creds.peerUid !== undefined) {
      const id = this.#byUid.get(creds.peerUid);
      if (id) return id;
    }
    if (this.#anonymous) return this.#anonymous;
    throw new UnauthenticatedError(
      'no credentials recognized and anonymous access is disabled: send "authorization: Bearer <token>" or a client certificate',
    );
  }

  /**
   * May `identity` open this socket? The first matching rule decides; returns
   * the allowing rule's name, or throws PolicyDeniedError carrying `.rule`.
   */
  check(identity: Identity, dest: DestinationCheck): { rule: string; smc?: true } {
    let addr = parseAddress(dest.address);
    if (!addr) throw new InvalidArgumentError(`policy check: ${JSON.stringify(dest.address)} is not an IP address`);
    const local = dest.direction !== 'connect';
    const unspecified = isUnspecified(addr);
    // connect() to 0.0.0.0 or :: reaches this host's loopback: judge it as loopback, or "deny 127.0.0.0/8" could be sidestepped.
    if (!local && unspecified) addr = loopbackOf(addr.family);
    const host = normalizeHost(dest.host);
    const what = `${dest.direction} ${formatUri(dest.protocol, dest.host, dest.port)}`;
    // The gateway's endpoints are all stream listeners: a datagram to the same port reaches none of them.
    const self = local || dest.protocol !== 'tcp' ? undefined : this.#selfEndpoint(addr, dest.port);
    const reserved = self ?? this.#reservedReason(addr, local);
    /** The first rule that would have matched but for the always-denied set. */
    let blockedBy: string | undefined;
    for (const rule of this.#rules) {
      if (!rule.anyIdentity && !rule.identities.has(identity.name)) continue;
      if (!rule.protocols.has(dest.protocol) || !rule.directions.has(dest.direction)) continue;
      if (!rule.ports.some(([lo, hi]) => dest.port >= lo && dest.port <= hi)) continue;
      const m = this.#destinationMatches(rule, addr, unspecified && local, host, self ? dest.port : undefined, reserved !== undefined);
      if (m === 'blocked') blockedBy ??= rule.name;
      if (m !== 'match') continue;
      if (rule.allow) {
        if (tracing) trace(`${what} (${dest.address}) allowed for "${identity.name}" by rule "${rule.name}"`);
        return rule.smc ? { rule: rule.name, smc: true } : { rule: rule.name };
      }
      if (tracing) trace(`${what} (${dest.address}) denied for "${identity.name}" by rule "${rule.name}"`);
      throw new PolicyDeniedError(`${what} denied for identity "${identity.name}" by rule "${rule.name}"`, { rule: rule.name });
    }
    if (blockedBy !== undefined) {
      const why = `${formatAddress(addr)} port ${dest.port} ${reserved}, which rule "${blockedBy}" does not list itself`;
      if (tracing) trace(`${what} (${dest.address}) denied for "${identity.name}": ${why}`);
      throw new PolicyDeniedError(`${what} denied for identity "${identity.name}": ${why} (rule "${ALWAYS_DENIED_RULE}")`, { rule: ALWAYS_DENIED_RULE });
    }
    if (tracing) trace(`${what} (${dest.address}) denied for "${identity.name}": no rule matched`);
    throw new PolicyDeniedError(
      `${what} denied for identity "${identity.name}": no rule allows it (rule "${DEFAULT_DENY_RULE}")`,
      { rule: DEFAULT_DENY_RULE },
    );
  }

  /** May `identity` attach with `transport`? (Its own list, intersected with the enabled ones.) */
  allowsTransport(identity: Identity, transport: TransportName): boolean {
    return identity.transports.has(transport);
  }

  /**
   * Does the rule's destination list match? 'blocked' when only a network
   * covering a gateway endpoint without naming it (exact address and port), or a host-name entry
   * whose address is in the always-denied set, would have matched.
   */
  #destinationMatches(rule: CompiledRule, addr: Address, wildcardBind: boolean, host: string, selfPort: number | undefined, reserved: boolean): 'match' | 'blocked' | 'no' {
    let blocked = false;
    // "127.0.0.0/8" or "::1" on all ports does not open the gateway's own ports; "127.0.0.1" with "ports: [9464]" does.
    const namesSelf = selfPort !== undefined && rule.ports.some(([lo, hi]) => lo === selfPort && hi === selfPort);
    for (const net of rule.networks) {
      if (!(wildcardBind ? coversWildcardBind(addr, net) : inNetwork(addr, net))) continue;
      if (selfPort !== undefined && !(namesSelf && isSingleAddress(net))) {
        blocked = true;
        continue;
      }
      return 'match';
    }
    const named = rule.hosts.has(host) || rule.suffixes.some((suffix) => host.endsWith(suffix));
    if (named) return reserved ? 'blocked' : 'match';
    return blocked ? 'blocked' : 'no';
  }

  /** Which gateway endpoint a connect to `addr`:`port` would reach, described; undefined if none. */
  #selfEndpoint(addr: Address, port: number): string | undefined {
    for (const e of this.#self) {
      if (e.port !== port) continue;
      if (e.address ? sameAddress(e.address, addr) : this.#isHostAddress(addr)) return `is the gateway's own ${e.name} port`;
    }
    return undefined;
  }

  /** Why a host-name entry may not reach `addr` (always-denied set), or undefined. */
  #reservedReason(addr: Address, local: boolean): string | undefined {
    const net = this.#linkLocal.find((n) => inNetwork(addr, n));
    if (net) return `is link-local (${formatAddress(net)}/${net.bits})`;
    // Listening is always on one of the host's own addresses: only connects are kept off them.
    if (!local && this.#isHostAddress(addr)) return "is an address of the gateway's own host";
    return undefined;
  }

  #isHostAddress(addr: Address): boolean {
    return this.#loopback.some((n) => inNetwork(addr, n)) || this.#hostNetworks.some((n) => inNetwork(addr, n)) || isUnspecified(addr);
  }
}
