//! A daemon and several MDS nodes (fake `Master` services in-process; the
//! daemon is real): it follows "not leader" answers and moves past dead
//! addresses, and term fencing — it refuses instructions from an MDS whose
//! term is older than one it has seen, also after a restart.

use std::time::Duration;

use tonic::Code;
use weft_proto::chunk_admin_client::ChunkAdminClient;
use weft_proto::{ReplicateReq, SetVersionReq};
use weft_testkit::chunkd::*;
use weft_testkit::wait_until_async;

const MIB: u64 = 1 << 20;

fn admin(addr: impl ToString) -> ChunkAdminClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", addr.to_string()))
        .unwrap()
        .connect_lazy();
    ChunkAdminClient::new(ch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_leader_past_dead_nodes_and_hints() {
    let d = tempfile::tempdir().unwrap();
    let follower = FakeMds::new(64 * MIB, 100);
    let leader = FakeMds::new(64 * MIB, 100);
    let follower_addr = follower.serve("127.0.0.1:0").await.to_string();
    let leader_addr = leader.serve("127.0.0.1:0").await.to_string();
    // The follower names the leader, which is not in the daemon's list.
    follower.log.lock().not_leader = Some(leader_addr.clone());
    let list = format!("{},{follower_addr}", dead_addr());
    let daemon = start_chunkd(d.path(), &list, |c| c.heartbeat_ms = Some(100)).await;
    wait_until_async(
        "registered with the leader named by the follower",
        Duration::from_secs(10),
        async || !leader.log.lock().registers.is_empty(),
    )
    .await;
    assert!(follower.log.lock().registers.is_empty());
    wait_until_async("beats to the leader", Duration::from_secs(3), async || {
        leader.log.lock().beats.len() >= 2
    })
    .await;

    // The leader steps down naming the other node, which now leads.
    follower.log.lock().not_leader = None;
    leader.log.lock().not_leader = Some(follower_addr.clone());
    wait_until_async(
        "moved to the new leader",
        Duration::from_secs(10),
        async || !follower.log.lock().registers.is_empty(),
    )
    .await;
    wait_until_async(
        "beats to the new leader",
        Duration::from_secs(3),
        async || follower.log.lock().beats.len() >= 2,
    )
    .await;
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_instructions_from_an_older_term() {
    let d = tempfile::tempdir().unwrap();
    let old = FakeMds::new(64 * MIB, 100);
    let new = FakeMds::new(64 * MIB, 100);
    old.log.lock().term = 4;
    new.log.lock().term = 5;
    let old_addr = old.serve("127.0.0.1:0").await.to_string();
    let new_addr = new.serve("127.0.0.1:0").await.to_string();
    let daemon = start_chunkd(d.path(), &new_addr, |c| c.heartbeat_ms = Some(100)).await;
    // A beat comes only after the registration's reply (and term) was taken.
    wait_until_async(
        "a beat to the new-term MDS",
        Duration::from_secs(5),
        async || !new.log.lock().beats.is_empty(),
    )
    .await;
    let mut c = client(daemon.addr);
    // Writes carry their lease's term: an older one is refused.
    let mut w = write_req(0x30, 1, 0, b"fenced", &[]);
    w.term = 4;
    let e = c.write(w.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(daemon.store.summaries().is_empty());
    w.term = 5;
    c.write(w).await.unwrap();
    let mut a = admin(daemon.addr);

    // Term 5 was seen: term 4's SetVersion and Replicate are refused and
    // change nothing.
    let e = a
        .set_version(SetVersionReq {
            chunk_id: 0x30,
            version: 9,
            term: 4,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = a
        .replicate(ReplicateReq {
            chunk_id: 0x31,
            version: 1,
            source: daemon.addr.to_string(),
            length: 1,
            term: 4,
            cap: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(daemon.store.summaries()[0].version, 1);
    // The current term is obeyed.
    a.set_version(SetVersionReq {
        chunk_id: 0x30,
        version: 2,
        term: 5,
    })
    .await
    .unwrap();
    assert_eq!(daemon.store.summaries()[0].version, 2);

    // The node at that address now answers with an older term (a deposed
    // leader): its heartbeat deletes are not obeyed.
    let registers = new.log.lock().registers.len();
    {
        let mut log = new.log.lock();
        log.term = 3;
        log.delete_next = vec![0x30];
    }
    // The delete went out in a reply; the daemon then looks for a leader of
    // a current term (registering again, refusing each answer).
    wait_until_async(
        "the stale delete taken and two more registrations",
        Duration::from_secs(5),
        async || {
            let log = new.log.lock();
            log.delete_next.is_empty() && log.registers.len() >= registers + 2
        },
    )
    .await;
    assert!(
        daemon.store.chunk_path(0x30).exists(),
        "a stale term's delete was obeyed"
    );

    // Restarted, pointed at the deposed MDS only: still fenced (the term is
    // on disk); it never gets past registration there.
    daemon.shutdown().await;
    let daemon = start_chunkd(d.path(), &old_addr, |c| c.heartbeat_ms = Some(100)).await;
    wait_until_async(
        "registrations with the deposed leader",
        Duration::from_secs(5),
        async || old.log.lock().registers.len() >= 2,
    )
    .await;
    assert!(old.log.lock().beats.is_empty(), "beat a deposed leader");
    let mut a = admin(daemon.addr);
    let e = a
        .set_version(SetVersionReq {
            chunk_id: 0x30,
            version: 3,
            term: 4,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(daemon.store.summaries()[0].version, 2);
    assert!(daemon.store.chunk_path(0x30).exists());
}
