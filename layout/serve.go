package layout

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"
)

// The layout protocol, over any byte stream (TCP, a virtio-serial port):
//
//	request:  "DMLQ" version(1 byte) flags(1 byte)    flags bit 0: refresh
//	response: status(1 byte) length(4 bytes, big-endian) payload
//	          status 0: payload is a MarshalBinary layout
//	          status 1: payload is an error message (UTF-8)
//
// A connection carries any number of request/response pairs in turn.
const (
	reqMagic       = "DMLQ"
	reqVersion     = 1
	reqSize        = len(reqMagic) + 2
	flagRefresh    = 1 << 0
	statusOK       = 0
	statusError    = 1
	maxErrorLen    = 64 << 10
	respHeaderSize = 5
)

// Fetch asks the layout server at addr for a freshly taken layout: host:port
// over TCP, or unix:PATH, a unix socket such as the host end of a QEMU
// guest's virtio-serial port.
func Fetch(ctx context.Context, addr string) (*Layout, error) {
	return FetchWith(ctx, addr, true)
}

// FetchWith is Fetch; without refresh the server may answer with a layout
// it took earlier (see Server.MaxAge).
func FetchWith(ctx context.Context, addr string, refresh bool) (*Layout, error) {
	var d net.Dialer
	network, where := "tcp", addr
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, where = "unix", p
	}
	conn, err := d.DialContext(ctx, network, where)
	if err != nil {
		return nil, fmt.Errorf("fetch layout: %w", err)
	}
	defer conn.Close()
	l, err := Request(ctx, conn, refresh)
	if err != nil {
		return nil, fmt.Errorf("fetch layout from %s: %w", addr, err)
	}
	return l, nil
}

// Request sends one request on rw and reads the layout in the response. With
// refresh the server takes a new layout; without, it may answer with the
// last one it took. A server-side failure is an error wrapping ErrRemote.
// If ctx ends, rw's deadline is set to now (net.Conn, *os.File) to unblock.
func Request(ctx context.Context, rw io.ReadWriter, refresh bool) (*Layout, error) {
	defer interruptOnDone(ctx, rw)()
	req := []byte(reqMagic + "\x01\x00")
	if refresh {
		req[len(reqMagic)+1] |= flagRefresh
	}
	if _, err := rw.Write(req); err != nil {
		return nil, ctxErr(ctx, fmt.Errorf("send request: %w", err))
	}
	var hdr [respHeaderSize]byte
	if _, err := io.ReadFull(rw, hdr[:]); err != nil {
		return nil, ctxErr(ctx, fmt.Errorf("read response: %w", err))
	}
	status, n := hdr[0], binary.BigEndian.Uint32(hdr[1:])
	switch {
	case status == statusOK && n > maxEncodedLen,
		status == statusError && n > maxErrorLen:
		return nil, fmt.Errorf("response of %d bytes: %w", n, ErrTooLarge)
	case status != statusOK && status != statusError:
		return nil, fmt.Errorf("response status %d: %w", status, ErrMalformed)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(rw, payload); err != nil {
		return nil, ctxErr(ctx, fmt.Errorf("read response: %w", err))
	}
	if status == statusError {
		return nil, fmt.Errorf("%w: %s", ErrRemote, payload)
	}
	var l Layout
	if err := l.UnmarshalBinary(payload); err != nil {
		return nil, err
	}
	return &l, nil
}

// Server answers layout requests with layouts from get. It keeps the last
// layout it encoded: a request without the refresh flag gets that one if
// there is one. get is called by one request at a time.
type Server struct {
	get func(context.Context) (*Layout, error)
	// MaxAge, if set, is how old a cached layout a request without the
	// refresh flag may get; an older one is taken anew.
	MaxAge time.Duration

	mu    sync.Mutex // serializes get
	last  []byte     // encoded; nil before the first successful get
	taken time.Time  // when last was taken
}

// NewServer returns a Server over get.
func NewServer(get func(context.Context) (*Layout, error)) *Server {
	return &Server{get: get}
}

// Serve answers requests on ln until ctx ends (then it returns nil) or
// Accept fails. It closes ln.
func Serve(ctx context.Context, ln net.Listener, get func(context.Context) (*Layout, error)) error {
	return NewServer(get).Serve(ctx, ln)
}

// Serve answers requests on every connection ln accepts until ctx ends
// (then it returns nil, after its connections are closed) or Accept fails.
// It closes ln.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			ln.Close()
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			_ = s.ServeConn(ctx, conn)
		}()
	}
}

// ServeConn answers requests read from rw until the stream ends (nil), ctx
// ends (its error), or reading or writing fails. Bytes that are not a
// request are skipped, so a server on a serial port resynchronizes after
// noise.
func (s *Server) ServeConn(ctx context.Context, rw io.ReadWriter) error {
	defer interruptOnDone(ctx, rw)()
	br := bufio.NewReaderSize(rw, 64)
	for {
		flags, err := readRequest(br)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return ctxErr(ctx, err)
		}
		resp := s.respond(ctx, flags&flagRefresh != 0)
		if _, err := rw.Write(resp); err != nil {
			return ctxErr(ctx, fmt.Errorf("send response: %w", err))
		}
	}
}

// readRequest skips to the next request magic and returns the request's
// flags. Requests of another version are skipped.
func readRequest(br *bufio.Reader) (byte, error) {
	matched := 0
	for {
		c, err := br.ReadByte()
		if err != nil {
			if matched > 0 && errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		switch {
		case c == reqMagic[matched]:
			matched++
		case c == reqMagic[0]:
			matched = 1
			continue
		default:
			matched = 0
			continue
		}
		if matched < len(reqMagic) {
			continue
		}
		matched = 0
		var vf [2]byte
		if _, err := io.ReadFull(br, vf[:]); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		if vf[0] == reqVersion {
			return vf[1], nil
		}
	}
}

// respond builds the response to one request.
func (s *Server) respond(ctx context.Context, refresh bool) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	stale := s.MaxAge > 0 && time.Since(s.taken) > s.MaxAge
	if refresh || s.last == nil || stale {
		if err := s.take(ctx); err != nil {
			msg := err.Error()
			if len(msg) > maxErrorLen {
				msg = msg[:maxErrorLen]
			}
			return frame(statusError, []byte(msg))
		}
	}
	return frame(statusOK, s.last)
}

// Refresh takes a layout now and caches it for requests without the
// refresh flag: a server that refreshes in the background answers them at
// once, where taking one walks the whole buffer pool.
func (s *Server) Refresh(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.take(ctx)
}

// take gets a layout into the cache; s.mu is held.
func (s *Server) take(ctx context.Context) error {
	t0 := time.Now()
	l, err := s.get(ctx)
	if err != nil {
		return err
	}
	b, err := l.MarshalBinary()
	if err != nil {
		return err
	}
	// Its age counts from the start of the walk: pages it names were read
	// from then on.
	s.last, s.taken = b, t0
	return nil
}

func frame(status byte, payload []byte) []byte {
	b := make([]byte, respHeaderSize, respHeaderSize+len(payload))
	b[0] = status
	binary.BigEndian.PutUint32(b[1:], uint32(len(payload)))
	return append(b, payload...)
}

// interruptOnDone makes blocked reads and writes on rw return once ctx ends,
// by setting a past deadline (net.Conn, pollable *os.File) or, failing
// that, closing rw. The returned func stops watching.
func interruptOnDone(ctx context.Context, rw io.ReadWriter) func() bool {
	return context.AfterFunc(ctx, func() {
		if d, ok := rw.(interface{ SetDeadline(time.Time) error }); ok && d.SetDeadline(time.Unix(1, 0)) == nil {
			return
		}
		if c, ok := rw.(io.Closer); ok {
			c.Close()
		}
	})
}

// ctxErr prefers the context's error to the I/O error it caused.
func ctxErr(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}
