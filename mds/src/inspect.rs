//! Offline views of an MDS data directory, for operators: `--check` verifies
//! it without changing a byte (format file, newest snapshot, every log frame's
//! checksum and index, that every entry decodes and follows the snapshot),
//! and `--dump` prints the log's records readably. Neither takes the lock-
//! holding MDS's place: both only read.

use crate::ns::Record;
use crate::snapshot;
use crate::state::{decode_entry, LogEntry, State};
use crate::wal::log;
use anyhow::{bail, Context};
use std::fmt::Write as _;
use std::path::Path;

fn chunk_size_of(data: &Path) -> anyhow::Result<u64> {
    let path = data.join("format.json");
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
    )
    .with_context(|| format!("{} is not a weft format file", path.display()))?;
    v.get("chunk_size")
        .and_then(|c| c.as_u64())
        .with_context(|| format!("{} has no chunk_size", path.display()))
}

/// Verifies `data`; returns the summary printed on success. Errors name the
/// file and offset at fault.
pub fn check(data: &Path) -> anyhow::Result<String> {
    let chunk_size = chunk_size_of(data)?;
    let snap_dir = data.join(snapshot::DIR);
    let mut st =
        snapshot::load_newest(&snap_dir, chunk_size)?.unwrap_or_else(|| State::new(chunk_size));
    let mut out = String::new();
    let snaps = snapshot::list(&snap_dir)?;
    match snaps.last() {
        Some((i, p)) => writeln!(out, "snapshot {}: ok, covers entries 1..={i}", p.display())?,
        None => writeln!(out, "snapshot: none (the log starts at entry 1)")?,
    }
    let wal = data.join("wal");
    let replayed = log::replay(&wal, st.applied_index, false)?;
    let segs = log::list_segments(&wal)?;
    if let Some(first) = replayed.frames.first() {
        if first.index != st.applied_index + 1 {
            bail!(
                "{}: the log resumes at entry {} but entry {} is needed after the snapshot: log segments are missing",
                wal.display(),
                first.index,
                st.applied_index + 1
            );
        }
    }
    for f in &replayed.frames {
        let e = decode_entry(&f.payload)
            .with_context(|| format!("{}: entry {} does not decode", wal.display(), f.index))?;
        st.apply_entry(f.index, &e);
    }
    writeln!(
        out,
        "log {}: {} segment(s), {} entries after the snapshot, last entry {}",
        wal.display(),
        segs.len(),
        replayed.frames.len(),
        st.applied_index
    )?;
    if let Some((path, offset, bytes)) = &replayed.truncated_tail {
        writeln!(
            out,
            "note: {}: a torn record of {bytes} bytes at offset {offset} (a power loss mid-sync: no fsync or close waited for it); the next start cuts it off",
            path.display()
        )?;
    }
    let c = st.ns.counts();
    writeln!(
        out,
        "state: {} files, {} directories, {} chunks, {} bytes, {} sessions",
        c.files,
        c.directories,
        c.chunks,
        c.bytes,
        st.sessions.len()
    )?;
    Ok(out)
}

fn name(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

/// One record as a line of text.
pub fn describe(r: &Record) -> String {
    match r {
        Record::Create {
            parent,
            name: n,
            ino,
            kind,
            mode,
            uid,
            gid,
            rdev,
            target,
            now,
        } => {
            let mut s = format!(
                "create {parent}/{} -> ino {ino} {kind:?} mode {mode:o} uid {uid} gid {gid}",
                name(n)
            );
            if *rdev != 0 {
                s += &format!(" rdev {rdev}");
            }
            if !target.is_empty() {
                s += &format!(" target {}", name(target));
            }
            s + &format!(" at {}.{:09}", now.sec, now.nsec)
        }
        Record::Link {
            ino,
            new_parent,
            new_name,
            ..
        } => {
            format!("link ino {ino} as {new_parent}/{}", name(new_name))
        }
        Record::Remove {
            parent,
            name: n,
            ino,
            purge,
            ..
        } => {
            format!(
                "remove {parent}/{} (ino {ino}){}",
                name(n),
                if *purge { " purge" } else { "" }
            )
        }
        Record::Rename {
            parent,
            name: n,
            new_parent,
            new_name,
            ino,
            replaced,
            exchange,
            purge,
            ..
        } => format!(
            "rename {parent}/{} -> {new_parent}/{} (ino {ino}){}{}{}",
            name(n),
            name(new_name),
            replaced
                .map(|r| format!(" replacing ino {r}"))
                .unwrap_or_default(),
            if *exchange { " exchange" } else { "" },
            if *purge { " purge" } else { "" }
        ),
        Record::SetAttr {
            ino,
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            ..
        } => {
            let mut s = format!("setattr ino {ino}");
            if let Some(m) = mode {
                s += &format!(" mode {m:o}");
            }
            if let Some(u) = uid {
                s += &format!(" uid {u}");
            }
            if let Some(g) = gid {
                s += &format!(" gid {g}");
            }
            if let Some(z) = size {
                s += &format!(" size {z}");
            }
            if atime.is_some() {
                s += " atime";
            }
            if mtime.is_some() {
                s += " mtime";
            }
            s
        }
        Record::SetXattr {
            ino,
            name: n,
            value,
            ..
        } => {
            format!("setxattr ino {ino} {} ({} bytes)", name(n), value.len())
        }
        Record::RemoveXattr { ino, name: n, .. } => format!("removexattr ino {ino} {}", name(n)),
        Record::AllocChunk {
            ino,
            index,
            chunk_id,
            version,
        } => {
            format!("alloc-chunk ino {ino} index {index} -> chunk {chunk_id} v{version}")
        }
        Record::CommitWrite {
            ino,
            end,
            kill_privs,
            ..
        } => format!(
            "commit-write ino {ino} end {end}{}",
            if *kill_privs { " kill-privs" } else { "" }
        ),
        Record::CommitAlloc {
            ino,
            end,
            kill_privs,
            now,
            allocs,
        } => format!(
            "commit-alloc ino {ino} end {end}{}{} chunks {}",
            if *kill_privs { " kill-privs" } else { "" },
            if now.is_none() { " allocs-only" } else { "" },
            allocs
                .iter()
                .map(|a| format!("{}:{}", a.index, a.bytes))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Record::Purge { ino } => format!("purge ino {ino}"),
        Record::ExpireSession { session } => format!("expire-session {session:016x}"),
        Record::RenameWhiteout { rename, whiteout } => {
            format!("{} + whiteout ino {}", describe(rename), whiteout.ino())
        }
        Record::BumpVersion {
            ino,
            index,
            chunk_id,
            version,
        } => format!("bump-version ino {ino} chunk {index} id {chunk_id:016x} to v{version}"),
        Record::SetAcl {
            ino, value, mode, ..
        } => match value {
            Some(v) => format!("set-acl ino {ino} ({} bytes) mode {mode:o}", v.len()),
            None => format!("drop-acl ino {ino} mode {mode:o}"),
        },
        Record::CreateSegment { ino, session, .. } => {
            format!("create-segment ino {ino} for session {session:016x}")
        }
        Record::CommitPacked {
            ino,
            chunk,
            offset,
            len,
            end,
            kill_privs,
            ..
        } => format!(
            "commit-packed ino {ino} needle chunk {chunk:016x} offset {offset} len {len} end {end}{}",
            if *kill_privs { " kill-privs" } else { "" }
        ),
        Record::BeginUnpack {
            ino,
            chunk_id,
            version,
        } => format!("begin-unpack ino {ino} into chunk {chunk_id:016x} v{version}"),
        Record::Unpack { ino, chunk_id, len } => {
            format!("unpack ino {ino} -> chunk {chunk_id:016x} ({len} bytes)")
        }
        Record::CompactBegin { now } => format!("compact-begin: a new segment at {now:?}"),
        Record::CompactSegments {
            new,
            end,
            moves,
            drop,
        } => format!(
            "compact {} needles into segment {new} ({end} bytes), drop segments {drop:?}",
            moves.len()
        ),
    }
}

fn line(index: u64, term: u64, e: &LogEntry) -> String {
    let who = if e.session == 0 {
        "mds".to_string()
    } else {
        format!("{:016x}#{}", e.session, e.seq)
    };
    format!("{index:>10} t{term} {who:<24} {}", describe(&e.record))
}

/// Prints every log record (after the newest snapshot) to `out`.
pub fn dump(data: &Path, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    chunk_size_of(data)?; // refuse a directory that is not an MDS's
    let snap_dir = data.join(snapshot::DIR);
    let after = snapshot::list(&snap_dir)?
        .last()
        .map(|(i, _)| *i)
        .unwrap_or(0);
    writeln!(
        out,
        "# entries after snapshot index {after}: index term session#seq record"
    )?;
    let replayed = log::replay(&data.join("wal"), after, false)?;
    for f in &replayed.frames {
        match decode_entry(&f.payload) {
            Ok(e) => writeln!(out, "{}", line(f.index, f.term, &e))?,
            Err(err) => writeln!(out, "{:>10} t{} <does not decode: {err}>", f.index, f.term)?,
        }
    }
    if let Some((path, offset, bytes)) = &replayed.truncated_tail {
        writeln!(
            out,
            "# torn tail: {bytes} bytes at {} offset {offset}",
            path.display()
        )?;
    }
    Ok(())
}
