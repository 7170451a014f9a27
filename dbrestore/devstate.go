package dbrestore

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/dmig/dmig/internal/cause"
	"github.com/dmig/dmig/wire"
)

// DeviceStateLoader is a guest whose VMM needs device state beyond its
// RAM (QEMU). The engine hands it the stream the source sends, as it
// arrives, once the switchover's last pages are in or missing and before
// it answers Ready: faults are already served (the VMM reads guest RAM
// while loading), and a load that fails, or a VMM that dies meanwhile, is
// still a clean abort that resumes the source. r ends (io.EOF) with the
// stream; the guest must stay paused until Resume.
type DeviceStateLoader interface {
	LoadDeviceState(ctx context.Context, r io.Reader) error
}

// DeviceStatePreparer is a DeviceStateLoader with setup to do before the
// switchover (QEMU: listen for the stream). The engine calls it once, after
// Start and before the first pass; a failure ends the session, the source
// still running.
type DeviceStatePreparer interface {
	PrepareDeviceState(ctx context.Context) error
}

// deviceState is the device state a Switchover announced, read from the
// control connection as the guest's VMM loads it: the load overlaps the
// transfer instead of waiting for all of it.
type deviceState struct {
	expected bool // the Switchover announced device state
}

// check refuses, at switchover, device state this guest cannot load.
func (s *deviceState) check(g Guest) error {
	if _, ok := g.(DeviceStateLoader); s.expected && !ok {
		return errors.New("the source sends device state, and this guest cannot load device state")
	}
	return nil
}

// load has g load the stream the source sends on c (nothing if the
// Switchover announced none).
func (s *deviceState) load(ctx context.Context, g Guest, c *wire.Conn) error {
	if !s.expected {
		return nil
	}
	r := &deviceStateReader{ctx: ctx, c: c}
	err := g.(DeviceStateLoader).LoadDeviceState(ctx, r)
	if err == nil && !r.done {
		err = classed(wire.ErrorProtocol, errors.New("the guest finished loading before the stream's last piece"))
	}
	if err != nil {
		return fmt.Errorf("load device state (%d bytes received): %w", r.bytes, err)
	}
	return nil
}

// deviceStateReader reads the DeviceState frames on the control
// connection as one stream, ending at the Last one. An Abort or Error from
// the source, or any other frame, ends it with an error.
type deviceStateReader struct {
	ctx   context.Context
	c     *wire.Conn
	buf   []byte // the current frame's data not read yet
	bytes int
	done  bool // the Last frame has been read
}

func (r *deviceStateReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.done {
			return 0, io.EOF
		}
		m, err := r.c.ReadFrame(r.ctx)
		if err != nil {
			return 0, cause.Of(r.ctx, lost(fmt.Errorf("read device state: control connection: %w", err)))
		}
		switch m := m.(type) {
		case *wire.DeviceState:
			r.buf, r.done = m.Data, m.Last
		case *wire.Abort:
			return 0, fmt.Errorf("source aborted: %s", m.Reason)
		case *wire.Error:
			return 0, fmt.Errorf("source failed: %v: %s", m.Code, m.Message)
		default:
			return 0, classed(wire.ErrorProtocol, fmt.Errorf("unexpected %v on the control connection in the device state", m.Type()))
		}
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	r.bytes += n
	return n, nil
}
