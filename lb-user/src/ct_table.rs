//! The new-flow tables (`LB_CT`, `LB6_CT`, see `lb_common::MAP_CONNTRACK`) as the
//! agent and the CLI see them: the array mapped into memory (the maps are made
//! mappable), read and written slot by slot under the same rules as the kernel
//! side's `ct_table` (the same hash, the same check, the same choice of slot), so
//! listing or carrying over a table of millions of slots is a walk over memory,
//! not a system call per slot.

use std::{os::fd::BorrowedFd, ptr::NonNull};

use lb_common::{
    CT_WAYS, CtAddr, CtSetOf, CtSlotOf, CtValueOf, FlowKeyOf, ct_check, ct_hash, ct_set,
};

const _: () = assert!(size_of::<CtSetOf<u32>>() == CT_WAYS as usize * size_of::<CtSlotOf<u32>>());

/// One family's table, mapped.
pub struct CtTable<A> {
    base: NonNull<CtSlotOf<A>>,
    slots: u32,
    sets: u32,
    seed: u64,
    /// Bytes mapped.
    len: usize,
}

// SAFETY: the mapping is shared memory the kernel side writes concurrently; every
// access below goes through volatile reads and writes and the slots' checks.
unsafe impl<A> Send for CtTable<A> {}
// SAFETY: as above.
unsafe impl<A> Sync for CtTable<A> {}

impl<A> Drop for CtTable<A> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

impl<A: CtAddr> CtTable<A> {
    /// Maps the table of `sets` sets (`CtSetOf`, the array's entries) behind `fd`
    /// (an array made with `BPF_F_MMAPABLE`), whose hashes use `seed`. A set is its
    /// slots one after the other: the mapping is read as slots.
    pub fn map(fd: BorrowedFd<'_>, sets: u32, seed: u64) -> std::io::Result<Self> {
        let slots = sets * CT_WAYS;
        use std::os::fd::AsRawFd as _;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let bytes = slots as usize * size_of::<CtSlotOf<A>>();
        let len = bytes.div_ceil(page).max(1) * page;
        // SAFETY: a shared mapping of the map's pages, as the kernel allows for a
        // mappable array; checked below.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(CtTable {
            base: NonNull::new(at.cast()).ok_or_else(std::io::Error::last_os_error)?,
            slots,
            sets,
            seed,
            len,
        })
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn slot(&self, i: u32) -> *mut CtSlotOf<A> {
        debug_assert!(i < self.slots);
        // SAFETY: inside the mapping (i < slots).
        unsafe { self.base.as_ptr().add(i as usize) }
    }

    /// Slot `i`'s entry if it holds a valid one (its check holds).
    fn read(&self, i: u32) -> Option<(FlowKeyOf<A>, CtValueOf<A>)> {
        let s = self.slot(i);
        // SAFETY: a slot of the mapping; the check first, then the entry (see
        // `CtSlotOf`).
        let check = unsafe { std::ptr::read_volatile(&raw const (*s).check) };
        if check == 0 {
            return None;
        }
        // SAFETY: as above.
        let (key, value) = unsafe {
            (
                std::ptr::read_volatile(&raw const (*s).key),
                std::ptr::read_volatile(&raw const (*s).value),
            )
        };
        (ct_check(ct_hash(&key, self.seed), &value) == check).then_some((key, value))
    }

    /// Every valid entry.
    pub fn entries(&self) -> Vec<(FlowKeyOf<A>, CtValueOf<A>)> {
        (0..self.slots).filter_map(|i| self.read(i)).collect()
    }

    /// How many slots hold a valid entry.
    pub fn len(&self) -> usize {
        (0..self.slots).filter(|&i| self.read(i).is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The set `key`'s entry goes to.
    pub fn set_of(&self, key: &FlowKeyOf<A>) -> u32 {
        ct_set(ct_hash(key, self.seed), self.sets)
    }

    /// The first slot of `key`'s set, and its hash.
    fn place(&self, key: &FlowKeyOf<A>) -> (u32, u64) {
        let hash = ct_hash(key, self.seed);
        (ct_set(hash, self.sets) * CT_WAYS, hash)
    }

    /// The slot holding `key`'s valid entry.
    fn find(&self, key: &FlowKeyOf<A>) -> Option<(u32, CtValueOf<A>)> {
        let (first, _) = self.place(key);
        (first..(first + CT_WAYS).min(self.slots))
            .find_map(|i| self.read(i).filter(|(k, _)| k == key).map(|(_, v)| (i, v)))
    }

    /// `key`'s entry.
    pub fn get(&self, key: &FlowKeyOf<A>) -> Option<CtValueOf<A>> {
        self.find(key).map(|(_, v)| v)
    }

    /// Writes `key`'s entry where the kernel side would: over its own, else over
    /// the set's least recently seen (an empty slot was last seen at 0).
    pub fn insert(&self, key: &FlowKeyOf<A>, value: &CtValueOf<A>) {
        let (first, hash) = self.place(key);
        let ways = CT_WAYS.min(self.slots - first);
        let own = (first..first + ways).find(|&i| self.read(i).is_some_and(|(k, _)| k == *key));
        let target = own.unwrap_or_else(|| {
            // SAFETY: a field of a slot of the mapping.
            let seen = |i: u32| unsafe {
                std::ptr::read_volatile(&raw const (*self.slot(i)).value.last_seen)
            };
            let mut target = first;
            for i in first + 1..first + ways {
                if seen(i) < seen(target) {
                    target = i;
                }
            }
            target
        });
        let s = self.slot(target);
        // SAFETY: a slot of the mapping; the check goes last (see `CtSlotOf`).
        unsafe {
            std::ptr::write_volatile(&raw mut (*s).check, 0);
            std::ptr::write_volatile(&raw mut (*s).key, *key);
            std::ptr::write_volatile(&raw mut (*s).value, *value);
            std::ptr::write_volatile(&raw mut (*s).way, target % CT_WAYS);
            std::ptr::write_volatile(&raw mut (*s).check, ct_check(hash, value));
        }
    }

    /// Removes `key`'s entry; whether it had one.
    pub fn remove(&self, key: &FlowKeyOf<A>) -> bool {
        let Some((i, _)) = self.find(key) else {
            return false;
        };
        let s = self.slot(i);
        // SAFETY: a slot of the mapping: a cleared check empties it, and it was
        // last seen at 0 (the first a write takes).
        unsafe {
            std::ptr::write_volatile(&raw mut (*s).check, 0);
            std::ptr::write_volatile(&raw mut (*s).value.last_seen, 0);
        }
        true
    }
}
