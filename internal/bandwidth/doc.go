// Package bandwidth owns a migration's bandwidth cap: the units operators
// write it in (Parse), and the token bucket every connection carrying page
// data draws from (Limiter), with the meter that reports the rate it let
// through.
//
// Invariants:
//   - Over any interval of length T, the bytes a Limiter grants are at most
//     rate×T + burst + urgent budget, and burst + budget is 4 % of a second
//     at the rate (Limiter's doc comment has the argument): a 1 s window
//     stays within 5 % of the cap.
//   - Bulk writes take tokens only when the bucket holds them; urgent
//     writes (post-copy fault replies) take them at once, into debt, while
//     the debt stays within the budget, and so never wait behind bulk.
//   - A Limiter with a parent (a drain's total) grants only what both
//     buckets hold, taken from both at once.
//   - The rate may change at any time (SetRate, from dmig set-bandwidth);
//     waiters see a new rate within maxSleep (100 ms), the bucket is
//     clipped to the new burst and budget so the windows from the change
//     on hold the new cap, and every change is kept for the report.
package bandwidth
