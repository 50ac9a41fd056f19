//! Exactly-once retries and session expiry, against a real weft-mds process
//! driven over gRPC with explicit (session, seq): a retry is the same request
//! sent again, as weftfs sends it after a lost reply or an MDS restart.

use weft_proto::pb;
use weft_proto::pb::meta_reply::Result as R;
use weft_proto::pb::meta_request::Op;
use weft_testkit::mds::*;
use weft_testkit::wait_until_async;

const S: u64 = 0x5e55_1011;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn inodes(c: &RawMeta) -> u64 {
    match c.call(0, 0, Op::Statfs(pb::StatFsReq {})).await {
        Ok(R::Statfs(s)) => s.files,
        other => panic!("statfs: {other:?}"),
    }
}

#[test]
fn retried_excl_create_gets_the_original_success() {
    let tmp = tempfile::tempdir().unwrap();
    let mds = MdsProc::start(&tmp.path().join("mds"), &[]);
    rt().block_on(async {
        let c = RawMeta::connect(&mds.addr).await;
        let first = c.call(S, 1, create(1, "f", libc::O_EXCL)).await;
        let ino = ino_of(&first);
        // The reply was "lost": the client sends the very same request again.
        let retry = c.call(S, 1, create(1, "f", libc::O_EXCL)).await;
        assert_eq!(ino_of(&retry), ino, "a retry gets the original answer");
        // A new request (new seq) is a new create: EEXIST.
        assert_eq!(
            c.call(S, 2, create(1, "f", libc::O_EXCL)).await,
            Err(libc::EEXIST)
        );
        // Another session's O_EXCL create of the same name fails too.
        assert_eq!(
            c.call(S + 2, 1, create(1, "f", libc::O_EXCL)).await,
            Err(libc::EEXIST)
        );
    });
}

#[test]
fn retries_after_kill9_and_restart_get_the_original_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut mds = MdsProc::start(&tmp.path().join("mds"), &[]);
    let r = rt();
    let (dir, f_ino) = r.block_on(async {
        let c = RawMeta::connect(&mds.addr).await;
        let dir = ino_of(&c.call(S, 1, mkdir(1, "d")).await);
        let f = ino_of(&c.call(S, 2, create(dir, "a", libc::O_EXCL)).await);
        ino_of(&c.call(S, 3, create(dir, "gone", libc::O_EXCL)).await);
        c.call(
            S,
            4,
            Op::Release(pb::ReleaseReq {
                ino: f,
                write: true,
                more: Vec::new(),
                held: false,
                atimes: Vec::new(),
            }),
        )
        .await
        .unwrap();
        assert!(c.call(S, 5, unlink(dir, "gone")).await.is_ok());
        assert!(c.call(S, 6, rename(dir, "a", 1, "b")).await.is_ok());
        (dir, f)
    });
    // The replies to 5 and 6 were lost and the MDS crashed.
    mds.kill9();
    mds.restart().unwrap();
    r.block_on(async {
        let c = RawMeta::connect(&mds.addr).await;
        assert!(
            matches!(c.call(S, 5, unlink(dir, "gone")).await, Ok(R::Empty(_))),
            "a retried unlink must not fail with ENOENT"
        );
        assert!(
            matches!(
                c.call(S, 6, rename(dir, "a", 1, "b")).await,
                Ok(R::Empty(_))
            ),
            "a retried rename must not fail with ENOENT"
        );
        assert_eq!(
            ino_of(&c.call(S, 2, create(dir, "a", libc::O_EXCL)).await),
            f_ino
        );
        // Nothing happened twice: b is the renamed file, a and gone are gone.
        assert_eq!(ino_of(&c.call(0, 0, lookup(1, "b")).await), f_ino);
        assert_eq!(c.call(0, 0, lookup(dir, "a")).await, Err(libc::ENOENT));
        assert_eq!(c.call(0, 0, lookup(dir, "gone")).await, Err(libc::ENOENT));
        // New requests run for real.
        assert_eq!(c.call(S, 7, unlink(dir, "gone")).await, Err(libc::ENOENT));
        assert_eq!(
            c.call(S, 8, rename(dir, "a", 1, "c")).await,
            Err(libc::ENOENT)
        );
    });
    // And again across a clean stop (which checkpoints) and a restart.
    mds.stop();
    mds.restart().unwrap();
    r.block_on(async {
        let c = RawMeta::connect(&mds.addr).await;
        assert!(matches!(
            c.call(S, 6, rename(dir, "a", 1, "b")).await,
            Ok(R::Empty(_))
        ));
        assert!(matches!(
            c.call(S, 5, unlink(dir, "gone")).await,
            Ok(R::Empty(_))
        ));
    });
}

#[test]
fn silent_sessions_expire_and_their_open_unlinked_files_go() {
    let tmp = tempfile::tempdir().unwrap();
    let mut mds = MdsProc::start(&tmp.path().join("mds"), &["--session-timeout-secs", "2"]);
    let r = rt();
    const QUIET: u64 = 0xaaaa;
    const ALIVE: u64 = 0xbbbb;
    r.block_on(async {
        let c = RawMeta::connect(&mds.addr).await;
        // Each session creates (so opens) a file and unlinks it while open.
        let q = ino_of(&c.call(QUIET, 1, create(1, "q", libc::O_EXCL)).await);
        ino_of(&c.call(ALIVE, 1, create(1, "a", libc::O_EXCL)).await);
        c.call(QUIET, 2, unlink(1, "q")).await.unwrap();
        c.call(ALIVE, 2, unlink(1, "a")).await.unwrap();
        assert_eq!(inodes(&c).await, 3, "root plus two open, unlinked files");
        assert!(c.call(0, 0, getattr(q)).await.is_ok());
        // ALIVE keeps in touch; QUIET says nothing for longer than the
        // timeout. A duration: QUIET's silence is the fault under test.
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_secs(5) {
            c.call(ALIVE, 0, Op::Keepalive(pb::KeepaliveReq {}))
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        assert_eq!(inodes(&c).await, 2, "the expired session's file is purged");
        assert_eq!(c.call(0, 0, getattr(q)).await, Err(libc::ENOENT));
        // ALIVE's remembered reply is still there; QUIET's is gone, so its
        // old request now runs anew (the expiry contract).
        assert!(matches!(
            c.call(ALIVE, 2, unlink(1, "a")).await,
            Ok(R::Empty(_))
        ));
        assert_eq!(c.call(QUIET, 2, unlink(1, "q")).await, Err(libc::ENOENT));
    });
    // The expiry is journaled: replay agrees after a crash.
    mds.kill9();
    mds.restart().unwrap();
    r.block_on(async {
        let c = RawMeta::connect(&mds.addr).await;
        // ALIVE's open, unlinked file is kept for a session timeout after the
        // restart (ALIVE may still use it), then purged.
        assert_eq!(inodes(&c).await, 2);
        wait_until_async(
            "the orphan purged",
            std::time::Duration::from_secs(10),
            async || {
                if inodes(&c).await == 1 {
                    return true;
                }
                c.call(ALIVE, 0, Op::Keepalive(pb::KeepaliveReq {}))
                    .await
                    .unwrap();
                false
            },
        )
        .await;
        assert!(matches!(
            c.call(ALIVE, 2, unlink(1, "a")).await,
            Ok(R::Empty(_))
        ));
    });
    let (code, out) = mds_tool(&["--dump", "--data", mds.data.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("expire-session {QUIET:016x}")),
        "{out}"
    );
    assert!(
        !out.contains(&format!("expire-session {ALIVE:016x}")),
        "{out}"
    );
}

/// One Release call carrying several (`ReleaseReq.more`, as weftfs gathers
/// them) ends each open as if each came alone: every unlinked file whose
/// last open it ends is purged, and a file still open elsewhere is not.
#[test]
fn a_release_carrying_several_ends_each_open() {
    let tmp = tempfile::tempdir().unwrap();
    let mds = MdsProc::start(&tmp.path().join("mds"), &[]);
    rt().block_on(async {
        let c = RawMeta::connect(&mds.addr).await;
        let before = inodes(&c).await;
        let mut files = Vec::new();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            files.push(ino_of(
                &c.call(S, 1 + i as u64, create(1, name, libc::O_EXCL)).await,
            ));
        }
        // c is open in another session too.
        let open_c = Op::Open(pb::OpenReq {
            ino: files[2],
            flags: libc::O_RDONLY as u32,
        });
        assert!(c.call(S + 1, 1, open_c).await.is_ok());
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            assert!(c.call(S, 10 + i as u64, unlink(1, name)).await.is_ok());
        }
        assert_eq!(inodes(&c).await, before + 3, "unlinked but open: kept");
        let release = Op::Release(pb::ReleaseReq {
            ino: files[0],
            write: true,
            more: files[1..]
                .iter()
                .map(|&ino| pb::ReleaseOne {
                    ino,
                    write: true,
                    held: false,
                })
                .collect(),
            held: false,
            atimes: Vec::new(),
        });
        assert!(matches!(c.call(S, 20, release).await, Ok(R::Empty(_))));
        assert_eq!(inodes(&c).await, before + 1, "a and b purged, c still open");
        // A release that says the mount still holds c open through another
        // handle, where the MDS knows of one open only (as after a restart
        // forgot the others): nothing changes.
        let held_c = Op::Release(pb::ReleaseReq {
            ino: files[2],
            write: false,
            more: Vec::new(),
            held: true,
            atimes: Vec::new(),
        });
        assert!(c.call(S + 1, 2, held_c).await.is_ok());
        assert_eq!(
            inodes(&c).await,
            before + 1,
            "a held release purges nothing"
        );
        let release_c = Op::Release(pb::ReleaseReq {
            ino: files[2],
            write: false,
            more: Vec::new(),
            held: false,
            atimes: Vec::new(),
        });
        assert!(c.call(S + 1, 3, release_c).await.is_ok());
        assert_eq!(inodes(&c).await, before);
    });
}

/// A Release retried with the same (session, seq) after its reply was lost
/// ends each open once: the file the session still holds open through
/// another descriptor stays, unlinked, until its own release.
#[test]
fn a_retried_release_ends_each_open_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mds = MdsProc::start(&tmp.path().join("mds"), &[]);
    rt().block_on(async {
        let c = RawMeta::connect(&mds.addr).await;
        let before = inodes(&c).await;
        let f = ino_of(&c.call(S, 1, create(1, "f", libc::O_EXCL)).await);
        let open = Op::Open(pb::OpenReq {
            ino: f,
            flags: libc::O_RDONLY as u32,
        });
        assert!(c.call(S, 2, open).await.is_ok());
        assert!(c.call(S, 3, unlink(1, "f")).await.is_ok());
        let release = |write| {
            Op::Release(pb::ReleaseReq {
                ino: f,
                write,
                more: Vec::new(),
                held: false,
                atimes: Vec::new(),
            })
        };
        for attempt in 0..3 {
            assert!(
                matches!(c.call(S, 4, release(true)).await, Ok(R::Empty(_))),
                "attempt {attempt}"
            );
            assert_eq!(
                inodes(&c).await,
                before + 1,
                "attempt {attempt} of one release: the other open keeps the file"
            );
        }
        assert!(c.call(S, 5, release(false)).await.is_ok());
        assert_eq!(
            inodes(&c).await,
            before,
            "the last open's release purges it"
        );
    });
}
