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

/// A wake-up flag for one waiting task: `notify` sets it, `notified().await` consumes it.
#[derive(Debug, Default)]
pub struct Notify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    pub fn notified(&self) -> Notified<'_> {
        Notified { notify: self }
    }
}

/// The future returned by [`Notify::notified`].
#[derive(Debug)]
pub struct Notified<'a> {
    notify: &'a Notify,
}

impl Future for Notified<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.set.replace(false) {
            return Poll::Ready(());
        }
        *self.notify.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}
