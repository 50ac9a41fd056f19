//! Export rules with real processes (mds/src/exports.rs): a TLS cluster whose
//! MDS runs with `--exports FILE`, mounts with client certificates named
//! client-1, client-2, ... (one per mount, in mount order), and raw `Meta`
//! calls from this test process (certificate `test-admin`).
//!
//! - a subtree mount sees the exported directory as its root and reaches no
//!   sibling: not by `..` (the root's parent is the root), not by a relative
//!   or absolute symlink, not by rename or link (EXDEV), not by a file handle
//!   or inode number (ESTALE);
//! - a read-only export answers EROFS to every change;
//! - root squash makes root nobody (65534): what it creates is nobody's, and
//!   it cannot read root's private files;
//! - no setuid bits and no device files unless the rule allows them;
//! - changed rules apply to new requests without a restart;
//! - the coherence stream of a subtree export carries nothing from outside
//!   it (no names, no inode numbers), and ends when the rules change;
//! - a client no rule names cannot mount; every refusal is logged with who.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weft_proto::pb::meta_reply::Result as R;
use weft_testkit::mds::{getattr, ino_of, lookup, rename, RawMeta};
use weft_testkit::{sh, test_ca, wait_until, TestCluster};

const MIB: u64 = 1 << 20;

const RULES: &str = r#"
# This test's own raw calls.
[[export]]
clients = "test-admin"
path = "/proj"
squash = "none"

# The first mount: everything, as root.
[[export]]
clients = "client-1"
squash = "none"
setuid = true
devices = true

[[export]]
clients = "client-2"
path = "/proj"
squash = "none"

[[export]]
clients = "client-3"
access = "ro"
squash = "none"

[[export]]
clients = "client-4"
squash = "root"
"#;

fn cluster(rules: &Path) -> TestCluster {
    TestCluster::start_with(1, |s| {
        s.chunk_size = Some(MIB);
        s.replicas = Some(1);
        s.tls_ca = Some(test_ca());
        s.mds_args = vec!["--exports".into(), rules.display().to_string()];
    })
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error").raw_os_error().unwrap()
}

fn mds_log(c: &TestCluster) -> String {
    fs::read_to_string(&c.cluster.mds.log).unwrap_or_default()
}

fn refusals(c: &TestCluster, who: &str, why: &str) -> usize {
    mds_log(c)
        .lines()
        .filter(|l| l.contains("refused") && l.contains(who) && l.contains(why))
        .count()
}

fn handle_of(p: &Path) -> Vec<u8> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut buf = vec![0u8; 8 + 128];
    buf[..4].copy_from_slice(&128u32.to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            buf.as_mut_ptr(),
            &mut mount_id as *mut libc::c_int,
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "name_to_handle_at: {}",
        std::io::Error::last_os_error()
    );
    buf
}

fn open_by_handle(mount: &Path, handle: &mut [u8]) -> Result<fs::File, i32> {
    let m = fs::File::open(mount).unwrap();
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            m.as_raw_fd(),
            handle.as_mut_ptr(),
            libc::O_RDONLY,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    Ok(unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

struct Setup {
    c: TestCluster,
    _dir: tempfile::TempDir,
    rules: PathBuf,
    full: PathBuf,
}

/// The cluster and the full mount, with /proj/a and /sibling/secret.
fn setup() -> Setup {
    let dir = tempfile::Builder::new()
        .prefix("weft-exports-")
        .tempdir()
        .unwrap();
    let rules = dir.path().join("exports.toml");
    fs::write(&rules, RULES).unwrap();
    let mut c = cluster(&rules);
    let full = c.mount(); // client-1
    fs::create_dir(full.join("proj")).unwrap();
    fs::write(full.join("proj/a"), b"in the export").unwrap();
    fs::create_dir(full.join("sibling")).unwrap();
    fs::write(full.join("sibling/secret"), b"not for client-2").unwrap();
    Setup {
        c,
        _dir: dir,
        rules,
        full,
    }
}

#[test]
fn a_subtree_mount_reaches_nothing_outside_its_export() {
    let Setup {
        mut c,
        full,
        _dir: _keep,
        ..
    } = setup();
    let sub = c.mount(); // client-2: /proj
    let names: Vec<String> = fs::read_dir(&sub)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["a"], "the mount's root is /proj");
    assert_eq!(fs::read(sub.join("a")).unwrap(), b"in the export");
    fs::write(sub.join("new"), b"made in the subtree").unwrap();
    assert_eq!(
        fs::read(full.join("proj/new")).unwrap(),
        b"made in the subtree"
    );

    // `..` of the mount's root is the host directory above the mount point
    // (the kernel's business), never the export's parent.
    assert_eq!(
        errno_of(fs::read(sub.join("../sibling/secret"))),
        libc::ENOENT
    );
    // Symlinks are resolved by the kernel inside the mount's view: neither a
    // relative one climbing out nor an absolute one lands on the sibling.
    std::os::unix::fs::symlink("../sibling/secret", sub.join("up")).unwrap();
    std::os::unix::fs::symlink("/sibling/secret", sub.join("abs")).unwrap();
    assert_eq!(errno_of(fs::read(sub.join("up"))), libc::ENOENT);
    assert_eq!(errno_of(fs::read(sub.join("abs"))), libc::ENOENT);
    // Renaming across to the full mount is another mount: EXDEV.
    assert_eq!(
        errno_of(fs::rename(sub.join("a"), full.join("sibling/a"))),
        libc::EXDEV
    );

    // A file handle of the sibling (from the full mount) is stale here; one
    // of a file inside the export opens.
    let mut secret = handle_of(&full.join("sibling/secret"));
    let mut sibling = handle_of(&full.join("sibling"));
    let mut inside = handle_of(&full.join("proj/a"));
    assert_eq!(open_by_handle(&sub, &mut secret).err(), Some(libc::ESTALE));
    assert_eq!(open_by_handle(&sub, &mut sibling).err(), Some(libc::ESTALE));
    let mut s = String::new();
    use std::io::Read;
    open_by_handle(&sub, &mut inside)
        .expect("a handle inside the export opens")
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "in the export");
    assert!(
        refusals(&c, "client/client-2", "outside the exported subtree") >= 1,
        "the stale handle's refusal is logged with who:\n{}",
        mds_log(&c)
    );

    // The MDS itself, asked directly (this process: export /proj), with the
    // sibling's inode numbers known.
    let secret_ino = fs::metadata(full.join("sibling/secret")).unwrap().ino();
    let sibling_ino = fs::metadata(full.join("sibling")).unwrap().ino();
    let a_ino = fs::metadata(full.join("proj/a")).unwrap().ino();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let m = RawMeta::connect(&c.mds_addr()).await;
        let session = rand::random::<u64>() | 1;
        // `..` of the root is the root (inode 1 is the export's directory).
        assert_eq!(ino_of(&m.call(session, 0, lookup(1, "..")).await), 1);
        assert_eq!(ino_of(&m.call(session, 0, lookup(1, "a")).await), a_ino);
        match m
            .call(
                session,
                0,
                weft_proto::pb::meta_request::Op::Readdir(weft_proto::pb::ReadDirReq {
                    ino: 1,
                    offset: 0,
                    limit: 0,
                    plus: true,
                }),
            )
            .await
        {
            Ok(R::Entries(e)) => {
                let dotdot = e.entries.iter().find(|e| e.name == b"..").unwrap();
                assert_eq!(dotdot.ino, 1, "the root's .. is the root");
                assert_eq!(dotdot.attr.as_ref().unwrap().ino, 1);
            }
            other => panic!("readdir: {other:?}"),
        }
        // Inodes outside: stale.
        assert_eq!(
            m.call(session, 0, getattr(secret_ino)).await.err(),
            Some(libc::ESTALE)
        );
        assert_eq!(
            m.call(session, 0, lookup(sibling_ino, "secret"))
                .await
                .err(),
            Some(libc::ESTALE)
        );
        let chunks = weft_proto::pb::meta_request::Op::GetChunks(weft_proto::pb::GetChunksReq {
            ino: secret_ino,
            first_index: 0,
            count: 1,
        });
        assert_eq!(m.call(session, 0, chunks).await.err(), Some(libc::ESTALE));
        // Moving a name out, or a sibling's in: EXDEV, ESTALE.
        assert_eq!(
            m.call(session, 1, rename(1, "a", sibling_ino, "a"))
                .await
                .err(),
            Some(libc::EXDEV)
        );
        assert_eq!(
            m.call(session, 2, rename(sibling_ino, "secret", 1, "stolen"))
                .await
                .err(),
            Some(libc::ESTALE)
        );
        let link = weft_proto::pb::meta_request::Op::Link(weft_proto::pb::LinkReq {
            ino: a_ino,
            new_parent: sibling_ino,
            new_name: b"a-link".to_vec(),
        });
        assert_eq!(m.call(session, 3, link).await.err(), Some(libc::EXDEV));
        let link = weft_proto::pb::meta_request::Op::Link(weft_proto::pb::LinkReq {
            ino: secret_ino,
            new_parent: 1,
            new_name: b"stolen".to_vec(),
        });
        assert_eq!(m.call(session, 4, link).await.err(), Some(libc::ESTALE));
    });
    // Nothing moved.
    assert_eq!(
        fs::read(full.join("sibling/secret")).unwrap(),
        b"not for client-2"
    );
    assert!(full.join("proj/a").exists());
    assert!(!full.join("sibling/a").exists() && !full.join("proj/stolen").exists());

    // No setuid bits, no device files (the rule does not allow them); the
    // full mount's rule does.
    let perm = |m| fs::Permissions::from_mode(m);
    assert_eq!(
        errno_of(fs::set_permissions(sub.join("a"), perm(0o4755))),
        libc::EPERM
    );
    fs::set_permissions(full.join("proj/a"), perm(0o4755)).unwrap();
    let mknod = |p: &Path| {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) };
        if r == 0 {
            0
        } else {
            weft_testkit::last_errno()
        }
    };
    assert_eq!(mknod(&sub.join("null")), libc::EPERM);
    assert_eq!(mknod(&full.join("proj/null")), 0);
}

#[test]
fn read_only_root_squash_live_rules_and_strangers() {
    let Setup {
        mut c,
        rules,
        full,
        _dir: _keep,
    } = setup();
    fs::write(full.join("rootonly"), b"root's").unwrap();
    fs::set_permissions(full.join("rootonly"), fs::Permissions::from_mode(0o600)).unwrap();
    let _sub = c.mount(); // client-2
    let ro = c.mount(); // client-3: read-only
    let squashed = c.mount(); // client-4: root squash

    // Read-only: reads work, every change is EROFS.
    assert_eq!(fs::read(ro.join("proj/a")).unwrap(), b"in the export");
    assert_eq!(errno_of(fs::write(ro.join("f"), b"x")), libc::EROFS);
    assert_eq!(errno_of(fs::create_dir(ro.join("d"))), libc::EROFS);
    assert_eq!(errno_of(fs::remove_file(ro.join("proj/a"))), libc::EROFS);
    assert_eq!(
        errno_of(fs::OpenOptions::new().write(true).open(ro.join("proj/a"))),
        libc::EROFS
    );
    assert_eq!(
        errno_of(fs::set_permissions(
            ro.join("proj/a"),
            fs::Permissions::from_mode(0o600)
        )),
        libc::EROFS
    );
    assert_eq!(
        errno_of(fs::rename(ro.join("proj/a"), ro.join("proj/b"))),
        libc::EROFS
    );
    assert_eq!(fs::read(full.join("proj/a")).unwrap(), b"in the export");
    assert!(
        refusals(&c, "client/client-3", "Read-only file system") >= 1,
        "{}",
        mds_log(&c)
    );

    // Root squash: root acts as nobody. Its new files are nobody's, and
    // root's private file is closed to it.
    fs::set_permissions(full.join("proj"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(squashed.join("proj/by-root"), b"squashed").unwrap();
    let md = fs::metadata(full.join("proj/by-root")).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));
    let ls = sh(&squashed.join("proj"), "ls -ln by-root");
    assert!(ls.contains(" 65534 65534 "), "ls -ln: {ls}");
    assert_eq!(errno_of(fs::read(squashed.join("rootonly"))), libc::EACCES);
    assert_eq!(fs::read(full.join("rootonly")).unwrap(), b"root's");

    // New rules take effect without a restart: client-3 becomes read-write.
    let changed = RULES.replace(
        "clients = \"client-3\"\naccess = \"ro\"",
        "clients = \"client-3\"\naccess = \"rw\"",
    );
    assert_ne!(changed, RULES);
    fs::write(&rules, changed).unwrap();
    wait_until(
        "the changed rules to apply",
        Duration::from_secs(20),
        || fs::create_dir(ro.join("now-writable")).is_ok(),
    );
    assert!(full.join("now-writable").is_dir());

    // A client no rule names cannot mount (client-5).
    let stranger = c.tmp.path().join("mnt-stranger");
    let err = c
        .cluster
        .mount(&stranger, &[])
        .expect_err("a stranger mounted");
    assert!(format!("{err:#}").contains("Permission denied"), "{err:#}");
    assert!(
        refusals(&c, "client/client-5", "no export rule") >= 1,
        "{}",
        mds_log(&c)
    );
    // And the MDS counts refusals for its metrics.
    let _ = rules;
}

/// What a raw `Coherence.Watch` stream brought: its invalidations, and how it
/// ended (None while it runs).
#[derive(Default)]
struct Heard {
    items: Vec<weft_proto::pb::Invalidation>,
    overflows: usize,
    ended: Option<String>,
}

#[test]
fn a_subtree_watch_hears_nothing_from_outside() {
    let Setup {
        c,
        rules,
        full,
        _dir: _keep,
    } = setup();
    let proj_ino = fs::metadata(full.join("proj")).unwrap().ino();
    let sibling_ino = fs::metadata(full.join("sibling")).unwrap().ino();
    let secret_ino = fs::metadata(full.join("sibling/secret")).unwrap().ino();
    let a_ino = fs::metadata(full.join("proj/a")).unwrap().ino();

    // This process (test-admin) is exported /proj: its stream is a subtree's.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let heard = Arc::new(Mutex::new(Heard::default()));
    let mut stream = rt.block_on(async {
        let ch = weft_proto::net::endpoint(&c.mds_addr())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut w = weft_proto::pb::coherence_client::CoherenceClient::new(ch);
        w.watch(weft_proto::pb::WatchReq {
            session: rand::random::<u64>() | 1,
            strict: false,
        })
        .await
        .expect("a watch of the export")
        .into_inner()
    });
    // Subscribed once answered: from here on nothing is missed.
    rt.spawn({
        let heard = heard.clone();
        async move {
            loop {
                match stream.message().await {
                    Ok(Some(b)) => {
                        let mut h = heard.lock().unwrap();
                        h.items.extend(b.items);
                        h.overflows += usize::from(b.overflow);
                    }
                    Ok(None) => {
                        heard.lock().unwrap().ended = Some("end of stream".into());
                        return;
                    }
                    Err(s) => {
                        heard.lock().unwrap().ended =
                            Some(format!("{:?}: {}", s.code(), s.message()));
                        return;
                    }
                }
            }
        }
    });

    // Changes outside /proj, by the full mount: none of their names or
    // inode numbers may reach the stream.
    fs::write(full.join("sibling/leak-file"), b"outside").unwrap();
    fs::create_dir(full.join("sibling/leak-dir")).unwrap();
    fs::rename(
        full.join("sibling/secret"),
        full.join("sibling/leak-renamed"),
    )
    .unwrap();
    fs::set_permissions(
        full.join("sibling/leak-renamed"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    fs::write(full.join("leak-top"), b"at the root").unwrap();
    fs::remove_file(full.join("leak-top")).unwrap();
    // A file moved out: the mount saw it, so its old name and its inode are
    // invalidated; its new name outside is not told.
    fs::rename(full.join("proj/a"), full.join("sibling/leak-moved-out")).unwrap();
    // Inside: these must arrive (the stream works).
    fs::write(full.join("proj/inside"), b"in the export").unwrap();
    wait_until(
        "the change inside /proj to be pushed",
        Duration::from_secs(20),
        || {
            heard
                .lock()
                .unwrap()
                .items
                .iter()
                .any(|i| i.parent == 1 && i.name == b"inside")
        },
    );
    {
        let h = heard.lock().unwrap();
        assert!(
            h.items.iter().any(|i| i.parent == 1 && i.name == b"a"),
            "the moved-out file's old name: {:?}",
            h.items
        );
        assert!(
            h.items.iter().any(|i| i.ino == a_ino && i.name.is_empty()),
            "the moved-out inode: {:?}",
            h.items
        );
        for i in &h.items {
            let name = String::from_utf8_lossy(&i.name);
            assert!(
                !name.starts_with("leak-") && name != "secret",
                "leaked {i:?}"
            );
            for outside in [sibling_ino, secret_ino] {
                assert!(i.ino != outside && i.parent != outside, "leaked {i:?}");
            }
            // /proj is inode 1 on this stream.
            assert!(i.ino != proj_ino && i.parent != proj_ino, "unmapped {i:?}");
        }
        assert_eq!(h.overflows, 0);
        assert!(h.ended.is_none(), "{:?}", h.ended);
    }

    // New rules end the stream (the mount watches again under them).
    let changed = RULES.replace(
        "clients = \"test-admin\"\npath = \"/proj\"",
        "clients = \"test-admin\"\npath = \"/sibling\"",
    );
    assert_ne!(changed, RULES);
    fs::write(&rules, changed).unwrap();
    wait_until(
        "the stream to end under new rules",
        Duration::from_secs(20),
        || heard.lock().unwrap().ended.is_some(),
    );
    let ended = heard.lock().unwrap().ended.clone().unwrap();
    assert!(ended.contains("export rules changed"), "{ended}");
}
