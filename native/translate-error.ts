/** Native exceptions as sockgate errors: `NativeError`, or `RingCorruptError` (type and range errors stay). */
import { NativeError, RingCorruptError, type SockgateError } from '../proto/errors.js';

/** The native error fields (errno name, negative errno) kept on the cause. */
export interface NativeErrorCause extends Error {
  code?: string;
  errno?: number;
  syscall?: string;
}

/** Translate a native exception: type/range errors stay, the rest become sockgate errors. */
export function translateError(err: unknown): unknown {
  if (err instanceof TypeError || err instanceof RangeError) return err;
  const e = err as NativeErrorCause;
  if (e && e.code === 'ERR_SOCKGATE_RING_CORRUPT') return new RingCorruptError(e.message, { cause: err });
  if (e instanceof Error) return new NativeError(e.message, { cause: err });
  return err;
}

/** The errno name of a translated native error (`EBUSY`, ...), if any. */
export function nativeCode(err: unknown): string | undefined {
  const c = (err as SockgateError)?.cause as NativeErrorCause | undefined;
  return c?.code ?? (err as NativeErrorCause)?.code;
}

/** Run a raw binding call, translating what it throws. */
export function call<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw translateError(err);
  }
}
