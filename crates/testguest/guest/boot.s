/*
 * ftvm-testguest: the ring-0 part (AT&T syntax, included by main.rs with global_asm!).
 *
 * Ring-0 code is emulated instruction by instruction on the project's hosts (about 1 M
 * instructions/s, integer instructions only), so this file does the least possible:
 * everything (page tables, GDT with one TSS per CPU, TSSs, IDT) is built statically by the
 * assembler and the linker script (linker.ld computes the split TSS and IDT handler address
 * fields), and each CPU runs about 40 instructions before it drops to ring 3 for good.
 *
 * Entry points:
 *   ftvm_entry64      e_entry. Boot CPU, 64-bit long mode, RSI = Linux boot_params.
 *   ftvm_ap_entry64   "FTVM" note type 1. APs, 64-bit, RDI = CPU index, RSI = boot_params.
 *   ftvm_pvh_entry32  Xen PVH note (type 18). 32-bit protected mode, EBX = hvm_start_info.
 * All of them end in ftvm_common64 with RDI = CPU index, RSI = boot info, RDX = protocol,
 * which iretq's to ftvm_rust_start(cpu, info, proto) in ring 3 with IF=0 (and IOPL=3,
 * though ring-3 port I/O faults on the project's hosts anyway: ring 3 prints and exits
 * through the DPL-3 interrupt gates 0x80 and 0x81 below).
 *
 * No braces anywhere in this file: it goes through global_asm!.
 */

    .set KCODE, 0x08
    .set KDATA, 0x10
    .set UDATA, 0x20
    .set UCODE, 0x28
    .set TSS0, 0x30
    .set MAX_CPUS, 64
    .set KSTACK_SIZE, 4096
    .set USTACK_SIZE, 65536
    .set PROTO_LINUX, 0
    .set PROTO_PVH, 1
    .set PROTO_AP, 2
    .set COM1, 0x3f8
    .set EXIT_PORT, 0xf4

/* ---------------------------------------------------------------------------------- */
    .pushsection .text.ftvm_entry, "ax"
    .code64
    .globl ftvm_entry64
ftvm_entry64:
    cli
    xorl %edi, %edi
    movl $PROTO_LINUX, %edx
    jmp ftvm_common64

    .globl ftvm_ap_entry64
ftvm_ap_entry64:
    cli
    movl $PROTO_AP, %edx
    jmp ftvm_common64

    .code32
    .globl ftvm_pvh_entry32
ftvm_pvh_entry32:
    cli
    movl %ebx, %esi
    lgdtl ftvm_gdt_ptr
    movl $ftvm_pml4, %eax
    movl %eax, %cr3
    movl $0x620, %eax               /* CR4: PAE | OSFXSR | OSXMMEXCPT */
    movl %eax, %cr4
    movl $0xc0000080, %ecx          /* EFER */
    rdmsr
    orl $0x100, %eax                /* LME */
    wrmsr
    movl $0x80000023, %eax          /* CR0: PG | NE | MP | PE */
    movl %eax, %cr0
    ljmpl $KCODE, $ftvm_pvh64

    .code64
ftvm_pvh64:
    xorl %edi, %edi
    movl $PROTO_PVH, %edx
    /* fall through */

ftvm_common64:
    cmpq $MAX_CPUS, %rdi
    jae ftvm_park
    lgdt ftvm_gdt_ptr(%rip)
    movl $ftvm_pml4, %eax
    movq %rax, %cr3
    pushq $KCODE                    /* reload CS from our GDT */
    leaq 1f(%rip), %rax
    pushq %rax
    lretq
1:
    movw $KDATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movq %rdi, %rax                 /* ring-0 stack: ftvm_kstacks + (cpu + 1) * 4 KiB */
    incq %rax
    shlq $12, %rax
    addq $ftvm_kstacks, %rax
    movq %rax, %rsp
    lidt ftvm_idt_ptr(%rip)
    movq %rdi, %rax                 /* this CPU's TSS: selector TSS0 + cpu * 16 */
    shlq $4, %rax
    addq $TSS0, %rax
    ltr %ax
    movq %cr0, %rax                 /* SSE for ring 3: EM=0 TS=0 MP=1 NE=1 */
    andq $-13, %rax
    orq $0x22, %rax
    movq %rax, %cr0
    movq %cr4, %rax                 /* OSFXSR | OSXMMEXCPT */
    orq $0x600, %rax
    movq %rax, %cr4
    movq %rdi, %rax                 /* ring-3 stack: ftvm_ustacks + (cpu + 1) * 64 KiB - 8 */
    incq %rax
    shlq $16, %rax
    addq $ftvm_ustacks, %rax
    subq $8, %rax
    pushq $(UDATA | 3)              /* SS */
    pushq %rax                      /* RSP */
    pushq $0x3002                   /* RFLAGS: IOPL=3, IF=0 */
    pushq $(UCODE | 3)              /* CS */
    pushq $ftvm_rust_start          /* RIP */
    iretq

    .globl ftvm_park
ftvm_park:
    cli
    hlt
    jmp ftvm_park

/* CPU exceptions: print one panic line and exit 3 (ring 0, emulated, integer only). */
    .macro EXC_NOERR vec
    .balign 16
    pushq $0
    pushq $\vec
    jmp ftvm_exc_common
    .endm
    .macro EXC_ERR vec
    .balign 16
    pushq $\vec
    jmp ftvm_exc_common
    .endm

    .balign 1024
    .globl ftvm_exc_stubs
ftvm_exc_stubs:
    EXC_NOERR 0
    EXC_NOERR 1
    EXC_NOERR 2
    EXC_NOERR 3
    EXC_NOERR 4
    EXC_NOERR 5
    EXC_NOERR 6
    EXC_NOERR 7
    EXC_ERR 8
    EXC_NOERR 9
    EXC_ERR 10
    EXC_ERR 11
    EXC_ERR 12
    EXC_ERR 13
    EXC_ERR 14
    EXC_NOERR 15
    EXC_NOERR 16
    EXC_ERR 17
    EXC_NOERR 18
    EXC_NOERR 19
    EXC_NOERR 20
    EXC_ERR 21
    EXC_NOERR 22
    EXC_NOERR 23
    EXC_NOERR 24
    EXC_NOERR 25
    EXC_NOERR 26
    EXC_NOERR 27
    EXC_NOERR 28
    EXC_ERR 29
    EXC_ERR 30
    EXC_NOERR 31

/* Ring 3 asks ring 0 for two services with `int $0x80` (write RCX bytes at RSI to COM1;
   clobbers RAX, RCX, RSI, RDX) and `int $0x81` (power off with exit code EDI).
   Ring-3 port I/O faults on the project's hosts even with IOPL=3, and KVM's emulator
   cannot run a protected-mode `int n` either: there the int arrives as #UD (KVM queues #UD
   for an emulation failure at CPL 3) at the int instruction, and ftvm_exc_common
   recognizes it by its bytes. Where the CPU delivers the int (QEMU), the DPL-3 gates
   below (slots 32 and 33) are used directly. */
    .balign 16
ftvm_sys_write:                     /* slot 32, vector 0x80 */
    movw $COM1, %dx
    rep outsb                       /* one emulated instruction per byte */
    iretq

    .balign 16
ftvm_sys_exit:                      /* slot 33, vector 0x81 */
    movw $EXIT_PORT, %dx
    movl %edi, %eax
    outl %eax, %dx
    jmp ftvm_park

    .balign 16
    .globl ftvm_exc_stubs_end
ftvm_exc_stubs_end:                 /* linker.ld asserts this is ftvm_exc_stubs + 34 * 16 */

/* Stack: vector, error code, RIP, CS, RFLAGS, RSP, SS. */
ftvm_exc_common:
    cmpq $6, (%rsp)                 /* #UD or #GP at `int $0x80/0x81` in ring 3: a service */
    je 1f
    cmpq $13, (%rsp)
    jne ftvm_exc_panic
1:  testb $3, 24(%rsp)
    jz ftvm_exc_panic
    movq 16(%rsp), %rax             /* ring-3 RIP: identity-mapped, user-readable */
    cmpb $0xcd, (%rax)
    jne ftvm_exc_panic
    cmpb $0x80, 1(%rax)
    je 2f
    cmpb $0x81, 1(%rax)
    je ftvm_sys_exit
    jmp ftvm_exc_panic
2:  addq $2, 16(%rsp)               /* resume after the int */
    addq $16, %rsp                  /* drop vector and error code */
    jmp ftvm_sys_write

ftvm_exc_panic:
    movw $COM1, %dx
    leaq ftvm_msg_exc(%rip), %rsi
    call ftvm_puts
    movq (%rsp), %rax               /* vector, decimal */
    movb $10, %cl
    divb %cl
    testb %al, %al
    jz 2f
    addb $0x30, %al
    outb %al, %dx
2:  movb %ah, %al
    addb $0x30, %al
    outb %al, %dx
    leaq ftvm_msg_open(%rip), %rsi
    call ftvm_puts
    movq (%rsp), %rax               /* mnemonic */
    leaq ftvm_exc_names(%rip), %rsi
    leaq (%rsi,%rax,4), %rsi
    call ftvm_puts
    leaq ftvm_msg_err(%rip), %rsi
    call ftvm_puts
    movq 8(%rsp), %r10
    call ftvm_puthex
    leaq ftvm_msg_rip(%rip), %rsi
    call ftvm_puts
    movq 16(%rsp), %r10
    call ftvm_puthex
    leaq ftvm_msg_rsp(%rip), %rsi
    call ftvm_puts
    movq 40(%rsp), %r10
    call ftvm_puthex
    leaq ftvm_msg_rflags(%rip), %rsi
    call ftvm_puts
    movq 32(%rsp), %r10
    call ftvm_puthex
    leaq ftvm_msg_cs(%rip), %rsi
    call ftvm_puts
    movq 24(%rsp), %r10
    call ftvm_puthex
    leaq ftvm_msg_cr2(%rip), %rsi
    call ftvm_puts
    movq %cr2, %r10
    call ftvm_puthex
    movb $0x0a, %al
    outb %al, %dx
    movw $EXIT_PORT, %dx
    movl $3, %eax
    outl %eax, %dx
    jmp ftvm_park

/* Print the NUL-terminated string at RSI to port DX. */
ftvm_puts:
    movb (%rsi), %al
    testb %al, %al
    jz 1f
    outb %al, %dx
    incq %rsi
    jmp ftvm_puts
1:  ret

/* Print R10 as 16 hex digits to port DX. */
ftvm_puthex:
    movl $16, %ecx
1:  rolq $4, %r10
    movl %r10d, %eax
    andl $15, %eax
    leaq ftvm_hexdigits(%rip), %r11
    movb (%r11,%rax), %al
    outb %al, %dx
    decl %ecx
    jnz 1b
    ret
    .globl ftvm_ring0_end
ftvm_ring0_end:                     /* all ring-0 code is between ftvm_entry64 and here */
    .popsection

    .pushsection .rodata.ftvm_msgs, "a"
ftvm_msg_exc:
    .asciz "ftvm-testguest panic: cpu exception "
ftvm_msg_open:
    .asciz " #"
ftvm_msg_err:
    .asciz " error="
ftvm_msg_rip:
    .asciz " rip="
ftvm_msg_rsp:
    .asciz " rsp="
ftvm_msg_cr2:
    .asciz " cr2="
ftvm_msg_rflags:
    .asciz " rflags="
ftvm_msg_cs:
    .asciz " cs="
ftvm_hexdigits:
    .ascii "0123456789abcdef"
    .balign 4
ftvm_exc_names:
    .ascii "DE\0\0DB\0\0NMI\0BP\0\0OF\0\0BR\0\0UD\0\0NM\0\0"
    .ascii "DF\0\0CSO\0TS\0\0NP\0\0SS\0\0GP\0\0PF\0\0r15\0"
    .ascii "MF\0\0AC\0\0MC\0\0XM\0\0VE\0\0CP\0\0r22\0r23\0"
    .ascii "r24\0r25\0r26\0r27\0HV\0\0VC\0\0SX\0\0r31\0"
    .popsection

/* ---------------------------------------------------------------------------------- */
/* GDT: kernel code/data, user code32 (unused)/data/code64, then one TSS per CPU. */
    .pushsection .data.ftvm_gdt, "aw"
    .balign 16
ftvm_gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08 kernel code, 64-bit */
    .quad 0x00cf92000000ffff        /* 0x10 kernel data */
    .quad 0x00cffa000000ffff        /* 0x18 user code, 32-bit (unused) */
    .quad 0x00cff2000000ffff        /* 0x20 user data */
    .quad 0x00affa000000ffff        /* 0x28 user code, 64-bit */
    .set ftvm_i, 0
    .rept MAX_CPUS                  /* 0x30 + 16 * cpu: 64-bit TSS, limit 103 */
    .word 103
    .word ftvm_tss_lo + ftvm_i * 128
    .byte ftvm_tss_b2
    .byte 0x89
    .byte 0
    .byte ftvm_tss_b3
    .long 0
    .long 0
    .set ftvm_i, ftvm_i + 1
    .endr
ftvm_gdt_end:
    .balign 8
    .word 0, 0, 0
ftvm_gdt_ptr:
    .word ftvm_gdt_end - ftvm_gdt - 1
    .quad ftvm_gdt
    .popsection

/* One 104-byte TSS per CPU (padded to 128); RSP0 = top of the CPU's ring-0 stack.
   8 KiB aligned, so all 64 fit in one 64 KiB block (one base-high for all). */
    .pushsection .data.ftvm_tss, "aw"
    .balign 8192
    .globl ftvm_tss_array
ftvm_tss_array:
    .set ftvm_i, 0
    .rept MAX_CPUS
    .long 0
    .quad ftvm_kstacks + (ftvm_i + 1) * KSTACK_SIZE
    .quad 0, 0, 0
    .quad 0, 0, 0, 0, 0, 0, 0
    .quad 0
    .word 0
    .word 104                       /* I/O bitmap offset: none (IOPL=3 anyway) */
    .fill 24, 1, 0
    .set ftvm_i, ftvm_i + 1
    .endr
    .popsection

/* IDT: 32 exception gates (DPL 0) to the 16-byte stubs, then gates 0x80 (write) and
   0x81 (exit) with DPL 3 for ring 3. All interrupt gates (IF stays 0; no IRQs arrive). */
    .macro GATE slot, attr
    .word ftvm_exc_lo + \slot * 16
    .word KCODE
    .byte 0
    .byte \attr
    .word ftvm_exc_hi
    .long 0
    .long 0
    .endm

    .pushsection .data.ftvm_idt, "aw"
    .balign 16
ftvm_idt:
    .set ftvm_i, 0
    .rept 32
    GATE ftvm_i, 0x8e
    .set ftvm_i, ftvm_i + 1
    .endr
    .fill (0x80 - 32) * 16, 1, 0
    GATE 32, 0xee
    GATE 33, 0xee
ftvm_idt_end:
    .balign 8
    .word 0, 0, 0
ftvm_idt_ptr:
    .word ftvm_idt_end - ftvm_idt - 1
    .quad ftvm_idt
    .popsection

/* Page tables: identity map of 0..4 GiB with 2 MiB pages, present|writable|user. */
    .pushsection .data.ftvm_pt, "aw"
    .balign 4096
ftvm_pml4:
    .quad ftvm_pdpt + 0x7
    .fill 511, 8, 0
ftvm_pdpt:
    .quad ftvm_pd + 0x0000 + 0x7
    .quad ftvm_pd + 0x1000 + 0x7
    .quad ftvm_pd + 0x2000 + 0x7
    .quad ftvm_pd + 0x3000 + 0x7
    .fill 508, 8, 0
ftvm_pd:
    .set ftvm_i, 0
    .rept 2048
    .quad (ftvm_i << 21) | 0x87
    .set ftvm_i, ftvm_i + 1
    .endr
    .popsection

/* Stacks (zeroed by the loader, p_memsz > p_filesz). */
    .pushsection .bss.ftvm_stacks, "aw", @nobits
    .balign 4096
    .globl ftvm_kstacks
ftvm_kstacks:
    .skip MAX_CPUS * KSTACK_SIZE
    .globl ftvm_ustacks
ftvm_ustacks:
    .skip MAX_CPUS * USTACK_SIZE
    .popsection

/* ELF notes, one PT_NOTE segment: the ftvm AP entry first, then the Xen PVH entry.
   Both descs are 8 bytes (QEMU reads the PVH entry as a 64-bit word). */
    .pushsection .note.ftvm, "a", @note
    .balign 4
    .long 5                         /* namesz: "FTVM\0" */
    .long 8                         /* descsz */
    .long 1                         /* type: 64-bit AP entry */
    .asciz "FTVM"
    .balign 4
    .quad ftvm_ap_entry64
    .popsection

    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4                         /* namesz: "Xen\0" */
    .long 8                         /* descsz */
    .long 18                        /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .quad ftvm_pvh_entry32
    .popsection
