//! Where proposals go: the local commit thread (a single MDS,
//! `committer::Local`) or the MDS group's log (`group::Group::propose`).
//! Chosen here so that neither the committer nor the group knows the other
//! as a destination.

use crate::committer::{self, Outcome, Proposal};
use crate::group::Group;
use std::sync::Arc;
use tokio::sync::oneshot;

#[derive(Clone)]
pub enum Committer {
    Local(committer::Local),
    Group(Arc<Group>),
}

impl Committer {
    pub async fn propose(
        &self,
        make: impl FnOnce(oneshot::Sender<Outcome>) -> Proposal,
    ) -> Outcome {
        match self {
            Committer::Local(local) => local.propose(make).await,
            Committer::Group(g) => {
                // The group answers through its log, not the proposal's sender.
                let (done, _) = oneshot::channel();
                let (req, _) = make(done).split();
                g.propose(req).await
            }
        }
    }
}
