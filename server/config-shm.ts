/**
 * Config schema of the shm data plane (`transports.shm`): the attach socket,
 * slots and rings per session, the pumps' spin, idle shrink, and the slots a
 * session may hold pre-issued (native/SHM.md). Split from config.ts, which
 * holds the rest.
 */
import { z } from 'zod';

const isPowerOfTwo = (n: number) => n > 0 && (n & (n - 1)) === 0;
const ringBytes = (min: number) =>
  z.number().int().min(min).max(64 << 20).refine(isPowerOfTwo, { message: 'expected a power of two' });

export const shmSchema = z
  .strictObject({
    /**
     * Attach socket (Unix); "" picks $RUNTIME_DIRECTORY/shm.sock (systemd), else /run/sockgate/shm.sock as root,
     * else <tmpdir>/sockgate-<uid>/shm.sock (created 0700). Its directory is verified before use (native/shm-dir.ts).
     */
    path: z.string().refine((p) => p === '' || p.startsWith('/'), { message: 'expected an absolute path or ""' }).default(''),
    /** Socket slots per client session (one is the session's control slot). */
    slots_per_session: z.number().int().min(2).max(65536).default(1024),
    /** Ring bytes per direction a socket starts with. */
    initial_ring_bytes: ringBytes(4096).default(16384),
    /** Largest ring per direction autotuning may grow a socket to. */
    max_ring_bytes: ringBytes(4096).default(4 << 20),
    /** Cap on granted ring bytes (both directions, all sessions) per identity. */
    max_ring_bytes_per_identity: z.number().int().positive().default(256 << 20),
    /** Cap on granted ring bytes across the gateway. */
    max_ring_bytes_total: z.number().int().positive().default(1 << 30),
    /**
     * Native pump spin before sleeping, at most this many µs (adaptive: it backs off to 0 while idle;
     * native/SHM.md says why 100). Advertised in the shm attach: clients' pumps spin the same. 0 = never spin.
     */
    spin_us: z.number().int().min(0).max(1000).default(100),
    /** A ring grown under load shrinks back to initial_ring_bytes after this many ms without traffic; 0 = never. */
    shrink_idle_ms: z.number().int().min(0).max(3_600_000).default(5000),
    /**
     * Slots pre-issued to a session and not used yet, at most (ShmOffer.preissue: a later Connect names one and
     * needs no BIND). They count against slots_per_session; ring memory is charged when a Connect takes one. 0 = none.
     */
    max_preissued_slots: z.number().int().min(0).max(1024).default(16),
  })
  .refine((v) => v.initial_ring_bytes <= v.max_ring_bytes, { message: 'initial_ring_bytes must not exceed max_ring_bytes', path: ['initial_ring_bytes'] })
  .prefault({});
