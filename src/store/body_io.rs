//! Large shard bodies written past the page cache (`O_DIRECT`) where the file system
//! allows it, through a small pool of reused aligned buffers.
//!
//! Why (measured on the 2-core VM, `dangan bench cluster`, 2026-11-28): with buffered
//! writes, copying bodies into freshly allocated page-cache pages
//! (`copy_folio_from_iter_atomic`) took 25–41 % of all CPU during a 256 MiB put. Each
//! new page cache page costs a fault in the hypervisor once the guest has handed its free
//! memory back: `dd` of 2 GiB ran at 450–560 MB/s buffered, 1.7–2.3 GB/s with
//! `oflag=direct`. With direct writes the 256 MiB put went from 178–332 MB/s (mean about
//! 250) to 263–307 MB/s (mean about 290) in the same session. A bare-metal peer gains less:
//! the copy into the page cache is cheap there, but a body that was just written gains
//! nothing from sitting in it.
//!
//! A body is written as its aligned prefix with `O_DIRECT` and its last partial block
//! through an ordinary descriptor; `fdatasync` then makes both durable (the device flush
//! covers completed direct writes). A file system without `O_DIRECT` (tmpfs), or a direct
//! write it refuses, gets ordinary writes. Reads stay ordinary (`fs::read`, so the page
//! cache keeps what is read often): reading past it too measured the same get within the
//! noise (478–514 against 498–527 MB/s).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Mutex;

/// Alignment of direct I/O buffers, offsets and lengths (the largest logical block size
/// in common use).
const ALIGN: usize = 4096;

/// Buffers kept for reuse (at most this many, each at most `KEEP` bytes), so memory stays
/// bounded however many threads write at once.
const POOL: usize = 16;
const KEEP: usize = 8 << 20;

static BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Runs `f` on an `ALIGN`-aligned buffer of `len` bytes (contents unspecified), taken
/// from the pool: memory the process has touched before, not fresh pages.
fn with_aligned<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    let lock = || BUFFERS.lock().unwrap_or_else(|p| p.into_inner());
    let mut v = lock().pop().unwrap_or_default();
    if v.len() < len + ALIGN {
        v = vec![0; len + ALIGN];
    }
    let off = v.as_ptr().align_offset(ALIGN);
    let out = f(&mut v[off..off + len]);
    if v.len() <= KEEP {
        let mut pool = lock();
        if pool.len() < POOL {
            pool.push(v);
        }
    }
    out
}

#[cfg(target_os = "linux")]
fn open_direct(options: &mut OpenOptions) -> &mut OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    options.custom_flags(libc::O_DIRECT)
}

#[cfg(not(target_os = "linux"))]
fn open_direct(options: &mut OpenOptions) -> &mut OpenOptions {
    options
}

/// Creates `path` (which must not exist) holding `bytes`, durably (`fdatasync`). Returns
/// how many of them went past the page cache.
pub(super) fn write_new(path: &Path, bytes: &[u8]) -> io::Result<usize> {
    let prefix = bytes.len() / ALIGN * ALIGN;
    let mut direct = OpenOptions::new();
    open_direct(direct.write(true).create_new(true));
    let mut written = 0;
    match direct.open(path) {
        Ok(mut f) if prefix > 0 => {
            let res = with_aligned(prefix, |buf| {
                buf.copy_from_slice(&bytes[..prefix]);
                f.write_all(buf)
            });
            // A refusal of the direct write (EINVAL) falls back to ordinary writes below.
            if res.is_ok() {
                written = prefix;
            }
        }
        Ok(_) => {}
        // No O_DIRECT on this file system: the file was not created.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            File::create_new(path)?;
        }
        Err(e) => return Err(e),
    }
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.seek(SeekFrom::Start(written as u64))?;
    f.write_all(&bytes[written..])?;
    f.set_len(bytes.len() as u64)?;
    f.sync_data()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn bodies_of_every_alignment_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut probe = OpenOptions::new();
        open_direct(probe.write(true).create_new(true));
        let direct = cfg!(target_os = "linux") && probe.open(dir.path().join("probe")).is_ok();
        for len in [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            ALIGN + 1,
            3 * ALIGN + 17,
            (1 << 20) + 28,
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let path = dir.path().join(format!("b{len}"));
            let written = write_new(&path, &bytes).unwrap();
            let prefix = if direct { len / ALIGN * ALIGN } else { 0 };
            assert_eq!(written, prefix, "bytes written directly, len {len}");
            assert_eq!(fs::metadata(&path).unwrap().len(), len as u64, "len {len}");
            assert_eq!(fs::read(&path).unwrap(), bytes, "len {len}");
        }
    }

    #[test]
    fn an_existing_file_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        fs::write(&path, b"kept").unwrap();
        let err = write_new(&path, &[7; 3 * ALIGN]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"kept");
    }
}
