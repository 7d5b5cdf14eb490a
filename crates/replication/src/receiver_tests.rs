//! The replica refuses a bad epoch before any of it is applied. Real KVM VMs (skipped
//! loudly without /dev/kvm); epochs built by the real assembler from real messages.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use ftvm_vmm::Vm;
use ftvm_wire::{
    AssemblerConfig, EpochAssembler, EpochCommit, Message, Pages, Progress, StagedEpoch, PAGE_SIZE,
};
use vm_memory::{Bytes, GuestAddress};

use super::Replica;

const MEM: u64 = 64 << 20;

fn vm(test: &str) -> Option<Arc<Vm>> {
    crate::test_support::test_vm(test, MEM, "the replica")
}

/// Epoch `epoch` of `msgs` (data messages), committed through an assembler that checks
/// nothing about guest memory (so the replica's own checks are what is tested).
fn staged(asm: &mut EpochAssembler, epoch: u64, msgs: &[Message<'_>]) -> Box<StagedEpoch> {
    assert!(matches!(
        asm.feed(&Message::EpochBegin { epoch }).unwrap(),
        Progress::Pending
    ));
    let mut c = EpochCommit {
        epoch,
        ..Default::default()
    };
    for m in msgs {
        asm.feed(m).unwrap();
        c.add(m);
    }
    match asm.feed(&Message::EpochCommit(c)).unwrap() {
        Progress::Committed(e) => e,
        p => panic!("epoch {epoch} not committed: {p:?}"),
    }
}

fn byte_at(r: &Replica, gpa: u64) -> u8 {
    let mut b = [0u8; 1];
    r.vm()
        .memory()
        .read_slice(&mut b, GuestAddress(gpa))
        .unwrap();
    b[0]
}

/// Epoch 1: page 0x1000 = 0xaa, with a real (decodable) VM state.
fn first_epoch(asm: &mut EpochAssembler, r: &mut Replica, state: &[u8]) {
    let page = [0xaau8; PAGE_SIZE];
    let e = staged(
        asm,
        1,
        &[
            Message::Pages(Pages::new(1, &[(0x1000, 1)], &page).unwrap()),
            Message::State {
                epoch: 1,
                blob: state,
            },
        ],
    );
    r.apply(&e).unwrap();
    assert_eq!(byte_at(r, 0x1000), 0xaa);
    assert_eq!(r.committed(), Some(1));
}

#[test]
fn a_page_run_outside_guest_memory_leaves_the_replica_untouched() {
    let Some(vm) = vm("a_page_run_outside_guest_memory_leaves_the_replica_untouched") else {
        return;
    };
    let state = vm.save_state().unwrap().to_bytes().unwrap();
    let mut asm = EpochAssembler::new(AssemblerConfig::migration());
    let mut r = Replica::fresh(vm);
    first_epoch(&mut asm, &mut r, &state);
    // Epoch 2 first rewrites page 0x1000, then writes beyond the end of guest memory.
    let page = [0xbbu8; 2 * PAGE_SIZE];
    let e = staged(
        &mut asm,
        2,
        &[
            Message::Pages(Pages::new(2, &[(0x1000, 1)], &page[..PAGE_SIZE]).unwrap()),
            Message::Pages(Pages::new(2, &[(MEM, 1)], &page[PAGE_SIZE..]).unwrap()),
            Message::State {
                epoch: 2,
                blob: &state,
            },
        ],
    );
    let err = r.apply(&e).unwrap_err().to_string();
    assert!(err.contains("outside guest memory"), "{err}");
    // Nothing of epoch 2 reached the replica: not half applied.
    assert_eq!(byte_at(&r, 0x1000), 0xaa, "epoch 2 was half applied");
    assert_eq!(r.committed(), Some(1));
}

#[test]
fn an_undecodable_state_is_refused_before_the_epoch_is_acknowledged() {
    let Some(vm) = vm("an_undecodable_state_is_refused_before_the_epoch_is_acknowledged") else {
        return;
    };
    let state = vm.save_state().unwrap().to_bytes().unwrap();
    let mut asm = EpochAssembler::new(AssemblerConfig::migration());
    let mut r = Replica::fresh(vm);
    first_epoch(&mut asm, &mut r, &state);
    let page = [0xccu8; PAGE_SIZE];
    let e = staged(
        &mut asm,
        2,
        &[
            Message::Pages(Pages::new(2, &[(0x1000, 1)], &page).unwrap()),
            Message::State {
                epoch: 2,
                blob: b"not a VM state",
            },
        ],
    );
    let err = r.apply(&e).unwrap_err().to_string();
    assert!(err.contains("state"), "{err}");
    assert_eq!(
        byte_at(&r, 0x1000),
        0xaa,
        "the refused epoch's pages were applied"
    );
    assert_eq!(r.committed(), Some(1));
}

#[test]
fn a_protected_epoch_without_state_is_refused() {
    let Some(vm) = vm("a_protected_epoch_without_state_is_refused") else {
        return;
    };
    let state = vm.save_state().unwrap().to_bytes().unwrap();
    let mut asm = EpochAssembler::new(AssemblerConfig::migration());
    let mut r = Replica::fresh(vm);
    // Initial-sync epochs carry no state: accepted.
    let page = [0x11u8; PAGE_SIZE];
    let e = staged(
        &mut asm,
        1,
        &[Message::Pages(
            Pages::new(1, &[(0x2000, 1)], &page).unwrap(),
        )],
    );
    r.apply(&e).unwrap();
    assert!(!r.has_state());
    let page = [0xaau8; PAGE_SIZE];
    let e = staged(
        &mut asm,
        2,
        &[
            Message::Pages(Pages::new(2, &[(0x1000, 1)], &page).unwrap()),
            Message::State {
                epoch: 2,
                blob: &state,
            },
        ],
    );
    r.apply(&e).unwrap();
    // Once the replica has a state, every epoch must carry one.
    let page = [0xddu8; PAGE_SIZE];
    let e = staged(
        &mut asm,
        3,
        &[Message::Pages(
            Pages::new(3, &[(0x1000, 1)], &page).unwrap(),
        )],
    );
    let err = r.apply(&e).unwrap_err().to_string();
    assert!(err.contains("carries no VM state"), "{err}");
    assert_eq!(byte_at(&r, 0x1000), 0xaa);
    assert_eq!(r.committed(), Some(2));
}

#[test]
fn staging_is_bounded_by_the_guest() {
    let Some(vm) = vm("staging_is_bounded_by_the_guest") else {
        return;
    };
    let cfg = crate::staging::assembler_config(&vm);
    assert_eq!(cfg.max_pages, MEM / PAGE_SIZE as u64);
    assert_eq!(cfg.gpa_limit, Some(MEM));
    assert_eq!(
        cfg.max_staged_bytes,
        MEM + crate::staging::OUTPUT_AND_STATE_BYTES
    );
    assert!(!cfg.require_state, "initial-sync epochs carry no state");
}
