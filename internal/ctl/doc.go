// Package ctl owns the local control sockets through which dmig status and
// dmig cancel reach the migrations a host runs. Every migrating process
// (dmig migrate, dmig serve, dmig drain) listens on one socket,
// DIR/<command>-<pid>.sock, and lists one entry per migration it runs
// (serve: per session, drain: per guest); the client side reads every
// socket of DIR.
//
// # Invariants
//
//   - Only root, or the user the migrating process runs as, is answered:
//     DIR is a directory of that user's, mode 0700, each socket 0600, and
//     the peer's credentials (SO_PEERCRED) are checked on every
//     connection.
//   - A socket visible in DIR listens or belongs to a dead process: it is
//     bound and listening under a temporary name and renamed into place,
//     so a client that is refused a connection removes it as stale
//     without racing a process that is starting.
//   - The figures an entry shows never run backwards: bytes and pages done
//     are the maxima seen, progress is clamped to its maximum, and the ETA
//     only counts down or drops, except when it ran out with pages left,
//     which raises it and says so (Entry.ETAReestimates, Entry.ETANote).
//     docs/operating.md defines each figure.
//   - A cancel goes through a Gate that orders it against Go: accepted
//     before Go, the migration aborts through its ordinary abort path (the
//     source guest runs on); once Go is on its way, it is refused
//     (ErrPastGo).
package ctl
