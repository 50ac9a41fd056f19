//! The cluster as `weft status`, the metrics and the status page see it.

use super::Mds;
use crate::metrics::View;

impl Mds {
    /// What `weft status`, the metrics and the status page show.
    pub async fn view(&self) -> View {
        let session_list = self.contacts.list();
        // A group's locks are in its replicated state; a single MDS's in memory.
        let group_locks = self.state.read().await.locks.held();
        let locks = self.locks.lock().held() + group_locks;
        View {
            status: self.status_reply().await,
            sessions: session_list.len() as u64,
            locks: locks as u64,
            node_id: self.node_id,
            session_list,
        }
    }
}
