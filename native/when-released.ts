/**
 * Closing a native object the pump's I/O thread still references fails with
 * EBUSY until the thread has processed its release (an unwatch, an unlink):
 * retry such a close, briefly and bounded. Both sides use it (the gateway's
 * shm sessions, the SDK's), so a refused close is retried, never dropped.
 */

/** How long a close may keep meeting EBUSY before the error stands. */
export const RELEASE_WAIT_MS = 2_000;
/** Pause between attempts. */
const RELEASE_RETRY_MS = 2;

/** Run `fn` until it stops throwing EBUSY (per `isBusy`), for at most RELEASE_WAIT_MS. */
export async function whenReleased(fn: () => void, isBusy: (err: unknown) => boolean): Promise<void> {
  const deadline = Date.now() + RELEASE_WAIT_MS;
  for (;;) {
    try {
      fn();
      return;
    } catch (err) {
      if (Date.now() > deadline || !isBusy(err)) throw err;
      await new Promise((r) => setTimeout(r, RELEASE_RETRY_MS));
    }
  }
}
