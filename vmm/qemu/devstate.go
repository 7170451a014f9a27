package qemu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"
)

// ignoreShared are the capabilities of a device-state-only migration:
// RAM in shared backends is skipped (the destination maps the same
// contents), and QEMU's post-copy, which cannot be combined with it, is off.
func ignoreShared() map[string]bool {
	return map[string]bool{CapIgnoreShared: true, CapPostcopyRAM: false}
}

func sockName(dir, what string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return filepath.Join(dir, what+"-"+hex.EncodeToString(b[:])+".sock")
}

// deviceStateBandwidth is the source's max-bandwidth for a device-state
// migration: none to speak of. QEMU's default (128 MiB/s) paces even the
// paused guest's ~0.7 MB of ROMs and devices, 2 ms of the downtime.
const deviceStateBandwidth = 1 << 40

// migrationSettings are the source's migration settings a device-state
// migration changes, as they were before (for UnprepareDeviceState).
type migrationSettings struct {
	caps         map[string]bool
	maxBandwidth uint64
}

// deviceStateSettings reads the settings PrepareDeviceState replaces.
func (m *Monitor) deviceStateSettings(ctx context.Context) (migrationSettings, error) {
	var caps []struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	if err := m.Execute(ctx, "query-migrate-capabilities", nil, &caps); err != nil {
		return migrationSettings{}, fmt.Errorf("read migration capabilities: %w", err)
	}
	var params struct {
		MaxBandwidth uint64 `json:"max-bandwidth"`
	}
	if err := m.Execute(ctx, "query-migrate-parameters", nil, &params); err != nil {
		return migrationSettings{}, fmt.Errorf("read migration parameters: %w", err)
	}
	st := migrationSettings{caps: map[string]bool{}, maxBandwidth: params.MaxBandwidth}
	for _, c := range caps {
		if _, ok := ignoreShared()[c.Capability]; ok {
			st.caps[c.Capability] = c.State
		}
	}
	return st, nil
}

// apply sets st's capabilities and max-bandwidth.
func (m *Monitor) apply(ctx context.Context, st migrationSettings) error {
	if err := m.SetCapabilities(ctx, st.caps); err != nil {
		return fmt.Errorf("set migration capabilities: %w", err)
	}
	if st.maxBandwidth > 0 {
		if err := m.SetParameters(ctx, Parameters{MaxBandwidth: st.maxBandwidth}); err != nil {
			return fmt.Errorf("set max-bandwidth: %w", err)
		}
	}
	return nil
}

// SendDeviceState migrates the source's device state (and non-shared RAM:
// ROMs, ~1 MB) into w, with x-ignore-shared set: QEMU sends to a unix
// socket dmig listens on in dir, and dmig copies the stream to w (its own
// connection to the destination). The source should be stopped first; it
// stays stopped (postmigrate) after: Cont resumes it if the destination
// fails. Returns the source's query-migrate figures.
func SendDeviceState(ctx context.Context, src *Monitor, dir string, w io.Writer) (MigrationInfo, error) {
	if err := src.apply(ctx, migrationSettings{caps: ignoreShared(), maxBandwidth: deviceStateBandwidth}); err != nil {
		return MigrationInfo{}, fmt.Errorf("source: %w", err)
	}
	return sendDeviceState(ctx, src, dir, w)
}

// cancelWait bounds the migrate_cancel of a failed device-state send: a
// QEMU that does not answer (stopped, wedged) must not hold the abort,
// whose resume of the guest has a bound of its own. Closing the socket
// fails QEMU's migration anyway; the cancel only makes it prompt.
const cancelWait = time.Second

// cancelMigration cancels src's migration after ctx ended or the copy
// failed, within cancelWait.
func cancelMigration(ctx context.Context, src *Monitor) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cancelWait)
	defer cancel()
	_ = src.MigrateCancel(cctx)
}

// sendDeviceState is SendDeviceState with the source's settings already
// applied.
func sendDeviceState(ctx context.Context, src *Monitor, dir string, w io.Writer) (MigrationInfo, error) {
	path := sockName(dir, "devstate-out")
	l, err := net.Listen("unix", path)
	if err != nil {
		return MigrationInfo{}, fmt.Errorf("listen for device state: %w", err)
	}
	defer os.Remove(path)
	defer l.Close()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	if err := src.Migrate(ctx, "unix:"+path); err != nil {
		return MigrationInfo{}, fmt.Errorf("start device-state migration: %w", err)
	}
	c, err := l.Accept()
	if err != nil {
		cancelMigration(ctx, src)
		return MigrationInfo{}, fmt.Errorf("accept device state from qemu: %w", errors.Join(err, context.Cause(ctx)))
	}
	defer c.Close()
	stopc := context.AfterFunc(ctx, func() { c.Close() })
	defer stopc()
	if _, err := io.Copy(w, c); err != nil {
		cancelMigration(ctx, src)
		return MigrationInfo{}, fmt.Errorf("copy device state: %w", errors.Join(err, context.Cause(ctx)))
	}
	info, err := src.WaitMigration(ctx, nil)
	if err != nil {
		return info, fmt.Errorf("device-state migration: %w", err)
	}
	return info, nil
}

// ListenDeviceState has the destination (started with -incoming defer)
// listen for device state on a unix socket in dir, x-ignore-shared set,
// and returns the socket's path for LoadDeviceState. Done before the
// switchover, its two commands are out of the downtime.
func ListenDeviceState(ctx context.Context, dst *Monitor, dir string) (string, error) {
	if err := dst.SetCapabilities(ctx, ignoreShared()); err != nil {
		return "", fmt.Errorf("set destination capabilities: %w", err)
	}
	path := sockName(dir, "devstate-in")
	if err := dst.MigrateIncoming(ctx, "unix:"+path); err != nil {
		return "", fmt.Errorf("listen for device state: %w", err)
	}
	return path, nil
}

// LoadDeviceState sends the device state read from r to the destination
// listening on path (ListenDeviceState) and returns once QEMU has loaded
// it. Guest RAM must already be in its shared files (or be registered with
// userfaultfd): QEMU reads guest RAM while loading devices. The
// destination is then paused if the source was, else running.
func LoadDeviceState(ctx context.Context, dst *Monitor, path string, r io.Reader) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return fmt.Errorf("connect to destination qemu: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if _, err := io.Copy(c, r); err != nil {
		return fmt.Errorf("copy device state: %w", errors.Join(err, context.Cause(ctx)))
	}
	if uc, ok := c.(*net.UnixConn); ok {
		_ = uc.CloseWrite()
	}
	p := newPoller()
	for {
		st, err := dst.QueryStatus(ctx)
		if err != nil {
			return fmt.Errorf("destination after device state: %w", err)
		}
		if st.Status != "inmigrate" {
			if st.Status != "paused" && st.Status != "running" {
				return fmt.Errorf("%w: destination is %s after loading device state", ErrMigrationFailed, st.Status)
			}
			return nil
		}
		if err := p.wait(ctx); err != nil {
			return fmt.Errorf("wait for device state to load: %w", err)
		}
	}
}
