package precopy

import (
	"context"

	"github.com/dmig/dmig/wire"
)

// Block is one RAM block of the guest: a file the guest maps MAP_SHARED.
type Block struct {
	Name string // matches the destination's block of the same name
	Path string
	Size uint64
}

// Guest is what the source side needs of the VMM that runs the guest.
type Guest interface {
	// Name identifies the guest in logs and to the destination.
	Name() string
	// Pid is the process whose memory maps the RAM blocks.
	Pid() int
	// RAM lists the guest's RAM blocks.
	RAM() []Block
	// DestCommand is the guest's command line for the destination, if the
	// destination starts the guest from it (process guests).
	DestCommand() []string
	// Pause stops the guest (every vCPU / thread) and returns once it is.
	Pause(ctx context.Context) error
	// Resume undoes Pause (abort: the guest runs on here).
	Resume(ctx context.Context) error
	// Finish ends the source guest after the destination completed.
	Finish(ctx context.Context) error
}

// DiskMarker is a guest whose disks the destination opens on shared
// storage (a QEMU VM). Before the session opens, MarkDisks labels each disk
// file with the session's ID, so the destination can tell the source's own
// files from copies under the same names on another host, where device and
// inode numbers say nothing.
type DiskMarker interface {
	MarkDisks(ctx context.Context, session wire.SessionID) error
}
