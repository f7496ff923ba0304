//! Executors pinned to cores: one glommio executor per shard, its helper threads on the same core.

use glommio::{CpuSet, LocalExecutorBuilder, Placement, PoolPlacement};
use std::future::Future;

/// How an executor is built.
#[derive(Debug, Clone)]
pub struct ExecutorSpec {
    pub name: String,
    /// The CPU the executor (and its blocking helper threads) run on.
    pub cpu: usize,
    /// Bytes of io_uring-registered DMA memory. It is locked memory: it must fit `ulimit -l`.
    pub io_memory_bytes: usize,
    /// Busy-poll this long for new work before sleeping in the kernel (`None`: sleep at once).
    /// Spinning trades idle CPU for the latency of waking up when I/O completes.
    pub spin_before_park: Option<std::time::Duration>,
}

/// The default registered I/O memory per executor: small enough that two executors fit the
/// common 8 MiB memlock limit; buffers beyond it come from ordinary aligned memory.
pub const IO_MEMORY_BYTES_DEFAULT: usize = 2 << 20;

/// Why an executor could not start.
#[derive(Debug)]
pub struct ExecutorError(pub String);

impl std::fmt::Display for ExecutorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ExecutorError {}

/// Runs `make_future()` on a new executor pinned to `spec.cpu` and waits for its result.
pub fn run_pinned<G, F, T>(spec: &ExecutorSpec, make_future: G) -> Result<T, ExecutorError>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    spawn_pinned(spec, make_future)?.join()
}

/// A running pinned executor.
pub struct PinnedHandle<T: Send + 'static> {
    handle: glommio::ExecutorJoinHandle<T>,
    name: String,
}

impl<T: Send + 'static> std::fmt::Debug for PinnedHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedHandle").field("name", &self.name).finish()
    }
}

impl<T: Send + 'static> PinnedHandle<T> {
    pub fn join(self) -> Result<T, ExecutorError> {
        self.handle.join().map_err(|e| ExecutorError(format!("executor {} failed: {e}", self.name)))
    }
}

/// Starts `make_future()` on a new executor pinned to `spec.cpu`.
pub fn spawn_pinned<G, F, T>(spec: &ExecutorSpec, make_future: G) -> Result<PinnedHandle<T>, ExecutorError>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let cpus = CpuSet::online().map_err(|e| ExecutorError(format!("cannot read the CPU topology: {e}")))?;
    let helper_cpu = cpus.filter(|l| l.cpu == spec.cpu);
    if helper_cpu.is_empty() {
        return Err(ExecutorError(format!(
            "CPU {} is not online; pick a CPU listed in /sys/devices/system/cpu/online",
            spec.cpu
        )));
    }
    let mut builder = LocalExecutorBuilder::new(Placement::Fixed(spec.cpu));
    if let Some(spin) = spec.spin_before_park {
        builder = builder.spin_before_park(spin);
    }
    let handle = builder
        .name(&spec.name)
        .io_memory(spec.io_memory_bytes)
        .blocking_thread_pool_placement(PoolPlacement::Custom(vec![helper_cpu]))
        .spawn(make_future)
        .map_err(|e| ExecutorError(explain_start_error(&spec.name, &e.to_string())))?;
    Ok(PinnedHandle { handle, name: spec.name.clone() })
}

fn explain_start_error(name: &str, error: &str) -> String {
    let mut text = format!("executor {name} could not start: {error}");
    if error.contains("memlock") {
        text.push_str(". Raise the locked-memory limit (`ulimit -l`, or LimitMEMLOCK= for systemd) or lower the I/O memory per executor.");
    }
    text
}

/// Starts `future` as a task of the current (glommio) executor and lets it run on its own.
pub fn spawn_detached(future: impl Future<Output = ()> + 'static) {
    glommio::spawn_local(future).detach();
}

/// Starts `future` as a task of the current executor; the returned handle yields its output.
pub fn spawn_local<T: 'static>(future: impl Future<Output = T> + 'static) -> glommio::task::JoinHandle<T> {
    glommio::spawn_local(future).detach()
}

/// Waits `duration` on the current executor's timer.
pub async fn sleep(duration: std::time::Duration) {
    glommio::timer::sleep(duration).await;
}

/// The number of online CPUs.
#[must_use]
pub fn online_cpus() -> Vec<usize> {
    CpuSet::online().map(|set| set.into_iter().map(|l| l.cpu).collect()).unwrap_or_else(|_| vec![0])
}

/// A task queue of the current executor for work whose I/O latency matters (request
/// handling): glommio dispatches its I/O eagerly instead of when the reactor comes around.
#[must_use]
pub fn latency_queue(name: &str, latency: std::time::Duration) -> glommio::TaskQueueHandle {
    glommio::executor().create_task_queue(glommio::Shares::default(), glommio::Latency::Matters(latency), name)
}

/// Starts `future` in the task queue `queue` of the current executor.
pub fn spawn_local_into<T: 'static>(
    future: impl Future<Output = T> + 'static,
    queue: glommio::TaskQueueHandle,
) -> glommio::task::JoinHandle<T> {
    glommio::spawn_local_into(future, queue).expect("the task queue belongs to this executor").detach()
}
