// The one place where sockgate orders memory shared with another process.
//
// Every load or store of a shared ring/region word goes through these helpers,
// never through a plain dereference: each helper performs exactly one access,
// so a value read from shared memory is fetched once (no double fetch) and the
// caller validates its local copy. Each helper says who must observe what.
#pragma once

#include <cstdint>

namespace sg {

// Load a word the peer publishes with store_release (the producer's tail, the
// consumer's head, a granted size). Everything the peer wrote before its
// release store (ring bytes, size fields) is visible to us after this load.
template <class T>
inline T load_acquire(const T* p) {
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

// Publish a word to the peer (our tail after writing bytes, our head after
// reading them). The peer, after its load_acquire of this word, must observe
// every store we made before this one: the bytes of the ring and the size/gen
// fields written before the cursor.
template <class T>
inline void store_release(T* p, T v) {
  __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

// A single untorn read of a shared word with no ordering. Used for hint words
// and fields already ordered by a preceding load_acquire of a cursor.
template <class T>
inline T load_relaxed(const T* p) {
  return __atomic_load_n(p, __ATOMIC_RELAXED);
}

// A single untorn write with no ordering; a later store_release (or the full
// barrier) orders it for the peer.
template <class T>
inline void store_relaxed(T* p, T v) {
  __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

// Store -> load ordering (Dekker). Used where one side writes "I am about to
// sleep" and then re-reads the other side's cursor, while the other side
// writes its cursor and then reads the sleep flag: with this barrier on both
// sides, at least one of them observes the other's store (no lost wakeup).
inline void full_barrier() {
#if defined(__x86_64__)
  // A locked RMW on the stack is a full barrier on x86 and cheaper than mfence.
  __asm__ __volatile__("lock; orl $0, -4(%%rsp)" ::: "memory", "cc");
#else
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

// Atomically take a flag or hint word and leave `v` behind. Sequentially
// consistent: it is also a full barrier, so it can stand in for one.
template <class T>
inline T exchange(T* p, T v) {
  return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}

// Atomically set hint bits. Sequentially consistent (a full barrier): the
// setter's later load of the peer's sleep flag is ordered after the bit.
template <class T>
inline T fetch_or(T* p, T v) {
  return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST);
}

// Compiler-only barrier, for spin loops.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  __asm__ __volatile__("" ::: "memory");
#endif
}

}  // namespace sg
