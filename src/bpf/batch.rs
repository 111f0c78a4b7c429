//! Batched map reads and deletes (BPF_MAP_LOOKUP_BATCH / BPF_MAP_DELETE_BATCH,
//! kernel 5.6+), which aya 0.14 does not expose. Walking a 100k-entry flow table
//! key by key costs two syscalls an entry (about 0.2 s); a batch read takes a
//! few thousand entries per syscall.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// `struct { ... } batch` of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: attr is a valid bpf_attr prefix for the batch commands and lives
    // across the call; the kernel reads/writes only within the sizes given.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut BatchAttr, size_of::<BatchAttr>() as u32) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Entries per batch read: one reused buffer of this many keys and values
/// (4096 × 168 B for the flow table, about 0.7 MB) serves a whole walk.
pub const CHUNK: usize = 4096;

/// Every entry of a (non-per-CPU) hash or LRU hash map, handed to `f` a batch at
/// a time (at most [`CHUNK`] entries) as the kernel returns them: memory stays
/// one batch however large the map. Entries that change during the walk may be
/// seen before or after the change; entries inserted during it may be missed,
/// as with any walk. Deleting entries already handed out is safe (the cursor is
/// a bucket number past them).
pub fn for_each_chunk<K: aya::Pod, V: aya::Pod>(fd: BorrowedFd<'_>, mut f: impl FnMut(&[K], &[V])) -> io::Result<()> {
    let mut keys: Vec<K> = Vec::with_capacity(CHUNK);
    let mut values: Vec<V> = Vec::with_capacity(CHUNK);
    // The hash map's batch cursor is a bucket number (u32); room for a u64.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &mut token_in as *mut u64 as u64 },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = (attr.count as usize).min(CHUNK);
        let done = match result {
            Ok(()) => false,
            // The last batch: ENOENT, with the entries it still found.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        // SAFETY: the kernel wrote n (<= CHUNK) keys and values of the map's sizes,
        // which the caller's K and V match (Pod, sizes asserted against the ABI).
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        if n > 0 {
            f(&keys, &values);
        }
        keys.clear();
        values.clear();
        if done {
            return Ok(());
        }
        token_in = token_out;
        first = false;
    }
}

/// Delete `keys` from a hash map; returns how many went. Keys already gone are
/// skipped one at a time (the batch stops at the first missing key).
pub fn delete<K: aya::Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<usize> {
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        let n = (attr.count as usize).min(rest.len());
        deleted += n;
        match result {
            Ok(()) => rest = &rest[n..],
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => rest = &rest[(n + 1).min(rest.len())..],
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// `struct { map_fd; key; value / next_key; flags }` of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf_elem(cmd: libc::c_long, attr: &mut ElemAttr) -> io::Result<()> {
    // SAFETY: attr is a valid bpf_attr prefix for the element commands and lives
    // across the call; the pointers in it point at buffers of the map's sizes.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut ElemAttr, size_of::<ElemAttr>() as u32) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// As [`for_each_chunk`] for kernels without batch reads (before 5.6): key by
/// key (two syscalls an entry), in batches of [`CHUNK`]. Entries deleted between
/// the key walk and the lookup are skipped.
pub fn for_each_chunk_by_key<K: aya::Pod, V: aya::Pod>(fd: BorrowedFd<'_>, mut f: impl FnMut(&[K], &[V])) -> io::Result<()> {
    let mut keys: Vec<K> = Vec::with_capacity(CHUNK);
    let mut values: Vec<V> = Vec::with_capacity(CHUNK);
    let mut key = std::mem::MaybeUninit::<K>::zeroed();
    let mut next = std::mem::MaybeUninit::<K>::zeroed();
    let mut value = std::mem::MaybeUninit::<V>::zeroed();
    let mut first = true;
    loop {
        let mut attr = ElemAttr {
            map_fd: fd.as_raw_fd() as u32,
            key: if first { 0 } else { key.as_ptr() as u64 },
            value: next.as_mut_ptr() as u64,
            ..ElemAttr::default()
        };
        match bpf_elem(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
        first = false;
        std::mem::swap(&mut key, &mut next);
        let mut attr =
            ElemAttr { map_fd: fd.as_raw_fd() as u32, key: key.as_ptr() as u64, value: value.as_mut_ptr() as u64, ..ElemAttr::default() };
        match bpf_elem(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            // SAFETY: the kernel wrote a key and a value of the map's sizes (Pod).
            Ok(()) => unsafe {
                keys.push(key.assume_init());
                values.push(value.assume_init());
            },
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        }
        if keys.len() == CHUNK {
            f(&keys, &values);
            keys.clear();
            values.clear();
        }
    }
    if !keys.is_empty() {
        f(&keys, &values);
    }
    Ok(())
}
