package dbrestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/dmig/dmig/wire"
)

// DeviceStateLoader is a guest whose VMM needs device state beyond its
// RAM (QEMU). The engine hands it the stream the source sent, complete,
// after the switchover's last pages and before it answers Ready: faults
// are already served (the VMM reads guest RAM while loading), and a load
// that fails, or a VMM that dies meanwhile, is still a clean abort that
// resumes the source. The guest must stay paused until Resume.
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

// deviceState collects DeviceState frames until the Last one. The whole
// stream is kept in memory: it is small (QEMU's x-ignore-shared stream of a
// 2 GiB guest is under 1 MB) and must be complete before the guest resumes.
type deviceState struct {
	buf  bytes.Buffer
	seen bool
	done bool
}

func (s *deviceState) add(m *wire.DeviceState) error {
	if s.done {
		return errors.New("device state after its last piece")
	}
	s.seen = true
	s.buf.Write(m.Data)
	s.done = m.Last
	return nil
}

// check refuses, at switchover, a stream cut short or one the guest cannot
// load.
func (s *deviceState) check(g Guest) error {
	if !s.seen {
		return nil
	}
	if !s.done {
		return fmt.Errorf("switchover before the device state ended (%d bytes received)", s.buf.Len())
	}
	if _, ok := g.(DeviceStateLoader); !ok {
		return fmt.Errorf("the source sent %d bytes of device state, and this guest cannot load device state", s.buf.Len())
	}
	return nil
}

// load has g load the received stream (nothing if the source sent none).
func (s *deviceState) load(ctx context.Context, g Guest) error {
	if !s.seen {
		return nil
	}
	if err := g.(DeviceStateLoader).LoadDeviceState(ctx, bytes.NewReader(s.buf.Bytes())); err != nil {
		return fmt.Errorf("load device state (%d bytes): %w", s.buf.Len(), err)
	}
	return nil
}
