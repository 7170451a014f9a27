package testguest

import (
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"github.com/zeebo/xxh3"
)

// HashRAM returns the XXH3-128 digest (hex) of the concatenation of the RAM
// files, as Stats.ResumeRAMHash reports it for a resumed guest: equal
// digests mean the destination found, byte for byte, the RAM the source
// left. It reads with read(2), which leaves a shmem file's holes holes.
func HashRAM(paths ...string) (string, error) {
	h := xxh3.New128()
	buf := make([]byte, 1<<20)
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return "", fmt.Errorf("hash RAM: %w", err)
		}
		_, err = io.CopyBuffer(h, f, buf)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("hash RAM file %s: %w", p, err)
		}
	}
	sum := h.Sum128().Bytes()
	return hex.EncodeToString(sum[:]), nil
}

func hashBytes(b []byte) string {
	sum := xxh3.Hash128(b).Bytes()
	return hex.EncodeToString(sum[:])
}
