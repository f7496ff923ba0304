//! ioengine: the only crate that touches glommio, io_uring, O_DIRECT and libc.
//!
//! It runs the node's per-core loop: [`uring`], one io_uring ring per core driving tasks, disk
//! operations, timers and the network's connections (see `uring::net`).
//!
//! It offers one disk interface, [`Disk`] and [`DiskFile`], with four implementations:
//! - [`UringDisk`]: real files opened with O_DIRECT through the core's own ring (the node's);
//! - [`DmaDisk`]: real files opened with O_DIRECT through glommio (kept for older tests);
//! - [`SimDisk`]: an in-memory disk driven by a seed that loses unsynced writes and directory
//!   entries at a crash, tears writes at any sector, fails writes and fsyncs, and flips bits on
//!   read; with [`SimExecutor`], a deterministic single-threaded executor to run code against it;
//! - [`Traced`]: a wrapper recording submission and completion of every write and fsync.
//!
//! It also pins executors to cores ([`executor`]), reads the clock ([`Clock`]) and checks the
//! environment at start-up ([`envcheck`]). [`echo`] holds two PING responders, one per runtime, for
//! measuring a network path. It knows nothing of WALs or tables.

pub mod clock;
pub mod disk;
pub mod echo;
pub mod envcheck;
pub mod executor;
pub mod real;
pub mod rng;
pub mod sim;
pub mod simexec;
pub mod trace;
pub mod uring;

pub use clock::{Clock, SimClock, SystemClock};
pub use disk::{DirLock, Disk, DiskError, DiskFile};
pub use real::DmaDisk;
pub use rng::SimRng;
pub use sim::{SimDisk, SimFaults, SimStats};
pub use simexec::SimExecutor;
pub use trace::{Trace, TraceEvent, TraceOp, Traced};
pub use uring::{UringDisk, UringFile};
