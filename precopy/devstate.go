package precopy

import (
	"context"
	"fmt"
	"io"

	"github.com/dmig/dmig/wire"
)

// DeviceStater is a guest whose VMM holds state beyond its RAM files (a
// QEMU's devices and vCPUs). The engine calls SendDeviceState once the
// guest is paused and its RAM harvested, right after Switchover, and
// forwards what it writes to the destination, which loads it as it comes,
// before resuming.
type DeviceStater interface {
	SendDeviceState(ctx context.Context, w io.Writer) error
}

// DeviceStatePreparer is a DeviceStater with setup it can do before the
// pause, out of the downtime (QEMU: its migration settings). The engine
// calls PrepareDeviceState before pausing the guest, and
// UnprepareDeviceState if the migration then aborts with the guest kept.
type DeviceStatePreparer interface {
	PrepareDeviceState(ctx context.Context) error
	UnprepareDeviceState(ctx context.Context) error
}

// deviceStateWriter cuts a byte stream into DeviceState frames on the
// control connection. Writes are copied into frames as they come: QEMU
// writes in small pieces, and the control connection carries only this
// until Ready, so no buffering is needed for throughput.
type deviceStateWriter struct {
	ctx   context.Context
	c     *wire.Conn
	bytes uint64
}

func (w *deviceStateWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), wire.MaxDeviceState)
		if err := w.c.WriteFrame(w.ctx, &wire.DeviceState{Data: p[:k]}); err != nil {
			return n, fmt.Errorf("send device state: %w", err)
		}
		n += k
		w.bytes += uint64(k)
		p = p[k:]
	}
	return n, nil
}

// sendDeviceState streams g's device state to the destination, ended by a
// Last frame. It returns the bytes sent.
func (s *source) sendDeviceState(ctx context.Context, g DeviceStater) (uint64, error) {
	w := &deviceStateWriter{ctx: ctx, c: s.sess.Control}
	if err := g.SendDeviceState(ctx, w); err != nil {
		return w.bytes, fmt.Errorf("send device state of %s: %w", s.g.Name(), err)
	}
	if err := s.sess.Control.WriteFrame(ctx, &wire.DeviceState{Last: true}); err != nil {
		return w.bytes, fmt.Errorf("end device state: %w", err)
	}
	return w.bytes, nil
}
