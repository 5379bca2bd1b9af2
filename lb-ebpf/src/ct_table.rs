//! The IPv4 new-flow table, `LB_CT` (see `lb_common::MAP_CONNTRACK`): an array of
//! sets of `CT_WAYS` slots, a tuple's set named by its hash under the tables'
//! seed. A lookup reads one set; a write goes to the slot holding the tuple, else
//! the set's least recently seen (an empty one was last seen at 0): no
//! allocation, no lock, no eviction list (an LRU hash map's write took most of a
//! new flow's time). `NewFlows` gives it the LRU map's methods, so `conntrack`
//! reads alike for IPv6, whose table stays an LRU hash map.

use core::{borrow::Borrow, ptr};

use aya_ebpf::{bindings::BPF_NOEXIST, cty::c_long, maps::LruHashMap};
use lb_common::{
    Addr6, CT_WAYS, CtSet, CtSlot, CtValue, CtValue6, CtValueOf, DEFAULT_CONNTRACK, FlowKey,
    FlowKey6, FlowKeyOf, ct_check, ct_hash, ct_set, ct_sets,
};

use crate::maps::LB_CT;

/// Set by the agent at load time (`lb_common::GLOBAL_CT_SETS`): the sets of
/// `LB_CT` as it sized them.
#[unsafe(no_mangle)]
static CT_SETS: u32 = ct_sets(DEFAULT_CONNTRACK);

/// Set by the agent at load time (`lb_common::GLOBAL_CT_SEED`): the tables' seed,
/// as `LB_CT_SEED` keeps it.
#[unsafe(no_mangle)]
static CT_SEED: u64 = 0;

/// `BPF_NOEXIST`'s refusal, as the kernel's maps answer it.
pub const EEXIST: c_long = -17;
/// No such entry (a removal), or no such slot.
const ENOENT: c_long = -2;

/// The sets of `LB_CT`.
#[inline(always)]
pub fn sets4() -> u32 {
    // SAFETY: a plain read of a global the loader set.
    unsafe { ptr::read_volatile(&CT_SETS) }
}

/// A family's new-flow table, as `Family::conntrack` gives it, with the LRU hash
/// map's methods (IPv6's is one: its callers' stack frames have no room for the
/// array's lookups).
pub trait NewFlows<A> {
    /// The entry for `key`, to read and mark in place (`last_seen`, `tcp_flags`).
    fn get_ptr_mut(&self, key: impl Borrow<FlowKeyOf<A>>) -> Option<*mut CtValueOf<A>>;

    /// The entry for `key`.
    ///
    /// # Safety
    /// As `aya_ebpf`'s map lookups: the entry may change under the reference.
    unsafe fn get(&self, key: impl Borrow<FlowKeyOf<A>>) -> Option<&'static CtValueOf<A>>;

    /// Writes `key`'s entry (with `BPF_NOEXIST` in `flags`: only if it has none,
    /// else `Err(EEXIST)`).
    fn insert(
        &self,
        key: impl Borrow<FlowKeyOf<A>>,
        value: impl Borrow<CtValueOf<A>>,
        flags: u64,
    ) -> Result<(), c_long>;

    /// Removes `key`'s entry (`Err` when it has none).
    fn remove(&self, key: impl Borrow<FlowKeyOf<A>>) -> Result<(), c_long>;
}

/// `LB_CT`, the IPv4 table.
pub struct CtTable;

impl NewFlows<u32> for CtTable {
    #[inline(always)]
    fn get_ptr_mut(&self, key: impl Borrow<FlowKey>) -> Option<*mut CtValue> {
        // SAFETY: a field of a slot of the array.
        find(key.borrow()).map(|slot| unsafe { &raw mut (*slot).value })
    }

    #[inline(always)]
    unsafe fn get(&self, key: impl Borrow<FlowKey>) -> Option<&'static CtValue> {
        // SAFETY: a field of a slot of the array.
        self.get_ptr_mut(key).map(|v| unsafe { &*v })
    }

    /// Over the set's least recently seen entry if the set is full.
    #[inline(always)]
    fn insert(
        &self,
        key: impl Borrow<FlowKey>,
        value: impl Borrow<CtValue>,
        flags: u64,
    ) -> Result<(), c_long> {
        match insert(key.borrow(), value.borrow(), flags) {
            0 => Ok(()),
            e => Err(e),
        }
    }

    #[inline(always)]
    fn remove(&self, key: impl Borrow<FlowKey>) -> Result<(), c_long> {
        let slot = find(key.borrow()).ok_or(ENOENT)?;
        // SAFETY: a slot of the array: a cleared check empties it, and it was
        // last seen at 0 (the first a write takes).
        unsafe {
            ptr::write_volatile(&raw mut (*slot).check, 0);
            (*slot).value.last_seen = 0;
        }
        Ok(())
    }
}

impl NewFlows<Addr6> for &'static LruHashMap<FlowKey6, CtValue6> {
    #[inline(always)]
    fn get_ptr_mut(&self, key: impl Borrow<FlowKey6>) -> Option<*mut CtValue6> {
        LruHashMap::get_ptr_mut(self, key)
    }

    #[inline(always)]
    unsafe fn get(&self, key: impl Borrow<FlowKey6>) -> Option<&'static CtValue6> {
        // SAFETY: as the caller's.
        unsafe { LruHashMap::get(self, key) }
    }

    #[inline(always)]
    fn insert(
        &self,
        key: impl Borrow<FlowKey6>,
        value: impl Borrow<CtValue6>,
        flags: u64,
    ) -> Result<(), c_long> {
        LruHashMap::insert(self, key, value, flags).map_err(c_long::from)
    }

    #[inline(always)]
    fn remove(&self, key: impl Borrow<FlowKey6>) -> Result<(), c_long> {
        LruHashMap::remove(self, key).map_err(c_long::from)
    }
}

/// A tuple's set of `LB_CT` and its hash.
#[inline(always)]
fn place(key: &FlowKey) -> Option<(*mut CtSet, u64)> {
    // SAFETY: a plain read of a global the loader set.
    let hash = ct_hash(key, unsafe { ptr::read_volatile(&CT_SEED) });
    Some((LB_CT.get_ptr_mut(ct_set(hash, sets4()))?, hash))
}

/// Slot `w` of `set`.
#[inline(always)]
fn slot(set: *mut CtSet, w: usize) -> *mut CtSlot {
    // SAFETY: a field of a map value (w < CT_WAYS, the loops' bound).
    unsafe { &raw mut (*set).slots[w] }
}

/// Whether `key` and the key at `at` differ: their words compared without a branch
/// (each branch is a path the verifier walks).
#[inline(always)]
fn differ(at: *const FlowKey, key: &FlowKey) -> bool {
    let (a, b) = (at as *const u32, key as *const FlowKey as *const u32);
    let mut diff = 0;
    for i in 0..size_of::<FlowKey>() / 4 {
        // SAFETY: both are keys (a multiple of 4 bytes, 4-aligned); `at` in a map
        // value. Both read anew (volatile): nothing of the key is kept in
        // registers across the lookups, which would spill it to the stack.
        diff |= unsafe { ptr::read_volatile(a.add(i)) ^ ptr::read_volatile(b.add(i)) };
    }
    diff != 0
}

/// Whether `slot` holds a valid entry for `key` (whose hash is `hash`).
#[inline(always)]
fn holds(slot: *mut CtSlot, key: &FlowKey, hash: u64) -> bool {
    // SAFETY: a slot of the array; the check is read before the entry (see
    // `CtSlotOf`): a torn or half-written entry fails it, an empty one's (0) is
    // never a check.
    let check = unsafe { ptr::read_volatile(&raw const (*slot).check) };
    // SAFETY: as above.
    !differ(unsafe { &raw const (*slot).key }, key)
        && ct_check(hash, unsafe { &(*slot).value }) == check
}

/// The slot of `LB_CT` holding a valid entry for `key`. A subprogram of its own,
/// as [`insert`]: inlined, their registers spill into the frames of the programs'
/// IPv4 paths, which have no room left.
#[inline(never)]
fn find(key: &FlowKey) -> Option<*mut CtSlot> {
    let (set, hash) = place(key)?;
    for w in 0..CT_WAYS as usize {
        let s = slot(set, w);
        if holds(s, key, hash) {
            // The slot again, by the place it holds (`CtSlotOf::way`, w).
            // SAFETY: a field of a slot of the array.
            let way = unsafe { ptr::read_volatile(&raw const (*s).way) } as usize;
            return Some(slot(set, way % CT_WAYS as usize));
        }
    }
    None
}

/// Writes `key`'s entry in `LB_CT` (see `NewFlows::insert`): over its own, else
/// over the set's least recently seen (an empty slot was last seen at 0). 0, or
/// the error.
#[inline(never)]
fn insert(key: &FlowKey, value: &CtValue, flags: u64) -> c_long {
    let Some((set, hash)) = place(key) else {
        return ENOENT;
    };
    let mut target = CT_WAYS as usize;
    for w in 0..CT_WAYS as usize {
        if holds(slot(set, w), key, hash) {
            target = w;
            break;
        }
    }
    if target < CT_WAYS as usize {
        if flags & BPF_NOEXIST as u64 != 0 {
            return EEXIST;
        }
    } else {
        // SAFETY: fields of slots of the array.
        let seen = |w| unsafe { ptr::read_volatile(&raw const (*slot(set, w)).value.last_seen) };
        target = 0;
        let mut oldest = seen(0);
        for w in 1..CT_WAYS as usize {
            let t = seen(w);
            if t < oldest {
                oldest = t;
                target = w;
            }
        }
    }
    let target = target % CT_WAYS as usize;
    let s = slot(set, target);
    // SAFETY: a slot of the array; the check goes last (see `CtSlotOf`).
    unsafe {
        (*s).key = *key;
        (*s).value = *value;
        (*s).way = target as u32;
        ptr::write_volatile(&raw mut (*s).check, ct_check(hash, value));
    }
    0
}
