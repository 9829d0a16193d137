//! Read buffers from a per-worker pool.
//!
//! A connection takes a [`Buf`] when bytes arrive and gives it back when the message is done:
//! an idle keep-alive connection holds none (hyper holds 16 KiB per connection for its life; nginx
//! frees its header buffer the same way). The pool is a thread-local free list, so taking and
//! returning a buffer is a `Vec` pop and push on the worker's own thread: no lock, no atomics.
//! Buffers are zeroed once when first allocated and reused as they are (reading into initialised
//! memory keeps this module free of `unsafe`).
//!
//! A buffer holds the bytes `[start, end)` not yet consumed. Heads are parsed in place and keep
//! offsets into it, so a buffer never moves bytes while a head that points into it is in use:
//! callers compact explicitly ([`Buf::compact_to`]).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// The size of a pooled buffer: room for a typical head and a generous read of body bytes.
pub const BUF_SIZE: usize = 16 * 1024;

/// Free buffers kept per worker (4 MiB); more are freed when returned.
const MAX_FREE: usize = 256;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A byte buffer taken from this worker's pool; dropping it returns it.
pub struct Buf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl std::fmt::Debug for Buf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buf")
            .field("start", &self.start)
            .field("end", &self.end)
            .field("cap", &self.data.len())
            .finish()
    }
}

impl Buf {
    /// A free buffer of [`BUF_SIZE`] bytes from the pool (allocated when the pool is empty).
    pub fn take() -> Buf {
        let data = FREE.with(|f| f.borrow_mut().pop()).unwrap_or_else(|| vec![0; BUF_SIZE].into_boxed_slice());
        Buf { data, start: 0, end: 0 }
    }

    /// A buffer holding `bytes`.
    #[cfg(test)]
    pub fn from_bytes(bytes: &[u8]) -> Buf {
        let mut b = Buf::take();
        b.reserve(bytes.len(), usize::MAX);
        b.data[..bytes.len()].copy_from_slice(bytes);
        b.end = bytes.len();
        b
    }

    /// The whole backing storage (offsets of parsed heads index into it).
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The bytes not consumed yet.
    #[inline]
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// Where the unconsumed bytes start in [`Buf::data`].
    #[inline]
    pub fn start(&self) -> usize {
        self.start
    }

    /// Where the unconsumed bytes end in [`Buf::data`].
    #[inline]
    pub fn end(&self) -> usize {
        self.end
    }

    /// Number of unconsumed bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether every byte read has been consumed.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Room left after the unconsumed bytes.
    #[inline]
    pub fn spare(&self) -> usize {
        self.data.len() - self.end
    }

    /// Marks `n` bytes as consumed (offsets stay valid: nothing moves).
    #[inline]
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
    }

    /// Starts over at offset 0 when every byte has been consumed (no offset into it is kept).
    #[inline]
    pub fn reset_if_empty(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Moves the read position back to `at` (bytes from there on are unconsumed again).
    pub fn rewind_to(&mut self, at: usize) {
        debug_assert!(at <= self.end);
        self.start = at;
    }

    /// Moves the unconsumed bytes down to offset `at` (which must not be past `start`), making
    /// room after them. Offsets below `at` stay valid.
    pub fn compact_to(&mut self, at: usize) {
        debug_assert!(at <= self.start);
        if at < self.start {
            self.data.copy_within(self.start..self.end, at);
            self.end -= self.start - at;
            self.start = at;
        }
    }

    /// Makes room for at least `spare` more bytes without moving offsets below `start`: grows
    /// the storage, but never beyond `max_total` bytes. Returns whether there is room.
    pub fn reserve(&mut self, spare: usize, max_total: usize) -> bool {
        let need = self.end.saturating_add(spare);
        if need > self.data.len() && self.data.len() < max_total {
            let len = need.next_power_of_two().min(max_total);
            let mut bigger = vec![0; len].into_boxed_slice();
            bigger[..self.end].copy_from_slice(&self.data[..self.end]);
            give_back(std::mem::replace(&mut self.data, bigger));
        }
        self.spare() >= spare
    }

    /// Reads once from `io` into the room after the unconsumed bytes (0 at EOF).
    pub fn poll_read_from<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        io: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let mut rb = ReadBuf::new(&mut self.data[self.end..]);
        match Pin::new(io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                self.end += n;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Reads once from `io` (see [`Buf::poll_read_from`]).
    pub async fn read_from<R: AsyncRead + Unpin + ?Sized>(&mut self, io: &mut R) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_from(io, cx)).await
    }
}

/// Returns storage to this worker's pool if it has the pooled size and the pool has room.
fn give_back(data: Box<[u8]>) {
    if data.len() == BUF_SIZE {
        FREE.with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < MAX_FREE {
                f.push(data);
            }
        });
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.data));
    }
}

/// Reads from `io` with a pooled buffer taken only if bytes are ready: `Pending` leaves `slot`
/// empty, so a connection waiting for its next request holds no buffer.
pub fn poll_read_pooled<R: AsyncRead + Unpin + ?Sized>(
    slot: &mut Option<Buf>,
    io: &mut R,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let mut buf = slot.take().unwrap_or_else(Buf::take);
    let r = buf.poll_read_from(io, cx);
    if !buf.is_empty() || matches!(r, Poll::Ready(Ok(n)) if n > 0) {
        *slot = Some(buf);
    }
    r
}

/// Buffers currently free in this worker's pool (tests).
pub fn free_count() -> usize {
    FREE.with(|f| f.borrow().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_to_the_pool_and_oversized_ones_do_not() {
        let before = free_count();
        let a = Buf::take();
        drop(a);
        assert_eq!(free_count(), before.max(1));
        let mut big = Buf::take();
        let n = free_count();
        big.end = BUF_SIZE;
        assert!(big.reserve(100, 64 * 1024));
        assert!(big.data().len() > BUF_SIZE);
        // Growing gave the old storage back; the grown one is freed, not pooled.
        assert_eq!(free_count(), n + 1);
        drop(big);
        assert_eq!(free_count(), n + 1);
    }

    #[test]
    fn reserve_respects_the_limit_and_compaction_keeps_earlier_offsets() {
        let mut b = Buf::from_bytes(b"headBODY");
        b.consume(4);
        assert!(!b.reserve(BUF_SIZE, BUF_SIZE), "cannot grow past max_total");
        b.compact_to(2);
        assert_eq!(&b.data()[..2], b"he");
        assert_eq!(b.filled(), b"BODY");
        b.consume(4);
        b.reset_if_empty();
        assert!(b.is_empty() && b.start() == 0);
    }
}
