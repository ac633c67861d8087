//! CPU pinning (`--cpu-affinity auto`): how the CPUs this process may run on (its cpuset, what
//! the kubelet's static CPU manager hands a Guaranteed pod) are shared out between the workers
//! of a version and ONNX Runtime's intra-op threads, and the one system call that pins the
//! calling thread. The plan is pure; [`pin_current`] is the only I/O.
//!
//! Each `--instances` worker gets `--intra-op-threads` CPUs of its own: the worker's thread
//! (ORT's thread 0, which runs `session.run`) on the first, ORT's extra intra-op threads one per
//! CPU on the rest. The network threads (tokio) are never pinned: they stay on the whole cpuset.
//! A cpuset larger than the threads need is the node's shared pool, not CPUs of the pod's own:
//! nothing is pinned there (pinning inside a pool every other pod also runs on only piles the
//! threads onto whichever CPUs come first) and the report says so. A cpuset smaller than the
//! threads need is shared out round the CPUs, and the report says what to change.

use kinfer_contract::admin::CpuPinning;

/// Where one worker's threads run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The CPU of the worker thread (ORT's thread 0).
    pub worker: usize,
    /// The CPUs of ORT's extra intra-op threads 1..n, in order.
    pub intra: Vec<usize>,
}

/// The placement of every worker, and what the runtime reports about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// One entry per instance; empty when nothing is pinned.
    pub placements: Vec<Placement>,
    /// For `/admin/stats` and the log.
    pub report: CpuPinning,
}

impl Plan {
    /// Where instance `i` runs (`None`: leave it to the scheduler).
    pub fn placement(&self, i: usize) -> Option<&Placement> {
        self.placements.get(i)
    }
}

/// Writes a Linux CPU list (`0-3,8`) of ascending CPUs.
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// Shares `allowed` (the process's CPUs, ascending) out between `instances` workers of
/// `intra_threads` threads each. `exclusive` is how many whole CPUs the pod asked for
/// (`--exclusive-cpus`): a larger cpuset is the shared pool; without it, the threads' count is.
pub fn plan(
    allowed: &[usize],
    instances: usize,
    intra_threads: usize,
    exclusive: Option<usize>,
) -> Plan {
    let instances = instances.max(1);
    let per = intra_threads.max(1);
    let needed = instances * per;
    let own = exclusive.unwrap_or(needed).max(1);
    let n = allowed.len();
    let list = cpu_list(allowed);
    let threads = if needed == 1 {
        "1 inference thread".to_owned()
    } else {
        format!("{needed} inference threads ({instances} instance(s) × {per} intra-op thread(s))")
    };
    let report = |exclusive: bool, shared_threads: bool, message: String| CpuPinning {
        allowed: list.clone(),
        needed: u32::try_from(needed).unwrap_or(u32::MAX),
        exclusive,
        shared_threads,
        message,
    };
    if n == 0 {
        return Plan {
            placements: Vec::new(),
            report: report(
                false,
                false,
                "cannot read this process's CPUs (Cpus_allowed_list in /proc/self/status): nothing pinned".into(),
            ),
        };
    }
    if n > own {
        let asked = match exclusive {
            Some(e) => format!("the pod asked for {e} CPU(s) of its own"),
            None => format!("its {threads} need {needed}"),
        };
        return Plan {
            placements: Vec::new(),
            report: report(
                false,
                false,
                format!(
                    "this process may run on {n} CPUs ({list}) but {asked}: it is on the node's shared CPU pool, not on CPUs of its own, so nothing is pinned; exclusive CPUs need the kubelet's static CPU manager (--cpu-manager-policy=static with reserved CPUs) and a Guaranteed pod with whole CPUs"
                ),
            ),
        };
    }
    // Thread k of the layout (instance k / per, its thread k % per) on CPU k mod n.
    let cpu = |k: usize| allowed[k % n];
    let placements = (0..instances)
        .map(|i| Placement {
            worker: cpu(i * per),
            intra: (1..per).map(|t| cpu(i * per + t)).collect(),
        })
        .collect();
    let message = if n >= needed {
        format!("{threads} pinned one per CPU on {list}")
    } else {
        format!(
            "{threads} share the process's {n} CPUs ({list}): threads compete for CPUs; make --instances × --intra-op-threads at most {n}, or give the pod more CPUs"
        )
    };
    Plan {
        placements,
        report: report(true, n < needed, message),
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_current(cpu: usize) -> std::io::Result<()> {
    if cpu >= rustix::thread::CpuSet::MAX_CPU {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is beyond the largest CPU set the system call takes"),
        ));
    }
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_fold_runs() {
        assert_eq!(cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(cpu_list(&[5]), "5");
        assert_eq!(cpu_list(&[]), "");
    }

    #[test]
    fn each_instance_gets_cpus_of_its_own_worker_first() {
        let p = plan(&[2, 3, 4, 5], 2, 2, Some(4));
        assert_eq!(
            p.placements,
            vec![
                Placement {
                    worker: 2,
                    intra: vec![3]
                },
                Placement {
                    worker: 4,
                    intra: vec![5]
                },
            ]
        );
        assert!(p.report.exclusive && !p.report.shared_threads);
        assert_eq!(p.report.allowed, "2-5");
        assert_eq!(p.report.needed, 4);
        assert!(p.report.message.contains("pinned one per CPU on 2-5"));
    }

    #[test]
    fn a_single_thread_on_a_single_cpu() {
        let p = plan(&[7], 1, 1, None);
        assert_eq!(
            p.placement(0).map(|x| (x.worker, x.intra.len())),
            Some((7, 0))
        );
        assert!(p.report.exclusive);
    }

    #[test]
    fn too_few_cpus_are_shared_round_and_say_what_to_change() {
        let p = plan(&[0, 1], 3, 1, None);
        let workers: Vec<usize> = p.placements.iter().map(|x| x.worker).collect();
        assert_eq!(workers, vec![0, 1, 0]);
        assert!(p.report.exclusive && p.report.shared_threads);
        assert!(
            p.report.message.contains("at most 2"),
            "{}",
            p.report.message
        );
    }

    #[test]
    fn a_larger_cpuset_is_the_shared_pool_and_nothing_is_pinned() {
        let p = plan(&[0, 1, 2, 3], 1, 2, None);
        assert!(p.placements.is_empty());
        assert!(p.placement(0).is_none());
        assert!(!p.report.exclusive);
        assert!(
            p.report.message.contains("shared CPU pool")
                && p.report.message.contains("static CPU manager"),
            "{}",
            p.report.message
        );
    }

    #[test]
    fn fewer_threads_than_the_pods_own_cpus_are_pinned_on_the_first() {
        let p = plan(&[4, 5, 6, 7], 1, 2, Some(4));
        assert_eq!(
            p.placements,
            vec![Placement {
                worker: 4,
                intra: vec![5]
            }]
        );
        assert!(p.report.exclusive && !p.report.shared_threads);
        // The same cpuset for a pod that asked for 2 is the shared pool.
        let pool = plan(&[4, 5, 6, 7], 1, 2, Some(2));
        assert!(!pool.report.exclusive && pool.placements.is_empty());
        assert!(
            pool.report.message.contains("asked for 2 CPU(s)"),
            "{}",
            pool.report.message
        );
    }

    #[test]
    fn unknown_cpus_pin_nothing() {
        let p = plan(&[], 1, 1, None);
        assert!(p.placements.is_empty() && !p.report.exclusive);
    }

    #[test]
    fn pinning_this_thread_to_one_of_its_cpus_works() {
        let last = *crate::config::allowed_cpus()
            .last()
            .expect("a Linux process has CPUs");
        std::thread::spawn(move || {
            pin_current(last).unwrap();
            let now = rustix::thread::sched_getaffinity(None).unwrap();
            assert_eq!(now.count(), 1);
            assert!(now.is_set(last));
        })
        .join()
        .unwrap();
        assert!(pin_current(rustix::thread::CpuSet::MAX_CPU).is_err());
    }
}
