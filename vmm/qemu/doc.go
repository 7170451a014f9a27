// Package qemu drives stock QEMU (7.2 and 10 tested) for dmig over QMP: it starts VMs
// (tests, destinations), finds a running VM's RAM (the shared backend
// files, QEMU's mappings of them, the guest-physical map), derives a
// destination's command line from the source's, moves device state with
// x-ignore-shared through a stream dmig carries, and runs QEMU's own
// modes (pre-copy, multifd with and without zstd, post-copy with and
// without preempt) for comparison.
//
// Invariants:
//   - dmig migrates only RAM QEMU maps shared from a file or memfd
//     (share=on); Discover refuses anything else with ErrNotShared, since
//     dmig reads and writes guest memory through that file.
//   - The guest-physical → RAM-offset map comes from QEMU's flat view of
//     its "memory" address space, never from assumptions about the machine.
//   - A destination opens the source's disks, the same files by device and
//     inode (CheckDisks): QEMU checks neither that nor share=on, and a
//     destination on another image corrupts it.
//   - CheckSharedDisks refuses, before a migration starts, a disk on a
//     local file system (unless the operator names its directory as
//     shared): the destination's own check comes only at switchover.
//   - Every capability a migration relies on is set explicitly on both
//     sides: a QEMU that was itself a destination keeps the ones it had.
//   - QEMU runs in the background with stderr in a file, never
//     -daemonize, so its errors reach the caller (ErrExited carries them).
//   - QMP errors keep QEMU's error class (*CommandError); every call takes
//     a context.
//
// The guest image the tests boot is built by image/build.sh (make
// guest-image; see docs/testing.md, "Guest image").
package qemu
