//! O_DIRECT and AIO through a real mount: buffered reads see what an
//! asynchronous direct write wrote (xfstests generic/451).

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use weft_testkit::{sha256_hex, TestCluster};

const MIB: u64 = 1 << 20;

/// One 4 KiB page of cycle `cycle`'s contents at page `page`: every page of
/// every cycle differs, so a read shows which write each page came from.
fn tagged_page(cycle: u64, page: u64) -> Vec<u8> {
    let mut x = (cycle << 32 | page).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..4096 / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

/// A page-aligned buffer, as O_DIRECT needs.
struct Aligned(*mut u8, usize);

impl Aligned {
    fn filled(pages: u64, cycle: u64) -> Aligned {
        let len = (pages * 4096) as usize;
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        let p = unsafe { std::alloc::alloc(layout) };
        assert!(!p.is_null());
        let buf = unsafe { std::slice::from_raw_parts_mut(p, len) };
        for (i, page) in buf.chunks_mut(4096).enumerate() {
            page.copy_from_slice(&tagged_page(cycle, i as u64));
        }
        Aligned(p, len)
    }

    fn as_slice(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.0, self.1) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.1, 4096).unwrap();
        unsafe { std::alloc::dealloc(self.0, layout) };
    }
}

/// struct io_event of linux/aio_abi.h (libc has no binding for it).
#[repr(C)]
#[derive(Default)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

/// A Linux AIO context (io_setup(2)) with one request in flight at most.
struct Aio(libc::c_ulong);

impl Aio {
    fn new() -> Aio {
        let mut ctx: libc::c_ulong = 0;
        let r = unsafe { libc::syscall(libc::SYS_io_setup, 1, &mut ctx) };
        assert_eq!(r, 0, "io_setup: {}", std::io::Error::last_os_error());
        Aio(ctx)
    }

    /// pwrite through io_submit, then waits for its completion; returns the
    /// completion's result (bytes written or -errno).
    fn pwrite(&self, f: &File, buf: &Aligned, offset: u64) -> i64 {
        let mut cb: libc::iocb = unsafe { std::mem::zeroed() };
        cb.aio_lio_opcode = 1; // IOCB_CMD_PWRITE
        cb.aio_fildes = f.as_raw_fd() as u32;
        cb.aio_buf = buf.0 as u64;
        cb.aio_nbytes = buf.1 as u64;
        cb.aio_offset = offset as i64;
        let mut cbs = [&mut cb as *mut libc::iocb];
        let r = unsafe { libc::syscall(libc::SYS_io_submit, self.0, 1, cbs.as_mut_ptr()) };
        assert_eq!(r, 1, "io_submit: {}", std::io::Error::last_os_error());
        let mut ev = IoEvent::default();
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_getevents,
                self.0,
                1,
                1,
                &mut ev as *mut IoEvent,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
        assert_eq!(r, 1, "io_getevents: {}", std::io::Error::last_os_error());
        ev.res
    }
}

impl Drop for Aio {
    fn drop(&mut self) {
        unsafe { libc::syscall(libc::SYS_io_destroy, self.0) };
    }
}

/// generic/451: AIO O_DIRECT writes of a file while other threads read it
/// through the page cache. Every buffered read shows, page by page, the
/// bytes of the write before or the one in flight, and a buffered read after
/// a write completed shows exactly its bytes (the kernel does not invalidate
/// the page cache when an async FUSE direct write completes, so pages a
/// reader cached from the old bytes while the write was in flight stayed).
#[test]
fn buffered_reads_after_aio_direct_writes_see_the_new_bytes() {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    const PAGES: u64 = 160; // 640 KiB, as generic/451
    const READERS: usize = 4;
    // About 3 in 800 cycles showed stale pages before the fix.
    let cycles: u64 = 800;
    let mut tc = TestCluster::start(1, 64 * MIB);
    let m = tc.mount();
    let path = m.join("aio-dio");
    fs::write(&path, Aligned::filled(PAGES, 0).as_slice()).unwrap();

    // The cycle whose write was submitted last; its write is in flight or done.
    let submitted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (path, submitted, stop) = (path.clone(), submitted.clone(), stop.clone());
            std::thread::spawn(move || -> Result<u64, String> {
                let mut buf = Vec::with_capacity((PAGES * 4096) as usize);
                let mut reads = 0;
                while !stop.load(Ordering::SeqCst) {
                    let before = submitted.load(Ordering::SeqCst);
                    buf.clear();
                    File::open(&path)
                        .and_then(|mut f| f.read_to_end(&mut buf))
                        .map_err(|e| format!("buffered read: {e}"))?;
                    let after = submitted.load(Ordering::SeqCst);
                    if buf.len() as u64 != PAGES * 4096 {
                        return Err(format!("buffered read of {} bytes", buf.len()));
                    }
                    for (p, page) in buf.chunks(4096).enumerate() {
                        let p = p as u64;
                        // Complete before `before` was submitted: before - 1.
                        if !(before.saturating_sub(1)..=after).any(|c| tagged_page(c, p) == page) {
                            return Err(format!(
                                "page {p} of a buffered read during writes {before}..={after} \
                                 is none of their bytes"
                            ));
                        }
                    }
                    reads += 1;
                }
                Ok(reads)
            })
        })
        .collect();

    let aio = Aio::new();
    let mut stale = Vec::new();
    for cycle in 1..=cycles {
        let data = Aligned::filled(PAGES, cycle);
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap();
        submitted.store(cycle, Ordering::SeqCst);
        assert_eq!(
            aio.pwrite(&f, &data, 0),
            data.1 as i64,
            "AIO O_DIRECT write"
        );
        drop(f);
        let read = fs::read(&path).unwrap();
        if sha256_hex(&read) != sha256_hex(data.as_slice()) {
            let old_pages = (0..PAGES)
                .filter(|&p| read[(p * 4096) as usize..][..4096] == tagged_page(cycle - 1, p))
                .count();
            stale.push(format!("cycle {cycle}: {old_pages} of {PAGES} pages old"));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let reads: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    eprintln!(
        "{cycles} AIO O_DIRECT writes; buffered reads per reader: {reads:?}; stale after write: {}",
        stale.len()
    );
    assert!(
        stale.is_empty(),
        "buffered read after the AIO write completed showed old bytes: {stale:?}"
    );
    for r in reads {
        r.unwrap();
    }
}
