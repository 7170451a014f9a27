package storageref

import (
	"bytes"
	"testing"
)

func TestHashDistinguishesOneBit(t *testing.T) {
	a := bytes.Repeat([]byte{0x5a}, 4096)
	b := bytes.Clone(a)
	b[4095] ^= 1
	if Hash(a) != Hash(bytes.Clone(a)) {
		t.Fatal("hash of equal pages differs")
	}
	if Hash(a) == Hash(b) {
		t.Fatal("hash of pages differing in one bit is equal")
	}
	// A known value pins the function: both ends of a migration must agree.
	if got := Hash(make([]byte, 4096)); got == ([16]byte{}) {
		t.Fatalf("hash of a zero page is all zeros")
	}
}

func TestDiskKeyStable(t *testing.T) {
	// FNV-1a 32 of "data" is 0xd872e2a5; folded: 0xd872 ^ 0xe2a5.
	if got, want := DiskKey("data"), uint16(0xd872^0xe2a5); got != want {
		t.Fatalf("DiskKey(data) = %#x, want %#x", got, want)
	}
	if DiskKey("vda") == DiskKey("vdb") {
		t.Fatal("vda and vdb share a key")
	}
}
