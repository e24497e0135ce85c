//! How `attn ring` was started: as a plain process (its ranks are threads)
//! or as one of `P` processes of `mpirun` (one rank each, over MPI).
//!
//! `mpirun` tells its processes through the environment (Open MPI:
//! `OMPI_COMM_WORLD_SIZE`, `OMPI_COMM_WORLD_LOCAL_SIZE`; MPICH's Hydra:
//! `PMI_SIZE`), so a build without the `mpi` feature can still see that it
//! was started as one of several ranks — and must refuse: every rank would
//! run the whole ring alone and write the same output file.

/// How the process was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// A plain process, or `mpirun -np 1`: the ring's ranks run in this
    /// process.
    Single {
        /// Started by `mpirun` (with one rank).
        under_mpirun: bool,
    },
    /// One of `size > 1` processes started by `mpirun`.
    Mpi {
        /// Processes in the job.
        size: usize,
        /// Processes of the job on this machine, when `mpirun` says.
        local_size: Option<usize>,
    },
}

impl Launch {
    /// Reads this process's environment.
    pub fn detect() -> Launch {
        Launch::from_env(|name| std::env::var(name).ok())
    }

    /// [`Launch::detect`] over any environment (`get` returns a variable's
    /// value).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Launch {
        let number = |name: &str| get(name).and_then(|v| v.trim().parse::<usize>().ok());
        let size = number("OMPI_COMM_WORLD_SIZE").or_else(|| number("PMI_SIZE"));
        let local_size = number("OMPI_COMM_WORLD_LOCAL_SIZE").or_else(|| number("MPI_LOCALNRANKS"));
        match size {
            Some(size) if size > 1 => Launch::Mpi { size, local_size },
            Some(_) => Launch::Single { under_mpirun: true },
            None => Launch::Single { under_mpirun: false },
        }
    }

    /// Ranks of this job on this machine: all of them unless `mpirun` says
    /// otherwise; `in_process` for a single process.
    pub fn ranks_on_this_machine(&self, in_process: usize) -> usize {
        match *self {
            Launch::Single { .. } => in_process,
            Launch::Mpi { size, local_size } => local_size.unwrap_or(size),
        }
    }

    /// `Ok` unless started as one of several ranks by a build that cannot
    /// talk to them (without the `mpi` feature): then an error that says
    /// what to do instead. `command` names the subcommand in the message.
    pub fn check_supported(&self, command: &str) -> Result<(), String> {
        match *self {
            Launch::Mpi { size, .. } if !cfg!(feature = "mpi") => Err(format!(
                "started by mpirun as one of {size} ranks, but this attn was built without the \
                 `mpi` feature, so every rank would run the whole ring alone (and write the same \
                 files): nothing was done. Rebuild with `cargo build --release -p harness \
                 --features mpi`, or run `attn {command} --ranks {size}` without mpirun ({size} \
                 ranks in one process)"
            )),
            _ => Ok(()),
        }
    }
}

/// Logical CPUs of the machine (`/sys/devices/system/cpu/online`), whatever
/// this process may run on: `mpirun` binds each rank to its own cores, so
/// a rank's affinity says little about the machine.
pub fn online_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| attnlab::cpu::cpu_list_len(&s))
        .map_or_else(crate::machine::logical_cpus, |n| n as usize)
}

/// Worker threads per rank when `--threads` is not given: the machine's
/// `online` CPUs shared by the `ranks_here` ranks on it, but no more than
/// the `allowed` CPUs this process may run on (a rank bound to one core
/// gets one thread); at least 1.
pub fn default_threads(allowed: usize, online: usize, ranks_here: usize) -> usize {
    (online / ranks_here.max(1)).min(allowed).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Launch {
        let vars: Vec<(String, String)> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Launch::from_env(|n| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()))
    }

    #[test]
    fn mpirun_is_seen_in_the_environment() {
        assert_eq!(env(&[]), Launch::Single { under_mpirun: false });
        assert_eq!(env(&[("OMPI_COMM_WORLD_SIZE", "1")]), Launch::Single { under_mpirun: true });
        assert_eq!(
            env(&[("OMPI_COMM_WORLD_SIZE", "4"), ("OMPI_COMM_WORLD_LOCAL_SIZE", "2")]),
            Launch::Mpi { size: 4, local_size: Some(2) }
        );
        assert_eq!(env(&[("PMI_SIZE", "3")]), Launch::Mpi { size: 3, local_size: None });
        assert_eq!(env(&[("PMI_SIZE", "x")]), Launch::Single { under_mpirun: false });
        assert_eq!(Launch::Mpi { size: 4, local_size: None }.ranks_on_this_machine(9), 4);
        assert_eq!(Launch::Single { under_mpirun: false }.ranks_on_this_machine(3), 3);
    }

    #[test]
    fn several_ranks_without_mpi_are_refused() {
        let several = Launch::Mpi { size: 4, local_size: None };
        let got = several.check_supported("ring");
        if cfg!(feature = "mpi") {
            assert!(got.is_ok());
        } else {
            let e = got.unwrap_err();
            assert!(e.contains("without the `mpi` feature") && e.contains("--ranks 4"), "{e}");
        }
        assert!(Launch::Single { under_mpirun: true }.check_supported("ring").is_ok());
    }

    #[test]
    fn threads_share_the_machine() {
        assert_eq!(default_threads(2, 2, 4), 1);
        assert_eq!(default_threads(16, 16, 4), 4);
        assert_eq!(default_threads(2, 2, 0), 2);
        // Bound to one core of sixteen, one of two ranks: one thread.
        assert_eq!(default_threads(1, 16, 2), 1);
        // Bound to a socket of eight, two ranks on the machine: eight.
        assert_eq!(default_threads(8, 16, 2), 8);
        assert!(online_cpus() >= 1);
    }
}
