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
//	request:  "DMLQ" version(1 byte) flags(1 byte)    flags bit 0: refresh, bit 1: info
//	response: status(1 byte) length(4 bytes, big-endian) payload
//	          status 0: payload is a MarshalBinary layout
//	          status 1: payload is an error message (UTF-8)
//	          status 2: payload is info length (uvarint), an Info encoding,
//	                    then a MarshalBinary layout
//
// Status 2 answers only requests with the info flag: a server that predates
// it ignores the flag and answers status 0, and a client that predates it
// never sets it. A connection carries any number of request/response pairs
// in turn.
const (
	reqMagic       = "DMLQ"
	reqVersion     = 1
	reqSize        = len(reqMagic) + 2
	flagRefresh    = 1 << 0
	flagInfo       = 1 << 1
	statusOK       = 0
	statusError    = 1
	statusInfo     = 2
	maxErrorLen    = 64 << 10
	maxInfoLen     = 1 << 10
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
	l, _, err := FetchInfo(ctx, addr, refresh)
	return l, err
}

// FetchInfo is FetchWith, asking the server to describe the layout and the
// pool too (Info): nil Info from a server that cannot.
func FetchInfo(ctx context.Context, addr string, refresh bool) (*Layout, *Info, error) {
	var d net.Dialer
	network, where := "tcp", addr
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, where = "unix", p
	}
	conn, err := d.DialContext(ctx, network, where)
	if err != nil {
		return nil, nil, fmt.Errorf("fetch layout: %w", err)
	}
	defer conn.Close()
	l, info, err := RequestInfo(ctx, conn, refresh)
	if err != nil {
		return nil, nil, fmt.Errorf("fetch layout from %s: %w", addr, err)
	}
	return l, info, nil
}

// Request sends one request on rw and reads the layout in the response. With
// refresh the server takes a new layout; without, it may answer with the
// last one it took. A server-side failure is an error wrapping ErrRemote.
// If ctx ends, rw's deadline is set to now (net.Conn, *os.File) to unblock.
func Request(ctx context.Context, rw io.ReadWriter, refresh bool) (*Layout, error) {
	l, _, err := request(ctx, rw, refresh, false)
	return l, err
}

// RequestInfo is Request asking for the layout's Info too; a server that
// predates it answers without (nil Info).
func RequestInfo(ctx context.Context, rw io.ReadWriter, refresh bool) (*Layout, *Info, error) {
	return request(ctx, rw, refresh, true)
}

func request(ctx context.Context, rw io.ReadWriter, refresh, withInfo bool) (*Layout, *Info, error) {
	defer interruptOnDone(ctx, rw)()
	req := []byte(reqMagic + "\x01\x00")
	if refresh {
		req[len(reqMagic)+1] |= flagRefresh
	}
	if withInfo {
		req[len(reqMagic)+1] |= flagInfo
	}
	if _, err := rw.Write(req); err != nil {
		return nil, nil, ctxErr(ctx, fmt.Errorf("send request: %w", err))
	}
	var hdr [respHeaderSize]byte
	if _, err := io.ReadFull(rw, hdr[:]); err != nil {
		return nil, nil, ctxErr(ctx, fmt.Errorf("read response: %w", err))
	}
	status, n := hdr[0], binary.BigEndian.Uint32(hdr[1:])
	switch {
	case (status == statusOK || status == statusInfo) && n > maxEncodedLen+maxInfoLen,
		status == statusError && n > maxErrorLen:
		return nil, nil, fmt.Errorf("response of %d bytes: %w", n, ErrTooLarge)
	case status == statusInfo && !withInfo:
		return nil, nil, fmt.Errorf("response with info to a request without: %w", ErrMalformed)
	case status != statusOK && status != statusError && status != statusInfo:
		return nil, nil, fmt.Errorf("response status %d: %w", status, ErrMalformed)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(rw, payload); err != nil {
		return nil, nil, ctxErr(ctx, fmt.Errorf("read response: %w", err))
	}
	if status == statusError {
		return nil, nil, fmt.Errorf("%w: %s", ErrRemote, payload)
	}
	return decodeResponse(status, payload)
}

// decodeResponse decodes a layout response's payload (status 0 or 2).
func decodeResponse(status byte, payload []byte) (*Layout, *Info, error) {
	var info *Info
	if status == statusInfo {
		il, k := binary.Uvarint(payload)
		if k <= 0 || il > maxInfoLen || il > uint64(len(payload)-k) {
			return nil, nil, fmt.Errorf("response info length: %w", ErrMalformed)
		}
		i, err := unmarshalInfo(payload[k : k+int(il)])
		if err != nil {
			return nil, nil, err
		}
		info, payload = &i, payload[k+int(il):]
	}
	var l Layout
	if err := l.UnmarshalBinary(payload); err != nil {
		return nil, nil, err
	}
	return &l, info, nil
}

// Server answers layout requests with layouts from get. It keeps the last
// layout it encoded: a request without the refresh flag gets that one if
// there is one. get is called by one request at a time.
type Server struct {
	get func(context.Context) (*Layout, error)
	// MaxAge, if set, is how old a cached layout a request without the
	// refresh flag may get; an older one is taken anew.
	MaxAge time.Duration
	// Pool, if set, gives the pool's figures for a request asking for Info
	// (PoolPages, DirtyPages, LoadAge, Loading); it must be quick. An error
	// leaves them unknown.
	Pool func(context.Context) (Info, error)

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
		resp := s.respond(ctx, flags&flagRefresh != 0, flags&flagInfo != 0)
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
func (s *Server) respond(ctx context.Context, refresh, withInfo bool) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	stale := s.MaxAge > 0 && time.Since(s.taken) > s.MaxAge
	cached := true
	if refresh || s.last == nil || stale {
		if err := s.take(ctx); err != nil {
			msg := err.Error()
			if len(msg) > maxErrorLen {
				msg = msg[:maxErrorLen]
			}
			return frame(statusError, []byte(msg))
		}
		cached = false
	}
	if !withInfo {
		return frame(statusOK, s.last)
	}
	var info Info
	if s.Pool != nil {
		if i, err := s.Pool(ctx); err == nil {
			info = i
		}
	}
	info.Cached, info.Age = cached, time.Since(s.taken)
	ib := info.marshal()
	payload := binary.AppendUvarint(make([]byte, 0, 2+len(ib)+len(s.last)), uint64(len(ib)))
	payload = append(append(payload, ib...), s.last...)
	return frame(statusInfo, payload)
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
