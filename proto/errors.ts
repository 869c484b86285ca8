/**
 * sockgate's errors: one base class, one stable `code` per subclass, and the
 * one table that turns them into gRPC statuses at the service edge and back
 * into the same classes in the SDK.
 */
import { Metadata, status, type ServiceError, type StatusObject } from '@grpc/grpc-js';
import type { DeclineReason } from './gen/sockgate/v1/transport.js';

/** Trailer key carrying the stable error code next to the gRPC status. */
export const ERROR_CODE_METADATA_KEY = 'sockgate-error-code';
/** Trailer key carrying the policy rule that decided a denial, if any. */
export const ERROR_RULE_METADATA_KEY = 'sockgate-rule';

export interface SockgateErrorOptions {
  cause?: unknown;
  /** Policy rule name, for denials. */
  rule?: string;
}

/** Base of every error sockgate raises on purpose. */
export class SockgateError extends Error {
  /** Stable machine-readable code, e.g. `ERR_SOCKGATE_POLICY_DENIED`. */
  readonly code: string = 'ERR_SOCKGATE';
  /** gRPC status this error travels as. */
  readonly grpcStatus: status = status.INTERNAL;
  /** The policy rule that decided a denial. */
  readonly rule?: string;

  constructor(message: string, options: SockgateErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    if (options.rule !== undefined) this.rule = options.rule;
  }
}

function define(code: string, grpcStatus: status, defaultMessage: string) {
  return class extends SockgateError {
    static readonly code = code;
    override readonly code = code;
    override readonly grpcStatus = grpcStatus;
    constructor(message: string = defaultMessage, options?: SockgateErrorOptions) {
      super(message, options);
    }
  };
}

export class InvalidArgumentError extends define('ERR_SOCKGATE_INVALID_ARGUMENT', status.INVALID_ARGUMENT, 'invalid argument') {}
export class InvalidUriError extends define('ERR_SOCKGATE_INVALID_URI', status.INVALID_ARGUMENT, 'invalid socket URI') {}
export class DatagramTooLargeError extends define('ERR_SOCKGATE_DATAGRAM_TOO_LARGE', status.INVALID_ARGUMENT, 'datagram exceeds the maximum UDP payload') {}
export class PolicyDeniedError extends define('ERR_SOCKGATE_POLICY_DENIED', status.PERMISSION_DENIED, 'denied by policy') {}
export class UnauthenticatedError extends define('ERR_SOCKGATE_UNAUTHENTICATED', status.UNAUTHENTICATED, 'unknown or missing credentials') {}
export class LimitExceededError extends define('ERR_SOCKGATE_LIMIT_EXCEEDED', status.RESOURCE_EXHAUSTED, 'resource limit reached') {}
export class SocketNotFoundError extends define('ERR_SOCKGATE_SOCKET_NOT_FOUND', status.NOT_FOUND, 'no such socket') {}
export class WrongSocketKindError extends define('ERR_SOCKGATE_WRONG_SOCKET_KIND', status.FAILED_PRECONDITION, 'operation not valid for this kind of socket') {}
export class SocketClosedError extends define('ERR_SOCKGATE_SOCKET_CLOSED', status.FAILED_PRECONDITION, 'socket is closed') {}
export class ConnectRefusedError extends define('ERR_SOCKGATE_CONNECT_REFUSED', status.UNAVAILABLE, 'connection refused') {}
export class HostUnreachableError extends define('ERR_SOCKGATE_HOST_UNREACHABLE', status.UNAVAILABLE, 'host or network unreachable') {}
export class ConnectTimeoutError extends define('ERR_SOCKGATE_CONNECT_TIMEOUT', status.DEADLINE_EXCEEDED, 'connect timed out') {}
export class DnsError extends define('ERR_SOCKGATE_DNS', status.NOT_FOUND, 'host name could not be resolved') {}
export class AddressInUseError extends define('ERR_SOCKGATE_ADDRESS_IN_USE', status.ALREADY_EXISTS, 'address already in use') {}
export class ConnectionResetError extends define('ERR_SOCKGATE_CONNECTION_RESET', status.UNAVAILABLE, 'connection reset by peer') {}
export class HostSocketError extends define('ERR_SOCKGATE_HOST_SOCKET', status.UNAVAILABLE, 'host socket error') {}
export class NoTransportError extends define('ERR_SOCKGATE_NO_TRANSPORT', status.FAILED_PRECONDITION, 'no offered transport could be used') {}
export class AttachFailedError extends define('ERR_SOCKGATE_ATTACH_FAILED', status.UNAUTHENTICATED, 'attach token rejected') {}
/** A Connect named an shm slot not pre-issued to the caller's session, or one in use (ShmOffer.slot). */
export class SlotRefusedError extends define('ERR_SOCKGATE_SLOT_REFUSED', status.FAILED_PRECONDITION, 'pre-issued slot refused') {}
export class ProtocolError extends define('ERR_SOCKGATE_PROTOCOL', status.INVALID_ARGUMENT, 'data-plane protocol violation') {}
export class RingCorruptError extends define('ERR_SOCKGATE_RING_CORRUPT', status.DATA_LOSS, 'shared ring corrupted by peer') {}
export class GatewayUnavailableError extends define('ERR_SOCKGATE_GATEWAY_UNAVAILABLE', status.UNAVAILABLE, 'gateway unavailable') {}
export class ShuttingDownError extends define('ERR_SOCKGATE_SHUTTING_DOWN', status.UNAVAILABLE, 'gateway is shutting down') {}
export class AbortedError extends define('ERR_SOCKGATE_ABORTED', status.CANCELLED, 'operation aborted') {}
export class RdmaUnavailableError extends define('ERR_SOCKGATE_RDMA_UNAVAILABLE', status.UNAVAILABLE, 'RDMA is not available') {}
/** The RDMA peer broke the data protocol (bad cursor, slot, credits): its connection and every socket on it end. */
export class RdmaProtocolError extends define('ERR_SOCKGATE_RDMA_PROTOCOL', status.DATA_LOSS, 'RDMA peer violated the data protocol') {}
/** Nothing heard from the RDMA peer for three keepalive intervals. */
export class RdmaTimeoutError extends define('ERR_SOCKGATE_RDMA_TIMEOUT', status.UNAVAILABLE, 'RDMA connection timed out') {}
export class RdmaDeviceRemovedError extends define('ERR_SOCKGATE_RDMA_DEVICE_REMOVED', status.UNAVAILABLE, 'RDMA device removed') {}
export class RdmaPortDownError extends define('ERR_SOCKGATE_RDMA_PORT_DOWN', status.UNAVAILABLE, 'RDMA port went down') {}
/** The queue pair entered the error state (async event or a failed work completion). */
export class RdmaQpFatalError extends define('ERR_SOCKGATE_RDMA_QP_FATAL', status.UNAVAILABLE, 'RDMA queue pair failed') {}
/** The RDMA peer disconnected. */
export class RdmaDisconnectedError extends define('ERR_SOCKGATE_RDMA_DISCONNECTED', status.UNAVAILABLE, 'RDMA peer disconnected') {}
export class NativeError extends define('ERR_SOCKGATE_NATIVE', status.INTERNAL, 'native addon error') {}
export class KernelRulesError extends define('ERR_SOCKGATE_KERNEL_RULES', status.FAILED_PRECONDITION, 'nft or ip could not apply the transparent-mode rules') {}
/** A SOCKS client broke the protocol (clients/proxy); answered with `reply` (a SOCKS5 reply code) once the request stage was reached. */
export class SocksProtocolError extends define('ERR_SOCKGATE_SOCKS_PROTOCOL', status.INVALID_ARGUMENT, 'SOCKS protocol violation') {
  readonly reply?: number;
  constructor(message?: string, options?: SockgateErrorOptions & { reply?: number | undefined }) {
    super(message, options);
    if (options?.reply !== undefined) this.reply = options.reply;
  }
}

// Refinements: more detail under a table code (they travel as their parent's code).

/** Why the gateway refused an attach token (server/attach.ts AttachRegistry). */
export type RedeemFailure = 'wrong_token' | 'replayed' | 'expired' | 'wrong_transport';

/** An attach token the gateway refused; on the wire ERR_SOCKGATE_ATTACH_FAILED. */
export class AttachTokenError extends AttachFailedError {
  constructor(readonly failure: RedeemFailure) {
    super(`attach token rejected: ${failure.replace('_', ' ')}`);
  }
}

/**
 * An rdma attach that failed for a reason the gateway should record (the SDK's
 * retry reports `declineReason` in its Negotiate, instead of CONNECT_FAILED).
 */
export class RdmaAttachError extends AttachFailedError {
  constructor(
    message: string,
    readonly declineReason: DeclineReason,
    options?: SockgateErrorOptions,
  ) {
    super(message, options);
  }
}

/** The gateway refused a client's shm attach (native/attach-client.ts); `status` is its reply's. Travels as ERR_SOCKGATE_NATIVE. */
export class AttachRefusedError extends NativeError {
  readonly status: number;
  constructor(status: number) {
    super(`attach refused by the gateway (status ${status})`);
    this.status = status;
  }
}

/** AF_VSOCK cannot be used in this process (no addon, no kernel support, or built without it). Travels as ERR_SOCKGATE_NATIVE. */
export class VsockUnavailableError extends NativeError {
  constructor(what: string, reason: string) {
    super(`${what}: AF_VSOCK is not available in this process: ${reason}`);
  }
}

type ErrorClass = (new (message?: string, options?: SockgateErrorOptions) => SockgateError) & { code: string };

/** Every error class, by stable code: the one table. */
export const ERROR_CLASSES: ReadonlyMap<string, ErrorClass> = new Map(
  (
    [
      InvalidArgumentError, InvalidUriError, DatagramTooLargeError, PolicyDeniedError, UnauthenticatedError,
      LimitExceededError, SocketNotFoundError, WrongSocketKindError, SocketClosedError, ConnectRefusedError,
      HostUnreachableError, ConnectTimeoutError, DnsError, AddressInUseError, ConnectionResetError, HostSocketError,
      NoTransportError, AttachFailedError, SlotRefusedError, ProtocolError, RingCorruptError, GatewayUnavailableError,
      ShuttingDownError, AbortedError, RdmaUnavailableError, RdmaProtocolError, RdmaTimeoutError,
      RdmaDeviceRemovedError, RdmaPortDownError, RdmaQpFatalError, RdmaDisconnectedError, NativeError, KernelRulesError,
      SocksProtocolError,
    ] as ErrorClass[]
  ).map((c) => [c.code, c]),
);

/**
 * Map a Node system error (errno code) from a host socket operation to ours.
 * `what` names the operation and target for the message, e.g. "connect tcp://a:1".
 */
export function fromSystemError(err: unknown, what: string): SockgateError {
  if (err instanceof SockgateError) return err;
  const e = err as NodeJS.ErrnoException;
  const code = typeof e?.code === 'string' ? e.code : undefined;
  const detail = `${what}: ${e?.message ?? String(err)}`;
  // A native link that ended with one of our own codes (e.g. ERR_SOCKGATE_RDMA_DEVICE_REMOVED) keeps it.
  const own = code?.startsWith('ERR_SOCKGATE_') ? ERROR_CLASSES.get(code) : undefined;
  if (own) return new own(detail, { cause: err });
  switch (code) {
    case 'ECONNREFUSED':
      return new ConnectRefusedError(detail, { cause: err });
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'EHOSTDOWN':
    case 'ENETDOWN':
    case 'EADDRNOTAVAIL':
      return new HostUnreachableError(detail, { cause: err });
    case 'ETIMEDOUT':
      return new ConnectTimeoutError(detail, { cause: err });
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EAI_FAIL':
    case 'EAI_NONAME':
    case 'EAI_NODATA':
      return new DnsError(detail, { cause: err });
    case 'EADDRINUSE':
      return new AddressInUseError(detail, { cause: err });
    case 'EACCES':
    case 'EPERM':
      return new PolicyDeniedError(`${detail} (refused by the host)`, { cause: err });
    case 'ECONNRESET':
    case 'EPIPE':
      return new ConnectionResetError(detail, { cause: err });
    case 'EMSGSIZE':
      return new DatagramTooLargeError(detail, { cause: err });
    default:
      return new HostSocketError(detail, { cause: err });
  }
}

/** The status object a server handler passes to its callback for `err`. */
export function toStatus(err: unknown): Partial<StatusObject> & { code: status; details: string } {
  const e = err instanceof SockgateError ? err : new SockgateError(err instanceof Error ? err.message : String(err));
  const metadata = new Metadata();
  metadata.set(ERROR_CODE_METADATA_KEY, e.code);
  if (e.rule !== undefined) metadata.set(ERROR_RULE_METADATA_KEY, e.rule);
  // grpc-js percent-encodes the message and throws on a lone surrogate: never hand it one.
  return { code: e.grpcStatus, details: e.message.toWellFormed(), metadata };
}

/** Turn a gRPC error received by a client back into the matching class. */
export function fromServiceError(err: ServiceError | Error): SockgateError {
  if (err instanceof SockgateError) return err;
  const se = err as Partial<ServiceError>;
  const code = se.metadata?.get(ERROR_CODE_METADATA_KEY)[0];
  const rule = se.metadata?.get(ERROR_RULE_METADATA_KEY)[0];
  const message = se.details ?? err.message;
  const cls = typeof code === 'string' ? ERROR_CLASSES.get(code) : undefined;
  const options: SockgateErrorOptions = { cause: err };
  if (typeof rule === 'string') options.rule = rule;
  if (cls) return new cls(message, options);
  switch (se.code) {
    case status.UNAVAILABLE:
      return new GatewayUnavailableError(message, options);
    case status.CANCELLED:
      return new AbortedError(message, options);
    case status.DEADLINE_EXCEEDED:
      // No sockgate code: the gateway itself did not answer in time (down, or unreachable).
      return new GatewayUnavailableError(`no answer from the gateway within the deadline (${message})`, options);
    case status.UNAUTHENTICATED:
      return new UnauthenticatedError(message, options);
    case status.PERMISSION_DENIED:
      return new PolicyDeniedError(message, options);
    case status.INVALID_ARGUMENT:
      return new InvalidArgumentError(message, options);
    default:
      return new SockgateError(message, options);
  }
}
