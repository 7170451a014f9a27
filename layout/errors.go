package layout

import "errors"

// Validation errors (Validate, Build, MarshalBinary, UnmarshalBinary).
var (
	ErrOutOfRange  = errors.New("out of range")
	ErrOverlap     = errors.New("overlapping runs")
	ErrUnsorted    = errors.New("runs not sorted")
	ErrEmptyRun    = errors.New("zero-length run")
	ErrUnknownDisk = errors.New("unknown disk id")
	ErrDisk        = errors.New("bad disk table")
)

// Decoding errors (UnmarshalBinary, Fetch).
var (
	ErrMagic     = errors.New("bad magic")
	ErrVersion   = errors.New("unsupported version")
	ErrChecksum  = errors.New("checksum mismatch")
	ErrTruncated = errors.New("truncated")
	ErrMalformed = errors.New("malformed")
	ErrTooLarge  = errors.New("too large")
)

// Storage errors (OpenStorage, Reader).
var (
	ErrNoDisk     = errors.New("disk not available") // the layout names a disk the host did not open
	ErrNotStorage = errors.New("not a regular file or block device")
	ErrShortRead  = errors.New("short read")
)

// ErrRemote wraps an error the layout server reported instead of a layout.
var ErrRemote = errors.New("layout server error")
