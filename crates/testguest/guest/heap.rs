//! The guest's heap over the RAM above the image (set up once by the key-value service
//! before its first allocation). Blocks up to 4 KiB come from power-of-two size classes
//! with one free list each (fast: B-tree nodes, keys, small values), carved from 64 KiB
//! slabs; larger blocks (connection buffers, big values, socket buffers) come from a
//! first-fit allocator that coalesces freed neighbours (`linked_list_allocator`), so
//! buffers growing and shrinking through every size cannot fragment the heap away.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::{null_mut, NonNull};
use core::sync::atomic::{AtomicBool, Ordering};

/// Largest size-class block; above it the coalescing allocator serves.
const SMALL_MAX: usize = 4096;
const SMALL_CLASSES: usize = 13; // 1 << 12 == 4096
const MIN_BLOCK: usize = 16;
const SLAB: usize = 64 * 1024;

struct Inner {
    big: linked_list_allocator::Heap,
    slab_next: usize,
    slab_end: usize,
    free: [usize; SMALL_CLASSES],
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
                big: linked_list_allocator::Heap::empty(),
                slab_next: 0,
                slab_end: 0,
                free: [0; SMALL_CLASSES],
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
        // SAFETY: forwarded from the caller.
        self.with(|h| unsafe { h.big.init(start as *mut u8, end - start) });
    }
}

/// Size class and block size of a small layout.
fn small_class(layout: Layout) -> Option<(usize, usize)> {
    let size = layout.size().max(layout.align()).max(MIN_BLOCK);
    if size > SMALL_MAX {
        return None;
    }
    let block = size.next_power_of_two();
    Some((block.trailing_zeros() as usize, block))
}

impl Inner {
    fn alloc_small(&mut self, class: usize, block: usize) -> *mut u8 {
        let head = self.free[class];
        if head != 0 {
            // SAFETY: a free block of this class holds the next free block's address.
            self.free[class] = unsafe { *(head as *const usize) };
            return head as *mut u8;
        }
        // Blocks are naturally aligned inside 4 KiB-aligned slabs.
        let start = (self.slab_next + block - 1) & !(block - 1);
        if start + block > self.slab_end {
            let Ok(layout) = Layout::from_size_align(SLAB, SMALL_MAX) else {
                return null_mut();
            };
            let Ok(slab) = self.big.allocate_first_fit(layout) else {
                return null_mut();
            };
            self.slab_next = slab.as_ptr() as usize;
            self.slab_end = self.slab_next + SLAB;
            return self.alloc_small(class, block);
        }
        self.slab_next = start + block;
        start as *mut u8
    }
}

// SAFETY: small blocks are disjoint, naturally aligned pieces of slabs owned by the
// size classes; large blocks come from linked_list_allocator, which honours the layout.
// Each block is handed out once until freed.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.with(|h| match small_class(layout) {
            Some((class, block)) => h.alloc_small(class, block),
            None => h
                .big
                .allocate_first_fit(layout)
                .map_or(null_mut(), NonNull::as_ptr),
        })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.with(|h| match small_class(layout) {
            Some((class, _)) => {
                // SAFETY: the block (at least 16 bytes, 16-aligned) is ours again: link it.
                unsafe { *(ptr as *mut usize) = h.free[class] };
                h.free[class] = ptr as usize;
            }
            None => {
                if let Some(p) = NonNull::new(ptr) {
                    // SAFETY: `p` came from `allocate_first_fit` with this layout.
                    unsafe { h.big.deallocate(p, layout) }
                }
            }
        })
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees a valid layout for new_size with this alignment.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if let (Some((a, _)), Some((b, _))) = (small_class(layout), small_class(new_layout)) {
            if a == b {
                return ptr;
            }
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
