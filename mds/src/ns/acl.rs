//! POSIX ACLs (system.posix_acl_access / system.posix_acl_default), after
//! Linux fs/posix_acl.c: the xattr wire format, validation, the permission
//! algorithm, chmod, and inheritance of a directory's default ACL.
//!
//! Storage: an ACL is kept as the xattr value the kernel sends (version 2,
//! then 8-byte entries {tag u16, perm u16, id u32}, little-endian). An
//! access ACL that says no more than the mode bits is not stored (the mode
//! is enough, as ext4 does). With an access ACL the mode's group bits are the
//! ACL's mask (or group entry without a mask), so the mode always agrees with
//! the ACL.
//!
//! Invariant: every stored ACL passed `parse` (valid, sorted, one owner,
//! group and other entry, a mask when named entries exist).

use super::inode::Inode;
use super::perm::{MAY_EXEC, MAY_READ, MAY_WRITE};
use super::{Caller, Errno};

pub const ACCESS: &[u8] = b"system.posix_acl_access";
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub tag: u16,
    pub perm: u16,
    pub id: u32,
}

pub fn is_acl_name(name: &[u8]) -> bool {
    name == ACCESS || name == DEFAULT
}

/// Decodes and validates (`posix_acl_from_xattr` + `posix_acl_valid`); EINVAL
/// for anything malformed.
pub fn parse(v: &[u8]) -> Result<Vec<Entry>, Errno> {
    if v.len() < 4 || !(v.len() - 4).is_multiple_of(8) {
        return Err(Errno::EINVAL);
    }
    if u32::from_le_bytes(v[0..4].try_into().unwrap()) != VERSION {
        return Err(Errno::EINVAL);
    }
    let entries: Vec<Entry> = v[4..]
        .chunks_exact(8)
        .map(|c| Entry {
            tag: u16::from_le_bytes([c[0], c[1]]),
            perm: u16::from_le_bytes([c[2], c[3]]),
            id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let (mut user_obj, mut group_obj, mut other, mut mask, mut named) = (0, 0, 0, 0, 0);
    let mut prev: Option<(u16, u32)> = None;
    for e in &entries {
        if e.perm & !7 != 0 {
            return Err(Errno::EINVAL);
        }
        let id = match e.tag {
            USER_OBJ | GROUP_OBJ | MASK | OTHER => UNDEFINED_ID,
            USER | GROUP => e.id,
            _ => return Err(Errno::EINVAL),
        };
        match e.tag {
            USER_OBJ => user_obj += 1,
            GROUP_OBJ => group_obj += 1,
            OTHER => other += 1,
            MASK => mask += 1,
            _ => named += 1,
        }
        // Sorted by tag, then id; no duplicates.
        if let Some(p) = prev {
            if (e.tag, id) <= p {
                return Err(Errno::EINVAL);
            }
        }
        prev = Some((e.tag, id));
    }
    if user_obj != 1 || group_obj != 1 || other != 1 || mask > 1 || (named > 0 && mask == 0) {
        return Err(Errno::EINVAL);
    }
    Ok(entries)
}

pub fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + 8 * entries.len());
    v.extend_from_slice(&VERSION.to_le_bytes());
    for e in entries {
        v.extend_from_slice(&e.tag.to_le_bytes());
        v.extend_from_slice(&e.perm.to_le_bytes());
        let id = if matches!(e.tag, USER | GROUP) {
            e.id
        } else {
            UNDEFINED_ID
        };
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// `posix_acl_equiv_mode`: the permission bits the ACL implies, and whether
/// the mode alone says everything (only the three base entries).
pub fn equiv_mode(entries: &[Entry]) -> (u32, bool) {
    let (mut mode, mut equiv) = (0u32, true);
    let mut group_obj = 0;
    let mut mask = None;
    for e in entries {
        match e.tag {
            USER_OBJ => mode |= (e.perm as u32) << 6,
            GROUP_OBJ => group_obj = e.perm as u32,
            MASK => {
                mask = Some(e.perm as u32);
                equiv = false;
            }
            OTHER => mode |= e.perm as u32,
            _ => equiv = false,
        }
    }
    (mode | mask.unwrap_or(group_obj) << 3, equiv)
}

/// `posix_acl_chmod`: the owner, group-class (mask, or group entry without
/// one) and other entries take the new mode's bits.
pub fn chmod(entries: &mut [Entry], mode: u32) {
    let has_mask = entries.iter().any(|e| e.tag == MASK);
    for e in entries.iter_mut() {
        match e.tag {
            USER_OBJ => e.perm = ((mode >> 6) & 7) as u16,
            MASK => e.perm = ((mode >> 3) & 7) as u16,
            GROUP_OBJ if !has_mask => e.perm = ((mode >> 3) & 7) as u16,
            OTHER => e.perm = (mode & 7) as u16,
            _ => {}
        }
    }
}

/// `posix_acl_create_masq`: a new inode's access ACL from its directory's
/// default ACL and the mode asked for (no umask: the default ACL replaces
/// it). Returns the ACL and the resulting mode.
pub fn inherit(default: &[Entry], mode: u32) -> (Vec<Entry>, u32) {
    let mut acl = default.to_vec();
    let has_mask = acl.iter().any(|e| e.tag == MASK);
    let mut new = mode & !0o777;
    for e in acl.iter_mut() {
        let p = e.perm as u32;
        match e.tag {
            USER_OBJ => {
                e.perm = (p & (mode >> 6) & 7) as u16;
                new |= (e.perm as u32) << 6;
            }
            MASK => {
                e.perm = (p & (mode >> 3) & 7) as u16;
                new |= (e.perm as u32) << 3;
            }
            GROUP_OBJ if !has_mask => {
                e.perm = (p & (mode >> 3) & 7) as u16;
                new |= (e.perm as u32) << 3;
            }
            OTHER => {
                e.perm = (p & mode & 7) as u16;
                new |= e.perm as u32;
            }
            _ => {}
        }
    }
    (acl, new)
}

/// `posix_acl_permission`; root is handled by the caller.
pub fn permits(acl: &[Entry], inode: &Inode, caller: &Caller, want: u32) -> bool {
    let want = want & (MAY_READ | MAY_WRITE | MAY_EXEC);
    let mask = acl
        .iter()
        .find(|e| e.tag == MASK)
        .map_or(7, |e| e.perm as u32);
    let mut group_matched = false;
    for e in acl {
        let p = e.perm as u32;
        match e.tag {
            USER_OBJ if caller.uid == inode.uid => return p & want == want,
            USER if caller.uid == e.id => return p & mask & want == want,
            GROUP_OBJ if caller.in_group(inode.gid) => {
                group_matched = true;
                if p & mask & want == want {
                    return true;
                }
            }
            GROUP if caller.in_group(e.id) => {
                group_matched = true;
                if p & mask & want == want {
                    return true;
                }
            }
            OTHER => return !group_matched && p & want == want,
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(tag: u16, perm: u16, id: u32) -> Entry {
        Entry { tag, perm, id }
    }

    #[test]
    fn round_trip_and_validation() {
        let acl = vec![
            e(USER_OBJ, 7, UNDEFINED_ID),
            e(USER, 6, 1000),
            e(GROUP_OBJ, 5, UNDEFINED_ID),
            e(MASK, 6, UNDEFINED_ID),
            e(OTHER, 4, UNDEFINED_ID),
        ];
        assert_eq!(parse(&encode(&acl)).unwrap(), acl);
        assert_eq!(equiv_mode(&acl), (0o764, false));
        // A named entry without a mask, and unsorted entries, are invalid.
        let mut bad = acl.clone();
        bad.remove(3);
        assert_eq!(parse(&encode(&bad)), Err(Errno::EINVAL));
        let mut bad = acl.clone();
        bad.swap(0, 1);
        assert_eq!(parse(&encode(&bad)), Err(Errno::EINVAL));
        assert_eq!(parse(b"\x02\0\0\0\x01"), Err(Errno::EINVAL));
    }

    #[test]
    fn chmod_and_inherit() {
        let mut acl = vec![
            e(USER_OBJ, 7, 0),
            e(GROUP_OBJ, 7, 0),
            e(GROUP, 7, 50),
            e(MASK, 7, 0),
            e(OTHER, 7, 0),
        ];
        chmod(&mut acl, 0o640);
        assert_eq!(equiv_mode(&acl).0, 0o640);
        assert_eq!(acl[1].perm, 7, "the group entry stays; the mask moves");
        let (child, mode) = inherit(&acl, 0o100666);
        assert_eq!(mode, 0o100640);
        assert_eq!(equiv_mode(&child).0, 0o640);
    }
}
