// Package layout owns the enlightened storage layout: for guest pages, the
// (disk id, byte offset) where an identical 4 KiB copy lives on shared
// storage; its compact wire encoding; a tiny request/response protocol to
// fetch it; and readers for the disks it names.
//
// Invariants:
//   - A Layout is a hint: correctness never depends on it being right. The
//     consumer verifies every page it reads against a hash taken from memory.
//   - Disks[i].ID == i, and disk names are unique and non-empty.
//   - Runs are sorted by GuestPage, never overlap, have Pages > 0 and name a
//     disk in Disks; GuestPage+Pages and Offset+Pages*PageSize do not
//     overflow. MarshalBinary and UnmarshalBinary enforce this; Validate adds
//     the bound on guest pages.
//   - The encoding is versioned (magic "DMLY" + version) and ends in a CRC-32C
//     of everything before it; a decoder never allocates more than the input
//     can describe.
//   - A server answers with an Info only a request that asks for one, so
//     clients and servers of either age understand each other; Info
//     figures are ages by the server's clock, never timestamps.
//   - Storage opens disks read-only and owns their fds until Close. A Reader
//     never aborts a batch for one bad disk: every ref gets its own result.
//   - A Reader hints a batch's file ranges to the kernel before reading them
//     (read ahead from storage outside the page cache), unless probes find
//     the batch cached; a hint never changes what a Read delivers.
//
// This package imports nothing of the project.
package layout
