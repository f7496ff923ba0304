//! A deterministic single-threaded executor for simulations.
//!
//! Invariant: given the same spawned futures and the same wake-ups, tasks are polled in the same
//! order (FIFO of wake-ups), so a simulation replays exactly from its seed. The driver can stop
//! after any step, which is how a simulation crashes: all tasks are dropped mid-flight.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

type Task = Pin<Box<dyn Future<Output = ()>>>;

#[derive(Default)]
struct ReadyQueue {
    queue: VecDeque<usize>,
    queued: Vec<bool>,
}

struct TaskWaker {
    id: usize,
    ready: Arc<Mutex<ReadyQueue>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut ready = self.ready.lock().expect("the simulation is single-threaded");
        // A waker may outlive its task (the executor was cleared at a crash): ignore it.
        if ready.queued.get(self.id) == Some(&false) {
            ready.queued[self.id] = true;
            ready.queue.push_back(self.id);
        }
    }
}

/// The executor. Clones share the same tasks, so tasks can spawn tasks.
#[derive(Clone, Default)]
pub struct SimExecutor {
    tasks: Rc<RefCell<Vec<Option<Task>>>>,
    ready: Arc<Mutex<ReadyQueue>>,
}

impl std::fmt::Debug for SimExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimExecutor").field("tasks", &self.tasks.borrow().len()).finish()
    }
}

impl SimExecutor {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a task; it runs when the driver steps.
    pub fn spawn(&self, future: impl Future<Output = ()> + 'static) {
        let mut tasks = self.tasks.borrow_mut();
        let id = tasks.len();
        tasks.push(Some(Box::pin(future)));
        let mut ready = self.ready.lock().expect("the simulation is single-threaded");
        ready.queued.push(true);
        ready.queue.push_back(id);
    }

    /// Polls the next ready task once. Returns false when no task is ready.
    pub fn step(&self) -> bool {
        let next = {
            let mut ready = self.ready.lock().expect("the simulation is single-threaded");
            let next = ready.queue.pop_front();
            if let Some(id) = next {
                ready.queued[id] = false;
            }
            next
        };
        let Some(id) = next else { return false };
        // Take the task out while polling so it may spawn others.
        let Some(mut task) = self.tasks.borrow_mut()[id].take() else { return true };
        let waker = Waker::from(Arc::new(TaskWaker { id, ready: self.ready.clone() }));
        let mut cx = Context::from_waker(&waker);
        if task.as_mut().poll(&mut cx) == Poll::Pending {
            self.tasks.borrow_mut()[id] = Some(task);
        }
        true
    }

    /// Steps until no task is ready. Returns the number of steps taken.
    pub fn run_until_idle(&self) -> u64 {
        let mut steps = 0;
        while self.step() {
            steps += 1;
        }
        steps
    }

    /// Tasks not yet finished.
    #[must_use]
    pub fn live_tasks(&self) -> usize {
        self.tasks.borrow().iter().filter(|t| t.is_some()).count()
    }

    /// Drops every task, finished or not (a crash, or the end of a run).
    pub fn clear(&self) {
        let tasks = std::mem::take(&mut *self.tasks.borrow_mut());
        drop(tasks);
        let mut ready = self.ready.lock().expect("the simulation is single-threaded");
        ready.queue.clear();
        ready.queued.clear();
    }
}

/// Runs one future to completion on a fresh executor (panics if it stalls).
pub fn block_on<T: 'static>(future: impl Future<Output = T> + 'static) -> T {
    let exec = SimExecutor::new();
    let out = Rc::new(RefCell::new(None));
    let slot = out.clone();
    exec.spawn(async move { *slot.borrow_mut() = Some(future.await) });
    exec.run_until_idle();
    let result = out.borrow_mut().take();
    exec.clear();
    result.expect("the future should complete without outside wake-ups")
}
