//! The guest's heap: a static-arena allocator over the RAM above the image (set up once
//! by the key-value service before its first allocation). Power-of-two size classes with
//! one free list each; blocks come from a bump pointer and go back to their class's list.
//! Fast, simple and bounded (at most 2x the requested size); freed memory is reused only
//! for the same class, which suits the service's buffers and values.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, Ordering};

const CLASSES: usize = 48;
const MIN_BLOCK: usize = 16;

struct Inner {
    next: usize,
    end: usize,
    free: [usize; CLASSES],
}

/// The allocator (one instance, `#[global_allocator]` in main.rs).
pub struct Heap {
    lock: AtomicBool,
    inner: UnsafeCell<Inner>,
}

// SAFETY: all access to `inner` happens with `lock` held (a spin lock).
unsafe impl Sync for Heap {}

impl Heap {
    /// An empty heap: every allocation fails until [`Heap::init`].
    pub const fn new() -> Self {
        Heap {
            lock: AtomicBool::new(false),
            inner: UnsafeCell::new(Inner {
                next: 0,
                end: 0,
                free: [0; CLASSES],
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        while self
            .lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        // SAFETY: the lock is held: no other reference to `inner` exists.
        let r = f(unsafe { &mut *self.inner.get() });
        self.lock.store(false, Ordering::Release);
        r
    }

    /// Gives the heap the memory `[start, end)`.
    ///
    /// # Safety
    /// The range must be RAM that nothing else uses, identity-mapped and writable from
    /// ring 3, for the rest of the guest's life.
    pub unsafe fn init(&self, start: usize, end: usize) {
        self.with(|h| {
            h.next = start;
            h.end = end;
        });
    }

}

fn class_of(layout: Layout) -> Option<(usize, usize)> {
    let size = layout.size().max(layout.align()).max(MIN_BLOCK);
    let block = size.checked_next_power_of_two()?;
    let class = block.trailing_zeros() as usize;
    (class < CLASSES).then_some((class, block))
}

// SAFETY: blocks are disjoint pieces of the arena given to `init`, aligned to
// min(block, 4096) and at least to `layout.align()`, each handed out once until freed.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some((class, block)) = class_of(layout) else {
            return null_mut();
        };
        self.with(|h| {
            let head = h.free[class];
            if head != 0 {
                // SAFETY: a free block of this class holds the next free block's address.
                h.free[class] = unsafe { *(head as *const usize) };
                return head as *mut u8;
            }
            let align = block.min(4096).max(layout.align());
            let start = (h.next + align - 1) & !(align - 1);
            match start.checked_add(block) {
                Some(end) if end <= h.end => {
                    h.next = end;
                    start as *mut u8
                }
                _ => null_mut(),
            }
        })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some((class, _)) = class_of(layout) else {
            return;
        };
        self.with(|h| {
            // SAFETY: the block (at least 16 bytes, 8-aligned) is ours again: link it.
            unsafe { *(ptr as *mut usize) = h.free[class] };
            h.free[class] = ptr as usize;
        });
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees a valid layout for new_size with this alignment.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if class_of(new_layout).map(|c| c.0) == class_of(layout).map(|c| c.0) {
            return ptr;
        }
        // SAFETY: as GlobalAlloc::alloc.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for min(old, new) bytes and distinct.
            unsafe {
                core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}
