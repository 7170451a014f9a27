package wire

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error returned by this package wraps one of them (or
// a context or network error), so callers branch with errors.Is.
var (
	// ErrMagic: the peer is not speaking dmig (first bytes are not the magic).
	ErrMagic = errors.New("not a dmig peer (bad magic)")
	// ErrVersion: the peer speaks another protocol version; the message names both.
	ErrVersion = errors.New("protocol version mismatch")
	// ErrFrameTooLarge: a frame header announced more bytes than its type allows;
	// refused before anything was allocated for it.
	ErrFrameTooLarge = errors.New("frame too large")
	// ErrTruncated: input ended inside a frame or a field.
	ErrTruncated = errors.New("truncated input")
	// ErrMalformed: input that no correct encoder produces (bad kind, counts that
	// disagree with the length, trailing bytes, non-minimal varint, bad order).
	ErrMalformed = errors.New("malformed input")
	// ErrRange: a well-formed value outside what the protocol or the session's
	// geometry allows (page beyond its block, zero count, unknown block).
	ErrRange = errors.New("value out of range")
	// ErrUnknownType: a frame type this version does not define.
	ErrUnknownType = errors.New("unknown frame type")
	// ErrUnexpected: a known frame on a connection whose role does not carry it.
	ErrUnexpected = errors.New("frame not allowed on this connection")
	// ErrSession: a connection for a session this side does not know.
	ErrSession = errors.New("unknown session")
	// ErrBusy: the acceptor is already setting up another session.
	ErrBusy = errors.New("peer busy with another session")
	// ErrAbandoned: a session's source closed its control connection
	// before its other connections arrived (the acceptor drops it).
	ErrAbandoned = errors.New("control connection closed during setup")
	// ErrRole: a connection with a bad or duplicate role/index.
	ErrRole = errors.New("bad connection role or index")
	// ErrRefused: the destination answered Hello with a refusal; see RefusedError.
	ErrRefused = errors.New("migration refused by peer")
	// ErrTimeout: Dial's WithTimeout expired before the session was set up.
	ErrTimeout = errors.New("destination did not answer in time")
	// ErrDataPending: a misuse of the page-data API (reading more page data than
	// the current batch holds, or a length that is not whole pages).
	ErrDataPending = errors.New("page data misuse")
)

// RefusedError is the error Dial returns when the destination refuses the
// Hello. errors.Is(err, ErrRefused) holds.
type RefusedError struct {
	Code    RefuseCode
	Message string
}

func (e *RefusedError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("migration refused by peer: %s", e.Code)
	}
	return fmt.Sprintf("migration refused by peer: %s: %s", e.Code, e.Message)
}

// Is makes errors.Is(err, ErrRefused) true.
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

func versionError(peer, local uint16) error {
	return fmt.Errorf("%w: peer speaks protocol version %d, this side version %d", ErrVersion, peer, local)
}
