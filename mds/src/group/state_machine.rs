//! What the MDS group applies: each committed entry's request is decided and
//! applied to the namespace (`committer::decide_with`), the same on every
//! node. Snapshots are the MDS checkpoint format (`snapshot.rs`) at the Raft
//! index, in `DATA/raft/snapshot/`, with openraft's metadata beside them in
//! `meta.json`; a follower that is new or too far behind is sent one.

use super::{Answer, Cmd, TypeConfig};
use crate::chunkds::Registry;
use crate::state::State;
use crate::watch::{self, Hub};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use parking_lot::Mutex;
use prost::Message;
use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::RwLock;
use weft_proto::pb;

type Nid = u64;
type SErr = StorageError<Nid>;
type Meta = SnapshotMeta<Nid, BasicNode>;

fn serr(e: impl std::fmt::Display) -> SErr {
    StorageIOError::<Nid>::write_snapshot(None, AnyError::error(e.to_string())).into()
}

pub struct StateMachine {
    state: Arc<RwLock<State>>,
    hub: Arc<Hub>,
    registry: Arc<Mutex<Registry>>,
    dir: PathBuf,
    chunk_size: u64,
    last_applied: Option<LogId<Nid>>,
    membership: StoredMembership<Nid, BasicNode>,
}

fn meta_path(dir: &Path) -> PathBuf {
    dir.join("meta.json")
}

impl StateMachine {
    /// Loads the newest snapshot in `dir`, if any.
    pub fn open(
        dir: &Path,
        chunk_size: u64,
        hub: Arc<Hub>,
        registry: Arc<Mutex<Registry>>,
    ) -> anyhow::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        let mut sm = StateMachine {
            state: Arc::new(RwLock::new(State::new(chunk_size))),
            hub,
            registry,
            dir: dir.to_path_buf(),
            chunk_size,
            last_applied: None,
            membership: StoredMembership::default(),
        };
        if let Some(meta) = read_meta(dir)? {
            let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
            let st = crate::snapshot::read(
                &dir.join(crate::snapshot::snapshot_name(index)),
                chunk_size,
            )?;
            sm.state = Arc::new(RwLock::new(st));
            sm.last_applied = meta.last_log_id;
            sm.membership = meta.last_membership.clone();
        }
        Ok(sm)
    }

    pub fn state(&self) -> Arc<RwLock<State>> {
        self.state.clone()
    }

    /// Takes `st` (a single MDS's state) as the snapshot at its index, with
    /// `nodes` as the group.
    pub async fn adopt(
        &mut self,
        st: State,
        id: u64,
        nodes: BTreeMap<u64, BasicNode>,
    ) -> anyhow::Result<()> {
        let log_id = LogId::new(openraft::CommittedLeaderId::new(0, id), st.applied_index);
        let voters: std::collections::BTreeSet<u64> = nodes.keys().copied().collect();
        let membership = openraft::Membership::new(vec![voters], nodes);
        self.membership = StoredMembership::new(Some(log_id), membership);
        self.last_applied = Some(log_id);
        let meta = Meta {
            last_log_id: Some(log_id),
            last_membership: self.membership.clone(),
            snapshot_id: format!("{}-adopted", st.applied_index),
        };
        save(&self.dir, &st, &meta)?;
        *self.state.write().await = st;
        Ok(())
    }
}

fn read_meta(dir: &Path) -> anyhow::Result<Option<Meta>> {
    match std::fs::read(meta_path(dir)) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| {
            anyhow::anyhow!("{}: does not decode: {e}", meta_path(dir).display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes the snapshot file, then its metadata, then drops older snapshots.
fn save(dir: &Path, st: &State, meta: &Meta) -> anyhow::Result<()> {
    crate::snapshot::write(dir, st)?;
    crate::durable_file::write_durably(dir, "meta.json", &serde_json::to_vec(meta)?)?;
    drop_older(dir, st.applied_index);
    Ok(())
}

fn drop_older(dir: &Path, keep: u64) {
    if let Ok(list) = crate::snapshot::list(dir) {
        for (index, path) in list {
            if index != keep {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn current(dir: &Path) -> anyhow::Result<Option<Snapshot<TypeConfig>>> {
    let Some(meta) = read_meta(dir)? else {
        return Ok(None);
    };
    let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
    let bytes = std::fs::read(dir.join(crate::snapshot::snapshot_name(index)))?;
    Ok(Some(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(bytes)),
    }))
}

pub struct Builder {
    copy: State,
    meta: Meta,
    dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let (dir, meta) = (self.dir.clone(), self.meta.clone());
        let copy = std::mem::replace(&mut self.copy, State::new(1));
        let t = std::time::Instant::now();
        tokio::task::spawn_blocking(move || save(&dir, &copy, &meta))
            .await
            .map_err(serr)?
            .map_err(serr)?;
        tracing::info!(
            index = self.meta.last_log_id.map(|l| l.index).unwrap_or(0),
            ms = t.elapsed().as_millis() as u64,
            "MDS group snapshot written"
        );
        current(&self.dir)
            .map_err(serr)?
            .ok_or_else(|| serr("the snapshot just written is gone"))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<Nid>>, StoredMembership<Nid, BasicNode>), SErr> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Answer>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut answers = Vec::new();
        let mut events: Vec<watch::Event> = Vec::new();
        let mut freed: Vec<u64> = Vec::new();
        let mut origins = Vec::new();
        let mut st = self.state.write().await;
        // Subtree exports being watched: each event is scoped for them.
        let tops = self.hub.subtrees();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            let mut answer = Answer::default();
            let mut origin = None;
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                }
                EntryPayload::Normal(cmd) => {
                    let first_event = events.len();
                    let outcome = match Cmd::into_request(cmd) {
                        Some(req) => crate::committer::decide_with(
                            &mut st,
                            req,
                            &mut |st, session, seq, record| {
                                events.push(watch::Event::new(session, &record, &st.ns, &tops));
                                let applied = st.apply_record(session, seq, &record);
                                freed.extend(applied.freed_chunks);
                                applied.reply
                            },
                        ),
                        None => Err(weft_proto::Errno::EINVAL),
                    };
                    origin = events[first_event..]
                        .iter()
                        .find(|e| !e.items.is_empty())
                        .map(|e| e.origin);
                    answer.reply = Some(match outcome {
                        Ok(r) => Ok(pb::MetaReply {
                            result: Some(r),
                            ..Default::default()
                        }
                        .encode_to_vec()),
                        Err(e) => Err(e.code()),
                    });
                }
            }
            st.applied_index = entry.log_id.index;
            answers.push(answer);
            origins.push(origin);
        }
        drop(st);
        // Applied everywhere alike; only the leader has mounts watching.
        let seq = self.hub.publish(events);
        if !freed.is_empty() {
            self.registry.lock().forget_chunks(&freed);
        }
        for (a, origin) in answers.iter_mut().zip(origins) {
            if let Some(o) = origin {
                if self.hub.must_wait(seq, o) {
                    a.strict = Some((seq, o));
                }
            }
        }
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        // A copy under the read lock (applies wait only for the copy), as the
        // single MDS's checkpoints do.
        let copy = self.state.read().await.clone();
        Builder {
            meta: Meta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
                snapshot_id: format!(
                    "{}-{}",
                    self.last_applied.map(|l| l.index).unwrap_or(0),
                    weft_proto::now().sec
                ),
            },
            copy,
            dir: self.dir.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        let bytes = snapshot.into_inner();
        let name = crate::snapshot::snapshot_name(index);
        crate::durable_file::write_durably(&self.dir, &name, &bytes).map_err(serr)?;
        let st = crate::snapshot::read_checked(&self.dir.join(&name), None).map_err(serr)?;
        if st.ns.chunk_size() != self.chunk_size {
            // The group's chunk size wins over the default this node's data
            // directory was made with when it joined.
            tracing::info!(
                chunk_size = st.ns.chunk_size(),
                "taking the group's chunk size from its snapshot"
            );
            self.chunk_size = st.ns.chunk_size();
            if let Some(data) = self.dir.parent().and_then(|p| p.parent()) {
                crate::datadir::set_chunk_size(data, self.chunk_size).map_err(serr)?;
            }
        }
        crate::durable_file::write_durably(
            &self.dir,
            "meta.json",
            &serde_json::to_vec(meta).map_err(serr)?,
        )
        .map_err(serr)?;
        drop_older(&self.dir, index);
        tracing::info!(
            index,
            bytes = bytes.len(),
            "installed a snapshot from the leader"
        );
        *self.state.write().await = st;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        current(&self.dir).map_err(serr)
    }
}
