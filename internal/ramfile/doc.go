// Package ramfile owns the guest RAM files dmig migrates: mapping them into
// dmig (Map, Unmap), punching holes (PunchHole), finding their data with
// SEEK_DATA/SEEK_HOLE (Data), comparing two page for page (Diff: the RAM
// oracle of comparisons and tests), the per-guest lock (Lock), and finding
// another process's mappings of them in /proc/PID/maps (Mappings,
// FileMappings, FileMappingsOf).
//
// Block is one RAM block as both engines hold it: the open file, dmig's
// mapping of all of it, and the guest's mappings of it, with the address
// translation between guest addresses and pages (GuestAddr, Locate). The
// source opens it read-only and locked, the destination writable.
//
// It knows nothing of userfaultfd or of migration, does not log, and
// imports nothing of the project: the engines (precopy, dbrestore) and the
// VMM drivers build on it.
//
// # Invariants
//
//   - A RAM file is a shared-memory or file-system file mapped MAP_SHARED by
//     its VMM; dmig maps it MAP_SHARED too, so both see the same pages.
//   - Mappings are matched to a file by device and inode, never by name.
//   - Lock is the one-migration-per-guest rule: the RAM file is the guest's
//     identity, and the lock lasts as long as the file stays open.
//   - The caller owns every *os.File and mapping it gets here and releases
//     them explicitly (Unmap, Close); nothing is closed by a finalizer.
package ramfile
