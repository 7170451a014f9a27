// Package testguest owns dmig's test guest: a plain process, run as `dmig
// testguest run`, whose whole state lives in a RAM file it maps MAP_SHARED,
// and which finds any page that a migration lost, left stale, or brought
// "from the future". The migration engine is proven on it before QEMU.
//
// # The process-guest contract
//
// Any program can be migrated by dmig as a guest if:
//   - all of its state lives in RAM file(s) it maps MAP_SHARED (for example
//     /dev/shm/NAME); nothing else is needed to continue;
//   - on the source it survives being stopped with SIGSTOP at any
//     instruction (switchover) and continued with SIGCONT (abort);
//   - on the destination, dmig creates the RAM file(s) sparse at the
//     source's size and starts the guest's command with DMIG_INCOMING=1 and
//     DMIG_RAM=<path>[:<path>...] in its environment. The guest maps them,
//     touches no page (they are holes dmig fills), and stops itself with
//     SIGSTOP; dmig sees every thread stopped (state T in
//     /proc/PID/task/*/stat, or waitpid WUNTRACED), places pages, and sends
//     SIGCONT. The guest then continues from the state in its RAM.
//
// This guest verifies all of its RAM when it resumes on the destination and
// exits with status ExitMismatch (3), printing every wrong page (RAM page
// number, what it should hold, what it holds), if anything is wrong; other
// failures (a file it cannot open, bad flags) exit 1, and a workload that
// ends (--duration, SIGTERM, SIGINT) exits 0. RunOptions.SkipResumeVerify
// (--skip-resume-verify) leaves the checking to the workload's reads, for
// post-copy measurements where reading all of RAM at once would distort the
// figures. A read
// by the running workload that finds a wrong page does the same, which is
// how post-copy is checked while the guest runs.
//
// The RAM may be split evenly over several files (`--ram` repeated, as a
// VM's RAM may be several blocks): they are mapped back to back in one
// range, and "RAM page n" everywhere (reports, layouts) is page n of their
// concatenation in DMIG_RAM order — with one file, byte offset / 4096.
//
// # RAM format (pages of 4 KiB)
//
//	page 0            header: magic, geometry, the workload Params (so an
//	                  incoming guest needs no flag), write counter, write
//	                  intent, buffer-pool intent and counters
//	version table     a uint32 version per data page
//	frame descriptors database mode: per 16 KiB frame {db page+1, version, dirty}
//	db table          database mode: per db page {version on disk, frame+1}
//	data pages        page n at version v: all zeros for v = 0 (a hole, the
//	                  engine's zero-page path); else {tag|n, v, splitmix64
//	                  stream seeded by (n, v)}
//	pool              database mode: 4·frames pages; the four 4 KiB pieces of
//	                  frame k are scattered over the pool by a permutation of
//	                  the seed, as a real guest's physical memory is
//
// In database mode a data file on shared storage (a path both hosts reach)
// holds 16 KiB db pages, each a function of (db page, version) with the
// version embedded; the guest reads pages into frames (pread), modifies
// frames (dirty), and flushes dirty frames back (pwrite, clean again). Its
// layout endpoint reports the clean frames as a layout.Layout: guest page =
// RAM page of a piece, disk offset = db page·16 KiB + piece·4 KiB.
//
// # Invariants
//
// Outside an interrupted operation:
//   - every data page holds the content of (its page number, its version);
//   - the write counter equals the sum of all versions (a stale or future
//     version-table page, or page 0, breaks it);
//   - a resident frame holds its db page at the descriptor's version; it is
//     clean exactly when that version is the one on disk, dirty when newer;
//     the db table points back to it; a free frame is all zeros;
//   - every data-file page holds the version the db table says;
//   - the modification counter equals Σ (current version of db page − 1),
//     the current version being the frame's if resident, else the disk's.
//
// Each change (a data write; a load, modification or flush of a frame)
// first records an intent in page 0, then does its bulk write, then its
// atomic table stores, then clears the intent. Stopped at any instruction,
// verification allows exactly the states that operation passes through
// (including a page or file page that is a word-by-word mix of the old and
// the new version), and on resume the operation is redone idempotently. The
// workload is one goroutine: there is never more than one data write and
// one buffer-pool operation in flight.
package testguest
