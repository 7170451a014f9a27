// Package layout owns the enlightened storage layout: for guest pages, the
// (disk id, byte offset) where an identical 4 KiB copy lives on shared
// storage; its compact wire encoding; and readers for the disks it names.
// A layout is a hint: correctness never depends on it being right.
package layout
