// Package drain migrates every guest listed in a drain config off a host,
// one at a time or a few in parallel, for operators and cron.
//
// Invariants:
//   - A guest is migrated only while this process holds an exclusive flock
//     on LockDir/NAME.lock, so two drains (or a drain and a rerun) never
//     migrate the same guest at once; a guest whose lock is held elsewhere
//     is skipped as busy, never waited for.
//   - The state file records a guest as moved only after its migration
//     completed; it is read after the guest's lock is taken, so a guest
//     another drain just moved is skipped, not migrated twice. Updates are
//     read-modify-write under a lock on the state file and replace it by
//     rename, so a crash leaves the old or the new state, never half.
//   - A failed migration never stops the others; the summary lists every
//     guest with what happened to it.
//   - A guest Options.Migrate finds it cannot migrate (ErrCannotMigrate),
//     or an expansion marked so, is reported as skipped with the reason and
//     never retried: nothing of it was touched.
//   - At most Destination.MaxConcurrent guests migrate to one destination
//     at once; a guest waiting for its destination never holds up one to
//     another.
//   - The package does not migrate or find VMs by itself: Options.Migrate
//     and Options.Expand do (the CLI passes the engine and the QEMU
//     discovery), so the schedule, locks and state are testable alone.
package drain
