//! What a push asks of a remote and what it answers, whatever the storage format: a batch of
//! commands as git sent them, and per ref either success or a refusal in git's own words.

use std::collections::HashMap;
use std::fmt;

use crate::git::Git;
use crate::object_format::ObjectFormat;

/// One push command, as git sent it.
#[derive(Debug, Clone)]
pub struct PushCommand {
    /// Empty to delete `dst`.
    pub src: String,
    pub dst: String,
    pub force: bool,
}

#[derive(Debug, Clone, Default)]
pub struct PushBatch {
    pub commands: Vec<PushCommand>,
    /// What the remote advertised to git for these refs (absent: did not exist).
    pub advertised: HashMap<String, String>,
    /// --force-with-lease expectations; an empty or all-zero value means "must not exist".
    pub leases: HashMap<String, String>,
    pub dry_run: bool,
    pub atomic: bool,
    /// The object format of the remote's refs as listed for this push; `None`: it has none.
    pub remote_format: Option<ObjectFormat>,
}

/// The result for one ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefOutcome {
    pub dst: String,
    pub result: Result<Pushed, Refusal>,
}

impl RefOutcome {
    /// The same refusal for every command of `batch`.
    pub fn refuse_all(batch: &PushBatch, refusal: &Refusal) -> Vec<RefOutcome> {
        batch.commands.iter().map(|c| RefOutcome { dst: c.dst.clone(), result: Err(refusal.clone()) }).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// The ref moved to a commit that does not descend from its old value.
    pub forced: bool,
}

/// Why a ref was not pushed. Displayed as git's reserved words where git has them (the helper
/// protocol's `error <ref> <why>`), so git prints its usual hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The remote's ref moved since git listed it.
    FetchFirst,
    NonFastForward,
    /// A `--force-with-lease` expectation did not hold.
    StaleInfo,
    Protected,
    /// Another ref of an atomic push was refused, so this one was not written either.
    AtomicPushFailed,
    InvalidRefName(String),
    NoSuchSource(String),
    /// Anything else, in a short sentence.
    Failed(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::FetchFirst => f.write_str("fetch first"),
            Refusal::NonFastForward => f.write_str("non-fast forward"),
            Refusal::StaleInfo => f.write_str("stale info"),
            Refusal::Protected => f.write_str("protected branch"),
            Refusal::AtomicPushFailed => f.write_str("atomic push failed"),
            Refusal::InvalidRefName(why) => write!(f, "invalid ref name: {why}"),
            Refusal::NoSuchSource(src) => write!(f, "src refspec {src} does not match any object"),
            Refusal::Failed(why) => f.write_str(why),
        }
    }
}

impl<E: std::error::Error> From<E> for Refusal {
    fn from(e: E) -> Self {
        Refusal::Failed(e.to_string())
    }
}

/// Decides, as git's receive-pack would, whether `command` may move its ref from `current` (the
/// remote's value now) to `new` (`None`: delete). Returns whether the move is forced.
pub(crate) async fn judge(
    git: &Git,
    command: &PushCommand,
    batch: &PushBatch,
    current: Option<&str>,
    new: Option<&str>,
    protected: bool,
) -> Result<bool, Refusal> {
    let dst = &command.dst;
    // A lease is what the pusher expects; without one, what git was told.
    let lease = batch.leases.get(dst).map(|expected| expected.trim());
    match lease {
        Some(expected) => {
            // git's null id (all zeros, in either format) means "must not exist".
            let expected = expected.bytes().any(|b| b != b'0').then_some(expected);
            if expected != current {
                return Err(Refusal::StaleInfo);
            }
        }
        None if current != batch.advertised.get(dst).map(String::as_str) => return Err(Refusal::FetchFirst),
        None => {}
    }
    let may_force = command.force || lease.is_some();
    match (current, new) {
        (Some(_), None) if protected => Err(Refusal::Protected),
        (Some(current), Some(new)) if current != new => {
            let fast_forward = match git.has_object(current).await? {
                true => git.is_ancestor(current, new).await.unwrap_or(false),
                false if !may_force => return Err(Refusal::FetchFirst),
                false => false,
            };
            if fast_forward {
                return Ok(false);
            }
            if !may_force {
                return Err(Refusal::NonFastForward);
            }
            if protected {
                return Err(Refusal::Protected);
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_as_gits_reserved_words() {
        assert_eq!(Refusal::FetchFirst.to_string(), "fetch first");
        assert_eq!(Refusal::NonFastForward.to_string(), "non-fast forward");
        assert_eq!(Refusal::StaleInfo.to_string(), "stale info");
        assert_eq!(Refusal::NoSuchSource("topic".into()).to_string(), "src refspec topic does not match any object");
    }
}
