//! ioengine: the only crate that touches glommio, io_uring, O_DIRECT and libc.
//!
//! It offers one interface, [`Disk`] and [`DiskFile`], with three implementations:
//! - [`DmaDisk`]: real files opened with O_DIRECT through glommio (io_uring);
//! - [`SimDisk`]: an in-memory disk driven by a seed that loses unsynced writes and directory
//!   entries at a crash, tears writes at any sector, fails writes and fsyncs, and flips bits on
//!   read; with [`SimExecutor`], a deterministic single-threaded executor to run code against it;
//! - [`Traced`]: a wrapper recording submission and completion of every write and fsync.
//!
//! It also pins executors to cores ([`executor`]), reads the clock ([`Clock`]) and checks the
//! environment at start-up ([`envcheck`]). It knows nothing of WALs or tables.

pub mod clock;
pub mod disk;
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
