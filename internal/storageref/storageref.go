// Package storageref holds what both ends must compute alike for a storage
// reference beyond its wire encoding: the page hash and the disk key.
//
// Invariants: Hash and DiskKey are pure functions of their input, the same
// on every host and in every version of this protocol; a collision of either
// can only make a reference fail its check (the destination then gets the
// page from the source), never place a wrong page.
package storageref

import (
	"hash/fnv"

	"github.com/zeebo/xxh3"
)

// Hash is the 128-bit XXH3 of a page as the source read it from guest RAM;
// the destination places a disk copy only if its Hash is equal.
func Hash(page []byte) [16]byte { return xxh3.Hash128(page).Bytes() }

// DiskKey is the wire disk id (wire.Ref.Disk) of the disk a layout names
// name. The protocol carries no disk table, so both ends derive the id from
// the name the host maps with --disk NAME=PATH. Two names with one key are
// told apart by neither end: the source sends data for all but one of them,
// and a reference that reaches the wrong disk fails its hash check.
func DiskKey(name string) uint16 {
	h := fnv.New32a()
	h.Write([]byte(name))
	v := h.Sum32()
	return uint16(v>>16) ^ uint16(v)
}
