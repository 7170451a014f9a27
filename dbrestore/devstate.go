package dbrestore

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/dmig/dmig/wire"
)

// DeviceStateLoader is a guest whose VMM needs device state beyond its
// RAM (QEMU). The engine hands it the stream the source sent, complete,
// before Resume; the guest loads it in Resume, while post-copy faults are
// already served (the VMM may read guest RAM while loading).
type DeviceStateLoader interface {
	SetDeviceState(r io.Reader)
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

// handOff gives the received stream to g at switchover. A source that sent
// none leaves g alone; a stream cut short or a guest that cannot load one
// is an error.
func (s *deviceState) handOff(g Guest) error {
	if !s.seen {
		return nil
	}
	if !s.done {
		return fmt.Errorf("switchover before the device state ended (%d bytes received)", s.buf.Len())
	}
	l, ok := g.(DeviceStateLoader)
	if !ok {
		return fmt.Errorf("the source sent %d bytes of device state, and this guest cannot load device state", s.buf.Len())
	}
	l.SetDeviceState(bytes.NewReader(s.buf.Bytes()))
	return nil
}
