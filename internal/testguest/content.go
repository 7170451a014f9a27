package testguest

import (
	"fmt"
	"unsafe"
)

// PageSize is the unit the guest writes and dmig migrates.
const PageSize = 4096

// DBPageSize is the size of one database page on disk and of one buffer-pool
// frame: four guest pages, as InnoDB's default 16 KiB page is.
const DBPageSize = 4 * PageSize

const (
	wordsPerPage = PageSize / 8

	// Tags in the top 16 bits of a page's first word say which function
	// produced it, so a page found in the wrong place or region can be named.
	tagMask = 0xffff << 48
	idMask  = 1<<48 - 1
	dataTag = 0x7467 << 48 // data page: id = page number
	dbTag   = 0x6462 << 48 // db piece: id = db page*4 + piece

	gamma = 0x9e3779b97f4a7c15

	// randomWords: the rest of a page repeats one word, so pages compress
	// about 2x, as real guest memory does (zstd's fastest level: 2.7x on a
	// MariaDB guest's non-zero pages), and a compressed migration carries
	// test guests as it would real ones.
	randomWords = wordsPerPage / 2
)

// mix is splitmix64's finaliser: a bijection that spreads every input bit
// over the whole word, cheap enough to fill pages at several GB/s.
func mix(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// words views a 4 KiB page as 512 words. Pages live in page-aligned
// mappings, so the cast is always aligned.
func words(page []byte) []uint64 {
	_ = page[PageSize-1]
	return unsafe.Slice((*uint64)(unsafe.Pointer(&page[0])), wordsPerPage)
}

// fillPage writes the content of (tag, id, version v) into page. Version 0
// is all zeros, so a never-written page is a hole the engine sends as a zero
// page; any other version is self-describing (tag|id, version) followed by a
// splitmix64 stream seeded by all three, then one word of the three
// repeated.
func fillPage(page []byte, tag, id uint64, v uint32) {
	w := words(page)
	if v == 0 {
		clear(w)
		return
	}
	w[0] = tag | id
	w[1] = uint64(v)
	s := mix(tag ^ id*0xd6e8feb86659fd93 ^ uint64(v)*gamma)
	for i := 2; i < randomWords; i++ {
		s += gamma
		w[i] = mix(s)
	}
	tail := mix(s)
	for i := randomWords; i < wordsPerPage; i++ {
		w[i] = tail
	}
}

// pageIs reports whether page holds exactly the content of (tag, id, v).
func pageIs(page []byte, tag, id uint64, v uint32) bool {
	w := words(page)
	if v == 0 {
		for _, x := range w {
			if x != 0 {
				return false
			}
		}
		return true
	}
	if w[0] != tag|id || w[1] != uint64(v) {
		return false
	}
	s := mix(tag ^ id*0xd6e8feb86659fd93 ^ uint64(v)*gamma)
	for i := 2; i < randomWords; i++ {
		s += gamma
		if w[i] != mix(s) {
			return false
		}
	}
	tail := mix(s)
	for i := randomWords; i < wordsPerPage; i++ {
		if w[i] != tail {
			return false
		}
	}
	return true
}

// pageIsEither reports whether every word of page belongs to version a or
// version b of (tag, id): a page being rewritten when the guest was stopped
// is a mix of the two, and nothing else.
func pageIsEither(page []byte, tag, id uint64, a, b uint32) bool {
	w := words(page)
	var ea, eb [wordsPerPage]uint64
	fillPage(unsafe.Slice((*byte)(unsafe.Pointer(&ea[0])), PageSize), tag, id, a)
	fillPage(unsafe.Slice((*byte)(unsafe.Pointer(&eb[0])), PageSize), tag, id, b)
	for i, x := range w {
		if x != ea[i] && x != eb[i] {
			return false
		}
	}
	return true
}

// describe names what a page that is not what it should be actually holds,
// so a report says "version 8 (from the future)" rather than "mismatch".
func describe(page []byte, tag, id uint64, want uint32) string {
	w := words(page)
	zero := true
	for _, x := range w {
		if x != 0 {
			zero = false
			break
		}
	}
	if zero {
		return "zeros (version 0)" + ageOf(0, want)
	}
	gotTag, gotID, gotV := w[0]&tagMask, w[0]&idMask, w[1]
	if (gotTag == dataTag || gotTag == dbTag) && gotV > 0 && gotV <= 1<<32-1 {
		if pageIs(page, gotTag, gotID, uint32(gotV)) {
			if gotTag == tag && gotID == id {
				return fmt.Sprintf("version %d%s", gotV, ageOf(uint32(gotV), want))
			}
			return fmt.Sprintf("%s version %d (a page from elsewhere)", nameOf(gotTag, gotID), gotV)
		}
		if gotTag == tag && gotID == id {
			bad := 0
			var e [wordsPerPage]uint64
			fillPage(unsafe.Slice((*byte)(unsafe.Pointer(&e[0])), PageSize), tag, id, uint32(gotV))
			for i := range w {
				if w[i] != e[i] {
					bad++
				}
			}
			return fmt.Sprintf("version %d with %d of %d words corrupt", gotV, bad, wordsPerPage)
		}
	}
	return fmt.Sprintf("unrecognised content (first words %#x %#x)", w[0], w[1])
}

func ageOf(got, want uint32) string {
	switch {
	case got < want:
		return " (stale)"
	case got > want:
		return " (from the future)"
	}
	return ""
}

func nameOf(tag, id uint64) string {
	if tag == dbTag {
		return fmt.Sprintf("db page %d piece %d", id/4, id%4)
	}
	return fmt.Sprintf("data page %d", id)
}
