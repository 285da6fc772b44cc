//! Ranks that are processes (on one machine or many), through the system's MPI library (cargo feature
//! `mpi`; OpenMPI or MPICH with its development files, and libclang for the bindings).
//!
//! `mpirun -n 2 target/release/examples/finetune_encoder ...` starts two processes; each finds its rank in
//! the environment ([`world_from_env`](crate::world_from_env)). Buffers are staged through the host, so
//! every burn backend works.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use mpi::Threading;
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::Communicator;
use mpi::traits::CommunicatorCollectives;

use crate::{Collective, TrainError};

/// The process's rank in `MPI_COMM_WORLD`.
///
/// MPI is initialised once per process and finalised when the last handle is dropped; it cannot be
/// initialised again after that, so keep the handle for the whole program. Calls are serialised through
/// a lock (MPI's `MPI_THREAD_SERIALIZED`), so the trainer may use it from any thread.
pub struct MpiCollective {
    universe: Mutex<Universe>,
    rank: usize,
    world_size: usize,
}

impl std::fmt::Debug for MpiCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiCollective").field("rank", &self.rank).field("world_size", &self.world_size).finish()
    }
}

/// The live handle, so that every caller in the process shares one initialisation.
static WORLD: Mutex<Weak<MpiCollective>> = Mutex::new(Weak::new());

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MpiCollective {
    /// This process's rank: initialises MPI on the first call, returns the same handle while one is alive.
    ///
    /// An error when MPI cannot give serialised thread support, or was already finalised.
    pub fn world() -> Result<Arc<Self>, TrainError> {
        let mut world = lock(&WORLD);
        if let Some(live) = world.upgrade() {
            return Ok(live);
        }
        let error = |reason: &str| TrainError::Collective { rank: 0, reason: reason.to_string() };
        if mpi::environment::is_finalized() {
            return Err(error("MPI was finalised when its last handle was dropped and cannot start again"));
        }
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| error("MPI was initialised outside polarity"))?;
        if threading < Threading::Serialized {
            return Err(error(&format!(
                "the MPI library gives {threading:?} thread support, polarity needs Serialized"
            )));
        }
        let communicator = universe.world();
        let (rank, world_size) = (communicator.rank(), communicator.size());
        let collective = Arc::new(Self {
            universe: Mutex::new(universe),
            rank: usize::try_from(rank).unwrap_or_default(),
            world_size: usize::try_from(world_size).unwrap_or(1),
        });
        *world = Arc::downgrade(&collective);
        Ok(collective)
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), TrainError> {
        let universe = lock(&self.universe);
        let send = values.to_vec();
        universe.world().all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }

    /// Reports `reason` on stderr and ends the whole MPI job (`MPI_Abort`): the other ranks' processes are
    /// stopped by the launcher, none waits for this one. Does not return.
    fn abort(&self, reason: &str) {
        eprintln!("error: rank {} of {}: {reason}; aborting the MPI job", self.rank, self.world_size);
        tracing::error!(rank = self.rank, reason, "aborting the MPI job");
        let universe = lock(&self.universe);
        universe.world().abort(1)
    }
}
