package guest

import (
	"encoding/binary"
	"hash/crc32"
)

// InnoDB page header and trailer offsets (storage/innobase/include/fil0fil.h).
const (
	filPageOffset       = 4  // page number
	filPageLSN          = 16 // 8 bytes
	filPageFileFlushLSN = 26
	filPageSpaceID      = 34
	filPageData         = 38
	filPageEndLSNOld    = 8 // trailer of the crc32/innodb formats: old checksum, LSN low 32 bits
	filPageFCRC32End    = 8 // full_crc32 trailer: LSN low 32 bits, CRC-32C
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// pageID returns the tablespace id and page number a frame claims.
func pageID(frame []byte) (space, page uint32) {
	return binary.BigEndian.Uint32(frame[filPageSpaceID:]), binary.BigEndian.Uint32(frame[filPageOffset:])
}

// frameLSN returns FIL_PAGE_LSN, the LSN of the page's newest change.
func frameLSN(frame []byte) uint64 { return binary.BigEndian.Uint64(frame[filPageLSN:]) }

// isZero reports whether every byte of b is 0. All-zero frames are free
// memory; MariaDB's own check accepts them as valid pages, so they must be
// excluded before the checksum is trusted.
func isZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// checksumOK reports whether a frame carries the checksum InnoDB writes when
// it flushes the page. InnoDB writes it only then, so a page changed since
// it was read or written fails it: a valid checksum is strong evidence that
// the frame equals the page on disk.
//
// fullCRC32: MariaDB's full_crc32 format, CRC-32C of all but the last 4
// bytes, stored big-endian in them, and the low 32 bits of FIL_PAGE_LSN
// repeated before it. Otherwise the crc32 format of MySQL 5.7+/MariaDB:
// CRC-32C of [4,26) xor CRC-32C of [38,size-8), stored at byte 0 and again
// at size-8, and the LSN low bits at size-4. The legacy "innodb" and "none"
// algorithms are not accepted: "none" proves nothing.
func checksumOK(frame []byte, fullCRC32 bool) bool {
	n := len(frame)
	lsnLow := binary.BigEndian.Uint32(frame[filPageLSN+4:])
	if fullCRC32 {
		if binary.BigEndian.Uint32(frame[n-filPageFCRC32End:]) != lsnLow {
			return false
		}
		return binary.BigEndian.Uint32(frame[n-4:]) == crc32.Checksum(frame[:n-4], castagnoli)
	}
	stored := binary.BigEndian.Uint32(frame)
	if binary.BigEndian.Uint32(frame[n-filPageEndLSNOld:]) != stored || binary.BigEndian.Uint32(frame[n-4:]) != lsnLow {
		return false
	}
	c := crc32.Checksum(frame[filPageOffset:filPageFileFlushLSN], castagnoli) ^
		crc32.Checksum(frame[filPageData:n-filPageEndLSNOld], castagnoli)
	return stored == c
}
