package wire

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"
)

// Every connection opens with a preamble in each direction, before any frame:
//
//	magic "DMIG" | version u16 | role u8 | status u8 | index u16 | session id 16B
//
// The dialer sends status 0; the acceptor answers with its own version and a
// status. A peer of another version still gets the acceptor's preamble, so
// both ends can name both versions in their error.
const preambleLen = 4 + 2 + 1 + 1 + 2 + 16

// Preamble statuses (acceptor → dialer).
const (
	statusOK      = 0
	statusVersion = 1
	statusSession = 2
	statusBusy    = 3
	statusRole    = 4
)

type preamble struct {
	version uint16
	role    Role
	status  uint8
	index   uint16
	session SessionID
}

func (p preamble) marshal() []byte {
	b := make([]byte, 0, preambleLen)
	b = append(b, magic...)
	b = le.AppendUint16(b, p.version)
	b = append(b, byte(p.role), p.status)
	b = le.AppendUint16(b, p.index)
	return append(b, p.session[:]...)
}

func parsePreamble(b []byte) (preamble, error) {
	if string(b[:4]) != magic {
		return preamble{}, fmt.Errorf("%w: opening bytes %q", ErrMagic, b[:4])
	}
	p := preamble{
		version: le.Uint16(b[4:]),
		role:    Role(b[6]),
		status:  b[7],
		index:   le.Uint16(b[8:]),
	}
	copy(p.session[:], b[10:])
	return p, nil
}

// check validates a dialer's preamble (after the version matched).
func (p preamble) check() error {
	switch {
	case p.status != statusOK:
		return fmt.Errorf("%w: dialer sent status %d", ErrMalformed, p.status)
	case p.role == RoleBulk && p.index >= MaxBulkConns,
		(p.role == RoleControl || p.role == RoleUrgent) && p.index != 0:
		return fmt.Errorf("%w: %s index %d", ErrRole, p.role, p.index)
	case p.role < RoleControl || p.role > RoleUrgent:
		return fmt.Errorf("%w: role %d", ErrRole, p.role)
	}
	return nil
}

func statusError(status uint8) error {
	switch status {
	case statusSession:
		return ErrSession
	case statusBusy:
		return ErrBusy
	case statusRole:
		return ErrRole
	}
	return fmt.Errorf("%w: handshake status %d", ErrMalformed, status)
}

// withDeadline runs f with nc's deadline set from ctx and ctx's cancellation
// unblocking it; it clears the deadline after.
func withDeadline(ctx context.Context, nc net.Conn, f func() error) error {
	var w watch
	var cur time.Time
	if err := arm(ctx, &w, &cur, nc.SetDeadline); err != nil {
		return err
	}
	err := f()
	disarm(&w, &cur)
	if err != nil {
		return ctxError(ctx, err)
	}
	return nc.SetDeadline(time.Time{})
}

// dialConn opens one connection of session id and does the dialer's half of
// the handshake, speaking the given version.
func dialConn(ctx context.Context, addr string, id SessionID, role Role, index int, version uint16) (*Conn, error) {
	return dialConnWith(ctx, addr, id, role, index, version, dialOptions{})
}

// dialConnWith is dialConn with the session's dial options (TLS).
func dialConnWith(ctx context.Context, addr string, id SessionID, role Role, index int, version uint16, o dialOptions) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s conn to %s: %w", role, addr, err)
	}
	if err := setLinkTimeout(nc, o.link); err != nil {
		nc.Close()
		return nil, fmt.Errorf("dial %s conn to %s: %w", role, addr, err)
	}
	if o.tls != nil {
		if nc, err = clientTLS(ctx, nc, addr, o.tls); err != nil {
			return nil, fmt.Errorf("dial %s conn to %s: %w", role, addr, err)
		}
	}
	out := preamble{version: version, role: role, index: uint16(index), session: id}
	err = withDeadline(ctx, nc, func() error {
		if _, err := nc.Write(out.marshal()); err != nil {
			return err
		}
		var b [preambleLen]byte
		if _, err := io.ReadFull(nc, b[:]); err != nil {
			return err
		}
		in, err := parsePreamble(b[:])
		switch {
		case err != nil:
			return err
		case in.version != version:
			return versionError(in.version, version)
		case in.status != statusOK:
			return statusError(in.status)
		}
		return nil
	})
	if err != nil {
		nc.Close()
		if role == RoleBulk {
			return nil, fmt.Errorf("handshake bulk conn %d with %s: %w", index, addr, err)
		}
		return nil, fmt.Errorf("handshake %s conn with %s: %w", role, addr, err)
	}
	return NewConn(nc, role, index), nil
}

// greet reads a dialer's preamble; on a version mismatch it answers with
// this side's version (so the dialer can report both) and closes.
func greet(ctx context.Context, nc net.Conn, timeout time.Duration) (preamble, error) {
	_ = nc.SetDeadline(time.Now().Add(timeout))
	// Accept returning must not wait out a silent peer's timeout.
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(aLongTimeAgo()) })
	defer stop()
	var b [preambleLen]byte
	if _, err := io.ReadFull(nc, b[:]); err != nil {
		return preamble{}, fmt.Errorf("read preamble: %w", noEOF(err))
	}
	p, err := parsePreamble(b[:])
	if err != nil {
		return p, err
	}
	if p.version != Version {
		answer(nc, p, statusVersion)
		return p, versionError(p.version, Version)
	}
	if err := p.check(); err != nil {
		answer(nc, p, statusRole)
		return p, err
	}
	return p, nil
}

// answer sends the acceptor's preamble; with a status other than OK the
// connection is then closed.
func answer(nc net.Conn, p preamble, status uint8) error {
	out := preamble{version: Version, role: p.role, status: status, index: p.index, session: p.session}
	_, err := nc.Write(out.marshal())
	if err == nil && status == statusOK {
		err = nc.SetDeadline(time.Time{})
	}
	if err != nil || status != statusOK {
		nc.Close()
	}
	if err != nil {
		return fmt.Errorf("answer %s preamble: %w", p.role, err)
	}
	return nil
}
