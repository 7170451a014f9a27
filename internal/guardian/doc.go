// Package guardian keeps a migration killed before Go from leaving its
// source guest stopped. The migrating process (dmig migrate, dmig drain)
// starts a guardian, a process of its own session that outlives it, and
// tells it over a pipe, one line a message, "pausing" before it pauses the
// guest, "go" before Go goes on the wire, and "done" when it has nothing
// left for the guardian to do. The guardian, reading that pipe, acts when
// it ends:
//
//   - "done": nothing (the migration resumed the guest itself, completed,
//     or never paused it).
//   - end of file after "pausing" and before "go" (the migrating process
//     died, or handed the guest over with Client.Release): it resumes the
//     guest, retrying for at most Options.Bound, and logs what it did.
//   - end of file after "go": nothing. The destination may run the guest;
//     the source stays paused (dmig resume is the operator's command).
//   - end of file before "pausing": nothing, the guest was never paused.
//
// # Invariants
//
//   - "go" reaches the guardian before Go reaches the destination (the
//     engine calls Going first and aborts if it fails): a kill between the
//     two leaves the source paused, which is safe, never two running
//     copies.
//   - The guardian resumes only a guest this migration paused: a guest
//     already stopped when the migration was about to pause it is not
//     armed (Client.Running).
//   - A message is one write of a short line to a pipe (atomic): the
//     guardian sees whole messages, in order, and reads every one written
//     before the writer died.
//   - The guardian is bounded: it exits once it has acted, after at most
//     Options.Bound of failed resumes plus one attempt's timeout.
package guardian
