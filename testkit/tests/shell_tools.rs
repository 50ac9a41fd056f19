//! Ordinary shell tools do on a weft mount what they do on a local disk:
//! the same script runs in a local temp dir and in the mount, and what they
//! leave behind (names, types, modes, sizes, owners, contents, xattrs) is compared.

use std::path::Path;
use weft_testkit::{sh, TestCluster};

const SCRIPT: &str = r#"
mkdir -p src/deep/er tree
seq -f 'line %g of the blob, padded out to be a little longer' 1 50000 > src/blob
seq 1 20000 > src/deep/numbers
printf 'hello\n' > src/deep/er/greeting
cp -a src copy
mv copy/blob copy/blob.moved
ln src/deep/numbers hardlink
ln -s deep/er/greeting src/link
chmod 0600 src/deep/numbers
chmod 2755 src/deep
chown 1000:1000 src/deep/er/greeting
truncate -s 12345 truncated
truncate -s 100 src/deep/er/greeting
dd if=/dev/zero of=dd.out bs=64k count=33 status=none
dd if=src/blob of=dd.part bs=1k skip=5 count=700 status=none
setfattr -n user.note -v hello truncated
tar -cf archive.tar src
mkdir untar && tar -xf archive.tar -C untar
rm -rf copy/deep
find . -name '*.moved' -exec cp {} found.copy \;
tar -tvf archive.tar | awk '{print $1, $2, $3, $6}' | LC_ALL=C sort > archive.list
rm archive.tar
"#;

/// A canonical listing: path, type, mode, size, uid, gid, hash, symlink targets,
/// user xattrs, apparent size. (The tar archive itself holds mtimes and
/// directory order, so the script compares its listing instead.)
const LISTING: &str = r#"
find . -path ./lost+found -prune -o -printf '%p %y %m %s %U %G\n' | LC_ALL=C sort
find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
find . -type l -printf '%p -> %l\n' | LC_ALL=C sort
getfattr -d -m user. truncated
du -s --apparent-size --block-size=1 . | cut -f1
"#;

fn run_in(dir: &Path) -> String {
    sh(dir, SCRIPT);
    sh(dir, LISTING)
}

#[test]
fn shell_tools_match_a_local_disk() {
    for tool in ["setfattr", "getfattr", "tar", "truncate"] {
        assert!(
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .unwrap()
                .status
                .success(),
            "{tool} is not installed: scripts/test installs Debian's attr package"
        );
    }
    let local = tempfile::tempdir().unwrap();
    let want = run_in(local.path());

    let mut tc = TestCluster::start(3, 1 << 20);
    let mnt = tc.mount();
    let got = run_in(&mnt);
    if got != want {
        let diff: Vec<String> = want
            .lines()
            .zip(got.lines())
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("local: {a}\nweft:  {b}"))
            .take(20)
            .collect();
        panic!(
            "weft differs from the local disk:\n{}\n(local {} lines, weft {} lines)",
            diff.join("\n"),
            want.lines().count(),
            got.lines().count()
        );
    }
    // And rm -rf empties it.
    sh(&mnt, "rm -rf ./*");
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0);
}
