//! Single-core synchronisation: a one-shot slot and a wake-up flag. No atomics, no locks: every
//! user lives on the shard's core, inside one executor.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A value delivered once, awaited once.
#[derive(Debug)]
pub struct Slot<T> {
    inner: Rc<SlotInner<T>>,
}

#[derive(Debug)]
struct SlotInner<T> {
    value: RefCell<Option<T>>,
    waker: RefCell<Option<Waker>>,
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Slot<T> {
    #[must_use]
    pub fn new() -> Self {
        Self { inner: Rc::new(SlotInner { value: RefCell::new(None), waker: RefCell::new(None) }) }
    }

    /// Delivers the value and wakes the waiter. A slot is filled at most once.
    pub fn fill(&self, value: T) {
        let previous = self.inner.value.borrow_mut().replace(value);
        assert!(previous.is_none(), "a slot is filled once");
        if let Some(waker) = self.inner.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    #[must_use]
    pub fn is_filled(&self) -> bool {
        self.inner.value.borrow().is_some()
    }

    /// Waits for the value.
    pub fn wait(self) -> SlotWait<T> {
        SlotWait { slot: self }
    }
}

/// The future returned by [`Slot::wait`].
#[derive(Debug)]
pub struct SlotWait<T> {
    slot: Slot<T>,
}

impl<T> Future for SlotWait<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        if let Some(value) = self.slot.inner.value.borrow_mut().take() {
            return Poll::Ready(value);
        }
        *self.slot.inner.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A wake-up signal for any number of waiting tasks: `notified()` completes at the first
/// `notify()` after it was created. Waiters re-check their condition after waking; since a task
/// checks and starts waiting without yielding in between, no notification is missed.
#[derive(Debug, Default)]
pub struct Notify {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }

    pub fn notified(&self) -> Notified<'_> {
        Notified { notify: self, generation: self.generation.get() }
    }
}

/// The future returned by [`Notify::notified`].
#[derive(Debug)]
pub struct Notified<'a> {
    notify: &'a Notify,
    generation: u64,
}

impl Future for Notified<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.generation {
            return Poll::Ready(());
        }
        let mut wakers = self.notify.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
