//! The cluster as `weft status`, the metrics and the status page see it.

use super::Mds;
use crate::metrics::View;

impl Mds {
    /// What `weft status`, the metrics and the status page show.
    pub async fn view(&self) -> View {
        let session_list = self.contacts.list();
        View {
            status: self.status_reply().await,
            sessions: session_list.len() as u64,
            locks: self.locks.lock().held() as u64,
            node_id: self.node_id,
            session_list,
        }
    }
}
