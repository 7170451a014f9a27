package precopy

import "unsafe"

// isZero reports whether a page is all zeros, eight bytes at a time with an
// early exit: most non-zero pages differ in their first words.
func isZero(p []byte) bool {
	words := unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(p))), len(p)/8)
	for i := 0; i < len(words); i += 8 {
		if words[i]|words[i+1]|words[i+2]|words[i+3]|words[i+4]|words[i+5]|words[i+6]|words[i+7] != 0 {
			return false
		}
	}
	return true
}
