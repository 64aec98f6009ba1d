//! The sandbox state machine as data: for each state and lifecycle operation, whether the
//! operation runs, what the sandbox is while it runs, what it becomes when the operation
//! succeeds and when it fails, or why it is refused.
//!
//! The control plane records [`Transition::Run::during`] before it acts and the success or
//! failure state after, so a server that dies midway finds the sandbox in a transitional
//! state; [`after_crash`] says how start-up reconciliation finishes each one, derived from
//! this same table (which operation leaves a sandbox in that state). The state diagram in
//! `docs/states.md` is generated from the table ([`mermaid`]) and a test keeps it in step.

use crate::SandboxState;
use crate::SandboxState as S;

/// Every sandbox state, for exhaustive checks.
pub const ALL_STATES: [SandboxState; 22] = [
    S::Creating,
    S::Started,
    S::Stopping,
    S::Stopped,
    S::Starting,
    S::Destroying,
    S::Destroyed,
    S::Archiving,
    S::Archived,
    S::Restoring,
    S::Resizing,
    S::Error,
    S::Unknown,
    S::PullingSnapshot,
    S::PendingBuild,
    S::BuildingSnapshot,
    S::BuildFailed,
    S::Snapshotting,
    S::Forking,
    S::Pausing,
    S::Paused,
    S::Resuming,
];

/// A lifecycle operation on one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Run the sandbox (from stopped, archived or error; restores an archive first).
    Start,
    /// End its processes, keeping its files.
    Stop,
    /// Pack a stopped sandbox's files into an archive.
    Archive,
    /// Remove it and every trace of it.
    Delete,
    /// Bring an errored sandbox back and start it.
    Recover,
    /// Bring an errored sandbox back, stopped (`recover?skipStart=true`).
    RecoverStopped,
    /// Commit its files as a snapshot (it keeps running).
    Snapshot,
    /// Copy its files to a new sandbox (it keeps running).
    Fork,
    /// Freeze its processes, keeping their memory (`start` resumes them).
    Pause,
}

/// Every operation, for exhaustive checks.
pub const ALL_OPERATIONS: [Operation; 9] = [
    Operation::Start,
    Operation::Stop,
    Operation::Archive,
    Operation::Delete,
    Operation::Recover,
    Operation::RecoverStopped,
    Operation::Snapshot,
    Operation::Fork,
    Operation::Pause,
];

impl Operation {
    /// The verb, for messages and the diagram.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Archive => "archive",
            Self::Delete => "delete",
            Self::Recover => "recover",
            Self::RecoverStopped => "recover (skipStart)",
            Self::Snapshot => "snapshot",
            Self::Fork => "fork",
            Self::Pause => "pause",
        }
    }
}

/// Why an operation is refused in a state: each maps to one API error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The sandbox is being deleted (409).
    BeingDeleted,
    /// Archiving needs a stopped sandbox (400, `SANDBOX_NOT_STOPPED`).
    NotStopped,
    /// Recover applies to errored sandboxes only (400).
    NotInError,
    /// An archived sandbox's files are not on disk (409).
    Archived,
    /// Only a started or stopped sandbox's files can be copied (409).
    FilesBusy,
    /// Only a started sandbox can be paused (400, `SANDBOX_NOT_STARTED`).
    NotStarted,
}

impl Refusal {
    /// Whether the API answers 409 Conflict (else 400 Bad Request).
    pub fn is_conflict(self) -> bool {
        matches!(self, Self::BeingDeleted | Self::Archived | Self::FilesBusy)
    }

    /// The stable error code the API reports, when there is one.
    pub fn code(self) -> Option<&'static str> {
        match self {
            Self::NotStopped => Some("SANDBOX_NOT_STOPPED"),
            Self::NotStarted => Some("SANDBOX_NOT_STARTED"),
            _ => None,
        }
    }

    /// The message the API reports for sandbox `id` in `state` asked to do `op`.
    pub fn message(self, id: &str, state: SandboxState, op: Operation) -> String {
        let what = op.as_str();
        match self {
            Self::BeingDeleted => format!("sandbox {id} is being deleted"),
            Self::NotStopped => format!("sandbox {id} is {state}; stop it before archiving"),
            Self::NotInError => format!("sandbox {id} is {state}, not in error"),
            Self::Archived => format!("sandbox {id} is archived; start it before you {what} it"),
            Self::FilesBusy => format!(
                "sandbox {id} is {state}; only a started or stopped sandbox can be {what}ed"
            ),
            Self::NotStarted => {
                format!("sandbox {id} is {state}; only a started sandbox can be {what}d")
            }
        }
    }
}

/// What an operation does from a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing to do: the sandbox is where the operation would take it.
    Done,
    /// Record `during`, act, then record `success`, or `failure` if the action fails.
    Run {
        during: SandboxState,
        success: SandboxState,
        failure: SandboxState,
    },
    /// Refused, with the reason the API reports.
    Refused(Refusal),
}

/// The table. `state` is the recorded state; a sandbox recorded `started` whose processes
/// are gone is `error` here (callers pass [`effective`]).
pub fn plan(state: SandboxState, op: Operation) -> Transition {
    use Operation as O;
    use Transition::{Done, Refused, Run};
    let run = |during, success, failure| Run {
        during,
        success,
        failure,
    };
    let deleting = matches!(state, S::Destroying | S::Destroyed);
    match op {
        O::Start if deleting => Refused(Refusal::BeingDeleted),
        O::Start if state == S::Started => Done,
        O::Start if state == S::Archived => run(S::Restoring, S::Started, S::Error),
        O::Start if state == S::Paused => run(S::Resuming, S::Started, S::Error),
        O::Start => run(S::Starting, S::Started, S::Error),
        // A failed stop stays `stopping`: the reconciler finishes it.
        O::Stop if deleting => Refused(Refusal::BeingDeleted),
        O::Stop if matches!(state, S::Stopped | S::Archived) => Done,
        O::Stop => run(S::Stopping, S::Stopped, S::Stopping),
        O::Archive if state == S::Archived => Done,
        O::Archive if state == S::Stopped => run(S::Archiving, S::Archived, S::Stopped),
        O::Archive => Refused(Refusal::NotStopped),
        // A failed delete stays `destroying`: the reconciler tries again.
        O::Delete if state == S::Destroyed => Done,
        O::Delete => run(S::Destroying, S::Destroyed, S::Destroying),
        O::Recover if state == S::Error => run(S::Starting, S::Started, S::Error),
        O::RecoverStopped if state == S::Error => run(S::Stopping, S::Stopped, S::Error),
        O::Recover | O::RecoverStopped => Refused(Refusal::NotInError),
        O::Snapshot | O::Fork => match state {
            S::Started | S::Stopped => {
                let during = if op == O::Snapshot {
                    S::Snapshotting
                } else {
                    S::Forking
                };
                // The source keeps running (or stays stopped) either way.
                run(during, state, state)
            }
            S::Archived => Refused(Refusal::Archived),
            _ => Refused(Refusal::FilesBusy),
        },
        O::Pause if deleting => Refused(Refusal::BeingDeleted),
        O::Pause if state == S::Paused => Done,
        // A failed freeze is undone (thawed): the sandbox keeps running.
        O::Pause if state == S::Started => run(S::Pausing, S::Paused, S::Started),
        O::Pause => Refused(Refusal::NotStarted),
    }
}

/// The state to plan from: a sandbox recorded `started` or `paused` whose processes are gone
/// is in error.
pub fn effective(recorded: SandboxState, running: bool) -> SandboxState {
    if matches!(recorded, S::Started | S::Paused) && !running {
        S::Error
    } else {
        recorded
    }
}

/// The operation that leaves a sandbox in transitional state `state` while it runs, from
/// the table: `None` for states no operation passes through.
pub fn interrupted(state: SandboxState) -> Option<Operation> {
    ALL_OPERATIONS.into_iter().find(|&op| {
        ALL_STATES.into_iter().any(|from| {
            matches!(plan(from, op), Transition::Run { during, .. } if during == state && during != from)
        })
    })
}

/// How start-up reconciliation finishes a sandbox a dead server left in `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterCrash {
    /// Leave it as it is.
    Keep,
    /// Record this state (with an error reason when it is `error`).
    Set(SandboxState),
    /// Run the interrupted operation again (it is idempotent); the sandbox is recorded as
    /// `from` first.
    Rerun { op: Operation, from: SandboxState },
    /// A sandbox build was cut off: resume it.
    ResumeBuild,
    /// A create cut off during its image pull by an earlier version: remove it.
    Remove,
}

/// [`AfterCrash`] for a sandbox recorded in `state` whose processes do (`running`) or do not
/// run now. Derived from the table: the operation that was interrupted decides, and its
/// success or failure state is what the sandbox is now.
pub fn after_crash(state: SandboxState, running: bool) -> AfterCrash {
    use Operation as O;
    match state {
        S::PendingBuild | S::BuildingSnapshot => return AfterCrash::ResumeBuild,
        S::PullingSnapshot => return AfterCrash::Remove,
        // Creating and resizing pass through states the table does not own (creates and
        // resizes are not lifecycle operations yet): a create is a start.
        S::Creating | S::Resizing => return after_crash(S::Starting, running),
        S::Started | S::Paused if running => return AfterCrash::Keep,
        S::Started | S::Paused => {
            return AfterCrash::Set(S::Error);
        }
        // Freezing and thawing are idempotent: finish the job.
        S::Pausing if running => {
            return AfterCrash::Rerun {
                op: O::Pause,
                from: S::Started,
            };
        }
        S::Resuming if running => {
            return AfterCrash::Rerun {
                op: O::Start,
                from: S::Paused,
            };
        }
        S::Pausing | S::Resuming => return AfterCrash::Set(S::Error),
        _ => {}
    }
    let Some(op) = interrupted(state) else {
        return AfterCrash::Keep;
    };
    let outcome = |from: SandboxState| match plan(from, op) {
        Transition::Run {
            success, failure, ..
        } => (success, failure),
        _ => (state, state),
    };
    match op {
        // Idempotent: finish the job.
        O::Delete => AfterCrash::Rerun {
            op,
            from: S::Destroying,
        },
        O::Archive => AfterCrash::Rerun {
            op,
            from: S::Stopped,
        },
        O::Stop | O::RecoverStopped if running => AfterCrash::Rerun {
            op: O::Stop,
            from: state,
        },
        O::Stop | O::RecoverStopped => AfterCrash::Set(outcome(S::Started).0),
        // It runs: the start went through. It does not: the start failed.
        O::Start | O::Recover => {
            let (success, failure) = outcome(S::Stopped);
            AfterCrash::Set(if running { success } else { failure })
        }
        // A snapshot or fork reads files only: the source is what its processes say.
        O::Snapshot | O::Fork => AfterCrash::Set(if running { S::Started } else { S::Stopped }),
        O::Pause => unreachable!("pausing is handled above"),
    }
}

/// Whether `state` is one a sandbox is in only while an operation runs on it (holding its
/// lock) or a build or pull prepares it.
pub fn is_transitional(state: SandboxState) -> bool {
    matches!(
        state,
        S::Creating
            | S::Stopping
            | S::Starting
            | S::Destroying
            | S::Archiving
            | S::Restoring
            | S::Resizing
            | S::Snapshotting
            | S::Forking
            | S::Pausing
            | S::Resuming
            | S::PullingSnapshot
            | S::PendingBuild
            | S::BuildingSnapshot
    )
}

/// The table as a Mermaid state diagram (`docs/states.md` holds it; a test checks). Edges
/// start from the states a sandbox rests in; operations on a sandbox in a transitional state
/// wait for its lock, so they see it at rest (or the reconciler finishes it first).
pub fn mermaid() -> String {
    let mut edges = std::collections::BTreeSet::new();
    for from in ALL_STATES.into_iter().filter(|s| !is_transitional(*s)) {
        for op in ALL_OPERATIONS {
            if let Transition::Run {
                during,
                success,
                failure,
            } = plan(from, op)
            {
                let verb = op.as_str();
                if during != from {
                    edges.insert(format!("    {from} --> {during}: {verb}"));
                }
                edges.insert(format!("    {during} --> {success}: {verb} done"));
                if failure != success && failure != during {
                    edges.insert(format!("    {during} --> {failure}: {verb} failed"));
                }
            }
        }
    }
    let mut out = String::from("```mermaid\nstateDiagram-v2\n");
    for e in edges {
        out.push_str(&e);
        out.push('\n');
    }
    out.push_str("```\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use Operation as O;

    #[test]
    fn the_lists_are_complete() {
        // A new state or operation must be added to the lists (and so to the table's tests).
        for s in ALL_STATES {
            match s {
                S::Creating
                | S::Started
                | S::Stopping
                | S::Stopped
                | S::Starting
                | S::Destroying
                | S::Destroyed
                | S::Archiving
                | S::Archived
                | S::Restoring
                | S::Resizing
                | S::Error
                | S::Unknown
                | S::PullingSnapshot
                | S::PendingBuild
                | S::BuildingSnapshot
                | S::BuildFailed
                | S::Snapshotting
                | S::Forking
                | S::Pausing
                | S::Paused
                | S::Resuming => {}
            }
        }
        let distinct: std::collections::HashSet<_> = ALL_STATES.iter().collect();
        assert_eq!(distinct.len(), ALL_STATES.len());
        let ops: std::collections::HashSet<_> = ALL_OPERATIONS.iter().collect();
        assert_eq!(ops.len(), ALL_OPERATIONS.len());
    }

    /// Every cell of the table, spelled out: a change of behaviour must change this test.
    #[test]
    fn every_cell() {
        let run = |during, success, failure| Transition::Run {
            during,
            success,
            failure,
        };
        for from in ALL_STATES {
            let deleting = matches!(from, S::Destroying | S::Destroyed);
            let expect_start = if deleting {
                Transition::Refused(Refusal::BeingDeleted)
            } else if from == S::Started {
                Transition::Done
            } else if from == S::Archived {
                run(S::Restoring, S::Started, S::Error)
            } else if from == S::Paused {
                run(S::Resuming, S::Started, S::Error)
            } else {
                run(S::Starting, S::Started, S::Error)
            };
            assert_eq!(plan(from, O::Start), expect_start, "start from {from}");

            let expect_stop = if deleting {
                Transition::Refused(Refusal::BeingDeleted)
            } else if matches!(from, S::Stopped | S::Archived) {
                Transition::Done
            } else {
                run(S::Stopping, S::Stopped, S::Stopping)
            };
            assert_eq!(plan(from, O::Stop), expect_stop, "stop from {from}");

            let expect_archive = match from {
                S::Archived => Transition::Done,
                S::Stopped => run(S::Archiving, S::Archived, S::Stopped),
                _ => Transition::Refused(Refusal::NotStopped),
            };
            assert_eq!(
                plan(from, O::Archive),
                expect_archive,
                "archive from {from}"
            );

            let expect_delete = if from == S::Destroyed {
                Transition::Done
            } else {
                run(S::Destroying, S::Destroyed, S::Destroying)
            };
            assert_eq!(plan(from, O::Delete), expect_delete, "delete from {from}");

            let (recover, recover_stopped) = if from == S::Error {
                (
                    run(S::Starting, S::Started, S::Error),
                    run(S::Stopping, S::Stopped, S::Error),
                )
            } else {
                (
                    Transition::Refused(Refusal::NotInError),
                    Transition::Refused(Refusal::NotInError),
                )
            };
            assert_eq!(plan(from, O::Recover), recover, "recover from {from}");
            assert_eq!(
                plan(from, O::RecoverStopped),
                recover_stopped,
                "recover from {from}"
            );

            for (op, during) in [(O::Snapshot, S::Snapshotting), (O::Fork, S::Forking)] {
                let expect = match from {
                    S::Started | S::Stopped => run(during, from, from),
                    S::Archived => Transition::Refused(Refusal::Archived),
                    _ => Transition::Refused(Refusal::FilesBusy),
                };
                assert_eq!(plan(from, op), expect, "{op:?} from {from}");
            }

            let expect_pause = match from {
                S::Destroying | S::Destroyed => Transition::Refused(Refusal::BeingDeleted),
                S::Paused => Transition::Done,
                S::Started => run(S::Pausing, S::Paused, S::Started),
                _ => Transition::Refused(Refusal::NotStarted),
            };
            assert_eq!(plan(from, O::Pause), expect_pause, "pause from {from}");
        }
    }

    #[test]
    fn runs_pass_through_transitional_states_and_end_in_stable_ones() {
        for from in ALL_STATES {
            for op in ALL_OPERATIONS {
                if let Transition::Run {
                    during,
                    success,
                    failure,
                } = plan(from, op)
                {
                    assert!(
                        is_transitional(during),
                        "{op:?} from {from} runs as {during}"
                    );
                    assert!(
                        !is_transitional(success),
                        "{op:?} from {from} ends {success}"
                    );
                    // Failures end stable, except stop and delete, which stay transitional
                    // for the reconciler to finish.
                    if !matches!(op, O::Stop | O::Delete) {
                        assert!(
                            !is_transitional(failure),
                            "{op:?} from {from} fails {failure}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn refusals_map_to_the_errors_the_api_reports() {
        assert!(Refusal::BeingDeleted.is_conflict());
        assert!(!Refusal::NotStopped.is_conflict());
        assert_eq!(Refusal::NotStopped.code(), Some("SANDBOX_NOT_STOPPED"));
        assert_eq!(
            Refusal::NotStopped.message("x", S::Started, O::Archive),
            "sandbox x is started; stop it before archiving"
        );
        assert_eq!(
            Refusal::FilesBusy.message("x", S::Creating, O::Fork),
            "sandbox x is creating; only a started or stopped sandbox can be forked"
        );
        assert_eq!(
            Refusal::Archived.message("x", S::Archived, O::Snapshot),
            "sandbox x is archived; start it before you snapshot it"
        );
        assert_eq!(
            Refusal::NotInError.message("x", S::Stopped, O::Recover),
            "sandbox x is stopped, not in error"
        );
        assert!(!Refusal::NotStarted.is_conflict());
        assert_eq!(
            Refusal::NotStarted.message("x", S::Stopped, O::Pause),
            "sandbox x is stopped; only a started sandbox can be paused"
        );
    }

    #[test]
    fn every_transitional_state_has_an_interrupted_operation() {
        for s in ALL_STATES {
            let owned = interrupted(s);
            match s {
                S::Starting | S::Restoring => assert_eq!(owned, Some(O::Start), "{s}"),
                S::Stopping => assert_eq!(owned, Some(O::Stop), "{s}"),
                S::Archiving => assert_eq!(owned, Some(O::Archive), "{s}"),
                S::Destroying => assert_eq!(owned, Some(O::Delete), "{s}"),
                S::Snapshotting => assert_eq!(owned, Some(O::Snapshot), "{s}"),
                S::Forking => assert_eq!(owned, Some(O::Fork), "{s}"),
                S::Pausing => assert_eq!(owned, Some(O::Pause), "{s}"),
                S::Resuming => assert_eq!(owned, Some(O::Start), "{s}"),
                _ => assert_eq!(owned, None, "{s}"),
            }
        }
    }

    /// Start-up reconciliation, cell by cell: what the server did before the table existed.
    #[test]
    fn after_a_crash() {
        let rerun = |op, from| AfterCrash::Rerun { op, from };
        for running in [true, false] {
            for s in ALL_STATES {
                let expect = match (s, running) {
                    (S::Destroying, _) => rerun(O::Delete, S::Destroying),
                    (S::Archiving, _) => rerun(O::Archive, S::Stopped),
                    (S::PendingBuild | S::BuildingSnapshot, _) => AfterCrash::ResumeBuild,
                    (S::PullingSnapshot, _) => AfterCrash::Remove,
                    (S::Stopping, true) => rerun(O::Stop, S::Stopping),
                    (S::Stopping | S::Snapshotting | S::Forking, false) => {
                        AfterCrash::Set(S::Stopped)
                    }
                    (S::Started | S::Paused, true) => AfterCrash::Keep,
                    (S::Pausing, true) => rerun(O::Pause, S::Started),
                    (S::Resuming, true) => rerun(O::Start, S::Paused),
                    (
                        S::Creating
                        | S::Starting
                        | S::Restoring
                        | S::Resizing
                        | S::Snapshotting
                        | S::Forking,
                        true,
                    ) => AfterCrash::Set(S::Started),
                    (
                        S::Started
                        | S::Creating
                        | S::Starting
                        | S::Restoring
                        | S::Resizing
                        | S::Paused
                        | S::Pausing
                        | S::Resuming,
                        false,
                    ) => AfterCrash::Set(S::Error),
                    _ => AfterCrash::Keep,
                };
                assert_eq!(after_crash(s, running), expect, "{s} running={running}");
            }
        }
    }

    #[test]
    fn effective_state_of_a_dead_started_sandbox_is_error() {
        assert_eq!(effective(S::Started, false), S::Error);
        assert_eq!(effective(S::Started, true), S::Started);
        assert_eq!(effective(S::Stopped, false), S::Stopped);
        assert_eq!(effective(S::Paused, false), S::Error);
        assert_eq!(effective(S::Paused, true), S::Paused);
    }

    #[test]
    fn the_documented_diagram_is_the_table() {
        let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/states.md");
        let text = std::fs::read_to_string(&doc).expect("docs/states.md");
        let diagram = mermaid();
        assert!(
            text.contains(&diagram),
            "docs/states.md is out of date; replace its diagram with:\n{diagram}"
        );
    }
}
