// Package guest owns the in-guest agent: it finds clean InnoDB frames in
// mysqld's memory, maps them to guest-physical pages (pagemap) and to disk
// offsets (FIEMAP + partition start), and serves that layout to the host.
//
// One scan (Agent.Scan):
//  1. SQL, read-only and latch-free: innodb_page_size, datadir, buffer pool
//     size, the tablespace files (MariaDB INNODB_SYS_TABLESPACES, MySQL 8
//     INNODB_TABLESPACES + INNODB_DATAFILES), encrypted spaces, the last
//     checkpoint LSN. Never INNODB_BUFFER_PAGE: it latches the pool.
//  2. The pool mapping from /proc/PID/maps, read through /proc/PID/mem in
//     large preads, paced to Config.Rate.
//  3. Each page-size frame: skipped if a block descriptor, all zero, not a
//     page of a listed tablespace, or of an encrypted, compressed or
//     temporary space; clean if its checksum verifies (full_crc32 or
//     crc32), since InnoDB writes the checksum only on flush.
//  4. Clean frames claimed twice, or changed at or after the checkpoint
//     (their write may still be in flight), are dropped; each 4 KiB of the
//     rest becomes (frame number from pagemap, disk offset from FIEMAP +
//     partition start), dropped if not present or not in a usable extent.
//
// Invariants:
//   - A layout is a hint: every wrong entry costs the engine one page
//     fetch, never data (it verifies a hash). The filters here keep wrong
//     entries rare and cheap to find, not impossible: stale byte-exact copies
//     in free blocks pass every check.
//   - The agent never writes to the server or its files and takes no lock in
//     it; FIEMAP is called without FIEMAP_FLAG_SYNC.
//   - Disk identity (layout.Disk.Name): "serial:S" when the whole disk has a
//     serial number (QEMU -drive ...,serial=S), else the guest's kernel name
//     of the whole disk ("vda"). Offsets are bytes from the start of that
//     whole disk. Files on device mapper or md, and file systems other
//     than ext2/3/4 and XFS, are not mapped.
//   - Raw kernel calls live in abi_linux.go (structs, ioctls) and kernel.go
//     (typed wrappers, sysfs); the rest of the package calls those.
//   - Running as non-root fails with ErrPermission or ErrNoPFN, never with a
//     layout of hidden (zero) frame numbers.
package guest
