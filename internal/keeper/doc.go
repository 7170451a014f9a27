// Package keeper owns the destination's session directories and what must
// outlive dmig serve in them.
//
// A session directory (serve --dir, one per migration) holds the arriving
// guest's RAM files, its log, a journal (journal.json: the guest's pid and
// start time, the number of the userfaultfd kept open in the guest, the
// session's Hello and its state) and a lock file that the serve owning the
// session holds with flock(2) for as long as it runs it.
//
// Invariants:
//   - A guest that has not resumed dies with the serve that started it: its
//     keeper, a small process started by serve per session in its own
//     session, sees serve's pipe close and kills it.
//   - A guest past Ready (it may have been sent Go) or in post-copy whose
//     serve died stays stopped or blocked on its kept userfaultfd: a
//     restarted serve adopts it (Reclaim reports it), or, once
//     the recover timeout has passed with no serve holding the lock, the
//     keeper kills it. It never runs on a page nobody placed.
//   - No RAM file outlives its guest: the keeper removes the directory when
//     the guest exits, whoever ended it; Reclaim removes directories whose
//     guest is gone.
//
// Guests are named by pid and start time (field 22 of /proc/PID/stat), and
// signalled through a pidfd: a reused pid is never killed.
package keeper
