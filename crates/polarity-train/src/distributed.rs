//! Data parallelism: several ranks (processes, or devices of one process) train one model together.
//!
//! Every rank holds a replica of the model, initialised identically (seeded), and reads its own shard of
//! each global batch. Between the backward passes and the optimiser step, [`Trainer::fit`](crate::Trainer::fit)
//! flattens the gradients of the trainable parameters in module order (burn's parameter ids are random per
//! process, the module order is not) into one buffer, staged through the host so that every backend
//! works, and sums it over the ranks with one [`Collective::all_reduce_sum`] per optimiser step. Each
//! rank's loss is weighted by its share of the *global* batch, so the sum is the gradient one process
//! would have computed on the whole batch; the norm, clipping and the AdamW step then run identically on
//! every rank. Evaluation is sharded the same way and the confusion matrices summed; rank 0 alone writes
//! checkpoints and draws the progress bar.
//!
//! [`SingleProcess`] is the default (one rank, no communication). [`LocalGroup`] runs ranks as threads of
//! one process, one device each (the GPUs of one machine, or CPU devices for testing); across processes
//! and machines, `MpiCollective` (cargo feature `mpi`) uses the system's MPI library.
//!
//! Two ranks with batch 8 each train like one process with batch 16:
//!
//! ```
//! use polarity_train::{LocalGroup, Collective};
//!
//! let ranks = LocalGroup::new(2);
//! let sums: Vec<Vec<f32>> = std::thread::scope(|scope| {
//!     let handles: Vec<_> = ranks
//!         .into_iter()
//!         .map(|rank| scope.spawn(move || {
//!             let mut values = vec![rank.rank() as f32 + 1.0; 3];
//!             rank.all_reduce_sum(&mut values).map(|()| values)
//!         }))
//!         .collect();
//!     handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
//! });
//! assert_eq!(sums, vec![vec![3.0; 3], vec![3.0; 3]]);
//! ```

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::TrainError;

/// One rank's view of a data-parallel group: who it is, and the one collective operation the trainer
/// needs.
pub trait Collective: fmt::Debug + Send + Sync {
    /// This rank, `0..world_size()`; rank 0 writes checkpoints and reports.
    fn rank(&self) -> usize;

    /// The number of ranks.
    fn world_size(&self) -> usize;

    /// Replaces `values` by their element-wise sum over all ranks; every rank calls it with a buffer of the
    /// same length, and every rank gets the same sum (summed in rank order, so runs are reproducible).
    ///
    /// An error when another rank has [`abort`](Self::abort)ed or the lengths differ: a failing rank ends
    /// the collective calls of the others instead of leaving them waiting.
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), TrainError>;

    /// Tells the group that this rank stops with an error (`reason`): the other ranks' pending and later
    /// collective calls fail with [`TrainError::Collective`].
    fn abort(&self, reason: &str);
}

/// The default: one rank, nothing to communicate.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&self, _: &mut [f32]) -> Result<(), TrainError> {
        Ok(())
    }

    fn abort(&self, _: &str) {}
}

/// Ranks that are threads of one process (one device each), summing through shared memory.
///
/// [`LocalGroup::new`] returns one [`LocalRank`] per rank; move each into its own thread. A rank whose
/// thread panics, or that [`abort`](Collective::abort)s, fails the others' collective calls.
#[derive(Debug)]
pub struct LocalGroup {
    world_size: usize,
    state: Mutex<GroupState>,
    arrived: Condvar,
}

#[derive(Debug, Default)]
struct GroupState {
    /// The contributions of the reduction in progress, by rank.
    pending: Vec<Option<Vec<f32>>>,
    /// The sum of the last completed reduction.
    result: Arc<Vec<f32>>,
    /// Completed reductions.
    generation: u64,
    /// Why the group failed, once a rank has aborted.
    failure: Option<String>,
}

/// One rank of a [`LocalGroup`].
#[derive(Debug)]
pub struct LocalRank {
    group: Arc<LocalGroup>,
    rank: usize,
}

impl LocalGroup {
    /// A group of `world_size` ranks (at least 1), returned in rank order.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(world_size: usize) -> Vec<LocalRank> {
        let world_size = world_size.max(1);
        let group = Arc::new(LocalGroup {
            world_size,
            state: Mutex::new(GroupState { pending: vec![None; world_size], ..GroupState::default() }),
            arrived: Condvar::new(),
        });
        (0..world_size).map(|rank| LocalRank { group: Arc::clone(&group), rank }).collect()
    }

    fn lock(&self) -> MutexGuard<'_, GroupState> {
        // A rank that panicked while holding the lock has failed the group anyway (see `LocalRank::drop`).
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fail(&self, reason: String) {
        let mut state = self.lock();
        state.failure.get_or_insert(reason);
        self.arrived.notify_all();
    }
}

impl Collective for LocalRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.group.world_size
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), TrainError> {
        let group = &*self.group;
        let failed = |reason: &str| TrainError::Collective { rank: self.rank, reason: reason.to_string() };
        let mut state = group.lock();
        if let Some(reason) = &state.failure {
            return Err(failed(reason));
        }
        if let Some(other) = state.pending.iter().flatten().next()
            && other.len() != values.len()
        {
            let reason = format!("rank {} reduces {} values, another rank {}", self.rank, values.len(), other.len());
            state.failure = Some(reason.clone());
            group.arrived.notify_all();
            return Err(failed(&reason));
        }
        state.pending[self.rank] = Some(values.to_vec());
        let generation = state.generation;
        if state.pending.iter().all(Option::is_some) {
            let mut sum = vec![0.0f32; values.len()];
            for contribution in state.pending.iter_mut().map(|slot| slot.take().unwrap_or_default()) {
                sum.iter_mut().zip(&contribution).for_each(|(total, value)| *total += value);
            }
            state.result = Arc::new(sum);
            state.generation += 1;
            group.arrived.notify_all();
        } else {
            while state.generation == generation && state.failure.is_none() {
                state = group.arrived.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if state.generation == generation {
                return Err(failed(state.failure.as_deref().unwrap_or("the group failed")));
            }
        }
        // The result stays until every rank has arrived at the next reduction, so it is still this one's.
        values.copy_from_slice(&state.result);
        Ok(())
    }

    fn abort(&self, reason: &str) {
        self.group.fail(format!("rank {} stopped: {reason}", self.rank));
    }
}

impl Drop for LocalRank {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.group.fail(format!("rank {} panicked", self.rank));
        }
    }
}

/// Environment variables in which MPI launchers give the number of ranks (OpenMPI, then MPICH / PMI, then
/// Slurm's `srun`).
pub const WORLD_SIZE_VARIABLES: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"];

/// The data-parallel group this process belongs to, as its launcher describes it in the environment: with
/// more than one rank in one of [`WORLD_SIZE_VARIABLES`] (a launch by `mpirun`), the MPI world (cargo
/// feature `mpi`, see `MpiCollective`); otherwise [`SingleProcess`].
///
/// A launch of several ranks by a build without the `mpi` feature is an error rather than several
/// processes each training alone on all the data and writing the same files.
pub fn world_from_env() -> Result<Arc<dyn Collective>, TrainError> {
    let mut world_size = 1;
    for variable in WORLD_SIZE_VARIABLES {
        if let Ok(value) = std::env::var(variable) {
            world_size = value.trim().parse::<usize>().map_err(|_| TrainError::Collective {
                rank: 0,
                reason: format!("{variable}={value:?} is not a number of ranks"),
            })?;
            break;
        }
    }
    if world_size <= 1 {
        return Ok(Arc::new(SingleProcess));
    }
    launch_mpi(world_size)
}

#[cfg(feature = "mpi")]
fn launch_mpi(world_size: usize) -> Result<Arc<dyn Collective>, TrainError> {
    let world = crate::mpi::MpiCollective::world()?;
    if world.world_size() != world_size {
        return Err(TrainError::Collective {
            rank: world.rank(),
            reason: format!(
                "the launcher announced {world_size} ranks but MPI_COMM_WORLD has {} (a launcher of another MPI \
                 library than the one this build links?)",
                world.world_size()
            ),
        });
    }
    Ok(world)
}

#[cfg(not(feature = "mpi"))]
fn launch_mpi(world_size: usize) -> Result<Arc<dyn Collective>, TrainError> {
    Err(TrainError::Collective {
        rank: 0,
        reason: format!(
            "launched as one of {world_size} ranks, but this build has no MPI support: each rank would train alone \
             on all the data; build with `--features mpi`"
        ),
    })
}

/// Replaces `counts` (a confusion matrix's cells, say) by their sums over the group; on one process it
/// leaves them alone. Counts travel as f32, exact up to 2^24 per count.
pub fn all_reduce_counts(collective: &dyn Collective, counts: &mut [u64]) -> Result<(), TrainError> {
    if collective.world_size() <= 1 {
        return Ok(());
    }
    let mut values: Vec<f32> = counts.iter().map(|&count| count as f32).collect();
    collective.all_reduce_sum(&mut values)?;
    for (count, value) in counts.iter_mut().zip(values) {
        *count = value as u64;
    }
    Ok(())
}

/// This rank's part of a global batch (or of an evaluation set) of `len` items: a contiguous range, the
/// ranks' ranges covering `0..len` in rank order (sizes differ by at most one; a rank may get none).
pub fn shard_range(len: usize, rank: usize, world_size: usize) -> std::ops::Range<usize> {
    let world_size = world_size.max(1);
    (rank * len / world_size)..((rank + 1) * len / world_size)
}

/// An error on every rank unless all ranks hold the same weights: each contributes its
/// [`weights_checksum`](polarity_core::params::weights_checksum) in its own slot of one reduction.
pub(crate) fn check_replicas<B: AutodiffBackend, M: AutodiffModule<B>>(
    collective: &dyn Collective,
    model: &M,
) -> Result<(), TrainError> {
    let (rank, world_size) = (collective.rank(), collective.world_size());
    let mut slots = vec![0.0f32; world_size];
    slots[rank] = polarity_core::params::weights_checksum::<B, M>(model) as f32;
    collective.all_reduce_sum(&mut slots)?;
    // Equal weights summed in another order (another CPU's vector width) may differ in the last bits.
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1.0);
    match slots.iter().enumerate().find(|&(_, &checksum)| !close(checksum, slots[0])) {
        None => Ok(()),
        Some((other, checksum)) => Err(TrainError::Collective {
            rank,
            reason: format!(
                "rank {other} starts from other weights than rank 0 (checksum {checksum} vs {}): every rank must \
                 build the same model (same files, same seed)",
                slots[0]
            ),
        }),
    }
}

/// Visits the trainable parameters in module order, flattening their gradients (zeros where a parameter
/// has none) and noting which had one.
struct Flatten<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
    present: Vec<f32>,
    device: &'a B::Device,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !param.is_require_grad() {
            return;
        }
        let size = param.lazy_shape().num_elements();
        match self.grads.get::<B::InnerBackend, D>(param.id) {
            Some(grad) => {
                self.parts.push(grad.reshape([size]));
                self.present.push(1.0);
            }
            None => {
                self.parts.push(Tensor::zeros([size], self.device));
                self.present.push(0.0);
            }
        }
    }
}

/// The inverse of [`Flatten`]: registers each trainable parameter's slice of the summed buffer, for the
/// parameters that had a gradient on at least one rank.
struct Unflatten<'a, B: AutodiffBackend> {
    summed: Tensor<B::InnerBackend, 1>,
    present: &'a [f32],
    offset: usize,
    index: usize,
    grads: GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !param.is_require_grad() {
            return;
        }
        let shape = param.lazy_shape();
        let size = shape.num_elements();
        if self.present.get(self.index).is_some_and(|&count| count > 0.0) {
            let slice = self.summed.clone().narrow(0, self.offset, size);
            self.grads.register::<B::InnerBackend, D>(param.id, slice.reshape(shape));
        }
        self.offset += size;
        self.index += 1;
    }
}

/// Sums `grads` (this rank's weighted gradients of `model`'s trainable parameters) and `extras` (small
/// per-rank numbers such as the weighted loss) over the group, with one all-reduce. Returns the summed
/// gradients and the bytes this rank put into the reduction; `extras` holds the sums.
pub(crate) fn all_reduce_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    collective: &dyn Collective,
    model: &M,
    grads: GradientsParams,
    extras: &mut [f32],
    device: &B::Device,
) -> Result<(GradientsParams, u64), TrainError> {
    let mut flatten = Flatten::<B> { grads: &grads, parts: Vec::new(), present: Vec::new(), device };
    Module::<B>::visit(model, &mut flatten);
    let Flatten { parts, present, .. } = flatten;
    // An autodiff backend's device is its inner backend's.
    let inner_device = device.clone();
    let flat = if parts.is_empty() { Tensor::zeros([0], &inner_device) } else { Tensor::cat(parts, 0) };
    let gradient_values = flat.dims()[0];
    let mut buffer = flat
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| TrainError::Model(format!("cannot read the gradients back: {e:?}")))?;
    buffer.extend_from_slice(&present);
    buffer.extend_from_slice(extras);
    let bytes = std::mem::size_of_val(buffer.as_slice()) as u64;
    collective.all_reduce_sum(&mut buffer)?;
    let (summed, rest) = buffer.split_at(gradient_values);
    let (present, summed_extras) = rest.split_at(present.len());
    extras.copy_from_slice(summed_extras);
    let summed = Tensor::from_data(TensorData::new(summed.to_vec(), [gradient_values]), &inner_device);
    let mut unflatten = Unflatten::<B> { summed, present, offset: 0, index: 0, grads: GradientsParams::new() };
    Module::<B>::visit(model, &mut unflatten);
    Ok((unflatten.grads, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_threads<T: Send>(world: usize, work: impl Fn(LocalRank) -> T + Sync) -> Vec<T> {
        let work = &work;
        std::thread::scope(|scope| {
            let handles: Vec<_> =
                LocalGroup::new(world).into_iter().map(|rank| scope.spawn(move || work(rank))).collect();
            handles.into_iter().map(|handle| handle.join().unwrap()).collect()
        })
    }

    #[test]
    fn shards_cover_the_items_in_rank_order() {
        for (len, world) in [(16, 2), (17, 2), (1, 2), (5, 3), (0, 4), (7, 1)] {
            let ranges: Vec<_> = (0..world).map(|rank| shard_range(len, rank, world)).collect();
            assert_eq!(ranges.first().unwrap().start, 0);
            assert_eq!(ranges.last().unwrap().end, len);
            assert!(ranges.windows(2).all(|pair| pair[0].end == pair[1].start));
            assert!(ranges.iter().all(|r| r.len() + 1 >= len / world && r.len() <= len.div_ceil(world)));
        }
    }

    #[test]
    fn repeated_reductions_sum_in_rank_order() {
        let results = on_threads(3, |rank| {
            (0..50)
                .map(|round| {
                    let mut values = vec![(rank.rank() * 100 + round) as f32, 1.0];
                    rank.all_reduce_sum(&mut values).unwrap();
                    values
                })
                .collect::<Vec<_>>()
        });
        for round in 0..50 {
            let expected = vec![(300 + 3 * round) as f32, 3.0];
            assert!(results.iter().all(|rounds| rounds[round] == expected), "round {round}");
        }
    }

    #[test]
    fn a_failing_rank_ends_the_others_calls() {
        let results = on_threads(3, |rank| {
            if rank.rank() == 1 {
                rank.abort("non-finite loss");
                return Err(TrainError::Model("local failure".into()));
            }
            let mut values = vec![1.0];
            rank.all_reduce_sum(&mut values)
        });
        for (rank, result) in results.iter().enumerate().filter(|(rank, _)| *rank != 1) {
            let error = result.as_ref().unwrap_err().to_string();
            assert!(error.contains("rank 1 stopped: non-finite loss"), "rank {rank}: {error}");
        }
    }

    #[test]
    fn a_panicking_rank_ends_the_others_calls() {
        let results = on_threads(2, |rank| {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if rank.rank() == 0 {
                    let _rank = rank;
                    panic!("boom");
                }
                let mut values = vec![1.0];
                rank.all_reduce_sum(&mut values)
            }));
            caught.map_err(|_| ()).map(|result| result.map_err(|e| e.to_string()))
        });
        assert!(results[0].is_err());
        let error = results[1].clone().unwrap().unwrap_err();
        assert!(error.contains("rank 0 panicked"), "{error}");
    }

    #[test]
    fn different_lengths_are_an_error_on_both_sides() {
        let results = on_threads(2, |rank| {
            let mut values = vec![1.0; 2 + rank.rank()];
            rank.all_reduce_sum(&mut values).map_err(|e| e.to_string())
        });
        assert!(results.iter().all(|result| result.as_ref().is_err_and(|e| e.contains("reduces"))), "{results:?}");
    }
}
