package wire

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
)

// Version is the protocol version this package speaks. Peers must speak the
// same version exactly: any change to an encoding bumps it.
const Version uint16 = 3

// magic opens every connection, in both directions.
const magic = "DMIG"

// PageSize is the size of a page on the wire. Versions 1 to 3 move 4 KiB
// pages only; Hello carries the page size so a later version can negotiate others.
const PageSize = 4096

// Limits. Decoders reject anything beyond them before allocating for it.
const (
	MaxBulkConns      = 64
	MaxBlocks         = 1024
	MaxBlockSize      = 1 << 46 // 64 TiB per RAM block
	MaxPages          = MaxBlockSize / PageSize
	MaxNameLen        = 255     // mode, guest and block names
	MaxTextLen        = 4096    // error messages, abort reasons
	MaxFiguresLen     = 1 << 20 // Complete's JSON
	MaxRequestPages   = 512     // pages in one PageRequest
	MaxCommandArgs    = 256     // words in Hello.Command
	MaxDeviceState    = 1 << 20 // bytes of VMM device state in one frame
	MaxBatchEntries   = 1 << 16
	MaxBatchTable     = 2 << 20
	MaxBatchDataPages = 512 // 2 MiB of page data per batch
	// BatchTarget is the size a sender should aim a batch at: big enough that
	// per-batch costs vanish, small enough that urgent and control traffic
	// elsewhere never wait long for a core.
	BatchTarget = 1 << 20

	maxControlFrame = 64 << 20
	maxBatchFrame   = batchHeaderLen + MaxBatchTable + MaxBatchDataPages*PageSize
	maxUrgentFrame  = 64 << 10
)

// IterationPostcopy is the Iteration of batches pushed after Switchover
// (post-copy background push): the destination must not overwrite a page it
// already placed or the guest wrote since resuming.
const IterationPostcopy uint32 = 1<<32 - 1

// Type is a frame type.
type Type uint8

// Frame types. Control frames travel on the control connection, PageBatch on
// bulk connections, PageRequest/PageReply on the urgent connection.
const (
	TypeHello        Type = 1
	TypeHelloAck     Type = 2
	TypeIterationEnd Type = 3
	TypeSwitchover   Type = 4
	TypeResumed      Type = 5
	TypeComplete     Type = 6
	TypeError        Type = 7
	TypeAbort        Type = 8
	TypeProgress     Type = 9
	TypeReady        Type = 10
	TypeGo           Type = 11
	TypeDeviceState  Type = 12
	TypeResend       Type = 13
	TypeVerdict      Type = 14
	TypeMissing      Type = 15
	TypePageBatch    Type = 16
	TypePageRequest  Type = 32
	TypePageReply    Type = 33
)

func (t Type) String() string {
	switch t {
	case TypeHello:
		return "Hello"
	case TypeHelloAck:
		return "HelloAck"
	case TypeIterationEnd:
		return "IterationEnd"
	case TypeSwitchover:
		return "Switchover"
	case TypeResumed:
		return "Resumed"
	case TypeComplete:
		return "Complete"
	case TypeError:
		return "Error"
	case TypeAbort:
		return "Abort"
	case TypeProgress:
		return "Progress"
	case TypeReady:
		return "Ready"
	case TypeGo:
		return "Go"
	case TypeDeviceState:
		return "DeviceState"
	case TypeResend:
		return "Resend"
	case TypeVerdict:
		return "Verdict"
	case TypeMissing:
		return "Missing"
	case TypePageBatch:
		return "PageBatch"
	case TypePageRequest:
		return "PageRequest"
	case TypePageReply:
		return "PageReply"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// role returns the connection role that carries frames of type t, or 0.
func (t Type) role() Role {
	switch {
	case t >= TypeHello && t <= TypeMissing:
		return RoleControl
	case t == TypePageBatch:
		return RoleBulk
	case t == TypePageRequest || t == TypePageReply:
		return RoleUrgent
	}
	return 0
}

// maxLen is the largest payload a frame of type t may announce.
func (t Type) maxLen() uint32 {
	switch t.role() {
	case RoleBulk:
		return maxBatchFrame
	case RoleUrgent:
		return maxUrgentFrame
	}
	return maxControlFrame
}

// Role is what a connection of a session carries.
type Role uint8

// Connection roles.
const (
	RoleControl Role = 1 // session messages, both directions
	RoleBulk    Role = 2 // page batches, source → destination
	RoleUrgent  Role = 3 // post-copy requests (dest → source) and replies
)

func (r Role) String() string {
	switch r {
	case RoleControl:
		return "control"
	case RoleBulk:
		return "bulk"
	case RoleUrgent:
		return "urgent"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// SessionID names one migration; every connection of it carries the ID.
type SessionID [16]byte

// NewSessionID returns a random session ID.
func NewSessionID() SessionID {
	var id SessionID
	// crypto/rand.Read never fails on Linux ≥ 3.17 (getrandom).
	_, _ = rand.Read(id[:])
	return id
}

func (id SessionID) String() string { return hex.EncodeToString(id[:]) }

// ParseSessionID reads the String form of a session ID.
func ParseSessionID(s string) (SessionID, error) {
	var id SessionID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("%w: session ID %q is not %d hex digits", ErrMalformed, s, 2*len(id))
	}
	copy(id[:], b)
	return id, nil
}

// MarshalText writes the String form, so that journals and reports show
// the ID as logs do.
func (id SessionID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText reads the String form.
func (id *SessionID) UnmarshalText(b []byte) error {
	v, err := ParseSessionID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// Kind is how a page travels.
type Kind uint8

// Page kinds.
const (
	KindData Kind = 0 // PageSize bytes follow
	KindZero Kind = 1 // the page is all zeros
	KindRef  Kind = 2 // read the page from shared storage and check its hash
	numKinds      = 3
)

func (k Kind) String() string {
	switch k {
	case KindData:
		return "data"
	case KindZero:
		return "zero"
	case KindRef:
		return "ref"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Ref is a storage reference: the page is the PageSize bytes at Offset on
// shared disk Disk, and its 128-bit hash as the source read it is Hash. The
// destination must verify the hash and fall back to the source on mismatch.
type Ref struct {
	Disk   uint16
	Offset uint64
	Hash   [16]byte
}

const refLen = 2 + 8 + 16

// Block is one RAM block of the guest (QEMU's memory-backend id, or a RAM file
// of a process guest) and its size in bytes.
type Block struct {
	Name string
	Size uint64
}

// Pages is the number of pages in the block.
func (b Block) Pages() uint64 { return b.Size / PageSize }
