/**
 * Gateway configuration: the embedded default, a YAML file, SOCKGATE_* environment
 * overrides and CLI `--set key=value` flags, merged in that order and validated
 * with one schema. Every error names the offending key.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import { z } from 'zod';
import { InvalidArgumentError } from '../proto/errors.js';
import { TRANSPORT_NAMES } from '../proto/transports.js';
import { ruleSmcSchema, smcSchema } from './config-smc.js';
import { shmSchema } from './config-shm.js';

/** The embedded default: loopback only, loopback destinations only. */
export const DEFAULT_CONFIG_YAML = `# sockgate embedded default configuration
listen:
  control: 127.0.0.1:7070
  data: 127.0.0.1:7071
  metrics: 127.0.0.1:9464
transports:
  enabled: [shm, rdma, tcp, grpc]
  attach_token_ttl_ms: 10000
  shm:
    path: ""
    slots_per_session: 1024
    initial_ring_bytes: 16384
    max_ring_bytes: 4194304
    max_ring_bytes_per_identity: 268435456
    max_ring_bytes_total: 1073741824
    spin_us: 100
    shrink_idle_ms: 5000
    max_preissued_slots: 16
  rdma:
    address: ""
    port: 0
    ring_bytes: 1048576
    slots: 16
    credits: 64
    keepalive_ms: 5000
    resume_ms: 0
    poll_us: 0
    max_sessions: 256
    max_sessions_per_identity: 16
    max_preissued_slots: 4
socket:
  connect_timeout_ms: 10000
  high_watermark_bytes: 1048576
  max_datagram_bytes: 65507
  udp_idle_timeout_ms: 300000
limits:
  max_sockets: 65536
  max_sockets_per_identity: 4096
  max_control_connections: 1024
  max_control_connections_per_peer: 64
  control_first_call_timeout_ms: 30000
  control_idle_timeout_ms: 300000
  max_control_streams_per_connection: 4096
  max_pending_sockets: 4096
  max_pending_sockets_per_identity: 256
  max_pending_attach_ms: 60000
  max_negotiate_rounds: 16
  max_fallbacks_per_socket: 32
  max_listen_backlog_per_identity: 8192
  udp_queue_bytes: 1048576
  udp_queue_datagrams: 1024
  udp_queue_bytes_per_identity: 67108864
  udp_queue_bytes_total: 268435456
  max_recv_subscribers: 4
  list_sockets_page_size: 1000
  max_confirm_batch: 1024
  data_preamble_timeout_ms: 5000
  data_parallel_open_wait_ms: 1000
  max_unauthenticated_data_connections: 1024
  max_unauthenticated_data_connections_per_peer: 128
  refusal_log_interval_ms: 10000
# Callers without credentials. "enabled" left unset: on while no identities are
# configured (this loopback-only default), off as soon as any are. Never admin
# unless admin: true is written out.
anonymous:
  admin: false
# Connects to loopback; the gateway's own ports never match (README "Policy").
# Listens and binds: IPv4 loopback, ports 1024 and up: no wildcard, no
# privileged port, and no [::1]:P in front of a host service on 127.0.0.1:P.
rules:
  - name: loopback-only
    action: allow
    directions: [connect]
    destinations: [127.0.0.0/8, "::1/128", localhost]
  - name: loopback-listen
    action: allow
    directions: [listen, bind]
    destinations: [127.0.0.0/8]
    ports: [1024-65535]
# Kernel SMC is off: no rule says smc: prefer, smc.data_port false, smc.peer_dial off (README "Kernel SMC").
# VM guests: vsock_uds (Firecracker / Cloud Hypervisor VMM sockets) and vsock
# (native AF_VSOCK, vhost-vsock) are off unless configured (README "VM guests").
shutdown:
  drain_timeout_ms: 10000
telemetry:
  log_level: info
  traces: none
`;

/** `host:port`, `[v6]:port` (port 0-65535, a real IPv6 literal in brackets), `unix:/path`, or "" (disabled). */
function isListenAddress(s: string): boolean {
  if (s === '') return true;
  if (s.startsWith('unix:')) return s.length > 'unix:'.length;
  const m = /^(?:\[([^\]]+)\]|([^:\s[\]]+)):([0-9]{1,5})$/.exec(s);
  if (!m) return false;
  if (m[1] !== undefined && isIP(m[1]) !== 6) return false;
  return Number(m[3]) <= 65535;
}

/** `host:port`, `[v6]:port`, or `unix:/path`. */
const listenAddress = z.string().refine(isListenAddress, {
  message: 'expected host:port (port 0-65535), [ipv6]:port or unix:/path (or "" to disable)',
});

const transportName = z.enum(TRANSPORT_NAMES);
const protocolName = z.enum(['tcp', 'udp']);
const directionName = z.enum(['connect', 'listen', 'bind']);
const portSpec = z.union([
  z.number().int().min(0).max(65535),
  z.string().regex(/^[0-9]{1,5}(-[0-9]{1,5})?$/, 'expected a port or a range like 1024-65535'),
]);
const positiveInt = z.number().int().positive();

const absolutePath = z.string().min(1).refine((p) => p.startsWith('/'), { message: 'expected an absolute path' });
/** A vsock port a guest connects to on the host (0xFFFFFFFF is VMADDR_PORT_ANY). */
const vsockPort = z.number().int().min(1).max(0xffffffff - 1);

const identitySchema = z.strictObject({
  name: z.string().min(1).regex(/^[A-Za-z0-9_.@:-]+$/, 'letters, digits and _.@:- only'),
  /** Bearer tokens, in clear. Prefer token_sha256. */
  tokens: z.array(z.string().min(16, 'tokens must be at least 16 characters')).default([]),
  /** Hex SHA-256 digests of bearer tokens. */
  tokens_sha256: z.array(z.string().regex(/^[0-9a-f]{64}$/, 'expected 64 lowercase hex digits')).default([]),
  /** Client-certificate subject common name that maps to this identity (mTLS). */
  mtls_cn: z.string().optional(),
  /** Same-host clients (Unix control socket, shm attach) whose SO_PEERCRED uid maps to this identity. */
  uids: z.array(z.number().int().min(0)).default([]),
  /** VM guests on native AF_VSOCK (`vsock:`) whose peer CID maps to this identity (1 = vsock_loopback, 3+ = guests). */
  vsock_cids: z.array(z.number().int().min(1).max(0xfffffffe)).default([]),
  /** VM guests behind these VMM vsock sockets (Firecracker `uds_path`, `vsock_uds`) map to this identity. */
  vmm_paths: z.array(absolutePath).default([]),
  admin: z.boolean().default(false),
  max_sockets: positiveInt.optional(),
  /** Transports this identity may use; all enabled ones if unset. */
  transports: z.array(transportName).optional(),
});

const isPowerOfTwo = (n: number) => n > 0 && (n & (n - 1)) === 0;
const ringBytes = (min: number) =>
  z.number().int().min(min).max(64 << 20).refine(isPowerOfTwo, { message: 'expected a power of two' });

/** "" (rdma not served) or a concrete IP address (that of an RDMA device's netdev; clients dial it). */
function isRdmaAddress(s: string): boolean {
  if (s === '') return true;
  const family = isIP(s);
  if (family === 0) return false;
  return family === 4 ? s !== '0.0.0.0' : !/^[0:]+$/.test(s);
}

const rdmaSchema = z
  .strictObject({
    /**
     * IP address of a local RDMA device (its netdev's address, e.g. the rxe0
     * interface's) the rdma_cm listener binds and clients are told to connect
     * to; "" = the rdma transport is not served (offers are declined NO_RDMA_DEVICE).
     */
    address: z.string().refine(isRdmaAddress, { message: 'expected "" or the IP address of an RDMA device (not a wildcard or a host name)' }).default(''),
    /** rdma_cm port; 0 = any free port (clients are told the bound one). */
    port: z.number().int().min(0).max(65535).default(0),
    /**
     * The gateway's receive ring per socket (each slot of a connection), in
     * bytes. 1 MiB: a stream needs about bandwidth x round trip of it, or
     * the writer stops for consumer-cursor updates (on Soft-RoCE with
     * millisecond round trips 256 KiB stayed well below 4 MiB rings).
     */
    ring_bytes: ringBytes(4096).default(1 << 20),
    /**
     * Sockets (slots) per client connection. Every slot's ring is registered
     * (pinned) for the connection's life, on both sides, each way: a session
     * pins slots x ring_bytes of receive rings plus as much staging for the
     * client's rings (16 x 1 MiB: 32 MiB on the gateway, native/RDMA.md
     * "Memory"); a socket beyond the slots rides an overflow session (a
     * further connection of the client), within max_sessions*.
     */
    slots: z.number().int().min(1).max(4096).default(16),
    /** Receive work requests the gateway posts per connection (flow-control credits of the peer). */
    credits: z.number().int().min(4).max(1024).default(64),
    /** Idle keepalive interval; a connection silent for 3 intervals fails its sockets (ERR_SOCKGATE_RDMA_TIMEOUT). 0 = off. */
    keepalive_ms: z.number().int().min(0).max(3_600_000).refine((v) => v === 0 || v >= 100, { message: 'expected 0 (off) or at least 100' }).default(5000),
    /** Live failover: a socket whose connection fails waits this long (ms) for the client's resume on the tcp data port, else ends with the connection's ERR_SOCKGATE_RDMA_* error. 0 = off (native/RDMA.md "Live failover"). */
    resume_ms: z.number().int().min(0).max(600_000).default(0),
    /**
     * Busy-poll each connection's completion queue up to this long (µs) before
     * arming its completion channel and sleeping; adaptive (halves while idle,
     * so idle connections cost no CPU). 0 = off (default): a spinning thread
     * takes the core the peer's work needs on small or emulated hosts
     * (native/RDMA.md "Polling").
     */
    poll_us: z.number().int().min(0).max(1000).default(0),
    /** Client sessions (one RC connection each, pending ones included) across the gateway; 0 declines every rdma offer. */
    max_sessions: z.number().int().min(0).default(256),
    /** Client sessions one identity may hold. */
    max_sessions_per_identity: positiveInt.default(16),
    /**
     * Slots pre-issued to a connected session and not used yet, at most (RdmaOffer.preissue: a later Connect names
     * one and needs no BIND; native/RDMA.md "Pre-issued slots"). They count against `slots`; 4 of the default 16
     * leaves most for the reserve + BIND flow. 0 = none.
     */
    max_preissued_slots: z.number().int().min(0).max(4096).default(4),
  })
  .prefault({});

const ruleSchema = z.strictObject({
  name: z.string().min(1),
  action: z.enum(['allow', 'deny']),
  /** Identity names this rule applies to; "*" or unset means everyone. */
  identities: z.array(z.string()).default(['*']),
  protocols: z.array(protocolName).default(['tcp', 'udp']),
  directions: z.array(directionName).default(['connect', 'listen', 'bind']),
  /** CIDRs (10.0.0.0/8), addresses, host names (db.internal) or wildcards (*.internal). */
  destinations: z.array(z.string().min(1)).min(1),
  ports: z.array(portSpec).default(['1-65535']),
  /** `prefer`: open host stream sockets this rule allows as kernel SMC (server/config-smc.ts). */
  smc: ruleSmcSchema,
});

/** `addr/bits` with a real address and a prefix length its family allows. */
function isCidr(s: string): boolean {
  const slash = s.lastIndexOf('/');
  if (slash < 0) return false;
  const family = isIP(s.slice(0, slash));
  const bits = s.slice(slash + 1);
  return family !== 0 && /^[0-9]{1,3}$/.test(bits) && Number(bits) <= (family === 4 ? 32 : 128);
}

/**
 * A peer gateway route: host stream sockets whose destination matches are
 * opened through the peer gateway `via` (with the SDK) instead of directly;
 * the peer opens the real host socket under its own policy. This gateway's
 * rules still decide first whether the caller may reach the destination.
 */
const peerSchema = z.strictObject({
  /** Every key given must match; the first matching route wins. */
  match: z
    .strictObject({
      /** The destination address (as resolved here) is inside this CIDR. */
      cidr: z.string().refine(isCidr, { message: 'expected a CIDR like 10.0.0.0/8 or fd00::/8' }).optional(),
      /** The destination host as the caller wrote it: a name, a *.domain wildcard, or an address literal. */
      host: z
        .string()
        .regex(/^(\*\.)?[A-Za-z0-9_.:-]+$/, 'expected a host name, a *.domain wildcard or an address')
        .optional(),
      /** Destination port or range, e.g. 5432 or "1024-65535". */
      ports: portSpec
        .refine((v) => String(v).split('-').every((n) => Number(n) <= 65535) && Number(String(v).split('-')[0]) <= Number(String(v).split('-').at(-1)), {
          message: 'expected a port or a range within 0-65535',
        })
        .optional(),
    })
    .refine((m) => m.cidr !== undefined || m.host !== undefined || m.ports !== undefined, { message: 'give at least one of cidr, host, ports' }),
  /** The peer gateway's gRPC control address: host:port, [v6]:port or unix:/path. */
  via: listenAddress.refine((s) => s !== '', { message: 'expected the peer gateway\'s control address' }),
  /** Data planes to the peer, most preferred first (rdma where this host has a device, else the next). */
  transports: z.array(z.enum(['rdma', 'tcp', 'grpc'])).min(1).default(['rdma', 'tcp']),
  /** Bearer token identifying this gateway to the peer's policy. */
  token: z.string().min(1).optional(),
  /** TLS to the peer's control port: PEM files (CA to verify it; cert + key for mTLS). */
  tls: z
    .strictObject({ ca: z.string().optional(), cert: z.string().optional(), key: z.string().optional() })
    .refine((t) => (t.cert === undefined) === (t.key === undefined), { message: 'cert and key go together' })
    .optional(),
});

export const configSchema = z.strictObject({
  listen: z.strictObject({
    control: listenAddress,
    data: listenAddress,
    metrics: listenAddress,
  }),
  tls: z
    .strictObject({
      cert: z.string(),
      key: z.string(),
      /** CA bundle for client certificates; enables mTLS identities. */
      ca: z.string().optional(),
      require_client_cert: z.boolean().default(false),
    })
    .optional(),
  transports: z.strictObject({
    enabled: z.array(transportName).min(1),
    attach_token_ttl_ms: positiveInt,
    /** Host the data port is advertised as; defaults to listen.data's host. */
    data_host: z.string().optional(),
    /**
     * Relay the tcp plane's stream sockets on the native I/O thread (splice(2),
     * payload never in JS) when the addon loaded; false forces the JS relay.
     */
    tcp_native: z.boolean().default(true),
    /** The shm data plane (same-host clients; needs the native addon). */
    shm: shmSchema,
    /** The rdma data plane (clients on other hosts with an RDMA device; needs the native addon built with rdma-core). */
    rdma: rdmaSchema,
  }),
  socket: z.strictObject({
    connect_timeout_ms: positiveInt,
    /** Per-direction user-space buffer bound; reading pauses above it. */
    high_watermark_bytes: z.number().int().min(1024),
    max_datagram_bytes: z.number().int().min(1).max(65535),
    udp_idle_timeout_ms: positiveInt,
  }),
  limits: z.strictObject({
    max_sockets: positiveInt,
    max_sockets_per_identity: positiveInt,
    /** Control-plane connections held at once, all listeners together; more are closed on accept. */
    max_control_connections: positiveInt.default(1024),
    /** Control-plane connections held at once from one peer (TCP address, Unix uid, VMM socket). */
    max_control_connections_per_peer: positiveInt.default(64),
    /** A control connection that made no identified call this long after it was accepted is closed; 0 = never. */
    control_first_call_timeout_ms: z.number().int().min(0).default(30_000),
    /** A control connection with no call in flight this long is closed (GOAWAY; clients reconnect); 0 = never. */
    control_idle_timeout_ms: z.number().int().min(0).default(300_000),
    /** Concurrent gRPC streams per control connection (each grpc-plane socket holds one; HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). */
    max_control_streams_per_connection: positiveInt.default(4096),
    /** Sockets waiting for their data channel (PENDING_ATTACH), gateway-wide and per identity. */
    max_pending_sockets: positiveInt.default(4096),
    max_pending_sockets_per_identity: positiveInt.default(256),
    /** Longest a socket may wait for its data channel, from its creation, however many Negotiate rounds it takes. */
    max_pending_attach_ms: positiveInt.default(60_000),
    /** Negotiate calls one socket may make; beyond them it is refused and the socket aborted. */
    max_negotiate_rounds: positiveInt.default(16),
    /** Fallback records kept per socket (the first ones; later ones are only counted). */
    max_fallbacks_per_socket: positiveInt.default(32),
    /** Sum of the Listen backlogs one identity's listeners may hold (each listener is capped at 4096 too). */
    max_listen_backlog_per_identity: positiveInt.default(8192),
    /** Bytes of received datagrams queued per UDP socket for its readers; more are dropped (and counted). */
    udp_queue_bytes: z.number().int().min(65536).default(1 << 20),
    /** Datagrams queued per UDP socket for its readers; more are dropped (and counted). */
    udp_queue_datagrams: positiveInt.default(1024),
    /** Bytes of received datagrams queued over all of one identity's UDP sockets, and over the gateway's. */
    udp_queue_bytes_per_identity: z.number().int().min(65536).default(64 << 20),
    udp_queue_bytes_total: z.number().int().min(65536).default(256 << 20),
    /** RecvFrom streams one UDP socket may have at once. */
    max_recv_subscribers: positiveInt.default(4),
    /** Most sockets one ListSockets answer carries (the rest via next_page_token); a byte budget under the gRPC message limit applies too. */
    list_sockets_page_size: z.number().int().min(1).max(10_000).default(1000),
    // Sockets one ConfirmEnds call may name (the SDK batches end-of-stream confirmations).
    max_confirm_batch: z.number().int().min(1).max(65_536).default(1024),
    /** A tcp data-port connection that sends no complete preamble within this time is closed. */
    data_preamble_timeout_ms: z.number().int().min(100).max(120_000).default(5000),
    // How long a data connection whose token is not issued yet waits for its Connect (parallel open).
    data_parallel_open_wait_ms: z.number().int().min(0).max(120_000).default(1000),
    /** Data-port connections still in their preamble (unauthenticated), gateway-wide and per peer address. */
    max_unauthenticated_data_connections: positiveInt.default(1024),
    max_unauthenticated_data_connections_per_peer: positiveInt.default(128),
    /** Refusal logs (bad preambles, over-limit connections) are one line per interval with a count of the suppressed ones. */
    refusal_log_interval_ms: positiveInt.default(10_000),
  }),
  identities: z.array(identitySchema).default([]),
  anonymous: z
    .strictObject({
      /**
       * Callers without credentials get the identity "anonymous". Unset: on
       * while no identities are configured, off once any are (see withAnonymousDefault).
       */
      enabled: z.boolean().optional(),
      /** Only ever true when written out. */
      admin: z.boolean().default(false),
    })
    .prefault({}),
  rules: z.array(ruleSchema),
  /** Kernel SMC: host sockets and the data port as SMC, UEID/PNET at start (server/config-smc.ts). */
  smc: smcSchema,
  /** Peer gateway routes (first match wins); none by default. */
  peers: z.array(peerSchema).default([]),
  shutdown: z.strictObject({ drain_timeout_ms: positiveInt }),
  /**
   * Accept VM guests through the Firecracker / Cloud Hypervisor Unix-socket form
   * of vsock: a guest's connection to host port P arrives on `<uds_path>_P`. For
   * every VM (`path`, each of `vms`, each VMM socket in `watch.dir`) the control
   * plane serves on `<uds_path>_<control_port>`, the tcp data plane accepts on
   * `<uds_path>_<data_port>`, and negotiation tells clients the vsock data port.
   * A guest is the identity its VM maps to (vms[].identity or identities[].vmm_paths).
   */
  vsock_uds: z
    .strictObject({
      /** One VM's vsock `uds_path` (Firecracker `vsock.uds_path`, Cloud Hypervisor `--vsock socket=`); same as vms: [{ path }]. */
      path: absolutePath.optional(),
      /** VMs known at start: each VMM's `uds_path` and the identity its guests are (else identities[].vmm_paths decides). */
      vms: z.array(z.strictObject({ path: absolutePath, identity: z.string().min(1).optional() })).default([]),
      /**
       * A directory VMMs put their `uds_path` sockets in: a socket whose name ends
       * in `suffix` appearing adds that VM, its disappearing removes it (no restart).
       */
      watch: z.strictObject({ dir: absolutePath, suffix: z.string().min(1).regex(/^[^/]+$/, 'a file name suffix, no "/"').default('.sock') }).optional(),
      /** VMs served at once (each holds two listening sockets); more in `watch.dir` are refused and logged. */
      max_vms: positiveInt.default(1024),
      control_port: vsockPort,
      data_port: vsockPort,
    })
    .refine((v) => v.control_port !== v.data_port, { message: 'control_port and data_port must differ', path: ['data_port'] })
    .refine((v) => v.path !== undefined || v.vms.length > 0 || v.watch !== undefined, { message: 'give path, vms or watch' })
    .optional(),
  /**
   * Native AF_VSOCK listeners (vhost-vsock hosts: QEMU/KVM, libvirt, Kata,
   * crosvm): guests connect to host CID 2, `control_port` and `data_port`; a
   * guest is the identity its peer CID maps to (identities[].vsock_cids).
   */
  vsock: z
    .strictObject({
      /** The CID to bind: "any" (VMADDR_CID_ANY, the usual), 2 (host), or 1 (local, vsock_loopback tests). */
      cid: z.union([z.literal('any'), z.number().int().min(1).max(0xfffffffe)]).default('any'),
      control_port: vsockPort,
      data_port: vsockPort,
      /** Listen backlog of each vsock listener. */
      backlog: z.number().int().min(1).max(4096).default(128),
    })
    .refine((v) => v.control_port !== v.data_port, { message: 'control_port and data_port must differ', path: ['data_port'] })
    .optional(),
  telemetry: z.strictObject({
    log_level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']),
    traces: z.enum(['none', 'console', 'memory']),
  }),
}).refine((c) => !c.vsock || !c.vsock_uds || c.vsock.data_port === c.vsock_uds.data_port, {
  // A guest is told one vsock data port (TcpAttach.vsock_port), whichever form carries it.
  message: 'must equal vsock_uds.data_port (guests are told one vsock data port)',
  path: ['vsock', 'data_port'],
});

/**
 * A configuration that defines identities and says nothing about
 * `anonymous.enabled` has anonymous access off: an operator who adds
 * identities means callers to be one of them. Without identities (the
 * embedded loopback-only default) it is on, never admin unless written out.
 */
function withAnonymousDefault<T extends { identities: readonly unknown[]; anonymous: { enabled?: boolean | undefined; admin: boolean } }>(
  c: T,
): Omit<T, 'anonymous'> & { anonymous: { enabled: boolean; admin: boolean; explicit?: boolean } } {
  // `explicit`: written out as true. VM guests mapped to no identity are anonymous only then (README "VM identities").
  return { ...c, anonymous: { ...c.anonymous, enabled: c.anonymous.enabled ?? c.identities.length === 0, explicit: c.anonymous.enabled === true } };
}

export type Config = ReturnType<typeof withAnonymousDefault<z.infer<typeof configSchema>>>;
export type IdentityConfig = z.infer<typeof identitySchema>;
export type RuleConfig = z.infer<typeof ruleSchema>;
export type PeerConfig = z.infer<typeof peerSchema>;
export type TransportName = z.infer<typeof transportName>;

type Tree = Record<string, unknown>;

function isTree(v: unknown): v is Tree {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Deep merge: objects merge key by key, everything else (arrays too) replaces. */
export function mergeConfig(base: unknown, over: unknown): unknown {
  if (!isTree(base) || !isTree(over)) return over === undefined ? base : over;
  const out: Tree = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = mergeConfig(base[k], v);
  return out;
}

/** Parse a scalar from an env var or flag: YAML rules, so `[a, b]`, `true` and `42` work. */
function parseScalar(key: string, text: string): unknown {
  try {
    return parseYaml(text);
  } catch (err) {
    throw new InvalidArgumentError(`config key "${key}": cannot parse value ${JSON.stringify(text)}`, { cause: err });
  }
}

/** Set `a.b.c` in a tree. */
function setPath(tree: Tree, path: string[], value: unknown): void {
  let node = tree;
  for (const part of path.slice(0, -1)) {
    if (!isTree(node[part])) node[part] = {};
    node = node[part] as Tree;
  }
  node[path[path.length - 1]!] = value;
}

/**
 * SOCKGATE_<SECTION>__<KEY>=value overrides, e.g. SOCKGATE_LISTEN__CONTROL=0.0.0.0:7070
 * or SOCKGATE_LIMITS__MAX_SOCKETS=100. Variables without `__` are not config.
 */
export function envOverrides(env: NodeJS.ProcessEnv): Tree {
  const out: Tree = {};
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith('SOCKGATE_') || value === undefined) continue;
    const rest = name.slice('SOCKGATE_'.length);
    if (!rest.includes('__')) continue;
    const path = rest.toLowerCase().split('__');
    setPath(out, path, parseScalar(path.join('.'), value));
  }
  return out;
}

/** `key.path=value` flags. */
export function flagOverrides(sets: readonly string[]): Tree {
  const out: Tree = {};
  for (const s of sets) {
    const eq = s.indexOf('=');
    if (eq <= 0) throw new InvalidArgumentError(`--set ${JSON.stringify(s)}: expected key.path=value`);
    const key = s.slice(0, eq);
    setPath(out, key.split('.'), parseScalar(key, s.slice(eq + 1)));
  }
  return out;
}

/** Validate a merged tree; the error lists every bad key with its path. */
export function validateConfig(tree: unknown, source: string): Config {
  const result = configSchema.safeParse(tree);
  if (result.success) return withAnonymousDefault(result.data);
  const problems = result.error.issues.flatMap((i) => {
    // An unknown key is reported at its parent; name the key itself instead.
    if (i.code === 'unrecognized_keys') return i.keys.map((k) => `  ${[...i.path, k].join('.')}: unknown key`);
    const key = i.path.length ? i.path.join('.') : '(top level)';
    return [`  ${key}: ${i.message}`];
  });
  throw new InvalidArgumentError(`invalid configuration (${source}):\n${problems.join('\n')}`);
}

export interface LoadConfigOptions {
  /** YAML file path; the embedded default alone if unset. */
  file?: string;
  env?: NodeJS.ProcessEnv;
  /** `key.path=value` overrides, applied last. */
  sets?: readonly string[];
  /** Already-parsed overrides applied after `sets` (tests, embedding). */
  overrides?: unknown;
}

function readYaml(text: string, source: string): unknown {
  try {
    return parseYaml(text) ?? {};
  } catch (err) {
    const where = err instanceof YAMLParseError && err.linePos ? ` at line ${err.linePos[0].line}` : '';
    throw new InvalidArgumentError(`cannot parse ${source}${where}: ${(err as Error).message}`, { cause: err });
  }
}

/** Load the effective configuration: default ← file ← env ← flags ← overrides. */
export function loadConfig(options: LoadConfigOptions = {}): Config {
  let tree = readYaml(DEFAULT_CONFIG_YAML, 'embedded default');
  const sources = ['embedded default'];
  if (options.file) {
    let text: string;
    try {
      text = readFileSync(options.file, 'utf8');
    } catch (err) {
      throw new InvalidArgumentError(`cannot read config file ${options.file}: ${(err as Error).message}`, { cause: err });
    }
    tree = mergeConfig(tree, readYaml(text, options.file));
    sources.push(options.file);
  }
  const env = envOverrides(options.env ?? {});
  if (Object.keys(env).length) {
    tree = mergeConfig(tree, env);
    sources.push('environment');
  }
  if (options.sets?.length) {
    tree = mergeConfig(tree, flagOverrides(options.sets));
    sources.push('--set flags');
  }
  if (options.overrides !== undefined) {
    tree = mergeConfig(tree, options.overrides);
    sources.push('overrides');
  }
  return validateConfig(tree, sources.join(' + '));
}

/** Split `host:port`, `[v6]:port`; `unix:/path` gives `{ path }`. */
export function splitListenAddress(addr: string): { host: string; port: number } | { path: string } {
  if (addr.startsWith('unix:')) return { path: addr.slice('unix:'.length) };
  const colon = addr.lastIndexOf(':');
  const host = addr.slice(0, colon).replace(/^\[|\]$/g, '');
  return { host, port: Number(addr.slice(colon + 1)) };
}
